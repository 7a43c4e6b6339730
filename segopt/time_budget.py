"""TimeBudget: a fit given N minutes plans its epochs and learning-rate schedule to fit them.

``trainer.max_time`` stops a run when its time is up, wherever the schedule is: a OneCycle
or cosine curve cut mid-way ends at a high learning rate, which costs accuracy. TimeBudget
instead measures the first epochs (training, validation and checkpoints included), sets
the number of epochs that fit in the budget, and re-plans the schedule to that many
optimiser steps, so the curve completes as the budget runs out.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

#: The clock budgets are measured with (a module attribute so tests can simulate time).
_now = time.monotonic


class TimeBudget(pl.Callback):
    """Plan a fit to end, with its schedule complete, within ``minutes`` of wall time.

    The clock starts when the fit is set up (data caching, model build and the sanity
    check count). After each of the first ``calibration_epochs`` epochs, the epochs still
    affordable are estimated from the last epoch's duration, ``trainer.max_epochs`` is set
    to the total (never above the configured value, which stays an upper bound) and the
    module's schedule is rebuilt for that many optimiser steps and advanced to the current
    step. Until then the schedule follows the configured ``max_epochs``; with a warm-up
    the early steps differ little either way.

    The plan is saved in checkpoints: a resumed run keeps it (and so the curve it was
    following) instead of planning again.

    Args:
        minutes: the wall-clock budget of the whole fit.
        calibration_epochs: epochs after which the plan is (re)made; the last one decides.
        margin: fraction of the budget held back for the final checkpoint and the spread
            between epochs.
    """

    def __init__(self, minutes: float, calibration_epochs: int = 2, margin: float = 0.01) -> None:
        if not minutes > 0:
            raise ValueError(f"TimeBudget minutes is {minutes}; give a positive number of minutes, e.g. 60")
        if calibration_epochs < 1:
            raise ValueError(f"TimeBudget calibration_epochs is {calibration_epochs}; it must be 1 or more")
        if not 0 <= margin < 1:
            raise ValueError(f"TimeBudget margin is {margin}; it must be a fraction in [0, 1), e.g. 0.01")
        self.minutes = minutes
        self.calibration_epochs = calibration_epochs
        self.margin = margin
        self.planned_epochs: int | None = None
        self._start = 0.0
        self._epoch_start = 0.0
        self._upper_bound: int | None = None

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not callable(getattr(pl_module, "build_scheduler", None)):
            raise TypeError(
                f"TimeBudget re-plans the schedule through the module's build_scheduler(optimizer, total_steps), "
                f"which {type(pl_module).__name__} does not have; use segopt.module.SegModule or add that method"
            )
        self._start = _now()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._upper_bound = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        if self.planned_epochs is not None:  # resumed: keep the plan the run was following
            trainer.fit_loop.max_epochs = self.planned_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = _now()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self.planned_epochs is not None and done > self.calibration_epochs:
            return
        now = _now()
        # Validation and checkpointing of this epoch have run by now (they precede this hook).
        per_epoch = now - self._epoch_start
        left = self.seconds * (1 - self.margin) - (now - self._start)
        epochs = done + max(0, math.floor(left / per_epoch))
        if self._upper_bound is not None:
            epochs = min(epochs, self._upper_bound)
        self._plan(trainer, pl_module, epochs, per_epoch)

    def _plan(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epochs: int, per_epoch: float) -> None:
        self.planned_epochs = epochs
        trainer.fit_loop.max_epochs = epochs
        total_steps = int(trainer.estimated_stepping_batches)
        replanned = 0
        for config in trainer.lr_scheduler_configs:
            if config.interval != "step":
                continue
            scheduler = pl_module.build_scheduler(config.scheduler.optimizer, total_steps)
            if scheduler is None:
                continue
            for _ in range(trainer.global_step):
                scheduler.step()
            config.scheduler = scheduler
            replanned += 1
        rank_zero_info(
            f"segopt: time budget {self.minutes:g} min: {per_epoch:.1f} s per epoch measured, "
            f"planned {epochs} epochs ({total_steps} optimiser steps"
            f"{', schedule re-planned' if replanned else ''})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"planned_epochs": self.planned_epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_epochs = state_dict.get("planned_epochs")
