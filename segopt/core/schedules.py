"""Learning-rate schedules whose length is the Trainer's number of optimiser steps.

Each is built as ``schedule(optimizer, total_steps)`` by :class:`segopt.lightning.SegModule`,
which takes ``total_steps`` from ``trainer.estimated_stepping_batches`` (so gradient
accumulation, ``max_epochs`` and ``max_steps`` are accounted for) and steps it after every
optimiser step. Step ``s`` (0-based) of the run trains with ``lr(s)``; the last optimiser
step, ``total_steps - 1``, trains with the schedule's final learning rate.

All are closed-form in the step count and keep their settings in ``state_dict()``, so a
checkpoint restores the exact position on the curve.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

from segopt.models.contracts import lr_scale


def _check_total_steps(name: str, total_steps: float) -> int:
    if not math.isfinite(total_steps) or total_steps < 1:
        raise ValueError(
            f"{name} needs the run's length in optimiser steps but got total_steps={total_steps}; "
            "set trainer.max_epochs (not -1) or trainer.max_steps, and check the training set is not empty"
        )
    return int(total_steps)


def _check_phases(total_steps: int, pct_start: float, three_phase: bool) -> None:
    """Refuse a warm-up of exactly one step, which torch's OneCycleLR divides by zero length."""
    warmup = float(pct_start * total_steps)
    empty = warmup == 1.0 or (three_phase and 2 * warmup - 2 == total_steps - 1)
    if empty:
        ok = 2.0 / total_steps
        raise ValueError(
            f"model.scheduler.init_args.pct_start is {pct_start}, which gives OneCycle a warm-up of exactly "
            f"{warmup:g} optimiser step of the run's {total_steps}, a phase of zero length. Set pct_start to 0 "
            f"(no warm-up) or at least {ok:.4g} (two steps), or change the run's length."
        )


def _check_rates(max_lr: float | None, div_factor: float, final_div_factor: float) -> None:
    """Refuse settings that give OneCycle a learning rate that is not positive (or infinite)."""
    if max_lr is not None and not max_lr > 0:
        raise ValueError(
            f"model.scheduler.init_args.max_lr is {max_lr}; the peak learning rate must be above 0, e.g. 3.0e-4 "
            "(or null to peak at each optimiser group's lr)"
        )
    for key, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
        if not value > 0:
            raise ValueError(
                f"model.scheduler.init_args.{key} is {value}; it divides the learning rate and must be above 0 "
                f"(OneCycle's default is {25.0 if key == 'div_factor' else 1e4:g})"
            )


class OneCycle(OneCycleLR):
    """OneCycleLR (the tutorial's schedule) with its length given by the Trainer.

    Warm up from ``max_lr / div_factor`` to ``max_lr`` over ``pct_start`` of the run, then
    anneal to ``max_lr / div_factor / final_div_factor``, reached at the last step.

    Args:
        optimizer: the wrapped optimiser.
        total_steps: number of optimiser steps in the whole run.
        max_lr: peak learning rate (times a group's ``lr_scale``); None takes each
            group's ``lr`` from the optimiser.
        pct_start: fraction of the run spent warming up.
        div_factor: initial lr = max_lr / div_factor.
        final_div_factor: final lr = initial lr / final_div_factor.
        anneal_strategy: "cos" or "linear".
        cycle_momentum: cycle momentum (Adam's beta1) inversely to the learning rate.
        three_phase: add a third phase that anneals to the final lr after returning to
            the initial one (fast.ai's variant).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        max_lr: float | None = None,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        three_phase: bool = False,
    ) -> None:
        total_steps = _check_total_steps("OneCycle", total_steps)
        _check_rates(max_lr, div_factor, final_div_factor)
        _check_phases(total_steps, pct_start, three_phase)
        # Without max_lr each group peaks at its own lr; with it, a group's ``lr_scale``
        # (e.g. a pretrained encoder's) scales that group's whole cycle.
        if max_lr is None:
            peaks = [group["lr"] for group in optimizer.param_groups]
        else:
            peaks = [max_lr * lr_scale(group) for group in optimizer.param_groups]
        super().__init__(
            optimizer,
            max_lr=peaks,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            anneal_strategy=anneal_strategy,  # type: ignore[arg-type]
            cycle_momentum=cycle_momentum,
            three_phase=three_phase,
        )


class _WarmupDecay(LRScheduler):
    """Linear warm-up from ``lr * warmup_start_factor`` to ``lr``, then a decay to ``lr * final_lr_factor``.

    ``lr`` is each parameter group's learning rate from the optimiser config.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_pct: float = 0.0,
        warmup_start_factor: float = 0.01,
        final_lr_factor: float = 0.0,
    ) -> None:
        name = type(self).__name__
        self.total_steps = _check_total_steps(name, total_steps)
        if not 0 <= warmup_pct < 1:
            raise ValueError(
                f"model.scheduler.init_args.warmup_pct is {warmup_pct}; {name}'s warm-up is a fraction of the run "
                "in [0, 1), e.g. 0.05 (0: none)"
            )
        for key, value in (("final_lr_factor", final_lr_factor), ("warmup_start_factor", warmup_start_factor)):
            if not 0 <= value <= 1:
                raise ValueError(
                    f"model.scheduler.init_args.{key} is {value}; it is a fraction of the optimiser's lr and must be "
                    "in [0, 1] (a rate outside would be negative or above the peak)"
                )
        self.warmup_steps = int(round(warmup_pct * self.total_steps))
        if self.warmup_steps > 0 and self.warmup_steps > self.total_steps - 2:
            # The last step must train with the final rate, after the peak.
            raise ValueError(
                f"model.scheduler.init_args.warmup_pct is {warmup_pct}: {self.warmup_steps} warm-up steps of a "
                f"{self.total_steps}-step run leave no step to decay to final_lr_factor. Use warmup_pct at most "
                f"{max(0, self.total_steps - 2) / self.total_steps:.4g}, or train longer."
            )
        self.warmup_start_factor = warmup_start_factor
        self.final_lr_factor = final_lr_factor
        super().__init__(optimizer)

    def _decay(self, t: float) -> float:
        """Decay from 1 at t=0 to 0 at t=1."""
        raise NotImplementedError

    def factor(self, step: int) -> float:
        """Multiplier of the base lr at optimiser step ``step`` (held at its end value past the end)."""
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * step / self.warmup_steps
        span = self.total_steps - 1 - self.warmup_steps
        t = 1.0 if span <= 0 else min(1.0, (step - self.warmup_steps) / span)
        return self.final_lr_factor + (1 - self.final_lr_factor) * self._decay(t)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


class Cosine(_WarmupDecay):
    """Cosine decay, with an optional linear warm-up (``warmup_pct`` of the run).

    Args:
        optimizer: the wrapped optimiser; its ``lr`` is the peak.
        total_steps: number of optimiser steps in the whole run.
        warmup_pct: fraction of the run spent warming up (0: none).
        warmup_start_factor: warm-up starts at ``lr * warmup_start_factor``.
        final_lr_factor: the last step trains with ``lr * final_lr_factor``.
    """

    def _decay(self, t: float) -> float:
        return 0.5 * (1 + math.cos(math.pi * t))


class Poly(_WarmupDecay):
    """Polynomial decay ``(1 - t) ** power`` (DeepLab's schedule), optional linear warm-up.

    Args:
        optimizer: the wrapped optimiser; its ``lr`` is the peak.
        total_steps: number of optimiser steps in the whole run.
        power: exponent of the decay.
        warmup_pct: fraction of the run spent warming up (0: none).
        warmup_start_factor: warm-up starts at ``lr * warmup_start_factor``.
        final_lr_factor: the last step trains with ``lr * final_lr_factor``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        power: float = 0.9,
        warmup_pct: float = 0.0,
        warmup_start_factor: float = 0.01,
        final_lr_factor: float = 0.0,
    ) -> None:
        if power <= 0:
            raise ValueError(f"model.scheduler.init_args.power is {power}; Poly's exponent must be above 0, e.g. 0.9")
        self.power = power
        super().__init__(optimizer, total_steps, warmup_pct, warmup_start_factor, final_lr_factor)

    def _decay(self, t: float) -> float:
        return (1 - t) ** self.power
