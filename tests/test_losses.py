"""Losses: hand-computed Dice/Focal/CE/OHEM/Lovász values, ignore handling, mixed precision, class weights."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser

from segopt.commands.cli import main
from segopt.data.class_weights import (
    DataWeighted,
    class_pixel_counts,
    class_weights_from_counts,
    compute_class_weights,
    data_beta,
    effective_number_weights,
    inverse_sqrt_frequency_weights,
    median_frequency_weights,
)
from segopt.data.synthetic import SyntheticShapes
from segopt.lightning import SegDataModule
from segopt.lightning.module import LossFactory, SegModule
from segopt.losses import (
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    WeightedSum,
    cross_entropy_loss,
    lovasz_softmax_loss,
    ohem_cross_entropy_loss,
)
from segopt.models import UNet
from tests.conftest import CONFIGS, quiet_trainer

IGNORE = 255



def hard_logits(classes: torch.Tensor, num_classes: int, scale: float = 100.0) -> torch.Tensor:
    """Logits ``[B,K,H,W]`` whose softmax is (numerically) one-hot on ``classes`` ``[B,H,W]``."""
    return scale * F.one_hot(classes, num_classes).permute(0, 3, 1, 2).float()


# A 4x4 two-class target: class 0 on the top 10 pixels, class 1 on the bottom 6.
TARGET = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]).unsqueeze(0)


@pytest.mark.slow
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("mode,include_background", [("multiclass", True), ("multiclass", False), ("binary", True)])
def test_dice_of_a_perfect_prediction_is_zero(smooth: float, mode: str, include_background: bool) -> None:
    loss = DiceLoss(2, IGNORE, smooth=smooth, include_background=include_background, mode=mode)
    assert loss(hard_logits(TARGET, 2), TARGET).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("smooth,expected", [(0.0, 1.0), (1.0, 1 - 1 / 17)])
def test_dice_of_a_disjoint_prediction_is_one(smooth: float, expected: float) -> None:
    # Every pixel predicted as the other class: no intersection; each class's
    # cardinality is 16 (10 + 6 predicted/true pixels), so Dice = smooth / (16 + smooth).
    loss = DiceLoss(2, IGNORE, smooth=smooth)
    assert loss(hard_logits(1 - TARGET, 2), TARGET).item() == pytest.approx(expected, abs=1e-6)


def test_dice_matches_a_hand_computed_soft_value() -> None:
    # Pixel A (class 0) predicts p0 = 0.75, pixel B (class 1) predicts p1 = 0.75.
    # Per class: intersection 0.75, |P| = 1, |T| = 1 -> Dice 0.75 -> loss 0.25.
    third = math.log(3.0)
    logits = torch.tensor([[[[third, 0.0]], [[0.0, third]]]])
    target = torch.tensor([[[0, 1]]])
    assert DiceLoss(2, IGNORE, smooth=0.0)(logits, target).item() == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize(
    "make_loss",
    [
        partial(DiceLoss, smooth=1.0),
        partial(DiceLoss, smooth=0.0, include_background=False),
        partial(FocalLoss, gamma=2.0, alpha=[0.5, 1.0, 2.0, 1.0]),
        partial(CombinedLoss, ce=1.0, dice=1.0, focal=1.0, class_weights=[1.0, 2.0, 3.0, 4.0], label_smoothing=0.1),
        partial(CombinedLoss, ce=0.0, dice=0.0, ohem=1.0, ohem_threshold=1.0, class_weights=[1.0, 2.0, 3.0, 4.0]),
        partial(CombinedLoss, ce=0.0, dice=0.0, lovasz=1.0),
        partial(CombinedLoss, ce=0.0, dice=0.0, lovasz=1.0, lovasz_per_image=True),
    ],
    ids=["dice", "dice-no-bg", "focal", "combined", "ohem", "lovasz", "lovasz-per-image"],
)
@pytest.mark.parametrize("ignore_index", [255, 3, 0])
def test_ignored_pixels_change_nothing(make_loss, ignore_index: int) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    k = 4
    loss = make_loss(k, ignore_index)
    classes = [c for c in range(k) if c != ignore_index]
    target = torch.tensor(classes)[torch.randint(0, len(classes), (2, 8, 6))]
    logits = torch.randn(2, k, 8, 6)
    # The right half of each image becomes ignored, with arbitrary logits there.
    ignored_target = target.clone()
    ignored_target[..., 3:] = ignore_index
    other_logits = logits.clone()
    other_logits[..., 3:] = 50 * torch.randn(2, k, 8, 3)
    left_only = loss(logits[..., :3], target[..., :3])
    assert loss(logits, ignored_target).item() == pytest.approx(left_only.item(), rel=1e-6)
    assert loss(other_logits, ignored_target).item() == pytest.approx(left_only.item(), rel=1e-6)


def test_binary_and_multiclass_dice_agree_on_two_classes() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 2, 16, 16)
    target = torch.randint(0, 2, (3, 16, 16))
    target[:, :2] = IGNORE
    multiclass = DiceLoss(2, IGNORE, include_background=False)(logits, target)
    binary_two_channels = DiceLoss(2, IGNORE, mode="binary")(logits, target)
    # sigmoid(l1 - l0) is softmax's foreground probability.
    binary_one_channel = DiceLoss(2, IGNORE, mode="binary")(logits[:, 1:] - logits[:, :1], target)
    assert binary_two_channels.item() == pytest.approx(multiclass.item(), rel=1e-6)
    assert binary_one_channel.item() == pytest.approx(multiclass.item(), rel=1e-6)
    assert 0.2 < multiclass.item() < 0.8  # a soft prediction, not a degenerate 0 or 1


def test_focal_matches_hand_value_and_reduces_to_cross_entropy() -> None:
    third = math.log(3.0)
    logits = torch.tensor([[[[third]], [[0.0]]]])  # p0 = 0.75
    target = torch.tensor([[[0]]])
    # -(1 - 0.75)^2 * log(0.75)
    assert FocalLoss(2, gamma=2.0)(logits, target).item() == pytest.approx(-(0.25**2) * math.log(0.75), rel=1e-6)
    torch.manual_seed(2)
    logits, target = torch.randn(2, 5, 6, 6), torch.randint(0, 5, (2, 6, 6))
    target[0, 0] = IGNORE
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert FocalLoss(5, gamma=0.0)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("weight", [None, [0.5, 1.0, 2.0, 4.0]])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_equals_torch_weighted_mean(weight: list[float] | None, label_smoothing: float) -> None:
    torch.manual_seed(3)
    logits, target = torch.randn(2, 4, 5, 7), torch.randint(0, 4, (2, 5, 7))
    target[1, :2] = IGNORE
    w = torch.tensor(weight) if weight else None
    expected = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE, label_smoothing=label_smoothing)
    got = cross_entropy_loss(logits, target, IGNORE, w, label_smoothing)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_fully_ignored_batch_gives_zero_loss_and_zero_gradient() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE)
    loss = CombinedLoss(3, IGNORE, ce=1.0, dice=1.0, focal=1.0, class_weights=[1.0, 2.0, 3.0])(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.2, 0.3, 0.5)])
def test_combined_loss_is_the_weighted_sum_of_its_terms(weights: tuple[float, float, float]) -> None:
    torch.manual_seed(4)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    target[0, :3] = IGNORE
    ce, dice, focal = weights
    combined = CombinedLoss(3, IGNORE, ce=ce, dice=dice, focal=focal, focal_gamma=1.5)(logits, target)
    expected = (
        ce * F.cross_entropy(logits, target, ignore_index=IGNORE)
        + dice * DiceLoss(3, IGNORE)(logits, target)
        + focal * FocalLoss(3, IGNORE, gamma=1.5)(logits, target)
    )
    assert combined.item() == pytest.approx(expected.item(), rel=1e-6)


def ohem_case(a: list[float], target: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class logits ``[1,2,1,N]``: 0 for each pixel's true class, ``a`` for the other, so loss = softplus(a)."""
    t = torch.tensor(target)
    logits = torch.zeros(1, 2, 1, len(a))
    logits[0, 1 - t, 0, torch.arange(len(a))] = torch.tensor(a)
    return logits.requires_grad_(), t.view(1, 1, -1)


def softplus(a: float) -> float:
    return math.log1p(math.exp(a))


A = [3.0, 7.0, 0.0, 5.0, 1.0, 6.0, 2.0, 4.0]  # per-pixel loss softplus(a): hardest at 1, 5, 3, 7


def kept_pixels(logits: torch.Tensor) -> list[int]:
    return torch.nonzero(logits.grad.abs().sum(1).flatten()).flatten().tolist()


def test_ohem_keeps_exactly_the_hardest_fraction() -> None:
    logits, target = ohem_case(A, [0] * 8)
    loss = ohem_cross_entropy_loss(logits, target, IGNORE, fraction=0.25)
    loss.backward()
    assert loss.item() == pytest.approx((softplus(7) + softplus(6)) / 2, rel=1e-6)
    assert kept_pixels(logits) == [1, 5]


def test_ohem_ranks_only_labelled_pixels() -> None:
    # The hardest pixel ignored: ceil(0.25 * 7 labelled) = 2 of the rest are kept.
    logits, target = ohem_case(A, [0] * 8)
    target[..., 1] = IGNORE
    loss = ohem_cross_entropy_loss(logits, target, IGNORE, fraction=0.25)
    loss.backward()
    assert loss.item() == pytest.approx((softplus(6) + softplus(5)) / 2, rel=1e-6)
    assert kept_pixels(logits) == [3, 5]


@pytest.mark.parametrize(
    "fraction,threshold,min_kept,kept",
    [
        (0.0, softplus(4.5), 0, [1, 3, 5]),  # loss above the threshold
        (0.0, softplus(4.5), 5, [0, 1, 3, 5, 7]),  # at least min_kept
        (0.25, softplus(6.5), 0, [1, 5]),  # at least the fraction
        (0.0, softplus(9.0), 1, [1]),
    ],
)
def test_ohem_keeps_pixels_above_the_threshold_and_at_least_min_kept(
    fraction: float, threshold: float, min_kept: int, kept: list[int]
) -> None:
    logits, target = ohem_case(A, [0] * 8)
    loss = ohem_cross_entropy_loss(logits, target, IGNORE, fraction=fraction, threshold=threshold, min_kept=min_kept)
    loss.backward()
    assert kept_pixels(logits) == kept
    assert loss.item() == pytest.approx(sum(softplus(A[i]) for i in kept) / len(kept), rel=1e-6)


def test_ohem_ranks_by_plain_loss_and_averages_with_class_weights() -> None:
    # Weighted, pixel 3 (class 1, 3 * softplus(5) = 15.0) would outrank pixel 5 (class 0, 6.0);
    # ranked by the plain loss pixels 1 (class 1) and 5 (class 0) are the hardest.
    logits, target = ohem_case(A, [0, 1, 0, 1, 0, 0, 0, 1])
    loss = CombinedLoss(2, IGNORE, ce=0.0, dice=0.0, ohem=1.0, ohem_fraction=0.25, class_weights=[1.0, 3.0])
    value = loss(logits, target)
    value.backward()
    assert kept_pixels(logits) == [1, 5]
    assert value.item() == pytest.approx((3 * softplus(7) + softplus(6)) / 4, rel=1e-6)


def test_ohem_keeping_every_pixel_is_cross_entropy() -> None:
    torch.manual_seed(7)
    logits, target = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = IGNORE
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    expected = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE)
    assert ohem_cross_entropy_loss(logits, target, IGNORE, w, fraction=1.0).item() == pytest.approx(expected.item())


def lovasz_by_definition(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Lovász-softmax from the set function: ``mean_c ∫_0^1 J_c({i: m_i >= t}) dt`` over present classes.

    ``probs`` ``[K,N]`` and ``target`` ``[N]`` hold the labelled pixels only; ``m`` is the error
    (``1 - p_c`` on class c, ``p_c`` elsewhere) and ``J_c(M) = |M| / |{y = c} ∪ M|`` the Jaccard
    loss of the mispredicted set M. For ``m >= 0`` the Lovász extension is this integral.
    """
    losses = []
    for c in sorted(set(target.tolist())):
        fg = [y == c for y in target.tolist()]
        m = [1 - p if f else p for p, f in zip(probs[c].tolist(), fg)]
        levels = sorted(set(m) | {0.0}, reverse=True)
        integral = 0.0
        for hi, lo in itertools.pairwise(levels):
            mispredicted = [v >= hi for v in m]
            union = sum(a or b for a, b in zip(mispredicted, fg))
            integral += (hi - lo) * sum(mispredicted) / union
        losses.append(integral)
    return sum(losses) / len(losses)


def test_lovasz_matches_a_hand_computed_value() -> None:
    # Pixel A (class 0) p0 = 0.75, pixel B (class 1) p1 = 0.75: every error is 0.25, and
    # for t <= 0.25 both pixels are mispredicted, J = 2/2 = 1 -> each class 0.25.
    third = math.log(3.0)
    logits = torch.tensor([[[[third, 0.0]], [[0.0, third]]]])
    target = torch.tensor([[[0, 1]]])
    assert lovasz_softmax_loss(logits, target, IGNORE).item() == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_the_definition_on_present_classes_with_ignore(per_image: bool) -> None:
    torch.manual_seed(8)
    logits = 2 * torch.randn(2, 4, 3, 4, dtype=torch.float64)
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1], [IGNORE, IGNORE, 0, 0]], [[1, 1, 1, 2]] * 3])  # no class 3
    probs = logits.softmax(dim=1)
    groups = [(probs[i : i + 1], target[i : i + 1]) for i in range(2)] if per_image else [(probs, target)]
    expected = []
    for p, t in groups:
        labelled = t.flatten() != IGNORE
        expected.append(lovasz_by_definition(p.transpose(0, 1).flatten(1)[:, labelled], t.flatten()[labelled]))
    value = lovasz_softmax_loss(logits.float(), target, IGNORE, per_image=per_image)
    assert value.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_of_perfect_and_of_wrong_hard_predictions(per_image: bool) -> None:
    target = torch.tensor([[[0, 0, 1], [2, 2, IGNORE]], [[IGNORE] * 3] * 2])  # image 1 all ignored
    assert lovasz_softmax_loss(hard_logits(target % 255, 4), target, IGNORE, per_image).item() == pytest.approx(0.0)
    wrong = hard_logits((target % 255 + 1) % 4, 4)
    assert lovasz_softmax_loss(wrong, target, IGNORE, per_image).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ce": 1.0, "class_weights": [0.7, 1.4, 0.9, 0.0, 2.0]},
        {"ce": 0.0, "dice": 0.0, "ohem": 1.0, "ohem_threshold": 0.357, "class_weights": [0.7, 1.4, 0.9, 0.0, 2.0]},
        {"ce": 0.0, "dice": 0.0, "focal": 1.0, "focal_alpha": [0.7, 1.4, 0.9, 0.0, 2.0]},
        {"ce": 0.5, "dice": 0.0, "lovasz": 0.5},
        {"ce": 0.0, "dice": 0.0, "lovasz": 1.0, "lovasz_per_image": True},
    ],
    ids=["ce-weighted", "ohem-weighted", "focal-alpha", "lovasz-ce", "lovasz-per-image"],
)
def test_loss_terms_give_finite_float32_gradients_under_bf16_autocast(kwargs: dict) -> None:
    torch.manual_seed(9)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    x, target = 4 * torch.randn(2, 3, 16, 16), torch.randint(0, 5, (2, 16, 16))
    target[0, :4] = IGNORE
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        value = CombinedLoss(5, IGNORE, **kwargs)(logits, target)
    value.backward()
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32
    assert math.isfinite(value.item()) and value.item() > 0
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def big_batch() -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """A 4x11x512x512 batch (CamVid's classes) and its float32 losses."""
    gen = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(4, 11, 512, 512, generator=gen)
    target = torch.randint(0, 11, (4, 512, 512), generator=gen)
    target[:, :16] = IGNORE
    reference = {name: make()(logits, target).item() for name, make in BIG_LOSSES.items()}
    return logits, target, reference


BIG_LOSSES = {
    "dice": lambda: DiceLoss(11, IGNORE),
    "combined": lambda: CombinedLoss(11, IGNORE, ce=0.5, dice=0.5, focal=0.5),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(BIG_LOSSES))
@pytest.mark.slow
def test_losses_under_autocast_equal_float32(big_batch, name: str, dtype: torch.dtype) -> None:  # noqa: ANN001
    logits, target, reference = big_batch
    # Under autocast the network hands over half-precision logits; fp16 autocast is used on
    # the loss alone (CPU fp16 kernels are too slow for a whole network in a test).
    with torch.autocast("cpu", dtype=dtype):
        value = BIG_LOSSES[name]()(logits.to(dtype), target)
    assert value.dtype == torch.float32
    assert math.isfinite(value.item())
    assert value.item() == pytest.approx(reference[name], abs=1e-3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"class_weights": [1.0, 2.0]}, "class_weights has 2 values but num_classes is 3"),
        ({"class_weights": [1.0, -2.0, 1.0]}, r"must be finite, >= 0"),
        ({"class_weights": "inverse"}, r"'inverse' is not a known mode.*median_frequency"),
        ({"focal": 0.5, "focal_alpha": [1.0]}, "alpha has 1 values but num_classes is 3"),
        ({"ce": 0.0, "dice": 0.0}, "at least one above 0"),
        ({"dice_mode": "binary"}, "needs num_classes 2"),
        ({"dice_mode": "soft"}, "'soft' is unknown"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\)"),
        ({"ohem": 1.0, "ohem_fraction": 1.5}, r"ohem_fraction 1.5 must be in \[0, 1\]"),
        ({"ohem": 1.0, "ohem_fraction": 0.0}, "ohem keeps no pixel"),
        ({"class_weights": "median_frequency", "focal_alpha": "effective_number"}, "name different modes"),
        ({"class_weight_beta": 1.0}, r"class_weight_beta must be in \[0, 1\) or null \(from the data\), got 1.0"),
    ],
)
def test_bad_loss_settings_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CombinedLoss(3, IGNORE, **kwargs)


def _pairs(masks: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.zeros((1, len(m), 3), np.uint8), np.array([m], np.int64)) for m in masks]


def test_median_frequency_weights_match_hand_counts() -> None:
    # Class pixels 5, 1, 2, 0; labelled pixels of the masks containing each: 8, 4, 4, 0.
    # Frequencies 5/8, 1/4, 2/4 -> median 1/2 -> weights 0.8, 2, 1; class 3 never occurs -> 0.
    samples = _pairs([[0, 0, 0, 1, IGNORE], [0, 0, 2, 2]])
    pixels, present = class_pixel_counts(samples, 4, IGNORE)
    assert pixels.tolist() == [5, 1, 2, 0]
    assert present.tolist() == [8, 4, 4, 0]
    assert median_frequency_weights(pixels, present).tolist() == pytest.approx([0.8, 2.0, 1.0, 0.0])
    assert compute_class_weights("median_frequency", samples, 4, IGNORE).tolist() == pytest.approx([0.8, 2, 1, 0])


def test_inverse_sqrt_frequency_weights_match_hand_counts() -> None:
    # Class pixels 5, 1, 2, 0 of 8: 1/sqrt(f) = sqrt(8/5), sqrt(8), 2, scaled to average 1 over the three seen.
    samples = _pairs([[0, 0, 0, 1, IGNORE], [0, 0, 2, 2]])
    raw = [math.sqrt(8 / 5), math.sqrt(8), 2.0]
    expected = [3 * r / sum(raw) for r in raw] + [0.0]
    pixels, present = class_pixel_counts(samples, 4, IGNORE)
    assert inverse_sqrt_frequency_weights(pixels, present).tolist() == pytest.approx(expected)
    assert compute_class_weights("inverse_sqrt_frequency", samples, 4, IGNORE).tolist() == pytest.approx(expected)


def test_effective_number_weights_match_hand_counts() -> None:
    # beta 1/2: effective numbers (1 - 2^-n) / (1/2) = 31/16, 1, 3/2 for n = 5, 1, 2;
    # inverses 16/31, 1, 2/3 = 48/93, 93/93, 62/93, scaled to sum 3: 144/203, 279/203, 186/203.
    samples = _pairs([[0, 0, 0, 1, IGNORE], [0, 0, 2, 2]])
    expected = [144 / 203, 279 / 203, 186 / 203, 0.0]
    pixels, present = class_pixel_counts(samples, 4, IGNORE)
    assert effective_number_weights(pixels, present, beta=0.5).tolist() == pytest.approx(expected)
    got = compute_class_weights("effective_number", samples, 4, IGNORE, beta=0.5)
    assert got.tolist() == pytest.approx(expected)
    # beta 0 counts every class once (equal weights); beta near 1 tends to 1/n (5:1:2 -> 2/5, 2, 1, sum 3.4).
    assert effective_number_weights(pixels, present, beta=0.0).tolist() == pytest.approx([1, 1, 1, 0])
    near_one = effective_number_weights(pixels, present, beta=1 - 1e-9).tolist()
    assert near_one == pytest.approx([3 * w / 3.4 for w in (0.4, 2.0, 1.0)] + [0.0], rel=1e-6)


def test_effective_number_default_beta_follows_the_data_size() -> None:
    # 6400 labelled pixels: counts saturate at 1/64 of them, 100, so beta = 1 - 1/100.
    pixels = np.array([6000, 300, 100, 0])
    assert data_beta(pixels) == pytest.approx(0.99)
    expected = effective_number_weights(pixels, pixels, beta=0.99).tolist()
    assert effective_number_weights(pixels, pixels).tolist() == pytest.approx(expected)
    assert class_weights_from_counts("effective_number", pixels, pixels).tolist() == pytest.approx(expected)
    # The same shares in a set 1000x larger weigh alike (beta**n tends to exp(-64 n / N): within
    # 0.2 % at 100 pixels' saturation); a fixed beta would weigh them almost equally.
    assert effective_number_weights(pixels * 1000, pixels * 1000).tolist() == pytest.approx(expected, rel=2e-3)
    fixed = effective_number_weights(pixels * 1000, pixels * 1000, beta=0.99).tolist()
    assert fixed == pytest.approx([1, 1, 1, 0])
    # Under 64 labelled pixels beta is 0: every class that occurs counts once.
    assert data_beta(np.array([30, 2])) == 0.0


def test_class_counts_name_the_bad_mask() -> None:
    with pytest.raises(ValueError, match=r"training mask #1 holds value 9, neither a class id in \[0, 4\)"):
        class_pixel_counts(_pairs([[0, 1], [9, 0]]), 4, IGNORE)


def _tiny_fit(loss, tmp_path) -> SegModule:  # noqa: ANN001
    dm = SegDataModule(source=SyntheticShapes(size=32, num_train=8, num_val=4), batch_size=4, num_workers=0)
    model = SegModule(
        backbone=partial(UNet, base_channels=4, depth=1), num_classes=5, class_names=dm.class_names, loss=loss
    )
    trainer = quiet_trainer(fast_dev_run=1, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    return model


@pytest.mark.parametrize("mode", ["median_frequency", "inverse_sqrt_frequency", "effective_number"])
def test_module_computes_class_weights_from_training_masks(mode: str, tmp_path) -> None:  # noqa: ANN001
    beta = 0.999  # reaches the mode from the loss's class_weight_beta
    loss = partial(CombinedLoss, class_weights=mode, focal=0.5, focal_alpha=mode, ohem=0.5, class_weight_beta=beta)
    model = _tiny_fit(loss, tmp_path)
    samples = SyntheticShapes(size=32, num_train=8).split("train", IGNORE)
    expected = compute_class_weights(mode, samples, 5, IGNORE, beta=beta)
    assert model.criterion.class_weight_mode is None
    terms = model.criterion.terms
    assert terms["ce"].class_weight.tolist() == pytest.approx(expected.tolist())
    assert terms["ohem"].class_weight.tolist() == pytest.approx(expected.tolist())
    assert terms["focal"].alpha.tolist() == pytest.approx(expected.tolist())
    assert len(set(expected.tolist())) > 1  # really computed, not the placeholder ones


def test_a_fit_without_a_segdatamodule_refuses_weights_by_mode(tmp_path) -> None:  # noqa: ANN001
    data = SegDataModule(source=SyntheticShapes(size=32, num_train=8, num_val=4), batch_size=4, num_workers=0)
    model = SegModule(
        backbone=partial(UNet, base_channels=4, depth=1), num_classes=5, loss=partial(CombinedLoss, class_weights="median_frequency")
    )
    loader = torch.utils.data.DataLoader(data.dataset("train"), batch_size=4)  # loaders only, no datamodule
    with pytest.raises(ValueError) as error:
        quiet_trainer(fast_dev_run=1, default_root_dir=tmp_path).fit(model, train_dataloaders=loader)
    assert str(error.value) == (
        "loss class weights 'median_frequency' are counted from the training masks by a SegDataModule, but this fit's "
        "datamodule handed no counts; pass a SegDataModule or give one weight per class"
    )


@pytest.mark.parametrize(
    "name,weights",
    [
        ("ce", {"ce": 1.0, "dice": 0.0, "focal": 0.0}),
        ("dice_ce", {"ce": 0.5, "dice": 0.5, "focal": 0.0}),
        ("focal_ce", {"ce": 0.5, "dice": 0.0, "focal": 0.5}),
        ("ohem_ce", {"ce": 0.0, "ohem": 1.0, "ohem_fraction": 0.25, "ohem_threshold": 0.357}),
        ("lovasz_ce", {"ce": 0.5, "dice": 0.0, "lovasz": 0.5}),
    ],
)
def test_loss_configs_swap_the_loss_of_the_recipe(name: str, weights: dict[str, float], capsys) -> None:  # noqa: ANN001
    args = ["fit", "--config", str(CONFIGS / "amp.yaml"), "--config", str(CONFIGS / "loss" / f"{name}.yaml")]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    loss = yaml.safe_load(capsys.readouterr().out)["model"]["loss"]
    assert loss["class_path"] == "segopt.losses.CombinedLoss"
    assert {k: loss["init_args"][k] for k in weights} == weights


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.99, 2.0])
def test_focal_gradients_stay_finite_when_a_pixel_is_certain(gamma: float) -> None:
    # Class 0 at probability 1 in float32 (log p = 0 exactly), class 1 at 0.5.
    logits = torch.tensor([[[[200.0, 0.0]], [[0.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[[0, 1]]])
    loss = FocalLoss(2, gamma=gamma)(logits, target)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, :, 0, 0].abs().max().item() == 0.0  # the certain pixel teaches nothing
    # The uncertain pixel keeps its hand value: -(1 - 0.5)^gamma * log 0.5, averaged over 2 pixels.
    assert loss.item() == pytest.approx(-(0.5**gamma) * math.log(0.5) / 2, rel=1e-6)


@pytest.mark.parametrize("mode", ["median_frequency", "inverse_sqrt_frequency", "effective_number"])
def test_class_weight_configs_overlay_any_loss_config(mode: str, capsys) -> None:  # noqa: ANN001
    loss_config, weights = CONFIGS / "loss" / "lovasz_ce.yaml", CONFIGS / "loss" / "weights" / f"{mode}.yaml"
    args = ["fit", "--config", str(CONFIGS / "amp.yaml"), "--config", str(loss_config), "--config", str(weights)]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    init_args = yaml.safe_load(capsys.readouterr().out)["model"]["loss"]["init_args"]
    assert (init_args["class_weights"], init_args["focal_alpha"]) == (mode, mode)
    assert (init_args["ce"], init_args["lovasz"]) == (0.5, 0.5)  # the loss config's terms stay


# --- Shipped loss configs keep their meaning ---------------------------------------------------

#: Each shipped way of choosing the loss: config files and flags as given to ``segopt.commands.cli fit``.
SHIPPED_LOSSES: dict[str, list[str]] = {
    "amp": ["configs/amp.yaml"],
    "recipes/camvid": ["configs/recipes/camvid.yaml"],
    **{f"loss/{p.stem}": ["configs/amp.yaml", f"configs/loss/{p.name}"] for p in sorted((CONFIGS / "loss").glob("*.yaml"))},
    # Each class-weight overlay on a loss config whose terms it weighs.
    "weights/median_frequency": ["configs/amp.yaml", "configs/loss/focal_ce.yaml", "configs/loss/weights/median_frequency.yaml"],
    "weights/inverse_sqrt_frequency": [
        "configs/amp.yaml", "configs/loss/ohem_ce.yaml", "configs/loss/weights/inverse_sqrt_frequency.yaml"
    ],
    "weights/effective_number": ["configs/amp.yaml", "configs/loss/dice_ce.yaml", "configs/loss/weights/effective_number.yaml"],
}  # fmt: skip


def _ablation_loss_cells() -> dict[str, list[str]]:
    """The cells of the shipped ablation grids that change the loss by flag, on their grid's base."""
    cells = {}
    for grid_path in sorted((CONFIGS / "ablation").glob("*.yaml")):
        grid = yaml.safe_load(grid_path.read_text())
        for values in grid["axes"].values():
            for value, args in values.items():
                flags = [a for a in args if a.startswith("--model.loss")]
                if flags:
                    cells[f"ablation/{grid_path.stem}/{value}"] = [*grid["base"], *flags]
    return cells


SHIPPED_LOSSES.update(_ablation_loss_cells())

#: The fixed batch: 5 classes, a tenth of the pixels ignored; weights for a loss that asks for a mode.
SHIPPED_CLASSES = 5
SHIPPED_CLASS_WEIGHTS = torch.tensor([0.5, 0.875, 1.25, 1.625, 2.0])


def shipped_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(23)
    logits = 3 * torch.randn(2, SHIPPED_CLASSES, 12, 12, generator=gen)
    target = torch.randint(0, SHIPPED_CLASSES, (2, 12, 12), generator=gen)
    target[torch.rand(2, 12, 12, generator=gen) < 0.1] = IGNORE
    return logits, target


@functools.cache
def shipped_loss_spec(name: str) -> dict:
    """``model.loss`` of the shipped case ``name`` as the CLI resolves it."""
    args = ["fit", *(f"--config={CONFIGS.parent / a}" if a.endswith(".yaml") else a for a in SHIPPED_LOSSES[name])]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*args, "--print_config"])
    return yaml.safe_load(out.getvalue())["model"]["loss"]


def loss_from_spec(spec: dict, num_classes: int = SHIPPED_CLASSES) -> torch.nn.Module:
    """The loss of a ``model.loss`` config section, built as the CLI builds it."""
    parser = ArgumentParser()
    parser.add_argument("--loss", type=LossFactory)
    return parser.instantiate(parser.parse_object({"loss": spec})).loss(num_classes, IGNORE)


def build_shipped_loss(name: str) -> torch.nn.Module:
    """The loss of the shipped case ``name``, built as the CLI builds it, class weights filled in."""
    loss = loss_from_spec(shipped_loss_spec(name))
    if isinstance(loss, DataWeighted) and loss.class_weight_mode is not None:
        loss.set_class_weights(SHIPPED_CLASS_WEIGHTS)
    return loss


#: Each shipped case's loss on :func:`shipped_batch`, computed once with segopt/losses.py as it was
#: before it became a package (a single ``CombinedLoss``).
SHIPPED_LOSS_VALUES = {
    "amp": 2.1530308723449707,
    "recipes/camvid": 2.1216821670532227,
    "loss/ce": 3.534480571746826,
    "loss/dice_ce": 2.1530308723449707,
    "loss/focal_ce": 3.4127252101898193,
    "loss/lovasz_ce": 2.1884994506835938,
    "loss/ohem_ce": 4.068863868713379,
    "weights/median_frequency": 3.8130149841308594,
    "weights/inverse_sqrt_frequency": 3.981344699859619,
    "weights/effective_number": 2.1216821670532227,
    "ablation/camvid_recipe/no class weights": 2.1530308723449707,
    "ablation/camvid_recipe/median-frequency weights": 2.1216821670532227,
    "ablation/camvid_recipe/CE only (no Dice)": 3.471782922744751,
    "ablation/camvid_recipe/+ Lovász": 2.1571507453918457,
}


#: Recipes written by segopt plan (a .plan.json beside them): their loss is one of the cases below.
PLANNED_RECIPES = sorted(str(p.relative_to(CONFIGS.parent)) for p in (CONFIGS / "recipes").glob("*.yaml")
                         if p.with_name(p.stem + ".plan.json").exists())  # fmt: skip


def test_every_shipped_loss_config_is_a_case() -> None:
    assert set(SHIPPED_LOSSES) == set(SHIPPED_LOSS_VALUES)
    named = {a for args in SHIPPED_LOSSES.values() for a in args}
    configs = CONFIGS.rglob("*.yaml")
    shipped = {str(p.relative_to(CONFIGS.parent)) for p in configs if "loss" in yaml.safe_load(p.read_text()).get("model", {})}
    assert shipped - set(PLANNED_RECIPES) <= named


@pytest.mark.parametrize("recipe", PLANNED_RECIPES)
@pytest.mark.slow
def test_a_planned_recipes_loss_is_a_recorded_case(recipe: str) -> None:
    SHIPPED_LOSSES[f"planned:{recipe}"] = [recipe]
    try:
        spec = shipped_loss_spec(f"planned:{recipe}")
    finally:
        del SHIPPED_LOSSES[f"planned:{recipe}"]
    assert spec in (shipped_loss_spec("amp"), shipped_loss_spec("recipes/camvid"))


@pytest.mark.parametrize("name", list(SHIPPED_LOSS_VALUES))
def test_shipped_loss_configs_keep_their_values(name: str) -> None:
    assert build_shipped_loss(name)(*shipped_batch()).item() == pytest.approx(SHIPPED_LOSS_VALUES[name], abs=1e-6)


def test_a_checkpoint_of_the_single_file_combined_loss_loads() -> None:
    # Its buffers were ce_weight (CE and OHEM) and focal.alpha; the value was computed by that code.
    loss = CombinedLoss(5, IGNORE, ce=0.5, dice=0.0, focal=0.5, ohem=0.5, class_weights="median_frequency", focal_alpha="median_frequency")
    loss.load_state_dict({"ce_weight": SHIPPED_CLASS_WEIGHTS, "focal.alpha": SHIPPED_CLASS_WEIGHTS.flip(0)})
    assert loss(*shipped_batch()).item() == pytest.approx(7.644937515258789, abs=1e-6)
    assert sorted(loss.state_dict()) == ["terms.ce.class_weight", "terms.focal.alpha", "terms.ohem.class_weight"]


class HalfCE(torch.nn.Module):
    """A term defined outside segopt: half the cross-entropy."""

    def __init__(self, num_classes: int, ignore_index: int, scale: float = 0.5) -> None:
        super().__init__()
        self.ignore_index, self.scale = ignore_index, scale

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.scale * F.cross_entropy(logits, target, ignore_index=self.ignore_index)


def test_a_new_term_is_a_class_path_in_a_weighted_sum() -> None:
    spec = yaml.safe_load("""
        class_path: segopt.losses.WeightedSum
        init_args:
          terms:
            dice: segopt.losses.DiceLoss
            half_ce: {class_path: tests.test_losses.HalfCE, init_args: {scale: 0.25}}
            lovasz: segopt.losses.LovaszSoftmaxLoss
          weights: {dice: 2.0, lovasz: 0.0}
    """)
    loss = loss_from_spec(spec)
    logits, target = shipped_batch()
    assert list(loss.terms) == ["dice", "half_ce"]  # weight 0 leaves lovasz out; half_ce weighs 1
    expected = 2 * DiceLoss(SHIPPED_CLASSES, IGNORE)(logits, target) + 0.25 * F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize(
    "weights,message",
    [
        ({"dice": 1.0, "tversky": 1.0}, r"loss weights name \['tversky'\], which are not among the terms \['ce', 'dice'\]"),
        ({"ce": 0.0, "dice": 0.0}, "at least one above 0"),
    ],
)
def test_bad_weighted_sum_weights_are_clear_errors(weights: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightedSum(3, IGNORE, {"ce": CrossEntropyLoss, "dice": DiceLoss}, weights)


def test_weighted_sum_terms_must_ask_for_one_class_weight_mode() -> None:
    terms = {"ce": partial(CrossEntropyLoss, class_weights="median_frequency"), "focal": partial(FocalLoss, alpha="effective_number")}
    with pytest.raises(ValueError, match=r"different class_weight_mode \{'ce': 'median_frequency', 'focal': 'effective_number'\}"):
        WeightedSum(3, IGNORE, terms)
