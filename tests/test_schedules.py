"""Learning-rate schedules: exact values, state round trips, and resume through a real Trainer."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from segopt.core.schedules import Cosine, OneCycle, Poly
from segopt.data.synthetic import SyntheticShapes
from segopt.lightning import SegDataModule
from segopt.lightning.module import SegModule
from segopt.models import UNet
from tests.conftest import quiet_trainer

BASE_LR = 0.1



def _optimizer(lr: float = BASE_LR) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(schedule: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimiser steps."""
    out = []
    for _ in range(steps):
        out.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.optimizer.step()
        schedule.step()
    return out


def test_cosine_with_warmup_hits_hand_computed_values() -> None:
    # 10 steps, 2 of warm-up from 1% of the lr, then a half cosine over steps 2..9.
    lrs = _lrs(Cosine(_optimizer(), 10, warmup_pct=0.2, warmup_start_factor=0.01, final_lr_factor=0.0), 10)
    expected = [0.01, 0.505] + [0.5 * (1 + math.cos(math.pi * i / 7)) for i in range(8)]
    assert lrs == pytest.approx([BASE_LR * f for f in expected])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_poly_hits_hand_computed_values() -> None:
    lrs = _lrs(Poly(_optimizer(), 5, power=2.0, final_lr_factor=0.1), 5)
    expected = [0.1 + 0.9 * (1 - i / 4) ** 2 for i in range(5)]
    assert lrs == pytest.approx([BASE_LR * f for f in expected])


@pytest.mark.slow
@pytest.mark.parametrize("max_lr,peak", [(None, BASE_LR), (0.3, 0.3)])
def test_onecycle_starts_peaks_and_ends_where_configured(max_lr: float | None, peak: float) -> None:
    lrs = _lrs(OneCycle(_optimizer(), 20, max_lr=max_lr, pct_start=0.25, div_factor=10, final_div_factor=100), 20)
    assert lrs[0] == pytest.approx(peak / 10)
    assert max(lrs) == pytest.approx(peak)
    assert lrs.index(max(lrs)) == 4  # the end of 25 % of 20 steps (OneCycleLR's step pct*T - 1)
    assert lrs[-1] == pytest.approx(peak / 10 / 100)


SCHEDULES = {
    "onecycle": partial(OneCycle, pct_start=0.3),
    "cosine": partial(Cosine, warmup_pct=0.1),
    "poly": partial(Poly, power=0.9, warmup_pct=0.1),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_state_dict_round_trip_continues_the_curve(name: str) -> None:
    make = SCHEDULES[name]
    whole = _lrs(make(_optimizer(), 30), 30)
    first = make(_optimizer(), 30)
    head = _lrs(first, 11)
    buffer = io.BytesIO()
    torch.save({"schedule": first.state_dict(), "optimizer": first.optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    # Lightning's order on resume: build both from the config, then restore their states.
    second = make(_optimizer(), 30)
    second.optimizer.load_state_dict(saved["optimizer"])
    second.load_state_dict(saved["schedule"])
    assert head + _lrs(second, 19) == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize("make", [OneCycle, Cosine, Poly])
@pytest.mark.parametrize("total", [0, float("inf")])
def test_a_run_without_length_is_a_clear_error(make, total: float) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="needs the run's length in optimiser steps"):
        make(_optimizer(), total)


# --- resume through the Trainer -----------------------------------------------------------

TRAIN_SAMPLES, BATCH = 32, 4  # 8 batches per epoch


class RecordLR(pl.Callback):
    """The learning rate each optimiser step trains with."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:  # noqa: ANN001
        self.lrs.append(optimizer.param_groups[0]["lr"])


class Interrupted(Exception):
    """Stands in for a crash or Ctrl+C after the checkpoint was written."""


class StopAfter(pl.Callback):
    """Save a checkpoint after ``steps`` optimiser steps and stop, as an interrupted run would."""

    def __init__(self, steps: int, path: Path) -> None:
        self.steps, self.path = steps, path

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:  # noqa: ANN002
        if trainer.global_step == self.steps:
            trainer.save_checkpoint(self.path)
            raise Interrupted


def _fit(
    root: Path,
    max_epochs: int,
    callbacks: list[pl.Callback],
    ckpt_path: Path | None = None,
    accumulate: int = 1,
    num_train: int = TRAIN_SAMPLES,
    scheduler: Callable[..., Any] = partial(OneCycle, max_lr=1e-2, pct_start=0.3),  # noqa: B008 (never mutated)
) -> tuple[pl.Trainer, SegModule]:
    dm = SegDataModule(source=SyntheticShapes(size=32, num_train=num_train, num_val=4), batch_size=BATCH, num_workers=0)
    model = SegModule(
        backbone=partial(UNet, base_channels=4, depth=1), num_classes=5, class_names=dm.class_names,
        scheduler=scheduler,
    )
    trainer = quiet_trainer(
        max_epochs=max_epochs, accumulate_grad_batches=accumulate, enable_checkpointing=True, num_sanity_val_steps=0,
        callbacks=callbacks, default_root_dir=root,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("stop_after", [8, 13], ids=["epoch-end", "mid-epoch"])
@pytest.mark.slow
def test_resumed_run_follows_the_uninterrupted_lr_curve(tmp_path: Path, stop_after: int) -> None:
    whole = RecordLR()
    _fit(tmp_path / "whole", 3, [whole])
    assert len(whole.lrs) == 24

    first, ckpt = RecordLR(), tmp_path / "stop.ckpt"
    with pytest.raises(Interrupted):
        _fit(tmp_path / "run", 3, [first, StopAfter(stop_after, ckpt)])
    second = RecordLR()
    trainer, _ = _fit(tmp_path / "run", 3, [second], ckpt_path=ckpt)

    assert len(first.lrs) == stop_after
    assert first.lrs + second.lrs == pytest.approx(whole.lrs, rel=1e-12)
    assert trainer.global_step == 24


class StopAtEpoch(pl.Callback):
    """Interrupt when epoch ``epoch`` starts (after the previous epoch's validation and checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise Interrupted


class BestAtFirstStep(pl.Callback):
    """``val/mIoU_best`` as the first training step of the (resumed) run sees it."""

    best: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: SegModule, *args: object) -> None:
        if self.best is None:
            self.best = pl_module.val_miou_best.compute().item()


@pytest.mark.slow
def test_resume_keeps_the_best_miou(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(Interrupted):
        _fit(tmp_path, 2, [checkpoint, StopAtEpoch(1)])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    best = saved["state_dict"]["val_miou_best.max_value"].item()
    assert best > 0
    seen = BestAtFirstStep()
    _fit(tmp_path, 2, [seen], ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert seen.best == pytest.approx(best)


@pytest.mark.slow
def test_onecycle_with_accumulation_ends_exactly_at_its_last_step(tmp_path: Path) -> None:
    record = RecordLR()
    # 28 samples / batch 4 = 7 batches, accumulated by 2 -> 4 optimiser steps per epoch
    # (the last one on the epoch's odd batch), 8 over 2 epochs.
    onecycle = partial(OneCycle, max_lr=1e-2, div_factor=25.0, final_div_factor=1e4)
    trainer, model = _fit(tmp_path, 2, [record], accumulate=2, num_train=28, scheduler=onecycle)
    assert trainer.global_step == 8
    assert len(record.lrs) == 8
    assert record.lrs[0] == pytest.approx(1e-2 / 25)
    assert record.lrs[-1] == pytest.approx(1e-2 / 25 / 1e4)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 8


@pytest.mark.slow
def test_resume_into_more_epochs_stops_before_training_with_advice(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(tmp_path, 2, [checkpoint])
    record = RecordLR()
    with pytest.raises(ValueError) as error:
        _fit(tmp_path, 4, [record], ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    message = str(error.value)
    assert "planned for 16 optimiser steps (max_epochs 2 at 8 optimiser steps per epoch)" in message
    assert "this run's trainer settings give 32 (max_epochs 4" in message
    assert "resume with the settings it was started with" in message
    assert "Tried to step" not in message
    assert record.lrs == []


@pytest.mark.parametrize("make", [Cosine, partial(Poly, power=0.9)], ids=["cosine", "poly"])
@pytest.mark.parametrize("total,warmup_pct", [(10, 0.8), (2, 0.0), (1, 0.0), (20, 0.9)])
def test_warmup_decay_schedules_end_at_the_final_rate(make, total: int, warmup_pct: float) -> None:  # noqa: ANN001
    lrs = _lrs(make(_optimizer(), total, warmup_pct=warmup_pct, final_lr_factor=0.1), total)
    assert lrs[-1] == pytest.approx(BASE_LR * 0.1)
    if total > 1:
        assert max(lrs) == pytest.approx(BASE_LR)


@pytest.mark.parametrize("make", [Cosine, Poly], ids=["cosine", "poly"])
@pytest.mark.parametrize("total,warmup_pct", [(10, 0.95), (10, 0.9), (3, 0.5)])
def test_a_warmup_that_leaves_no_decay_is_refused(make, total: int, warmup_pct: float) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=r"model.scheduler.init_args.warmup_pct is .* leave no step to decay"):
        make(_optimizer(), total, warmup_pct=warmup_pct)


@pytest.mark.parametrize("total,pct_start,three_phase", [(10, 0.1, False), (4, 0.25, True), (5, 0.2, False)])
def test_onecycle_one_step_warmup_is_refused_not_a_zero_division(total: int, pct_start: float, three_phase: bool) -> None:
    with pytest.raises(ValueError, match=r"model.scheduler.init_args.pct_start is .* at least"):
        OneCycle(_optimizer(), total, pct_start=pct_start, three_phase=three_phase)


def test_onecycle_two_step_warmup_runs_to_its_end() -> None:
    lrs = _lrs(OneCycle(_optimizer(), 10, pct_start=0.2, div_factor=10, final_div_factor=100), 10)
    assert lrs[0] == pytest.approx(BASE_LR / 10) and lrs[1] == pytest.approx(BASE_LR)
    assert lrs[-1] == pytest.approx(BASE_LR / 1000)


@pytest.mark.parametrize(
    "settings,expected",
    [
        (dict(max_lr=0.0), r"^model\.scheduler\.init_args\.max_lr is 0\.0; the peak learning rate must be above 0"),
        (dict(max_lr=-0.1), r"^model\.scheduler\.init_args\.max_lr is -0\.1; the peak learning rate must be above 0"),
        (dict(div_factor=0.0), r"^model\.scheduler\.init_args\.div_factor is 0\.0; it divides the learning rate and "
         r"must be above 0 \(OneCycle's default is 25\)"),
        (dict(final_div_factor=-1.0), r"^model\.scheduler\.init_args\.final_div_factor is -1\.0; it divides the "
         r"learning rate and must be above 0 \(OneCycle's default is 10000\)"),
    ],
)
def test_onecycle_refuses_rates_that_are_not_positive(settings: dict[str, float], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        OneCycle(_optimizer(), 10, **settings)


@pytest.mark.parametrize(
    "make,settings,expected",
    [
        (Cosine, dict(final_lr_factor=-0.5), r"^model\.scheduler\.init_args\.final_lr_factor is -0\.5; it is a fraction "
         r"of the optimiser's lr and must be in \[0, 1\]"),
        (Poly, dict(warmup_start_factor=2.0), r"^model\.scheduler\.init_args\.warmup_start_factor is 2\.0; it is a "
         r"fraction of the optimiser's lr and must be in \[0, 1\]"),
        (Cosine, dict(warmup_pct=-0.1), r"^model\.scheduler\.init_args\.warmup_pct is -0\.1; Cosine's warm-up is a "
         r"fraction of the run in \[0, 1\)"),
        (Poly, dict(power=0.0), r"^model\.scheduler\.init_args\.power is 0\.0; Poly's exponent must be above 0"),
    ],
)
def test_warmup_decay_schedules_name_the_key_of_a_rate_out_of_range(make, settings: dict[str, float], expected: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=expected):
        make(_optimizer(), 10, **settings)
