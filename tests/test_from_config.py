"""Scripts build a training config's objects with ``build_from_config`` while their own flags
are on the command line."""

from __future__ import annotations

import sys
import warnings

import pytest
from jsonargparse import Namespace

from segopt.commands.from_config import build_from_config, parse_config
from segopt.lightning.module import SegModule
from tests.conftest import CONFIGS, tiny_cli_args


def test_a_script_with_its_own_flags_builds_the_config_without_lightnings_args_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What `segopt plan --config ... --minutes 30 --out ...` has in sys.argv when it builds the data.
    monkeypatch.setattr(sys, "argv", ["segopt-plan", "--minutes", "30", "--out", "recipe.yaml"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_from_config(["--config", str(CONFIGS / "amp.yaml"), *tiny_cli_args()])
    assert isinstance(cli.model, SegModule)
    assert [str(w.message) for w in caught if "LightningCLI's args" in str(w.message)] == []


def test_parse_config_reads_the_files_and_flags_without_building_anything(tmp_path) -> None:  # noqa: ANN001
    missing = tmp_path / "no_data_here"  # nothing reads the data: only the building would
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  source:\n    class_path: segopt.data.PairedFolder\n    init_args:\n      root: {missing}\n      class_names: [bg, fg]\n")
    config = parse_config(["--config", str(CONFIGS / "amp.yaml"), "--config", str(data), "--model.tta.vflip=true"])
    assert (config.model.tta.hflip, config.model.tta.vflip, config.model.tta.scales) == (False, True, [1.0])
    assert config.data.source.init_args.root == str(missing) and not missing.exists()
    assert isinstance(config.model, Namespace) and isinstance(config.data, Namespace)  # parsed, not built
