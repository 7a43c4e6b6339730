"""Configs written before the layered layout still load, and the CLI names the new path."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from segopt.commands.from_config import build_from_config
from segopt.commands.moved_paths import MOVED_COMMANDS, MOVED_MODULES, old_paths_in
from segopt.core.schedules import OneCycle
from segopt.lightning import TimeBudget
from tests.conftest import CONFIGS, ROOT, LogLines, tiny_cli_args


def test_each_old_class_path_has_the_path_to_write_instead() -> None:
    text = "class_path: segopt.time_budget.TimeBudget\nclass_path: segopt.schedules.OneCycle  # segopt.schedules\n"
    assert old_paths_in(text) == {
        "segopt.time_budget.TimeBudget": "segopt.lightning.TimeBudget",
        "segopt.schedules.OneCycle": "segopt.core.schedules.OneCycle",
    }
    assert old_paths_in("class_path: segopt.lightning.TimeBudget\nclass_path: segopt.core.schedules.OneCycle") == {}
    assert set(MOVED_MODULES) >= {"segopt.callbacks", "segopt.failsafe", "segopt.module", "segopt.predict"}


def test_a_config_with_old_class_paths_builds_the_same_classes_and_says_the_new_paths(tmp_path: Path) -> None:
    config = yaml.safe_load((CONFIGS / "amp.yaml").read_text())
    config["model"]["scheduler"]["class_path"] = "segopt.schedules.OneCycle"
    config["trainer"]["callbacks"] = [{"class_path": "segopt.time_budget.TimeBudget", "init_args": {"minutes": 1.5}}]
    assert "segopt.core.schedules.OneCycle" not in yaml.safe_dump(config)
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(config))
    lines = LogLines()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(lines)
    try:
        cli = build_from_config(["--config", str(old), *tiny_cli_args()])
    finally:
        logger.removeHandler(lines)
    (budget,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, TimeBudget)]
    assert budget.minutes == 1.5
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert type(cli.model.build_scheduler(optimizer, 10)) is OneCycle
    assert [line for line in lines.lines if line.startswith("note:")] == [
        "note: segopt.schedules.OneCycle is now segopt.core.schedules.OneCycle; the old path still loads, the new one is what configs should say",
        "note: segopt.time_budget.TimeBudget is now segopt.lightning.TimeBudget; the old path still loads, the new one is what configs should say",
    ]


def test_the_old_fetch_command_says_its_new_name_and_runs_it() -> None:
    assert MOVED_COMMANDS == {"segopt.data.fetch": "segopt.fetch"}
    done = subprocess.run([sys.executable, "-m", "segopt.data.fetch", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "note: python -m segopt.data.fetch is now python -m segopt.fetch (same arguments)\n"
    assert "magnetic_tiles" in done.stdout and "--from" in done.stdout
