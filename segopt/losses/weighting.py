"""Class weights of a loss term: given as numbers, or as a mode counted from the training masks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from segopt.data.class_weights import CLASS_WEIGHT_MODES

#: Class weights: one number per class, or the name of a mode in ``CLASS_WEIGHT_MODES``
#: that :class:`segopt.lightning.SegModule` computes from the training masks before fitting.
ClassWeights = Sequence[float] | str | None


def class_weight_values(spec: ClassWeights, num_classes: int, key: str) -> tuple[torch.Tensor | None, str | None]:
    """Validate ``spec``: (weights or a placeholder of ones, the mode still to compute or None)."""
    if spec is None:
        return None, None
    if isinstance(spec, str):
        if spec not in CLASS_WEIGHT_MODES:
            raise ValueError(
                f"loss {key}: {spec!r} is not a known mode; give one number per class "
                f"or one of {sorted(CLASS_WEIGHT_MODES)}"
            )
        return torch.ones(num_classes), spec
    values = [float(v) for v in spec]
    if len(values) != num_classes:
        raise ValueError(
            f"loss {key} has {len(values)} values but num_classes is {num_classes}; give one weight per class"
        )
    if not all(math.isfinite(v) and v >= 0 for v in values) or not any(values):
        raise ValueError(f"loss {key} {values} must be finite, >= 0 and not all 0")
    return torch.tensor(values, dtype=torch.float32), None


class ClassWeightedTerm(nn.Module):
    """A loss term with optional class weights: a :class:`segopt.data.class_weights.DataWeighted`.

    The weights live in the buffer ``buffer`` (None when not given); ``key`` names them in errors.
    """

    def __init__(
        self, num_classes: int, weights: ClassWeights, beta: float | None = None, key: str = "class_weights",
        buffer: str = "class_weight",
    ) -> None:  # fmt: skip
        super().__init__()
        if beta is not None and not 0 <= beta < 1:
            raise ValueError(f"loss class_weight_beta must be in [0, 1) or null (from the data), got {beta}")
        values, self.class_weight_mode = class_weight_values(weights, num_classes, key)
        self.class_weight_beta = None if beta is None else float(beta)
        self._buffer = buffer
        self.register_buffer(buffer, values)

    def set_class_weights(self, weights: torch.Tensor) -> None:
        """Fill in the weights of a mode computed from the training masks."""
        getattr(self, self._buffer).copy_(weights)
        self.class_weight_mode = None
