"""``CombinedLoss``: the five built-in terms weighed by flat arguments, as configs name them.

Every loss takes logits ``[B,K,H,W]`` and an int64 target ``[B,H,W]`` whose pixels equal to
``ignore_index`` count for nothing: not in a numerator, not in a denominator, not as an error.
All terms run in float32 even under mixed precision (see :mod:`segopt.losses.functional`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from segopt.losses.compose import WeightedSum
from segopt.losses.cross_entropy import CrossEntropyLoss
from segopt.losses.dice import MULTICLASS_MODE, DiceLoss
from segopt.losses.focal import FocalLoss
from segopt.losses.lovasz import LovaszSoftmaxLoss
from segopt.losses.ohem import OhemCrossEntropyLoss
from segopt.losses.weighting import ClassWeights


class CombinedLoss(WeightedSum):
    """Weighted sum of cross-entropy, Dice, Focal, OHEM cross-entropy and Lovász-softmax terms.

    A zero weight leaves a term out (its other settings are then not used). The tutorial's
    Dice+CE is ``ce=0.5, dice=0.5``; its Focal+CE is ``ce=0.5, focal=0.5``; plain
    cross-entropy is ``ce=1, dice=0``. Another mix of terms, or a new term:
    :class:`~segopt.losses.compose.WeightedSum`.

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from every term.
        ce, dice, focal, ohem, lovasz: weight of each term.
        class_weights: cross-entropy and OHEM weight per class: numbers, or a mode of
            ``CLASS_WEIGHT_MODES`` ("median_frequency", "inverse_sqrt_frequency",
            "effective_number") computed from the training masks when fitting starts.
        class_weight_beta: beta of the "effective_number" mode; None saturates the counts at
            ``SATURATION_SHARE`` of the training masks' labelled pixels, whatever their number.
        label_smoothing: cross-entropy label smoothing (the ce term only).
        focal_gamma: focusing parameter of the focal term.
        focal_alpha: focal weight per class: numbers, or a mode (the same as ``class_weights``).
        dice_smooth: Dice smoothing term.
        dice_include_background: False leaves class 0 out of the Dice mean.
        dice_mode: "multiclass" or "binary" (see :class:`~segopt.losses.dice.DiceLoss`).
        ohem_fraction, ohem_threshold, ohem_min_kept: which pixels the OHEM term keeps
            (see :func:`~segopt.losses.ohem.ohem_cross_entropy_loss`).
        lovasz_per_image: average the Lovász term per image instead of over the batch.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        ce: float = 0.5,
        dice: float = 0.5,
        focal: float = 0.0,
        class_weights: ClassWeights = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        focal_alpha: ClassWeights = None,
        dice_smooth: float = 1.0,
        dice_include_background: bool = True,
        dice_mode: str = MULTICLASS_MODE,
        ohem: float = 0.0,
        ohem_fraction: float = 0.25,
        ohem_threshold: float | None = None,
        ohem_min_kept: int = 0,
        lovasz: float = 0.0,
        lovasz_per_image: bool = False,
        class_weight_beta: float | None = None,
    ) -> None:
        if isinstance(class_weights, str) and isinstance(focal_alpha, str) and class_weights != focal_alpha:
            raise ValueError(
                f"loss class_weights {class_weights!r} and focal_alpha {focal_alpha!r} name different modes; "
                "name the same mode in both, or give one of them as numbers"
            )
        beta = class_weight_beta
        # In the order the single-file CombinedLoss added them: the same float32 sum.
        terms = {
            "ce": partial(CrossEntropyLoss, class_weights=class_weights, label_smoothing=label_smoothing, class_weight_beta=beta),
            "dice": partial(DiceLoss, smooth=dice_smooth, include_background=dice_include_background, mode=dice_mode),
            "focal": partial(FocalLoss, gamma=focal_gamma, alpha=focal_alpha, class_weight_beta=beta),
            "ohem": partial(
                OhemCrossEntropyLoss, class_weights=class_weights, fraction=ohem_fraction, threshold=ohem_threshold,
                min_kept=ohem_min_kept, class_weight_beta=beta,
            ),
            "lovasz": partial(LovaszSoftmaxLoss, per_image=lovasz_per_image),
        }  # fmt: skip
        weights = {"ce": ce, "dice": dice, "focal": focal, "ohem": ohem, "lovasz": lovasz}
        super().__init__(num_classes, ignore_index, terms, weights)
        self._register_load_state_dict_pre_hook(self._from_single_file)

    def _from_single_file(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        """Read a checkpoint of the single-file CombinedLoss: its ``ce_weight`` (CE and OHEM) and ``focal.alpha``."""
        moved = {"ce_weight": ["terms.ce.class_weight", "terms.ohem.class_weight"], "focal.alpha": ["terms.focal.alpha"]}
        own = self.state_dict()
        for old, new in moved.items():
            if (value := state.pop(prefix + old, None)) is not None:
                for key in new:
                    if key in own:
                        state.setdefault(prefix + key, value)
