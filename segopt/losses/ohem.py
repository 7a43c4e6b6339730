"""Online hard example mining: cross-entropy over the hardest pixels of the batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from segopt.losses.functional import float32_logits, labelled, safe_target, weighted_mean
from segopt.losses.weighting import ClassWeightedTerm, ClassWeights


def ohem_cross_entropy_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    weight: torch.Tensor | None = None,
    fraction: float = 0.25,
    threshold: float | None = None,
    min_kept: int = 0,
) -> torch.Tensor:
    """Cross-entropy over the hardest labelled pixels of the batch only (online hard example mining).

    Kept: the ``max(min_kept, ceil(fraction * labelled))`` pixels of highest loss, plus every
    pixel whose loss exceeds ``threshold`` (``-log 0.7`` is mmsegmentation's probability
    threshold 0.7). Pixels are ranked by their unweighted loss; the kept ones are averaged
    with ``weight`` as in :func:`cross_entropy_loss`.
    """
    with float32_logits(logits) as logits:
        nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
        valid = labelled(target, ignore_index).flatten()
        with torch.no_grad():
            # How many to keep stays on the device: ranking every pixel and keeping ranks below
            # k needs no host read, where topk(k) would wait for the count at every step.
            count = valid.sum(dtype=_exact_float(nll.device))
            k = torch.clamp(torch.ceil(fraction * count), min=min_kept).minimum(count)
            order = torch.where(valid, nll, -math.inf).argsort(descending=True)
            ranks_kept = torch.arange(nll.numel(), device=nll.device) < k
            kept = torch.zeros_like(valid).scatter(0, order, ranks_kept)
            if threshold is not None:
                kept |= valid & (nll > threshold)
        w = kept.float()
        if weight is not None:
            w = w * weight[safe_target(target.flatten(), valid)]
        return weighted_mean(nll, w)


def _exact_float(device: torch.device) -> torch.dtype:
    """float64, where the device has it: ``ceil(fraction * count)`` then rounds as Python's does."""
    return torch.float32 if device.type == "mps" else torch.float64


class OhemCrossEntropyLoss(ClassWeightedTerm):
    """OHEM cross-entropy (see :func:`ohem_cross_entropy_loss`).

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from the loss.
        class_weights: weight per class: numbers, or a mode of ``CLASS_WEIGHT_MODES``.
        fraction, threshold, min_kept: which pixels are kept.
        class_weight_beta: beta of the "effective_number" mode; None saturates the counts at
            ``SATURATION_SHARE`` of the training masks' labelled pixels, whatever their number.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weights: ClassWeights = None,
        fraction: float = 0.25,
        threshold: float | None = None,
        min_kept: int = 0,
        class_weight_beta: float | None = None,
    ) -> None:
        super().__init__(num_classes, class_weights, class_weight_beta)
        if not 0 <= fraction <= 1 or min_kept < 0 or (threshold is not None and threshold < 0):
            raise ValueError(
                f"loss ohem_fraction {fraction} must be in [0, 1], ohem_min_kept {min_kept} >= 0 "
                f"and ohem_threshold {threshold} >= 0 or null"
            )
        if not fraction and not min_kept and threshold is None:
            raise ValueError(
                "loss ohem keeps no pixel: ohem_fraction and ohem_min_kept are 0 and ohem_threshold is null; "
                "set ohem_fraction (e.g. 0.25) or ohem_threshold (e.g. 0.357, a probability of 0.7)"
            )
        self.ignore_index = ignore_index
        self.fraction, self.threshold, self.min_kept = float(fraction), threshold, int(min_kept)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy_loss(
            logits, target, self.ignore_index, self.class_weight, self.fraction, self.threshold, self.min_kept
        )
