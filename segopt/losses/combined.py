"""Segmentation losses: cross-entropy, OHEM cross-entropy, soft Dice, Focal, Lovász-softmax,
and their weighted combination.

Every loss is built as ``loss(num_classes, ignore_index, ...)`` and takes logits
``[B,K,H,W]`` and an int64 target ``[B,H,W]`` whose pixels equal to ``ignore_index`` count
for nothing: not in a numerator, not in a denominator, not as an error. Targets are not
checked here (that would make the host wait for the device at every step): the data
module checks every mask where it is decoded and transformed. All of them run in
float32 even under mixed precision (see :func:`soft_dice_loss` for why that matters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segopt.class_weights import CLASS_WEIGHT_MODES, DEFAULT_BETA

MULTICLASS_MODE = "multiclass"
BINARY_MODE = "binary"
DICE_MODES = (MULTICLASS_MODE, BINARY_MODE)

#: Class weights: one number per class, or the name of a mode in ``CLASS_WEIGHT_MODES``
#: that :class:`segopt.module.SegModule` computes from the training masks before fitting.
ClassWeights = Sequence[float] | str | None


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
    # float32 with autocast off: a 512x512 batch sums millions of probabilities, far past
    # fp16's 65504, and bf16's 8-bit mantissa stops adding small terms to a large sum.
    with torch.autocast(logits.device.type, enabled=False):
        logits = logits.float()
        valid = (target != ignore_index).unsqueeze(1)
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
            classes = torch.ones(1, 1, 1, 1, dtype=target.dtype, device=target.device)
        elif mode == MULTICLASS_MODE:
            probs = logits.softmax(dim=1)
            classes = torch.arange(logits.shape[1], device=target.device).view(1, -1, 1, 1)
        else:
            raise ValueError(f"Dice mode {mode!r} is unknown; use one of {DICE_MODES}")
        onehot = (target.unsqueeze(1) == classes) & valid
        probs = probs * valid
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        cardinality = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + smooth) / (cardinality + smooth).clamp_min(1e-7)
        # Nothing predicted and nothing to find is a perfect score, also when smooth is 0.
        dice = torch.where(cardinality > 0, dice, torch.ones_like(dice))
        if mode == MULTICLASS_MODE and not include_background:
            dice = dice[1:]
        return 1 - dice.mean()


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over valid pixels of ``-alpha_t (1 - p_t)^gamma log p_t`` (float32)."""
    with torch.autocast(logits.device.type, enabled=False):
        logp = F.log_softmax(logits.float(), dim=1)
        valid = target != ignore_index
        safe = torch.where(valid, target, 0)
        logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        # 1 - p_t, floored above 0: at p_t == 1 the gradient of x ** gamma for gamma < 1 is
        # inf, and inf * (log p_t = 0) would be NaN; the true gradient there is 0.
        miss = (-torch.expm1(logp_t)).clamp_min(torch.finfo(logp_t.dtype).tiny)
        loss = -(miss**gamma) * logp_t
        if alpha is not None:
            loss = loss * alpha[safe]
        return (loss * valid).sum() / valid.sum().clamp(min=1)


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
    with torch.autocast(logits.device.type, enabled=False):
        total = F.cross_entropy(
            logits.float(),
            target,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction="sum",
        )
        valid = target != ignore_index
        if weight is None:
            norm = valid.sum()
        else:
            norm = (weight[torch.where(valid, target, 0)] * valid).sum()
        return total / norm.clamp_min(1e-12)


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
    with torch.autocast(logits.device.type, enabled=False):
        nll = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none").flatten()
        valid = (target != ignore_index).flatten()
        with torch.no_grad():
            labelled = int(valid.sum())
            k = min(labelled, max(min_kept, math.ceil(fraction * labelled)))
            kept = torch.zeros_like(valid)
            kept[torch.where(valid, nll, -math.inf).topk(k).indices] = True
            if threshold is not None:
                kept |= valid & (nll > threshold)
        w = kept.float()
        if weight is not None:
            w = w * weight[torch.where(valid, target.flatten(), 0)]
        return (nll * w).sum() / w.sum().clamp_min(1e-12)


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Steps of the Jaccard loss along pixels sorted by error (Berman et al., 2018, Alg. 1)."""
    gts = fg_sorted.sum(-1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(-1)
    union = gts + (1 - fg_sorted).cumsum(-1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def lovasz_softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, per_image: bool = False
) -> torch.Tensor:
    """Lovász-softmax (Berman et al., 2018): the Lovász extension of each class's Jaccard loss.

    Averaged over the classes present in the target, per batch or (``per_image``) per image
    and then over the images with a labelled pixel (float32).
    """
    with torch.autocast(logits.device.type, enabled=False):
        probs = logits.float().softmax(dim=1)
        valid = (target != ignore_index).unsqueeze(1)
        classes = torch.arange(logits.shape[1], device=target.device).view(1, -1, 1, 1)
        fg = ((target.unsqueeze(1) == classes) & valid).float()
        # An ignored pixel gets error 0: it sorts last, where its step multiplies 0.
        errors = (fg - probs).abs() * valid
        if per_image:  # groups [G, K, N]: one per image, or the whole batch as one
            errors, fg = errors.flatten(2), fg.flatten(2)
        else:
            errors, fg = errors.transpose(0, 1).flatten(1)[None], fg.transpose(0, 1).flatten(1)[None]
        errors_sorted, order = errors.sort(dim=-1, descending=True)
        losses = (errors_sorted * _lovasz_grad(fg.gather(-1, order))).sum(-1)
        present = fg.sum(-1) > 0
        per_group = (losses * present).sum(-1) / present.sum(-1).clamp_min(1)
        labelled = present.any(-1)
        return (per_group * labelled).sum() / labelled.sum().clamp_min(1)


def _class_weight_values(spec: ClassWeights, num_classes: int, key: str) -> tuple[torch.Tensor | None, str | None]:
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


def _check_beta(beta: float) -> float:
    if not 0 <= beta < 1:
        raise ValueError(f"loss class_weight_beta must be in [0, 1), got {beta}")
    return float(beta)


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


class FocalLoss(nn.Module):
    """Multiclass focal loss: cross-entropy down-weighted by ``(1 - p_t) ** gamma``.

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from the loss.
        gamma: focusing strength; 0 gives plain cross-entropy.
        alpha: optional weight per class (numbers, or a mode of ``CLASS_WEIGHT_MODES``).
        class_weight_beta: beta of the "effective_number" mode.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        gamma: float = 2.0,
        alpha: ClassWeights = None,
        class_weight_beta: float = DEFAULT_BETA,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"FocalLoss gamma must be >= 0, got {gamma}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.gamma = gamma
        alpha_values, self.class_weight_mode = _class_weight_values(alpha, num_classes, "alpha")
        self.class_weight_beta = _check_beta(class_weight_beta)
        self.register_buffer("alpha", alpha_values)

    def set_class_weights(self, weights: torch.Tensor) -> None:
        """Fill in the weights of a mode computed from the training masks."""
        self.alpha.copy_(weights)
        self.class_weight_mode = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.ignore_index, self.gamma, self.alpha)


class CombinedLoss(nn.Module):
    """Weighted sum of cross-entropy, Dice, Focal, OHEM cross-entropy and Lovász-softmax terms.

    A zero weight leaves a term out. The seed's Dice+CE is ``ce=0.5, dice=0.5``; its Focal+CE
    is ``ce=0.5, focal=0.5``; plain cross-entropy is ``ce=1, dice=0``.

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from every term.
        ce, dice, focal, ohem, lovasz: weight of each term.
        class_weights: cross-entropy and OHEM weight per class: numbers, or a mode of
            ``CLASS_WEIGHT_MODES`` ("median_frequency", "inverse_sqrt_frequency",
            "effective_number") computed from the training masks when fitting starts.
        class_weight_beta: beta of the "effective_number" mode.
        label_smoothing: cross-entropy label smoothing (the ce term only).
        focal_gamma: focusing parameter of the focal term.
        focal_alpha: focal weight per class: numbers, or a mode (the same as ``class_weights``).
        dice_smooth: Dice smoothing term.
        dice_include_background: False leaves class 0 out of the Dice mean.
        dice_mode: "multiclass" or "binary" (see :class:`DiceLoss`).
        ohem_fraction, ohem_threshold, ohem_min_kept: which pixels the OHEM term keeps
            (see :func:`ohem_cross_entropy_loss`).
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
        class_weight_beta: float = DEFAULT_BETA,
    ) -> None:
        super().__init__()
        self.weights = {
            "ce": float(ce),
            "dice": float(dice),
            "focal": float(focal),
            "ohem": float(ohem),
            "lovasz": float(lovasz),
        }
        if not all(math.isfinite(w) and w >= 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ValueError(f"loss weights {self.weights} must be >= 0 with at least one above 0")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"loss label_smoothing must be in [0, 1), got {label_smoothing}")
        if not 0 <= ohem_fraction <= 1 or ohem_min_kept < 0 or (ohem_threshold is not None and ohem_threshold < 0):
            raise ValueError(
                f"loss ohem_fraction {ohem_fraction} must be in [0, 1], ohem_min_kept {ohem_min_kept} >= 0 "
                f"and ohem_threshold {ohem_threshold} >= 0 or null"
            )
        if self.weights["ohem"] and not ohem_fraction and not ohem_min_kept and ohem_threshold is None:
            raise ValueError(
                "loss ohem keeps no pixel: ohem_fraction and ohem_min_kept are 0 and ohem_threshold is null; "
                "set ohem_fraction (e.g. 0.25) or ohem_threshold (e.g. 0.357, a probability of 0.7)"
            )
        if isinstance(class_weights, str) and isinstance(focal_alpha, str) and class_weights != focal_alpha:
            raise ValueError(
                f"loss class_weights {class_weights!r} and focal_alpha {focal_alpha!r} name different modes; "
                "name the same mode in both, or give one of them as numbers"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.ohem = {"fraction": float(ohem_fraction), "threshold": ohem_threshold, "min_kept": int(ohem_min_kept)}
        self.lovasz_per_image = lovasz_per_image
        ce_weight, self._ce_mode = _class_weight_values(class_weights, num_classes, "class_weights")
        self.class_weight_beta = _check_beta(class_weight_beta)
        self.register_buffer("ce_weight", ce_weight)
        self.dice = DiceLoss(num_classes, ignore_index, dice_smooth, dice_include_background, dice_mode)
        self.focal = FocalLoss(num_classes, ignore_index, focal_gamma, focal_alpha, class_weight_beta)

    @property
    def class_weight_mode(self) -> str | None:
        """The weight mode still to be computed from the training masks, or None."""
        return self._ce_mode or self.focal.class_weight_mode

    def set_class_weights(self, weights: torch.Tensor) -> None:
        """Fill in every term whose weights were given as a mode (see ``class_weight_mode``)."""
        if self._ce_mode is not None:
            self.ce_weight.copy_(weights)
            self._ce_mode = None
        if self.focal.class_weight_mode is not None:
            self.focal.set_class_weights(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        if self.weights["ce"]:
            ce = cross_entropy_loss(logits, target, self.ignore_index, self.ce_weight, self.label_smoothing)
            total = total + self.weights["ce"] * ce
        if self.weights["dice"]:
            d = self.dice
            total = total + self.weights["dice"] * soft_dice_loss(
                logits, target, self.ignore_index, d.smooth, d.include_background, d.mode
            )
        if self.weights["focal"]:
            f = self.focal
            total = total + self.weights["focal"] * focal_loss(logits, target, self.ignore_index, f.gamma, f.alpha)
        if self.weights["ohem"]:
            ohem = ohem_cross_entropy_loss(logits, target, self.ignore_index, self.ce_weight, **self.ohem)
            total = total + self.weights["ohem"] * ohem
        if self.weights["lovasz"]:
            lovasz = lovasz_softmax_loss(logits, target, self.ignore_index, self.lovasz_per_image)
            total = total + self.weights["lovasz"] * lovasz
        return total
