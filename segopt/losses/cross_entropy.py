"""Cross-entropy with class weights and label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segopt.losses.functional import float32_logits, labelled, safe_target
from segopt.losses.weighting import ClassWeightedTerm, ClassWeights


def cross_entropy_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``F.cross_entropy``'s weighted mean, but 0 instead of NaN when every pixel is ignored.

    A random crop of a void region leaves no labelled pixel; torch's mean then divides by
    zero and one NaN step ruins the weights.
    """
    with float32_logits(logits) as logits:
        total = F.cross_entropy(
            logits, target, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="sum"
        )
        valid = labelled(target, ignore_index)
        norm = valid.sum() if weight is None else (weight[safe_target(target, valid)] * valid).sum()
        return total / norm.clamp_min(1e-12)


class CrossEntropyLoss(ClassWeightedTerm):
    """Cross-entropy (see :func:`cross_entropy_loss`).

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from the loss.
        class_weights: weight per class: numbers, or a mode of ``CLASS_WEIGHT_MODES`` computed
            from the training masks when fitting starts.
        label_smoothing: label smoothing in [0, 1).
        class_weight_beta: beta of the "effective_number" mode; None saturates the counts at
            ``SATURATION_SHARE`` of the training masks' labelled pixels, whatever their number.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weights: ClassWeights = None,
        label_smoothing: float = 0.0,
        class_weight_beta: float | None = None,
    ) -> None:
        super().__init__(num_classes, class_weights, class_weight_beta)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"loss label_smoothing must be in [0, 1), got {label_smoothing}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(logits, target, self.ignore_index, self.class_weight, self.label_smoothing)
