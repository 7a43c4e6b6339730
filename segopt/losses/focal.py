"""Multiclass focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segopt.losses.functional import float32_logits, labelled, safe_target
from segopt.losses.weighting import ClassWeightedTerm, ClassWeights


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over valid pixels of ``-alpha_t (1 - p_t)^gamma log p_t`` (float32)."""
    with float32_logits(logits) as logits:
        logp = F.log_softmax(logits, dim=1)
        valid = labelled(target, ignore_index)
        safe = safe_target(target, valid)
        logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        # 1 - p_t, floored above 0: at p_t == 1 the gradient of x ** gamma for gamma < 1 is
        # inf, and inf * (log p_t = 0) would be NaN; the true gradient there is 0.
        miss = (-torch.expm1(logp_t)).clamp_min(torch.finfo(logp_t.dtype).tiny)
        loss = -(miss**gamma) * logp_t
        if alpha is not None:
            loss = loss * alpha[safe]
        return (loss * valid).sum() / valid.sum().clamp(min=1)


class FocalLoss(ClassWeightedTerm):
    """Multiclass focal loss: cross-entropy down-weighted by ``(1 - p_t) ** gamma``.

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from the loss.
        gamma: focusing strength; 0 gives plain cross-entropy.
        alpha: optional weight per class (numbers, or a mode of ``CLASS_WEIGHT_MODES``).
        class_weight_beta: beta of the "effective_number" mode; None saturates the counts at
            ``SATURATION_SHARE`` of the training masks' labelled pixels, whatever their number.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        gamma: float = 2.0,
        alpha: ClassWeights = None,
        class_weight_beta: float | None = None,
    ) -> None:
        super().__init__(num_classes, alpha, class_weight_beta, key="alpha", buffer="alpha")
        if gamma < 0:
            raise ValueError(f"FocalLoss gamma must be >= 0, got {gamma}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.ignore_index, self.gamma, self.alpha)
