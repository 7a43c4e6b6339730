"""Soft Dice, multiclass or binary."""

from __future__ import annotations

import torch
from torch import nn

from segopt.losses.functional import class_onehot, dice_scores, float32_logits, labelled

MULTICLASS_MODE = "multiclass"
BINARY_MODE = "binary"
DICE_MODES = (MULTICLASS_MODE, BINARY_MODE)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    smooth: float = 1.0,
    include_background: bool = True,
    mode: str = MULTICLASS_MODE,
) -> torch.Tensor:
    """Soft Dice loss ``1 - mean_c (2|P_c∩T_c| + s) / (|P_c| + |T_c| + s)`` over the batch.

    Sums run per class over all valid pixels of the batch, then classes are averaged.
    ``multiclass`` takes K-channel logits (softmax). ``binary`` scores the foreground
    (class 1) only and takes either one logit channel (sigmoid) or two (softmax, channel 1);
    on two-class logits it equals ``multiclass`` with ``include_background=False``.
    A class with nothing predicted and nothing to find scores Dice 1.
    """
    with float32_logits(logits) as logits:
        valid = labelled(target, ignore_index)
        if mode == BINARY_MODE:
            if logits.shape[1] == 1:
                probs = logits.sigmoid()
            elif logits.shape[1] == 2:
                probs = logits.softmax(dim=1)[:, 1:]
            else:
                raise ValueError(
                    f"Dice mode 'binary' needs 1 or 2 logit channels, got {logits.shape[1]}; "
                    "use mode 'multiclass' for more classes"
                )
            onehot = class_onehot(target, 2, valid)[:, 1:]
        elif mode == MULTICLASS_MODE:
            probs = logits.softmax(dim=1)
            onehot = class_onehot(target, logits.shape[1], valid)
        else:
            raise ValueError(f"Dice mode {mode!r} is unknown; use one of {DICE_MODES}")
        dice = dice_scores(probs * valid.unsqueeze(1), onehot, smooth)
        if mode == MULTICLASS_MODE and not include_background:
            dice = dice[1:]
        return 1 - dice.mean()


class DiceLoss(nn.Module):
    """Soft Dice loss, per class then averaged (see :func:`soft_dice_loss`).

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from the loss.
        smooth: added to numerator and denominator; keeps the loss smooth for tiny classes.
        include_background: False leaves class 0 out of the mean (multiclass mode).
        mode: "multiclass" (K-channel softmax) or "binary" (foreground class 1 only).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        smooth: float = 1.0,
        include_background: bool = True,
        mode: str = MULTICLASS_MODE,
    ) -> None:
        super().__init__()
        if mode not in DICE_MODES:
            raise ValueError(f"DiceLoss mode {mode!r} is unknown; use one of {DICE_MODES}")
        if mode == BINARY_MODE and num_classes != 2:
            raise ValueError(f"DiceLoss mode 'binary' needs num_classes 2 (background, foreground), got {num_classes}")
        if smooth < 0:
            raise ValueError(f"DiceLoss smooth must be >= 0, got {smooth}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.include_background = include_background
        self.mode = mode

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target, self.ignore_index, self.smooth, self.include_background, self.mode)
