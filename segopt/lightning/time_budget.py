"""TimeBudget: a fit given N minutes plans its epochs and learning-rate schedule to fit them.

``trainer.max_time`` stops a run when its time is up, wherever the schedule is: a OneCycle
or cosine curve cut mid-way ends at a high learning rate, which costs accuracy. TimeBudget
instead measures the epochs as they run (training, validation and checkpoints included),
sets the number of epochs that fit in the budget, and re-plans the schedule to that many
optimiser steps, so the curve completes as the budget runs out.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

#: The clock budgets are measured with (a module attribute so tests can simulate time).
_now = time.monotonic


@runtime_checkable
class Replannable(Protocol):
    """A LightningModule whose schedule TimeBudget can rebuild for another length (SegModule is one)."""

    def build_scheduler(self, optimizer: Optimizer, total_steps: int) -> LRScheduler | None:
        """The module's schedule for ``total_steps`` optimiser steps (None: a constant rate)."""
        ...


class TimeBudget(pl.Callback):
    """Plan a fit to end, with its schedule complete, within ``minutes`` of wall time.

    The clock starts when the fit is set up (model build and the sanity check count). After
    every epoch the epochs still affordable are estimated from the mean duration of the last
    ``window`` epochs (start to start, so validation and checkpoints count; the first epoch,
    which carries warm-up costs, is left out once later ones are measured). When that changes
    the total, ``trainer.max_epochs`` is set to it (never above the configured value, which
    stays an upper bound) and the module's schedule is rebuilt for that many optimiser steps
    and advanced to the current step. Re-planning every epoch, rather than once from the first
    ones, keeps the end on the budget when the machine's speed drifts (other jobs, thermal
    limits); late changes move the end of the curve by an epoch or so.

    With ``trainer.check_val_every_n_epoch`` k above 1, the estimate averages whole cycles of k
    epochs, and the last planned epoch validates whatever k (Lightning alone validates only
    every k-th): the final score and checkpoint are of the weights the run ends with.

    The plan and the time already spent are saved in checkpoints: a resumed run counts the
    time it trained before the interruption (not the time lost in between) against the budget.

    Args:
        minutes: the wall-clock budget of the whole fit.
        window: how many of the latest epochs the per-epoch estimate averages.
        margin: fraction of the budget held back for the final checkpoint and the spread
            between epochs.
    """

    def __init__(self, minutes: float, window: int = 3, margin: float = 0.01) -> None:
        if not minutes > 0:
            raise ValueError(f"TimeBudget minutes is {minutes}; give a positive number of minutes, e.g. 60")
        if window < 1:
            raise ValueError(f"TimeBudget window is {window}; it must be 1 or more epochs")
        if not 0 <= margin < 1:
            raise ValueError(f"TimeBudget margin is {margin}; it must be a fraction in [0, 1), e.g. 0.01")
        self.minutes = minutes
        self.window = window
        self.margin = margin
        self.planned_epochs: int | None = None
        self._spent_before = 0.0  # seconds trained before a resume
        self._start = 0.0
        self._epoch_starts: list[float] = []
        self._upper_bound: int | None = None
        self._every = 1  # the configured check_val_every_n_epoch
        self._validated = False  # whether the current epoch has validated

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    def elapsed(self) -> float:
        """Seconds of the budget spent so far, including those before a resume."""
        return _now() - self._start

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, Replannable):
            raise TypeError(
                f"TimeBudget re-plans the schedule through the module's build_scheduler(optimizer, total_steps), "
                f"which {type(pl_module).__name__} does not have; use segopt.lightning.SegModule or add that method"
            )
        self._start = _now()
        self._every = trainer.check_val_every_n_epoch or 1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A checkpoint, if any, was restored by now: count the time it had trained.
        self._start = min(self._start, _now() - self._spent_before)
        self._upper_bound = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        if self.planned_epochs is not None:  # resumed: follow the plan the run was following
            trainer.fit_loop.max_epochs = self.planned_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_starts.append(_now())
        self._validated = False
        if self._every > 1:  # the last planned epoch validates, the others every k-th
            last = self.planned_epochs is not None and trainer.current_epoch + 1 >= self.planned_epochs
            trainer.check_val_every_n_epoch = 1 if last else self._every

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = _now()
        # Validation of this epoch has run by now (it precedes this hook); its checkpoint has
        # not, but the earlier epochs' durations (start to start) include theirs.
        durations = [b - a for a, b in zip(self._epoch_starts, [*self._epoch_starts[1:], now])]
        if len(durations) > 1:
            durations = durations[1:]
        # Validating every k epochs: average whole cycles of k.
        window = -(-self.window // self._every) * self._every
        per_epoch = sum(durations[-window:]) / len(durations[-window:])
        left = self.seconds * (1 - self.margin) - (now - self._start)
        done = trainer.current_epoch + 1
        epochs = done + max(0, math.floor(left / per_epoch))
        if self._upper_bound is not None:
            epochs = min(epochs, self._upper_bound)
        if epochs <= done and not self._validated and (self._upper_bound is None or done < self._upper_bound):
            epochs = done + 1  # the budget ran out early, on an epoch that did not validate: one more that does
        if epochs != self.planned_epochs:
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
            f"segopt: time budget {self.minutes:g} min, {self.elapsed() / 60:.1f} spent: "
            f"{per_epoch:.1f} s per epoch, planned {epochs} epochs ({total_steps} optimiser steps"
            f"{', schedule re-planned' if replanned else ''})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"planned_epochs": self.planned_epochs, "elapsed_s": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_epochs = state_dict.get("planned_epochs")
        self._spent_before = float(state_dict.get("elapsed_s", 0.0))
