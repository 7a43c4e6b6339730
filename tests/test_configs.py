"""The shipped configs compose: shared Trainer defaults, the reference recipe, overlays on top."""

from __future__ import annotations

import pytest
import yaml

from segopt.commands.cli import main
from tests.conftest import CONFIGS


def _resolved(capsys: pytest.CaptureFixture, *configs: str) -> dict:
    """The config ``segopt.commands.cli fit --config ...`` would run, as ``--print_config`` prints it."""
    with pytest.raises(SystemExit) as done:
        main(["fit", *(f"--config={CONFIGS / c}" for c in configs), "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_amp_is_the_reference_recipe_on_the_shared_trainer_defaults(capsys: pytest.CaptureFixture) -> None:
    amp = _resolved(capsys, "amp.yaml")
    assert amp["model"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert amp["model"]["scheduler"]["class_path"] == "segopt.core.schedules.OneCycle"
    assert amp["model"]["scheduler"]["init_args"]["max_lr"] == 3e-4
    assert amp["data"]["batch_size"] == 16
    assert (amp["model"]["loss"]["init_args"]["ce"], amp["model"]["loss"]["init_args"]["dice"]) == (0.5, 0.5)
    assert amp["data"]["source"]["class_path"] == "segopt.data.SyntheticShapes"
    assert amp["trainer"]["precision"] == "16-mixed"
    # from segopt/commands/trainer_defaults.yaml, which amp.yaml does not repeat
    logger = amp["trainer"]["logger"]["init_args"]
    assert (logger["save_dir"], logger["name"], logger["default_hp_metric"]) == ("runs", "amp", False)
    assert [c["class_path"].rsplit(".", 1)[-1] for c in amp["trainer"]["callbacks"]] == [
        "ModelCheckpoint", "ModelCheckpoint", "ModelCheckpoint", "LearningRateMonitor", "TQDMProgressBar",
        "ValidationOverlays", "ConfusionMatrixFigure", "HParamsBestMetric", "PurgeStaleEvents",
    ]  # fmt: skip
    assert [p["class_path"] for p in amp["trainer"]["plugins"]] == ["segopt.lightning.AtomicCheckpointIO"]
    assert "callbacks" not in yaml.safe_load((CONFIGS / "amp.yaml").read_text())["trainer"]


def test_fp32_overlay_changes_only_precision_and_run_name(capsys: pytest.CaptureFixture) -> None:
    amp = _resolved(capsys, "amp.yaml")
    fp32 = _resolved(capsys, "amp.yaml", "fp32.yaml")
    assert fp32["trainer"]["precision"] == "32-true"
    assert fp32["trainer"]["logger"]["init_args"]["name"] == "fp32"
    fp32["trainer"]["precision"], fp32["trainer"]["logger"]["init_args"]["name"] = "16-mixed", "amp"
    assert fp32 == amp
