"""Segmentation losses: one module per term, the shared pieces in ``functional``, and their sums.

``CombinedLoss`` weighs the built-in terms by flat arguments (``ce``, ``dice``, ...);
``WeightedSum`` weighs any named terms, each chosen by class path, so a new term is one new
class and a config. Every loss is built as ``loss(num_classes, ignore_index, ...)``.
"""

from segopt.losses.combined import CombinedLoss
from segopt.losses.compose import TermFactory, WeightedSum
from segopt.losses.cross_entropy import CrossEntropyLoss, cross_entropy_loss
from segopt.losses.dice import BINARY_MODE, DICE_MODES, MULTICLASS_MODE, DiceLoss, soft_dice_loss
from segopt.losses.focal import FocalLoss, focal_loss
from segopt.losses.lovasz import LovaszSoftmaxLoss, lovasz_softmax_loss
from segopt.losses.ohem import OhemCrossEntropyLoss, ohem_cross_entropy_loss
from segopt.losses.weighting import ClassWeightedTerm, ClassWeights

__all__ = [
    "BINARY_MODE",
    "DICE_MODES",
    "MULTICLASS_MODE",
    "ClassWeightedTerm",
    "ClassWeights",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "TermFactory",
    "WeightedSum",
    "cross_entropy_loss",
    "focal_loss",
    "lovasz_softmax_loss",
    "ohem_cross_entropy_loss",
    "soft_dice_loss",
]
