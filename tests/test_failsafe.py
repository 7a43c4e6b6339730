"""Failing safely: a non-finite loss, NaN weights, out-of-memory and config errors.

Each failure must stop the run with a message that says what happened and what to
change, and leave the checkpoints already written exactly as they were.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from segopt.commands.cli import main
from segopt.data import DataError
from segopt.lightning.failsafe import NonFiniteLossError, NonFiniteLossGuard, is_out_of_memory
from tests.conftest import CONFIGS, tiny_cli_args

TINY = [
    *tiny_cli_args(num_train=8, num_val=4, batch_size=4),
    "--trainer.precision=32-true",
    "--trainer.accelerator=cpu",
    "--trainer.num_sanity_val_steps=0",
]
STEPS_PER_EPOCH = 8 // 4
RUN = Path("runs") / "amp" / "version_0"

#: Checkpoint bytes as they were when a test callback injected its failure (path → bytes).
SNAPSHOT: dict[Path, bytes] = {}



@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    SNAPSHOT.clear()
    return tmp_path


def _fit(*extra: str) -> object:
    return main(["fit", f"--config={CONFIGS / 'amp.yaml'}", *TINY, *extra])


def _snapshot(trainer: pl.Trainer) -> None:
    folder = Path(trainer.log_dir) / "checkpoints"
    SNAPSHOT.update({p: p.read_bytes() for p in sorted(folder.glob("*.ckpt"))})


def _checkpoints_unchanged() -> None:
    """The checkpoints on disk are exactly those snapshotted, byte for byte, and hold finite weights."""
    assert SNAPSHOT, "the failure was injected before any checkpoint existed"
    on_disk = {p.resolve() for p in (RUN / "checkpoints").iterdir()}
    assert on_disk == {p.resolve() for p in SNAPSHOT}
    for path, data in SNAPSHOT.items():
        assert path.read_bytes() == data, path
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == STEPS_PER_EPOCH
        assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point()), path


class NaNImages(pl.Callback):
    """Fills the images of the batches of optimiser steps ``first..last`` with NaN (used via --trainer.callbacks+=)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.first:
            _snapshot(trainer)
        if self.first <= trainer.global_step <= self.last:
            batch["image"].fill_(float("nan"))


class OutOfMemoryAt(pl.Callback):
    """Raises the error CUDA raises when an allocation fails, at optimiser step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            _snapshot(trainer)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)")


@pytest.mark.slow
@pytest.mark.parametrize("log_every", [1, 50], ids=["read-every-batch", "read-at-epoch-end"])
def test_loss_nan_for_patience_batches_stops_naming_the_step_and_keeps_checkpoints(in_tmp: Path, log_every: int) -> None:
    # Losses are read back every log_every_n_steps batches; at 50 (longer than the run) the
    # streak is found before the epoch-end checkpoint, which is then not written.
    nan = ["--trainer.callbacks+=tests.test_failsafe.NaNImages", "--trainer.callbacks.first=2", "--trainer.callbacks.last=99"]
    with pytest.raises(SystemExit) as exit_info:
        _fit("--nonfinite_loss.patience=2", f"--trainer.log_every_n_steps={log_every}", *nan)
    assert isinstance(exit_info.value.__cause__, NonFiniteLossError)
    message = str(exit_info.value.code)
    assert message.startswith(
        "error: train loss was non-finite (nan, nan) for 2 consecutive batches, the last at step 3 (epoch 1, batch 1; "
        "the first at step 2), so training stopped before writing another checkpoint. The newest checkpoint, "
    )
    assert "raise nonfinite_loss.patience (now 2)" in message
    assert "trainer.gradient_clip_val" in message
    _checkpoints_unchanged()


@pytest.mark.slow
def test_checkpoint_with_nan_weights_is_refused_before_patience_runs_out(in_tmp: Path) -> None:
    # One NaN batch, the last of epoch 1: without a gradient scaler it poisons the weights,
    # and the epoch-end checkpoint must not be written (patience 3 is not reached).
    nan = ["--trainer.callbacks+=tests.test_failsafe.NaNImages", "--trainer.callbacks.first=3", "--trainer.callbacks.last=3"]
    with pytest.raises(SystemExit, match=r"^error: not writing a checkpoint at step 4 \(epoch 1\): \d+ weight tensor\(s\) "
                       r"hold NaN/inf since the non-finite loss at step 3, e\.g\. net\."):
        _fit(*nan)
    _checkpoints_unchanged()


def _guard_sees(losses: list[float], patience: int, every: int = 1) -> tuple[NonFiniteLossGuard, SimpleNamespace]:
    """Feed ``losses`` to a guard as batch ends of one epoch, read back every ``every`` batches."""
    guard = NonFiniteLossGuard(patience)
    trainer = SimpleNamespace(
        global_step=0, current_epoch=0, world_size=1, global_rank=0, checkpoint_callbacks=[], log_every_n_steps=every,
        strategy=SimpleNamespace(reduce=lambda tensor, reduce_op: tensor),
    )
    for i, loss in enumerate(losses):
        trainer.global_step = i
        guard.on_train_batch_start(trainer, None, None, i)
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, i)
    return guard, trainer


def test_a_finite_loss_resets_the_count() -> None:
    guard, trainer = _guard_sees([math.nan, 1.0, math.nan, math.inf, 2.0, math.nan, math.nan], patience=3)  # no streak of 3
    guard.on_train_epoch_end(trainer, None)


def test_nan_and_inf_both_count() -> None:
    with pytest.raises(NonFiniteLossError, match=r"^train loss was non-finite \(nan, inf, -inf\) for 3 consecutive "
                       r"batches, the last at step 4 \(epoch 0, batch 4; the first at step 2\).*No checkpoint had been "
                       r"written yet\."):
        _guard_sees([1.0, 2.0, math.nan, math.inf, -math.inf], patience=3)


def test_losses_are_read_back_on_the_logging_interval_naming_the_streak() -> None:
    # Read back every 4 batches: the streak (steps 1-3) is found at the 4th batch end.
    _guard_sees([1.0, math.nan, math.nan], patience=3, every=4)  # nothing read back yet
    with pytest.raises(NonFiniteLossError, match=r"^train loss was non-finite \(nan, nan, nan\) for 3 consecutive "
                       r"batches, the last at step 3 \(epoch 0, batch 3; the first at step 1\)"):
        _guard_sees([1.0, math.nan, math.nan, math.nan], patience=3, every=4)
    # A streak that spans two read-backs still counts as one.
    with pytest.raises(NonFiniteLossError, match=r"the last at step 4 \(epoch 0, batch 4; the first at step 2\)"):
        _guard_sees([1.0, 1.0, math.nan, math.nan, math.nan, 1.0], patience=3, every=3)


def test_the_epoch_end_reads_back_what_the_interval_left() -> None:
    guard, trainer = _guard_sees([1.0, math.nan, math.nan], patience=2, every=50)
    with pytest.raises(NonFiniteLossError, match=r"for 2 consecutive batches, the last at step 2 \(epoch 0, batch 2"):
        guard.on_train_epoch_end(trainer, None)


def test_patience_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"nonfinite_loss.patience is 0; it must be 1 or more"):
        NonFiniteLossGuard(0)


@pytest.mark.slow
def test_out_of_memory_says_what_to_change_and_keeps_checkpoints(in_tmp: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _fit("--trainer.callbacks+=tests.test_failsafe.OutOfMemoryAt", "--trainer.callbacks.step=3")
    assert str(exit_info.value.code) == "\n".join(
        [
            "error: out of memory during fit on rank 0 (cpu) with data.batch_size 4, trainer.precision 32-true, "
            "trainer.accumulate_grad_batches 1:",
            "  CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)",
            "No checkpoint was written after the failure; the ones already saved are as they were.",
            "To fit in memory:",
            "  - a smaller batch with gradient accumulation: --data.batch_size 2 --trainer.accumulate_grad_batches 2 "
            "(the optimiser still sees as many images per step)",
            "  - mixed precision: --trainer.precision 16-mixed (or bf16-mixed on GPUs that support it), which about "
            "halves activation memory",
            "  - smaller inputs: data.train_size / data.eval_size, or data.resize_mode crop",
            "  - let Lightning find the largest batch that fits (one device): "
            "--trainer.callbacks+=segopt.lightning.ScheduleAwareBatchSizeFinder",
        ]
    )
    assert isinstance(exit_info.value.__cause__, torch.OutOfMemoryError)
    _checkpoints_unchanged()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory."), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: 8 GB"), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
        (RuntimeError("simulated crash"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_is_out_of_memory(error: BaseException, expected: bool) -> None:
    assert is_out_of_memory(error) is expected


@pytest.mark.slow
def test_batch_size_finder_sets_the_datamodule_batch_and_replans_the_schedule(in_tmp: Path) -> None:
    # Trials of 2, 4 and 8 images; on a CPU nothing runs out, so they end at max_trials.
    finder = [
        "--trainer.callbacks+=segopt.lightning.ScheduleAwareBatchSizeFinder",
        "--trainer.callbacks.max_trials=3",
        "--trainer.callbacks.steps_per_trial=1",
    ]
    cli = _fit("--trainer.max_epochs=1", *finder)
    assert cli.datamodule.batch_size == 8
    assert cli.trainer.global_step == 1  # 8 images / 8 per batch
    assert cli.trainer.lr_scheduler_configs[0].scheduler.total_steps == 1
    assert not list(in_tmp.glob(".scale_batch_size_*"))


# -- config errors: before anything runs, nothing written ------------------------------------------------------


def _fails_before_training(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={CONFIGS / 'amp.yaml'}", *TINY, *args])
    assert exit_info.value.code != 0
    assert not Path("runs").exists()
    return str(exit_info.value.code) + capsys.readouterr().err


def test_unknown_key_on_the_command_line_is_named(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    assert "unrecognized arguments: --data.batch_sise=8" in _fails_before_training(capsys, "--data.batch_sise=8")


def test_unknown_key_in_a_config_file_is_named(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    Path("extra.yaml").write_text("data:\n  batch_sise: 8\n")
    assert "does not accept option 'data.batch_sise'" in _fails_before_training(capsys, "--config=extra.yaml")


def test_wrong_type_names_the_key_and_the_value(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    err = _fails_before_training(capsys, "--data.batch_size=sixteen")
    assert 'Parser key "data.batch_size":' in err and "Expected a <class 'int'>. Got value: sixteen" in err


def test_sync_batchnorm_on_cpu_is_refused_before_training(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    err = _fails_before_training(capsys, f"--config={CONFIGS / 'ddp.yaml'}", "--trainer.devices=2")
    assert err.startswith(
        "error: trainer.sync_batchnorm is true but the run is on cpu; SyncBatchNorm needs CUDA GPUs. "
        "Add --trainer.sync_batchnorm false"
    )


def test_missing_data_root_names_the_key(in_tmp: Path) -> None:
    with pytest.raises(SystemExit, match=r"^error: data set no/such/dir: data root no/such/dir does not exist .*set data\.source\.init_args\.root") as exit_info:
        main(["fit", f"--config={CONFIGS / 'amp.yaml'}", f"--config={CONFIGS / 'data' / 'membrane.yaml'}",
              "--data.source.init_args.root=no/such/dir"])
    assert isinstance(exit_info.value.__cause__, DataError)
    assert not Path("runs").exists()


def test_a_single_class_is_refused(in_tmp: Path) -> None:
    for folder in ("train", "trainannot", "val", "valannot"):
        Path("pairs", folder).mkdir(parents=True)
        image = np.zeros((8, 8, 3) if not folder.endswith("annot") else (8, 8), np.uint8)
        cv2.imwrite(str(Path("pairs", folder, "a.png")), image)
    source = "{class_path: segopt.data.PairedFolder, init_args: {root: pairs, class_names: [cell]}}"
    with pytest.raises(SystemExit, match=r"^error: num_classes is 1 \(class names: \['cell'\]\), but segmentation needs at "
                       r"least 2 classes; .*data\.source\.init_args\.class_names: \[background, cell\]"):
        main(["fit", f"--config={CONFIGS / 'amp.yaml'}", *TINY, f"--data.source={source}"])
    assert not Path("runs").exists()


@pytest.mark.parametrize(
    "flag,expected",
    [
        ("--trainer.max_epochs=0", "error: trainer.max_epochs is 0, so fit would train nothing and leave an empty run; "
         "set it to 1 or more (or -1 for no limit on epochs)."),
        ("--trainer.max_steps=0", "error: trainer.max_steps is 0, so fit would train nothing and leave an empty run; "
         "set it to 1 or more (or -1 for no limit on steps)."),
        ("--model.optimizer.init_args.lr=-0.1", "error: model.optimizer.init_args.lr is -0.1; a learning rate must be 0 "
         "or more, e.g. 3.0e-4."),
        ("--model.scheduler.init_args.max_lr=-0.1", "error: model.scheduler.init_args.max_lr is -0.1; the peak learning "
         "rate must be above 0, e.g. 3.0e-4 (or null to peak at each optimiser group's lr)"),
        ("--model.scheduler.init_args.max_lr=0", "error: model.scheduler.init_args.max_lr is 0.0; the peak learning "
         "rate must be above 0, e.g. 3.0e-4 (or null to peak at each optimiser group's lr)"),
    ],
)
def test_a_run_that_would_train_nothing_or_with_a_negative_rate_is_refused(in_tmp: Path, flag: str, expected: str) -> None:
    assert _refused(flag) == expected


def _refused(*args: str) -> str:
    """The one line a fit that fails before its first checkpoint ends with; it leaves no run folder."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={CONFIGS / 'amp.yaml'}", *TINY, *args])
    assert not Path("runs").exists()
    return str(exit_info.value.code)


# -- bad data met in a loader worker ---------------------------------------------------------------------------


def _paired_folder_with_a_bad_mask() -> str:
    """A PairedFolder of 4 pairs (3 classes) whose third validation mask holds the value 7 at one pixel
    (met by the validation loader, after the first training step)."""
    rng = np.random.default_rng(0)
    for folder in ("train", "trainannot", "val", "valannot"):
        Path("pairs", folder).mkdir(parents=True)
        for i in range(4):
            mask = folder.endswith("annot")
            image = rng.integers(0, 3 if mask else 255, (32, 32) if mask else (32, 32, 3), dtype=np.uint8)
            if folder == "valannot" and i == 2:
                image[0, 0] = 7
            cv2.imwrite(str(Path("pairs", folder, f"a{i}.png")), image)
    return "{class_path: segopt.data.PairedFolder, init_args: {root: pairs, class_names: [a, b, c]}}"


@pytest.mark.slow
def test_bad_data_met_in_a_loader_worker_is_the_same_one_line(in_tmp: Path) -> None:
    source = _paired_folder_with_a_bad_mask()
    messages = [_refused(f"--data.source={source}", f"--data.num_workers={n}") for n in (0, 1)]
    assert messages[0] == (
        "error: bad data: pairs/valannot/a2.png: mask value(s) ≥ num_classes=3 and not void: 7 (1 px); each is a "
        "class missing from class_names (add names so num_classes covers them) or a void label (add it to void, now [])"
    )
    assert messages[1] == messages[0]


def test_user_message_is_the_workers_own_message() -> None:
    from torch._utils import ExceptionWrapper

    from segopt.lightning.failsafe import user_message

    try:
        raise DataError(["a.png: first problem", "b.png: second\nline"])
    except DataError as error:
        original, wrapper = str(error), ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as raised:
        wrapper.reraise()
    assert "Traceback" in str(raised.value)
    assert user_message(raised.value) == original
    assert user_message(ValueError("plain")) == "plain"
