"""Segmentation losses (see :mod:`segopt.losses.combined`)."""

from segopt.losses.combined import (
    BINARY_MODE,
    DICE_MODES,
    MULTICLASS_MODE,
    ClassWeights,
    CombinedLoss,
    DiceLoss,
    FocalLoss,
    cross_entropy_loss,
    focal_loss,
    lovasz_softmax_loss,
    ohem_cross_entropy_loss,
    soft_dice_loss,
)

__all__ = [
    "BINARY_MODE",
    "DICE_MODES",
    "MULTICLASS_MODE",
    "ClassWeights",
    "CombinedLoss",
    "DiceLoss",
    "FocalLoss",
    "cross_entropy_loss",
    "focal_loss",
    "lovasz_softmax_loss",
    "ohem_cross_entropy_loss",
    "soft_dice_loss",
]
