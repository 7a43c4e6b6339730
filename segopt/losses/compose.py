"""A weighted sum of named loss terms, each chosen by class path."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from segopt.data.class_weights import DataWeighted

#: Builds a loss term as ``term(num_classes, ignore_index)``; in YAML a ``class_path`` with ``init_args``.
TermFactory = Callable[[int, int], nn.Module]


class WeightedSum(nn.Module):
    """``sum_name weights[name] * terms[name](logits, target)``; a weight of 0 leaves a term out.

    A new term is a class built as ``Term(num_classes, ignore_index, **options)``, named here
    in YAML by its class path. Terms whose class weights come from the data
    (:class:`~segopt.data.class_weights.DataWeighted`) must ask for the same mode and beta; the
    weights counted by :class:`segopt.lightning.SegModule` are handed to each of them.

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from every term.
        terms: the terms by name.
        weights: weight of each term by name; a term not named weighs 1.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        terms: Mapping[str, TermFactory] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        terms, weights = dict(terms or {}), {k: float(v) for k, v in (weights or {}).items()}
        if unknown := sorted(set(weights) - set(terms)):
            raise ValueError(f"loss weights name {unknown}, which are not among the terms {sorted(terms)}; weigh only terms given")
        weights = {name: weights.get(name, 1.0) for name in terms}
        if not all(math.isfinite(w) and w >= 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"loss weights {weights} must be >= 0 with at least one above 0")
        self.weights = {name: w for name, w in weights.items() if w}
        self.terms = nn.ModuleDict({name: terms[name](num_classes, ignore_index) for name in self.weights})
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        asking = self._weighted()
        for attr in ("class_weight_mode", "class_weight_beta"):
            if len({getattr(t, attr) for t in asking.values()}) > 1:
                found = {name: getattr(t, attr) for name, t in asking.items()}
                raise ValueError(f"loss terms ask for different {attr} {found}; give them all the same")

    def _weighted(self) -> dict[str, nn.Module]:
        """The terms whose class weights are still to be counted from the data."""
        return {n: t for n, t in self.terms.items() if isinstance(t, DataWeighted) and t.class_weight_mode is not None}

    @property
    def class_weight_mode(self) -> str | None:
        """The class weight mode still to be computed from the training masks, or None."""
        return next((t.class_weight_mode for t in self._weighted().values()), None)

    @property
    def class_weight_beta(self) -> float | None:
        """Beta of the "effective_number" mode, shared by the terms that ask for a mode."""
        return next((t.class_weight_beta for t in self._weighted().values()), None)

    def set_class_weights(self, weights: torch.Tensor) -> None:
        """Hand the weights counted from the training masks to every term that asked for them."""
        for term in self._weighted().values():
            term.set_class_weights(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for name, term in self.terms.items():
            total = total + self.weights[name] * term(logits, target)
        return total
