"""Shared test fixtures: paths to the project, its configs and the real data sets; tiny runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml

# Test models are tiny: one thread avoids thread hand-off costs that dominate their steps.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"

# The shipped configs read data/<name>; in tests that folder is ../shared/data (.ci/run says the
# same). Set unconditionally so a developer's own SEGOPT_DATA_ROOT cannot change what tests see.
os.environ["SEGOPT_DATA_ROOT"] = str(SHARED_DATA)


#: The test files that take longest, longest first (measured with ``pytest --durations=0`` on 2
#: cores). Run first, they overlap the rest on the other worker instead of ending the suite
#: alone: files are handed to the workers whole (``--dist loadfile``) in collection order
#: (``--no-loadscope-reorder``; xdist would otherwise put the files with most tests first, and
#: the one-test, two-minute GPU report dry run last).
LONGEST_FIRST = [
    "test_gpu_report.py", "test_ddp.py", "test_checkpoints.py", "test_data_fetch.py", "test_scripts_results.py",
    "test_side_by_side.py", "test_exact_resume.py", "test_crash_resume.py",
]  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project (CI provides it); skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def tiny_cli_args(
    *, epochs: int = 2, size: int = 32, num_train: int = 32, num_val: int = 16, batch_size: int = 8, base_channels: int = 8
) -> list[str]:
    """Flags that shrink ``configs/amp.yaml`` to a run of seconds on a CPU: synthetic shapes of
    ``size`` px, a two-level UNet, no loader workers, a log line every step."""
    return [
        f"--trainer.max_epochs={epochs}",
        "--trainer.log_every_n_steps=1",
        f"--data.source.init_args.size={size}",
        f"--data.source.init_args.num_train={num_train}",
        f"--data.source.init_args.num_val={num_val}",
        f"--data.batch_size={batch_size}",
        "--data.num_workers=0",
        f"--model.backbone.init_args.base_channels={base_channels}",
        "--model.backbone.init_args.depth=2",
    ]


def quiet_trainer(**overrides: Any) -> pl.Trainer:
    """A CPU Trainer that writes nothing (no logger, checkpoints, progress bar or summary) unless told."""
    settings: dict[str, Any] = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return pl.Trainer(**{**settings, **overrides})


class LogLines(logging.Handler):
    """Keeps the messages of the log records it handles (attach it to a logger to read what a run said)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def tiny_config_file(
    tmp_path: Path,
    every_n_train_steps: int,
    *,
    trainer: dict[str, Any],
    data: dict[str, Any] | None = None,
    source: dict[str, Any],
    backbone: dict[str, Any],
    callbacks: list[dict[str, Any]] | None = None,
) -> Path:
    """``configs/amp.yaml`` written to ``tmp_path/tiny.yaml``, shrunk as ``tiny_cli_args`` shrinks it
    (batch 8, no loader workers, a log line every step, a two-level UNet on 32 px shapes), with the
    Trainer's default callbacks spelled out, the step checkpoint every ``every_n_train_steps``
    steps, and the given updates of trainer, data, source and backbone settings."""
    from segopt.commands.cli import TRAINER_DEFAULTS  # here: the CLI is heavy to import, and few tests need it

    cfg = yaml.safe_load((CONFIGS / "amp.yaml").read_text())
    cfg["trainer"]["callbacks"] = yaml.safe_load(TRAINER_DEFAULTS.read_text())["trainer"]["callbacks"] + (callbacks or [])
    step_ckpts = [c for c in cfg["trainer"]["callbacks"] if "every_n_train_steps" in c.get("init_args", {})]
    assert len(step_ckpts) == 1
    step_ckpts[0]["init_args"]["every_n_train_steps"] = every_n_train_steps
    cfg["trainer"].update(log_every_n_steps=1, **trainer)
    cfg["data"].update(batch_size=8, num_workers=0, **(data or {}))
    cfg["data"]["source"]["init_args"].update(size=32, **source)
    cfg["model"]["backbone"]["init_args"].update(depth=2, **backbone)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
