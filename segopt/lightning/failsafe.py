"""Failing safely: a loss that stays non-finite, weights that went NaN, running out of memory.

A failed run should say why and keep what it had: the guard below stops training on a
loss that stays NaN/inf and refuses to write a checkpoint whose weights are not finite,
so the newest checkpoint on disk is always one a resumed run can use. The out-of-memory
helpers turn an allocator failure into advice in terms of this project's config keys.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BatchSizeFinder, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric

_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss stayed non-finite or the weights became non-finite."""


@dataclass(frozen=True)
class _BadBatch:
    step: int
    epoch: int
    batch: int
    value: float


class NonFiniteLossGuard(pl.Callback):
    """Stops training when the loss is NaN/inf for ``patience`` consecutive batches.

    Under ``16-mixed`` on a GPU the gradient scaler already skips optimiser steps whose
    gradients overflowed; that shows in the gradients, not in the loss, and is left to
    the scaler. Only a loss value that is itself NaN/inf counts here.

    The losses are kept on the device and read back together every
    ``trainer.log_every_n_steps`` batches (when Lightning reads the logged values anyway),
    at each epoch end and before every checkpoint: reading a loss every batch would make
    the host wait for the device at every step. So a run stops at most
    ``log_every_n_steps - 1`` batches after the streak, naming the batches of the streak,
    and never after writing a checkpoint past it. In a distributed run a batch counts when
    the loss of any process is non-finite (one all-reduce per read), so every process
    stops at the same batch.

    Independently of the count, a checkpoint is never written while any weight is
    NaN/inf (without a gradient scaler one non-finite loss is enough to poison the
    weights): the save raises instead, and the checkpoints already on disk stay as they
    were.

    Args:
        patience: consecutive batches with a non-finite loss that stop the run.
    """

    def __init__(self, patience: int = 3) -> None:
        if patience < 1:
            raise ValueError(f"nonfinite_loss.patience is {patience}; it must be 1 or more (e.g. 3)")
        self.patience = patience
        self._step = 0
        self._streak: list[_BadBatch] = []
        # Batches not yet read back: (step, epoch, batch index) and the loss, still on the device.
        self._pending: list[tuple[int, int, int]] = []
        self._losses: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # The step TensorBoard shows for this batch's train/loss (the counter moves after the optimiser step).
        self._step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):  # training_step returned None: Lightning skipped the batch
            return
        self._losses.append(loss.detach().reshape(-1)[:1])
        self._pending.append((self._step, trainer.current_epoch, batch_idx))
        if len(self._pending) >= max(1, trainer.log_every_n_steps):
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        """Read back the losses since the last check (one host sync) and stop on a streak of ``patience``."""
        if not self._losses:
            return
        losses = torch.cat(self._losses).float()
        bad = trainer.strategy.reduce((~torch.isfinite(losses)).float(), reduce_op="sum") > 0
        pending, flags, values = self._pending, bad.tolist(), losses.tolist()
        self._pending, self._losses = [], []
        for (step, epoch, batch), is_bad, value in zip(pending, flags, values):
            if not is_bad:
                self._streak.clear()
                continue
            self._streak.append(_BadBatch(step, epoch, batch, value))
            if len(self._streak) >= self.patience:
                raise NonFiniteLossError(self._stop_message(trainer))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.check(trainer)  # a streak already complete stops the run before this save
        # Metric states are not weights, and some start non-finite (a running max starts at -inf).
        metrics = tuple(f"{name}." for name, m in pl_module.named_modules() if isinstance(m, Metric) and name)
        bad = [
            name
            for name, tensor in checkpoint.get("state_dict", {}).items()
            if isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not name.startswith(metrics)
            and not bool(torch.isfinite(tensor).all())
        ]
        if not bad:
            return
        since = f" since the non-finite loss at step {self._streak[0].step}" if self._streak else ""
        raise NonFiniteLossError(
            f"not writing a checkpoint at step {trainer.global_step} (epoch {trainer.current_epoch}): "
            f"{len(bad)} weight tensor(s) hold NaN/inf{since}, e.g. {', '.join(bad[:3])}. "
            f"{_newest_checkpoint_note(trainer)} {_CAUSES}"
        )

    def _stop_message(self, trainer: pl.Trainer) -> str:
        first, last = self._streak[0], self._streak[-1]
        values = ", ".join(f"{b.value:g}" for b in self._streak)
        if trainer.world_size > 1:
            values = f"rank {trainer.global_rank}: {values}"
        return (
            f"train loss was non-finite ({values}) for {len(self._streak)} consecutive batches, the last at "
            f"step {last.step} (epoch {last.epoch}, batch {last.batch}; the first at step {first.step}), so "
            f"training stopped before writing another checkpoint. {_newest_checkpoint_note(trainer)} {_CAUSES} "
            f"To tolerate longer streaks raise nonfinite_loss.patience (now {self.patience})."
        )


_CAUSES = (
    "Usual causes: a learning rate too high (model.optimizer.init_args.lr, model.scheduler.init_args.max_lr), "
    "exploding gradients (set trainer.gradient_clip_val, e.g. 1.0), float16 overflow (trainer.precision "
    "bf16-mixed or 32-true), or bad input (check the data with python -m segopt.check)."
)


def _newest_checkpoint_note(trainer: pl.Trainer) -> str:
    paths = {
        Path(p)
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, ModelCheckpoint)
        for p in (cb.best_model_path, cb.last_model_path)
        if p
    }
    existing = [p for p in paths if p.is_file()]
    if not existing:
        return "No checkpoint had been written yet."
    newest = max(existing, key=lambda p: p.stat().st_mtime)
    return f"The newest checkpoint, {newest}, was written before the failure and is intact (resume with --ckpt_path)."


# How torch re-raises an error met in a loader worker: the worker's traceback is the message.
_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback \(most recent call last\):\n")


def user_message(error: BaseException) -> str:
    """What the user is told about ``error``: its message, without the traceback of a loader worker.

    An error raised inside a ``DataLoader`` worker reaches the main process as a new error whose
    message is the worker's whole traceback; its last entry is the original message, as it reads
    with ``num_workers`` 0.
    """
    message = str(error)
    found = _WORKER_ERROR.search(message)
    if found is None:
        return message
    worker = message[found.end():]
    last = list(re.finditer(rf"^(?:\w+\.)*{found.group(1)}: ", worker, flags=re.MULTILINE))
    return worker[last[-1].end():].rstrip("\n") if last else message


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator failure (CUDA ``OutOfMemoryError``, or a CPU/MPS one)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in _OOM_MARKERS)


def out_of_memory_message(error: BaseException, trainer: pl.Trainer | None, subcommand: str) -> str:
    """What ran out, with which settings, and the config keys that reduce memory."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    key = "data.predict_batch_size" if subcommand == "predict" else "data.batch_size"
    batch = getattr(datamodule, key.split(".")[1], None)
    where = ""
    settings = []
    if trainer is not None:
        where = f" on rank {trainer.global_rank} ({trainer.strategy.root_device})"
        settings.append(f"trainer.precision {trainer.precision}")
        if subcommand == "fit":
            settings.append(f"trainer.accumulate_grad_batches {trainer.accumulate_grad_batches}")
    if batch is not None:
        settings.insert(0, f"{key} {batch}")
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lines = [
        f"out of memory during {subcommand}{where}" + (f" with {', '.join(settings)}" if settings else "") + ":",
        f"  {detail}",
        "No checkpoint was written after the failure; the ones already saved are as they were.",
        "To fit in memory:",
    ]
    smaller = max(1, batch // 2) if isinstance(batch, int) else None
    if subcommand == "fit":
        accumulate = 2 * trainer.accumulate_grad_batches if trainer is not None else 2
        lines.append(
            f"  - a smaller batch with gradient accumulation: --data.batch_size {smaller or 'N/2'} "
            f"--trainer.accumulate_grad_batches {accumulate} (the optimiser still sees as many images per step)"
        )
    else:
        lines.append(f"  - a smaller batch: --{key} {smaller or 'N/2'}")
    lines += [
        "  - mixed precision: --trainer.precision 16-mixed (or bf16-mixed on GPUs that support it), "
        "which about halves activation memory",
        "  - smaller inputs: data.train_size / data.eval_size, or data.resize_mode crop",
    ]
    if subcommand == "fit":
        lines.append(
            "  - let Lightning find the largest batch that fits (one device): "
            "--trainer.callbacks+=segopt.lightning.ScheduleAwareBatchSizeFinder"
        )
    return "\n".join(lines)


class ScheduleAwareBatchSizeFinder(BatchSizeFinder):
    """Lightning's :class:`BatchSizeFinder`, then the optimiser and schedule rebuilt for the batch found.

    The finder changes ``data.batch_size`` after the learning-rate schedule was sized to
    the run's optimiser steps; a OneCycle planned for the old number of steps would end
    early (or raise mid-run). Its trial steps run without the schedule, and afterwards
    ``configure_optimizers`` plans it again for the new batch size. A resumed fit keeps
    its batch size (no search). Single device only (Lightning's finder refuses distributed
    strategies).
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path:
            # The checkpoint's optimiser and schedule belong to the batch size it was trained with.
            rank_zero_info(
                f"segopt: resuming {trainer.ckpt_path}, so no batch-size search; data.batch_size stays "
                f"{getattr(trainer.datamodule, 'batch_size', '?')}"
            )
            return
        super().on_fit_start(trainer, pl_module)

    def scale_batch_size(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        # Without scheduler state in the finder's own checkpoint, restoring it does not
        # reload the schedule planned for the old batch size. Lightning has no public setter
        # for the strategy's schedulers; setup_optimizers below rebuilds them through the module.
        strategy.lr_scheduler_configs = []
        try:
            super().scale_batch_size(trainer, pl_module)
        finally:
            strategy.setup_optimizers(trainer)


class RunFolderGuard:
    """Puts the folders a command writes back as they were when it fails before saving a checkpoint.

    Any failure (bad data met while loading, a config value the framework checks late, a
    checkpoint that does not fit, a bug) should not leave a half-made ``version_N`` folder,
    an extra event file or a rewritten ``config.yaml`` behind: files this run added are
    removed, and small files it rewrote get their bytes back (with the modification times of
    those files and of the folders). Once
    this run has written or replaced a checkpoint, it made progress worth resuming and
    nothing is touched.
    """

    #: Small files rewritten in place (config.yaml, hparams.yaml) are kept to be put back.
    _KEEP_BYTES = 1 << 20

    def __init__(self, folders: list[Path]) -> None:
        self._created: list[Path] = []
        self._before: dict[Path, tuple[int, int]] = {}
        self._bytes: dict[Path, bytes] = {}
        self._dirs: dict[Path, int] = {}  # folder -> modification time
        self._folders = []
        for folder in dict.fromkeys(p.resolve() for p in folders):
            top = folder
            while not top.parent.exists():
                top = top.parent
            if not top.exists():
                self._created.append(top)
                self._dirs[top.parent] = top.parent.stat().st_mtime_ns
            self._folders.append(folder)
            for path in [folder, *folder.rglob("*")] if folder.is_dir() else []:
                if path.is_dir():
                    self._dirs[path] = path.stat().st_mtime_ns
                elif path.is_file():
                    stat = path.stat()
                    self._before[path] = (stat.st_size, stat.st_mtime_ns)
                    if stat.st_size <= self._KEEP_BYTES and path.suffix != ".ckpt" and "tfevents" not in path.name:
                        self._bytes[path] = path.read_bytes()

    def _now(self) -> dict[Path, tuple[int, int]]:
        files = {}
        for folder in self._folders:
            for path in folder.rglob("*") if folder.is_dir() else []:
                if path.is_file():
                    stat = path.stat()
                    files[path] = (stat.st_size, stat.st_mtime_ns)
        return files

    def restore(self) -> bool:
        """Undo this run's writes unless it saved a checkpoint; whether anything was undone."""
        now = self._now()
        if any(p.suffix == ".ckpt" and self._before.get(p) != s for p, s in now.items()):
            return False
        for path in now:
            if path not in self._before:
                path.unlink(missing_ok=True)
            elif path in self._bytes and now[path] != self._before[path]:
                path.write_bytes(self._bytes[path])
                os.utime(path, ns=(path.stat().st_atime_ns, self._before[path][1]))
        for top in self._created:
            shutil.rmtree(top, ignore_errors=True)
        for folder in self._folders:  # folders this run added inside existing ones
            for sub in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                if sub not in self._dirs and not any(sub.iterdir()):
                    sub.rmdir()
        for folder, mtime in self._dirs.items():  # adding and removing a file changed the folder's time
            if folder.is_dir() and folder.stat().st_mtime_ns != mtime:
                os.utime(folder, ns=(folder.stat().st_atime_ns, mtime))
        return True
