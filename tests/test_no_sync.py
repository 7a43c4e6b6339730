"""The training step never makes the host wait for the device.

On a GPU every read of a tensor's value on the host (``.item()``, ``bool(t)``, ``.tolist()``,
a boolean-mask index whose size depends on the data, ...) blocks the CPU until the GPU
has caught up, so it cannot queue the next step. A CPU has no such wait to observe, so the
test traps the calls themselves: any of them inside segopt's part of a training step
(the module's step, the batch hooks of the data module and of every segopt callback)
fails the test.
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

import segopt.lightning.callbacks
import segopt.lightning.failsafe
import segopt.lightning.prediction_writer  # imported so that its callbacks are among the subclasses
import segopt.models.finetune
from segopt.commands.cli import main
from segopt.lightning import SegDataModule
from segopt.lightning.module import SegModule
from tests.conftest import CONFIGS
from tests.test_losses import SHIPPED_LOSSES, build_shipped_loss, shipped_batch

#: Tensor methods that copy a value to the host (on a GPU: wait for the device).
SYNCING_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu", "nonzero", "unique")
#: torch functions whose result size or value is known only after the device has computed it.
SYNCING_FUNCTIONS = ("nonzero", "unique", "equal", "masked_select", "is_nonzero")
#: Per-batch hooks of the training loop.
BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)


class SyncTrap:
    """Records host reads of tensor values made while ``active`` is set."""

    def __init__(self) -> None:
        self.active = 0
        self.calls: list[str] = []

    def _record(self, name: str) -> None:
        if self.active:
            frames = traceback.extract_stack(limit=8)[:-2]
            self.calls.append(f"{name} at " + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)))

    def _trapping(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def trapped(*args: Any, **kwargs: Any) -> Any:
            self._record(name)
            return original(*args, **kwargs)

        return trapped

    def _trapping_getitem(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def getitem(tensor: torch.Tensor, index: Any) -> Any:
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                self._record("boolean-mask indexing")
            return original(tensor, index)

        return getitem

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in SYNCING_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._trapping(f"Tensor.{name}", getattr(torch.Tensor, name)))
        for name in SYNCING_FUNCTIONS:
            monkeypatch.setattr(torch, name, self._trapping(f"torch.{name}", getattr(torch, name)))
        monkeypatch.setattr(torch.Tensor, "__getitem__", self._trapping_getitem(torch.Tensor.__getitem__))

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def watch(self, monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
        original = cls.__dict__[name]

        @functools.wraps(original)
        def watched(*args: Any, **kwargs: Any) -> Any:
            with self.watching():
                return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, watched)


def _segopt_callbacks() -> list[type]:
    found, todo = [], [pl.Callback]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("segopt."):
                found.append(sub)
    return found


@pytest.fixture
def trap(monkeypatch: pytest.MonkeyPatch) -> SyncTrap:
    trap = SyncTrap()
    trap.install(monkeypatch)
    return trap


def test_the_trap_catches_each_kind_of_host_read(trap: SyncTrap) -> None:
    t = torch.tensor([1.0, 2.0])
    with trap.watching():
        t.sum().item()
        bool(t.any())
        t.tolist()
        float(t[0])
        t[t > 1]
        torch.nonzero(t)
    kinds = [call.split(" at ")[0] for call in trap.calls]
    assert kinds == [
        "Tensor.item", "Tensor.__bool__", "Tensor.tolist", "Tensor.__float__", "boolean-mask indexing", "torch.nonzero"
    ]  # fmt: skip
    trap.calls.clear()
    t.sum().item()  # not watched: not recorded
    assert trap.calls == []


@pytest.mark.parametrize("name", list(SHIPPED_LOSSES))
@pytest.mark.slow
def test_every_shipped_loss_reads_nothing_back_from_the_device(trap: SyncTrap, name: str) -> None:
    loss = build_shipped_loss(name)  # each config as the CLI resolves it; class weights filled in
    logits, target = shipped_batch()
    logits.requires_grad_()
    with trap.watching():
        loss(logits, target).backward()
    assert trap.calls == []
    assert logits.grad.abs().sum() > 0


@pytest.mark.slow
def test_training_step_reads_nothing_back_from_the_device(
    trap: SyncTrap, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    trap.watch(monkeypatch, SegModule, "training_step")
    trap.watch(monkeypatch, SegDataModule, "on_after_batch_transfer")
    callbacks = _segopt_callbacks()
    assert segopt.lightning.NonFiniteLossGuard in callbacks
    watched = []
    for cls in [SegModule, *callbacks]:
        for hook in BATCH_HOOKS:
            if hook in cls.__dict__:
                trap.watch(monkeypatch, cls, hook)
                watched.append(f"{cls.__name__}.{hook}")
    assert "NonFiniteLossGuard.on_train_batch_end" in watched
    # The default recipe (Dice+CE, mixed precision, normalised on the device), 2 epochs of
    # 3 steps; losses are read back on the logging interval, here longer than the run.
    cli = main(
        [
            "fit",
            f"--config={CONFIGS / 'amp.yaml'}",
            "--trainer.accelerator=cpu",
            "--trainer.max_epochs=2",
            "--trainer.log_every_n_steps=50",
            "--trainer.num_sanity_val_steps=0",
            "--data.source.init_args.size=32",
            "--data.source.init_args.num_train=12",
            "--data.source.init_args.num_val=4",
            "--data.batch_size=4",
            "--data.num_workers=0",
            "--data.normalize_on_device=true",
            "--model.backbone.init_args.base_channels=8",
            "--model.backbone.init_args.depth=2",
        ]
    )
    assert cli.trainer.global_step == 6
    assert trap.calls == []
