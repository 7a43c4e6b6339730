"""Segmentation losses: cross-entropy, soft Dice, Focal, and their weighted combination.

Every loss takes logits ``[B,K,H,W]`` and an int64 target ``[B,H,W]`` whose pixels equal to
``ignore_index`` count for nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DiceLoss(nn.Module):
    """Soft Dice loss, computed per class and then averaged over classes.

    Ignored pixels are removed from both numerator and denominator. The sums run in
    float32 even under autocast: a 512x512 batch sums millions of probabilities, which
    overflows fp16 (max 65504) and loses the small intersections in bf16.

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from the loss.
        smooth: added to numerator and denominator; keeps empty classes at loss 0.
        include_background: False leaves class 0 out of the mean.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, smooth: float = 1.0, include_background: bool = True
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)
        valid = target != self.ignore_index
        onehot = F.one_hot(torch.where(valid, target, 0), self.num_classes).permute(0, 3, 1, 2).float()
        valid = valid.unsqueeze(1).float()
        probs, onehot = probs * valid, onehot * valid
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        cardinality = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        if not self.include_background:
            dice = dice[1:]
        return 1 - dice.mean()


class FocalLoss(nn.Module):
    """Multiclass focal loss: cross-entropy down-weighted by ``(1 - p_t) ** gamma``.

    Args:
        gamma: focusing strength; 0 gives plain cross-entropy.
        alpha: optional per-class weights.
        ignore_index: target value excluded from the loss.
    """

    def __init__(self, gamma: float = 2.0, alpha: list[float] | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32) if alpha else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        valid = target != self.ignore_index
        safe = torch.where(valid, target, 0)
        logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.alpha is not None:
            loss = loss * self.alpha[safe]
        return loss[valid].sum() / valid.sum().clamp(min=1)


class CombinedLoss(nn.Module):
    """Weighted sum of cross-entropy, Dice and Focal terms (zero weight leaves a term out).

    The seed's Dice+CE is ``ce=0.5, dice=0.5``; its Focal+CE is ``ce=0.5, focal=0.5``.

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from every term.
        ce, dice, focal: weight of each term.
        class_weights: optional cross-entropy weight per class.
        label_smoothing: cross-entropy label smoothing.
        focal_gamma: focusing parameter of the focal term.
        dice_include_background: False leaves class 0 out of the Dice mean.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        ce: float = 0.5,
        dice: float = 0.5,
        focal: float = 0.0,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        dice_include_background: bool = True,
    ) -> None:
        super().__init__()
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(
                f"loss class_weights has {len(class_weights)} values but num_classes is {num_classes}; "
                "give one weight per class"
            )
        self.weights = {"ce": ce, "dice": dice, "focal": focal}
        self.ce = nn.CrossEntropyLoss(
            weight=torch.tensor(class_weights, dtype=torch.float32) if class_weights else None,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )
        self.dice = DiceLoss(num_classes, ignore_index, include_background=dice_include_background)
        self.focal = FocalLoss(focal_gamma, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for name, weight in self.weights.items():
            if weight:
                total = total + weight * getattr(self, name)(logits.float() if name == "ce" else logits, target)
        return total
