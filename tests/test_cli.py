"""End to end through the command line: a short real fit, its files, metrics and resume."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from segopt.commands.cli import main
from segopt.core.precision import cpu_has_native_bf16, resolve_precision
from tests.conftest import CONFIGS, LogLines, tiny_cli_args

TINY = tiny_cli_args()
STEPS_PER_EPOCH = 32 // 8


def _fit(*extra: str) -> object:
    return main(["fit", f"--config={CONFIGS / 'amp.yaml'}", *TINY, *extra])


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object, list[str]]]:
    """One tiny fit shared by the tests below (they only read what it wrote)."""
    root = tmp_path_factory.mktemp("fit")
    handler = LogLines()
    logging.getLogger("lightning.pytorch").addHandler(handler)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli = _fit()
        yield root / "runs" / "amp" / "version_0", cli, handler.lines
    logging.getLogger("lightning.pytorch").removeHandler(handler)


@pytest.mark.slow
def test_fit_writes_run_with_checkpoints_events_and_config(trained: tuple[Path, object, list[str]]) -> None:
    run, cli, _ = trained
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts
    best = [c for c in ckpts if c.startswith("epoch")]
    assert len(best) == 1 and best[0].endswith(".ckpt")
    assert (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert cli.trainer.global_step == 2 * STEPS_PER_EPOCH
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2 * STEPS_PER_EPOCH


@pytest.mark.slow
def test_fit_reports_the_precision_that_ran(trained: tuple[Path, object, list[str]]) -> None:
    _, cli, logged = trained
    lines = [line for line in logged if line.startswith("segopt: running precision")]
    if torch.cuda.is_available():
        assert lines == ["segopt: running precision 16-mixed on cuda"]
    elif cpu_has_native_bf16():
        assert lines == ["segopt: running precision bf16-mixed on cpu (requested 16-mixed; fp16 autocast needs a CUDA GPU)"]
        assert cli.trainer.precision == "bf16-mixed"
    else:
        assert lines == [
            "segopt: running precision 32-true on cpu (requested 16-mixed; fp16 autocast needs a CUDA GPU, and this "
            "CPU has no native bf16 (emulated bf16 runs slower than float32))"
        ]
        assert cli.trainer.precision == "32-true"


@pytest.mark.slow
def test_logged_val_miou_is_what_validate_recomputes_from_the_best_checkpoint(
    trained: tuple[Path, object, list[str]],
) -> None:
    run, cli, _ = trained
    best = cli.trainer.checkpoint_callback
    score = float(best.best_model_score)
    assert 0.0 < score <= 1.0
    check = main(["validate", f"--config={CONFIGS / 'amp.yaml'}", *TINY, f"--ckpt_path={best.best_model_path}"])
    assert float(check.trainer.callback_metrics["val/mIoU"]) == pytest.approx(score, abs=1e-6)


@pytest.mark.slow
def test_dashboard_tags_are_in_the_event_files(trained: tuple[Path, object, list[str]]) -> None:
    run, _, _ = trained
    acc = _events(run)
    scalars = set(acc.Tags()["scalars"])
    names = ["background", "disk", "rectangle", "triangle", "ring"]
    expected = {"train/loss", "val/loss", "val/mIoU", "val/mIoU_best", "val/dice", "val/acc", "lr-AdamW"}
    assert expected <= scalars
    assert {f"val/iou/{n}" for n in names} & scalars, scalars
    assert {"val/overlays", "val/confusion_matrix"} <= set(acc.Tags()["images"])
    assert len(acc.Images("val/overlays")) == 2  # every epoch (every_n_epochs: 1)
    hparams = acc.PluginTagToContent("hparams")
    assert b"val/mIoU_best" in b"".join(hparams.values())
    assert [e.step for e in acc.Scalars("val/mIoU")] == [STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1]


def test_resume_last_without_a_previous_run_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"--ckpt_path last found no checkpoints/last.ckpt under runs/amp"):
        _fit("--ckpt_path=last")
    assert not (tmp_path / "runs" / "amp").exists() or not any((tmp_path / "runs" / "amp").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_test_and_predict_accept_ckpt_path(trained: tuple[Path, object, list[str]], subcommand: str) -> None:
    run, _, _ = trained
    cli = main([subcommand, f"--config={CONFIGS / 'amp.yaml'}", *TINY, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    if subcommand == "test":
        assert 0.0 < float(cli.trainer.callback_metrics["test/mIoU"]) <= 1.0
    else:
        assert cli.trainer.state.finished


@pytest.mark.slow
def test_print_config_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={CONFIGS / 'amp.yaml'}", *TINY, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    (tmp_path / "full.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config=full.yaml", "--print_config"])
    assert capsys.readouterr().out == printed


class CrashAtEpoch(pl.Callback):
    """Raises at the start of an epoch, as a crash would (used through --trainer.callbacks+=)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_resume_last_continues_the_same_run_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    crash = ["--trainer.callbacks+=tests.test_cli.CrashAtEpoch", "--trainer.callbacks.epoch=2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit("--trainer.max_epochs=3", *crash)
    run = tmp_path / "runs" / "amp" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2 * STEPS_PER_EPOCH

    cli = _fit("--trainer.max_epochs=3", "--ckpt_path=last")
    assert cli.trainer.global_step == 3 * STEPS_PER_EPOCH
    assert Path(cli.trainer.log_dir) == Path("runs/amp/version_0")
    assert not (run.parent / "version_1").exists()
    steps = [e.step for e in _events(run).Scalars("train/loss")]
    assert steps == list(range(3 * STEPS_PER_EPOCH))


@pytest.mark.parametrize(
    "requested,cuda,native,ran",
    [("16-mixed", True, False, "16-mixed"), ("16-mixed", False, True, "bf16-mixed"), ("16-mixed", False, False, "32-true"),
     ("bf16-mixed", False, False, "bf16-mixed"), ("32-true", False, True, "32-true")],
)
def test_16_mixed_runs_the_fastest_precision_the_machine_has(requested: str, cuda: bool, native: bool, ran: str) -> None:
    assert resolve_precision(requested, cuda, native)[0] == ran


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_vnni\n")
    assert cpu_has_native_bf16(str(with_bf16)) is True
    assert cpu_has_native_bf16(str(without)) is False


@pytest.mark.slow
def test_progress_bar_off_simply_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # The shared Trainer defaults list a TQDMProgressBar, which Lightning refuses beside this flag.
    cli = main(["validate", f"--config={CONFIGS / 'amp.yaml'}", *TINY, "--data.source.init_args.num_val=4",
                "--ckpt_path=untrained", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.progress_bar_callback is None
    assert cli.trainer.state.finished
    assert "enable_progress_bar: false" in (tmp_path / "runs" / "amp" / "version_0" / "config.yaml").read_text()
