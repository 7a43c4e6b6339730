"""--ckpt_path for every subcommand, bad checkpoint files named, and failures that leave runs/ as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from segopt.commands.cli import main
from segopt.core.checkpoints import CheckpointError
from tests.conftest import CONFIGS, ROOT

TINY = [
    "--trainer.max_epochs=2",
    "--trainer.precision=32-true",
    "--trainer.accelerator=cpu",
    "--trainer.num_sanity_val_steps=0",
    "--data.source.init_args.size=32",
    "--data.source.init_args.num_train=8",
    "--data.source.init_args.num_val=4",
    "--data.batch_size=4",
    "--data.num_workers=0",
    "--model.backbone.init_args.base_channels=8",
    "--model.backbone.init_args.depth=2",
]
RUN = Path("runs") / "amp" / "version_0"


def _cli(subcommand: str, *extra: str) -> object:
    return main([subcommand, f"--config={CONFIGS / 'amp.yaml'}", *TINY, *extra])


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (the state a failed command must leave)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny 2-epoch fit; tests copy nothing and only read it (or fail before writing)."""
    root = tmp_path_factory.mktemp("ckpt")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        _cli("fit")
    return root


@pytest.fixture
def in_trained(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(trained)
    before = _tree(trained / "runs")
    yield trained
    assert _tree(trained / "runs") == before, "a command changed the runs folder"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True)["state_dict"].items() if k.startswith("net.")}


def _fails(subcommand: str, *extra: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _cli(subcommand, *extra)
    return str(exit_info.value.code)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
@pytest.mark.slow
def test_ckpt_path_last_loads_the_newest_last_checkpoint(in_trained: Path, subcommand: str) -> None:
    cli = _cli(subcommand, "--ckpt_path=last", "--trainer.logger=false")
    assert Path(cli.config[subcommand].ckpt_path).resolve() == (RUN / "checkpoints" / "last.ckpt").resolve()
    loaded = {k: v for k, v in cli.model.state_dict().items() if k.startswith("net.")}
    expected = _weights(RUN / "checkpoints" / "last.ckpt")
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_ckpt_path_best_loads_the_best_checkpoint_of_the_newest_run(in_trained: Path) -> None:
    cli = _cli("validate", "--ckpt_path=best", "--trainer.logger=false")
    best = [p for p in (RUN / "checkpoints").glob("epoch*.ckpt")]
    assert len(best) == 1
    assert Path(cli.config["validate"].ckpt_path).resolve() == best[0].resolve()


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
@pytest.mark.slow
def test_evaluating_without_a_checkpoint_stops_unless_asked(in_trained: Path, subcommand: str) -> None:
    message = _fails(subcommand, "--trainer.logger=false")
    assert message == (
        f"error: {subcommand} needs trained weights but no --ckpt_path was given; pass --ckpt_path last (the newest "
        f"run of this experiment), best, or a .ckpt file. To {subcommand} the untrained model on purpose, pass "
        "--ckpt_path untrained"
    )
    cli = _cli(subcommand, "--ckpt_path=untrained", "--trainer.logger=false")
    assert cli.trainer.state.finished


@pytest.mark.parametrize("word", ["last", "best"])
def test_last_or_best_without_a_run_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, word: str) -> None:
    monkeypatch.chdir(tmp_path)
    message = _fails("validate", f"--ckpt_path={word}")
    assert message.startswith(f"error: --ckpt_path {word} found no checkpoints/last.ckpt under runs/amp/.")
    assert not Path("runs").exists()


@pytest.mark.slow
def test_best_cannot_resume_a_fit(in_trained: Path) -> None:
    assert _fails("fit", "--ckpt_path=best").startswith("error: --ckpt_path best cannot resume a fit")


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p, good: None, r"bad\.ckpt: no such file"),
        (lambda p, good: p.write_bytes(b""), r"bad\.ckpt is empty \(0 bytes\)"),
        (lambda p, good: p.write_bytes(good[: len(good) // 2]), r"bad\.ckpt \(\d+ bytes\) cannot be read as a checkpoint: truncated"),
        (lambda p, good: p.write_bytes(b"not a checkpoint at all"), r"bad\.ckpt \(23 bytes\) cannot be read as a checkpoint"),
        (lambda p, good: torch.save({"model": {"w": torch.zeros(1)}}, p), r"bad\.ckpt is not a segopt training checkpoint"),
    ],
    ids=["missing", "empty", "truncated", "garbage", "foreign"],
)
@pytest.mark.parametrize("subcommand", ["fit", "validate", "predict"])
@pytest.mark.slow
def test_an_unusable_checkpoint_is_named(in_trained: Path, tmp_path: Path, make, expected: str, subcommand: str) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.ckpt"
    make(bad, (RUN / "checkpoints" / "last.ckpt").read_bytes())
    message = _fails(subcommand, f"--ckpt_path={bad}")
    assert message.startswith(f"error: --ckpt_path {bad}")
    assert __import__("re").search(expected, message), message
    assert "--ckpt_path last" in message  # the fix


def _edited(tmp_path: Path, **hparams: object) -> Path:
    ckpt = torch.load(RUN / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"].update(hparams)
    path = tmp_path / "other.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("subcommand", ["fit", "validate", "predict"])
@pytest.mark.slow
def test_a_checkpoint_for_other_classes_is_refused_in_class_terms(in_trained: Path, tmp_path: Path, subcommand: str) -> None:
    path = _edited(tmp_path, num_classes=3, class_names=["a", "b", "c"])
    message = _fails(subcommand, f"--ckpt_path={path}")
    assert message.startswith(
        f"error: --ckpt_path {path} was trained for 3 classes ['a', 'b', 'c'], but the data has 5 "
        "['background', 'disk', 'rectangle', 'triangle', 'ring']; pass the data config it was trained with"
    ), message


@pytest.mark.slow
def test_a_checkpoint_with_other_class_names_names_them(in_trained: Path, tmp_path: Path) -> None:
    path = _edited(tmp_path, class_names=["background", "disk", "box", "triangle", "ring"])
    message = _fails("validate", f"--ckpt_path={path}")
    assert "(class id: checkpoint -> data: 2: 'box' -> 'rectangle')" in message, message


def test_a_fit_failing_before_its_first_checkpoint_leaves_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # 2 epochs x 2 steps: pct_start 0.25 is a one-step warm-up, refused when the optimiser is configured.
    message = _fails("fit", "--model.scheduler.init_args.pct_start=0.25")
    assert message.startswith("error: model.scheduler.init_args.pct_start is 0.25")
    assert not Path("runs").exists()


@pytest.mark.slow
def test_a_resume_refused_for_its_schedule_leaves_the_run_byte_identical(in_trained: Path) -> None:
    message = _fails("fit", "--ckpt_path=last", "--trainer.max_epochs=3")
    assert message.startswith("error: cannot resume: the checkpoint's learning-rate schedule was planned for 4")


@pytest.mark.slow
def test_segopt_traceback_shows_the_original_error(in_trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGOPT_TRACEBACK", "1")
    with pytest.raises(CheckpointError, match="no such file"):
        _cli("validate", "--ckpt_path=missing.ckpt")


@pytest.mark.slow
def test_the_command_line_prints_one_message_and_no_traceback(in_trained: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SEGOPT_TRACEBACK", None)
    done = subprocess.run(
        [sys.executable, "-m", "segopt.commands.cli", "validate", f"--config={CONFIGS / 'amp.yaml'}", *TINY, "--ckpt_path=nope.ckpt"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --ckpt_path nope.ckpt: no such file;")


@pytest.mark.slow
def test_warm_start_loads_matching_tensors_and_lists_the_new_head(trained: Path) -> None:
    from segopt.core.checkpoints import warm_start
    from segopt.models import UNet

    saved = _weights(trained / RUN / "checkpoints" / "last.ckpt")
    net = UNet(3, 3, base_channels=8, depth=2)  # 3 classes instead of the checkpoint's 5
    head_before = {k: v.clone() for k, v in net.state_dict().items() if f"net.{k}" not in saved or saved[f"net.{k}"].shape != v.shape}
    loaded, skipped = warm_start(net, trained / RUN / "checkpoints" / "last.ckpt")
    assert sorted(skipped) == sorted(f"{k} (checkpoint {tuple(saved['net.' + k].shape)}, model {tuple(v.shape)})" for k, v in head_before.items())
    assert len(head_before) == 2  # the last conv's weight and bias
    state = net.state_dict()
    assert all(torch.equal(state[k], saved[f"net.{k}"]) for k in loaded)
    assert all(torch.equal(state[k], v) for k, v in head_before.items())
    assert len(loaded) + len(skipped) == len(state)


@pytest.mark.slow
def test_warm_start_from_an_unusable_file_names_the_key(in_trained: Path) -> None:
    message = _fails("fit", "--model.init_weights=nowhere.ckpt")
    assert message.startswith("error: model.init_weights nowhere.ckpt: no such file;")


@pytest.mark.parametrize(
    "flag,expected",
    [
        ("--data.batch_size=-1", "error: data.batch_size is -1; it must be 1 or more"),
        ("--data.batch_size=0", "error: data.batch_size is 0; it must be 1 or more"),
        ("--data.num_workers=-2", "error: data.num_workers is -2; it must be 0"),
        ("--data.train_size=[0,32]", "error: data.train_size is [0, 32]; give [height, width]"),
    ],
)
def test_late_checked_config_values_are_named_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _fails("fit", flag).startswith(expected)
    assert not Path("runs").exists()


# -- a checkpoint of another network (#22, items 5 and 8) --------------------------------------------------------

OTHER_WIDTH = (
    "holds segopt.models.UNet with base_channels=8, but the config builds it with base_channels=4 "
    "(stem.0.weight is (8, 3, 3, 3) there, (4, 3, 3, 3) here and 52 more tensors differ); "
    "pass --model.backbone.init_args.base_channels 8"
)


def _listing(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its modification time (a rewrite shows even with the same bytes)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
@pytest.mark.slow
def test_a_checkpoint_of_another_width_names_both_networks_and_writes_nothing(in_trained: Path, subcommand: str) -> None:
    before = _listing(in_trained)
    message = _fails(subcommand, "--ckpt_path=last", "--model.backbone.init_args.base_channels=4")
    assert message == f"error: --ckpt_path {RUN / 'checkpoints' / 'last.ckpt'} {OTHER_WIDTH}"
    assert _listing(in_trained) == before


@pytest.mark.slow
def test_a_checkpoint_without_a_backbone_record_is_named_by_a_tensor(in_trained: Path, tmp_path: Path) -> None:
    ckpt = torch.load(RUN / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del ckpt["backbone"]  # written before checkpoints recorded their backbone
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)
    message = _fails("validate", f"--ckpt_path={path}", "--model.backbone.init_args.depth=3")
    assert message == (
        f"error: --ckpt_path {path} holds a network whose settings it does not record, but the config builds "
        "segopt.models.UNet(base_channels=8, depth=3, residual=False, up_mode=bilinear) (up.0.up.1.weight is (16, 32, 1, 1) "
        "there, (32, 64, 1, 1) here and 46 more tensors differ); pass the model.backbone it was trained with (its run's config.yaml)"
    ), message


@pytest.mark.slow
def test_a_resume_with_another_width_is_one_line_and_leaves_the_run_untouched(in_trained: Path) -> None:
    before = _listing(in_trained)
    message = _fails("fit", "--ckpt_path=last", "--model.backbone.init_args.base_channels=4")
    last = RUN / "checkpoints" / "last.ckpt"
    assert message == (
        f"error: --ckpt_path {last} {OTHER_WIDTH}, or to train this network from the tensors that fit start a new "
        f"fit with --model.init_weights {last}"
    )
    assert _listing(in_trained) == before


class FailsAtFitStart(pl.Callback):
    """An error the clean-up knows nothing of, after the resumed run rewrote config.yaml (via --trainer.callbacks+=)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise RuntimeError("an unforeseen failure")


@pytest.mark.slow
def test_any_failure_of_a_resume_before_a_checkpoint_puts_the_run_back(in_trained: Path) -> None:
    before = _listing(in_trained)
    with pytest.raises(RuntimeError, match="an unforeseen failure"):
        _cli("fit", "--ckpt_path=last", "--trainer.callbacks+=tests.test_checkpoints.FailsAtFitStart")
    assert _listing(in_trained) == before  # and in_trained checks the bytes


@pytest.mark.slow
def test_a_resumed_fit_saves_its_config_without_the_resume(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(trained / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    original = (RUN / "config.yaml").read_text()
    _cli("fit", "--ckpt_path=last")  # the run is complete: it resumes and stops at once
    saved = (RUN / "config.yaml").read_text()
    assert saved == (
        f"# Resumed from {RUN / 'checkpoints' / 'last.ckpt'} (fit --ckpt_path); the resume is left out, so this "
        f"file starts the run afresh.\n{original}"
    )
    assert "ckpt_path: null" in saved and "version: null" in saved
