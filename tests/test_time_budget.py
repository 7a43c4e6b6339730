"""TimeBudget: the planned epochs fit the budget, the schedule completes, a resume keeps the plan.

Time is simulated: a fake clock advances one second per optimiser step, so the plans are exact.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import segopt.lightning.time_budget as time_budget
from segopt.core.schedules import OneCycle
from segopt.data.synthetic import SyntheticShapes
from segopt.lightning import SegDataModule
from segopt.lightning.module import SegModule
from segopt.lightning.time_budget import TimeBudget
from segopt.models import UNet
from tests.test_schedules import Interrupted, RecordLR, StopAtEpoch

MAX_LR, DIV, FINAL_DIV = 1e-2, 25.0, 1e4


class StepClock:
    """``time.monotonic`` replacement: seconds = optimiser steps taken by the watched trainer."""

    trainer: pl.Trainer | None = None

    def __call__(self) -> float:
        return float(self.trainer.global_step) if self.trainer is not None else 0.0


def _fit(
    root: Path,
    budget: TimeBudget,
    callbacks: list[pl.Callback],
    monkeypatch: pytest.MonkeyPatch,
    max_epochs: int = 100,
    clock: StepClock | None = None,
    val_every: int = 1,
    **fit_kwargs,
) -> pl.Trainer:
    # A seed left by an earlier test's seed_everything would change the data order.
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    torch.manual_seed(0)
    clock = clock or StepClock()
    monkeypatch.setattr(time_budget, "_now", clock)
    dm = SegDataModule(source=SyntheticShapes(size=32, num_train=16, num_val=4), batch_size=4, num_workers=0)
    model = SegModule(
        num_classes=dm.num_classes,
        backbone=partial(UNet, base_channels=4, depth=2),
        scheduler=partial(OneCycle, max_lr=MAX_LR, div_factor=DIV, final_div_factor=FINAL_DIV),
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        callbacks=[budget, *callbacks],
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=val_every,
    )
    clock.trainer = trainer
    trainer.fit(model, dm, **fit_kwargs)
    return trainer


@pytest.mark.slow
def test_budget_plans_epochs_that_fit_and_completes_the_schedule(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    record = RecordLR()
    # 30 s at 4 s per epoch: after epoch 0 (4 s used) 26 s buy 6 more -> 7 epochs, confirmed after epoch 1.
    trainer = _fit(tmp_path, TimeBudget(minutes=0.5, margin=0.0), [record], monkeypatch)
    assert trainer.current_epoch == 7
    assert trainer.global_step == 28
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 28
    # The re-planned curve from step 8 on is the one a 28-step OneCycle follows, ending at its final rate.
    fresh = OneCycle(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]), 28, max_lr=MAX_LR,
                     div_factor=DIV, final_div_factor=FINAL_DIV)
    expected = []
    for _ in range(28):
        expected.append(fresh.optimizer.param_groups[0]["lr"])
        fresh.optimizer.step()
        fresh.step()
    assert record.lrs[8:] == pytest.approx(expected[8:], rel=1e-9)
    assert record.lrs[-1] == pytest.approx(MAX_LR / DIV / FINAL_DIV)


class ValidatedEpochs(pl.Callback):
    """The epochs whose validation ran."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)


def test_budget_validating_every_k_epochs_still_validates_the_last_epoch(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    validated = ValidatedEpochs()
    # 30 s at 4 s per epoch buys 7 epochs; validating every 3rd, epochs 3 and 6 validate, and so does the last, 7.
    budget = TimeBudget(minutes=0.5, margin=0.0)
    trainer = _fit(tmp_path, budget, [validated], monkeypatch, val_every=3)
    assert budget.planned_epochs == 7
    assert trainer.current_epoch == 7
    assert validated.epochs == [2, 5, 6]
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 28


class SlowingClock(StepClock):
    """One second per step for the first 12 steps (3 epochs), two seconds per step after."""

    def __call__(self) -> float:
        steps = super().__call__()
        return steps if steps <= 12 else 12 + 2 * (steps - 12)


@pytest.mark.slow
def test_budget_replans_when_the_machine_slows_down_and_still_ends_on_time(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    record, clock = RecordLR(), SlowingClock()
    budget = TimeBudget(minutes=1, margin=0.0)
    # Planned from the first epochs alone (4 s each) the run would take 15 epochs and 108 s. Re-planned
    # every epoch: 11 after the first slow epoch, then 9, which end exactly at 60 s (3 x 4 s + 6 x 8 s).
    trainer = _fit(tmp_path, budget, [record], monkeypatch, clock=clock)
    assert trainer.current_epoch == 9
    assert clock() == 60.0
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 36
    assert record.lrs[-1] == pytest.approx(MAX_LR / DIV / FINAL_DIV)


@pytest.mark.slow
def test_budget_never_exceeds_the_configured_max_epochs(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    # 10 minutes would buy 150 epochs of 4 s; the configured 9 is the ceiling.
    budget = TimeBudget(minutes=10, margin=0.0)
    trainer = _fit(tmp_path, budget, [], monkeypatch, max_epochs=9)
    assert budget.planned_epochs == 9
    assert trainer.current_epoch == 9


@pytest.mark.slow
def test_resumed_budget_run_keeps_its_plan_and_curve(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    whole = RecordLR()
    _fit(tmp_path / "whole", TimeBudget(minutes=0.5, margin=0.0), [whole], monkeypatch)

    first = RecordLR()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(Interrupted):
        _fit(tmp_path / "run", TimeBudget(minutes=0.5, margin=0.0), [first, checkpoint, StopAtEpoch(4)], monkeypatch)
    second = RecordLR()
    budget = TimeBudget(minutes=0.5, margin=0.0)
    trainer = _fit(tmp_path / "run", budget, [second], monkeypatch, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert budget.planned_epochs == 7
    assert trainer.global_step == 28
    assert first.lrs + second.lrs == pytest.approx(whole.lrs, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs,key",
    [({"minutes": 0}, "minutes is 0"), ({"minutes": 5, "window": 0}, "window is 0"),
     ({"minutes": 5, "margin": 1.0}, "margin is 1.0")],
)
def test_bad_settings_are_named(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        TimeBudget(**kwargs)
