"""Learning-rate schedules whose length is the Trainer's number of optimiser steps.

Each is built as ``schedule(optimizer, total_steps)`` by :class:`segopt.module.SegModule`,
which takes ``total_steps`` from ``trainer.estimated_stepping_batches`` (so gradient
accumulation and ``max_epochs`` are accounted for) and steps it every optimiser step.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR


class OneCycle(OneCycleLR):
    """OneCycleLR (the seed's schedule) with its length given by the Trainer.

    Args:
        optimizer: the wrapped optimiser.
        total_steps: number of optimiser steps in the whole run.
        max_lr: peak learning rate.
        pct_start: fraction of the run spent warming up.
        div_factor: initial lr = max_lr / div_factor.
        final_div_factor: final lr = initial lr / final_div_factor.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        max_lr: float = 3e-4,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        super().__init__(
            optimizer,
            # A group's ``lr_scale`` (e.g. a pretrained encoder's) scales its whole cycle.
            max_lr=[max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )


class Poly(LambdaLR):
    """Polynomial decay ``lr * (1 - step / total_steps) ** power`` (DeepLab's schedule)."""

    def __init__(self, optimizer: Optimizer, total_steps: int, power: float = 0.9) -> None:
        self.total_steps, self.power = total_steps, power
        super().__init__(optimizer, lambda step: max(0.0, 1 - step / total_steps) ** power)
