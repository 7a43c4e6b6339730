"""Losses: hand-computed Dice/Focal/CE values, ignore handling, mixed precision, class weights."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from segopt.class_weights import class_pixel_counts, compute_class_weights, median_frequency_weights
from segopt.cli import main
from segopt.data import SegDataModule
from segopt.data.synthetic import SyntheticShapes
from segopt.losses import CombinedLoss, DiceLoss, FocalLoss, cross_entropy_loss
from segopt.models import UNet
from segopt.module import SegModule

from tests.conftest import CONFIGS

IGNORE = 255



def hard_logits(classes: torch.Tensor, num_classes: int, scale: float = 100.0) -> torch.Tensor:
    """Logits ``[B,K,H,W]`` whose softmax is (numerically) one-hot on ``classes`` ``[B,H,W]``."""
    return scale * F.one_hot(classes, num_classes).permute(0, 3, 1, 2).float()


# A 4x4 two-class target: class 0 on the top 10 pixels, class 1 on the bottom 6.
TARGET = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]).unsqueeze(0)


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
    ],
    ids=["dice", "dice-no-bg", "focal", "combined"],
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
def test_losses_under_autocast_equal_float32(big_batch, name: str, dtype: torch.dtype) -> None:  # noqa: ANN001
    logits, target, reference = big_batch
    # Under autocast the network hands over half-precision logits; fp16 autocast is used on
    # the loss alone (CPU fp16 kernels are too slow for a whole network in a test).
    with torch.autocast("cpu", dtype=dtype):
        value = BIG_LOSSES[name]()(logits.to(dtype), target)
    assert value.dtype == torch.float32
    assert math.isfinite(value.item())
    assert value.item() == pytest.approx(reference[name], abs=1e-3)


def test_out_of_range_mask_value_is_a_clear_error() -> None:
    target = torch.tensor([[[0, 1], [7, 255]]])
    for loss in (DiceLoss(3, IGNORE), CombinedLoss(3, IGNORE)):
        with pytest.raises(ValueError, match=r"mask value 7 is neither a class id in \[0, 3\) nor ignore_index 255"):
            loss(torch.randn(1, 3, 2, 2), target)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"class_weights": [1.0, 2.0]}, "class_weights has 2 values but num_classes is 3"),
        ({"class_weights": [1.0, -2.0, 1.0]}, r"must be finite, >= 0"),
        ({"class_weights": "inverse"}, r"'inverse' is not a known mode.*median_frequency"),
        ({"focal_alpha": [1.0]}, "alpha has 1 values but num_classes is 3"),
        ({"ce": 0.0, "dice": 0.0}, "at least one above 0"),
        ({"dice_mode": "binary"}, "needs num_classes 2"),
        ({"dice_mode": "soft"}, "'soft' is unknown"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\)"),
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


def test_class_counts_name_the_bad_mask() -> None:
    with pytest.raises(ValueError, match=r"training mask #1 holds value 9, neither a class id in \[0, 4\)"):
        class_pixel_counts(_pairs([[0, 1], [9, 0]]), 4, IGNORE)


def _tiny_fit(loss, tmp_path) -> SegModule:  # noqa: ANN001
    dm = SegDataModule(source=SyntheticShapes(size=32, num_train=8, num_val=4), batch_size=4, num_workers=0)
    model = SegModule(
        backbone=partial(UNet, base_channels=4, depth=1), num_classes=5, class_names=dm.class_names, loss=loss
    )
    trainer = pl.Trainer(
        fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    trainer.fit(model, dm)
    return model


def test_module_computes_median_frequency_weights_from_training_masks(tmp_path) -> None:  # noqa: ANN001
    mode = "median_frequency"
    model = _tiny_fit(partial(CombinedLoss, class_weights=mode, focal=0.5, focal_alpha=mode), tmp_path)
    expected = compute_class_weights(mode, SyntheticShapes(size=32, num_train=8).split("train", IGNORE), 5, IGNORE)
    assert model.criterion.class_weight_mode is None
    assert model.criterion.ce_weight.tolist() == pytest.approx(expected.tolist())
    assert model.criterion.focal.alpha.tolist() == pytest.approx(expected.tolist())
    assert len(set(expected.tolist())) > 1  # really computed, not the placeholder ones


@pytest.mark.parametrize(
    "name,weights",
    [
        ("ce", {"ce": 1.0, "dice": 0.0, "focal": 0.0}),
        ("dice_ce", {"ce": 0.5, "dice": 0.5, "focal": 0.0}),
        ("focal_ce", {"ce": 0.5, "dice": 0.0, "focal": 0.5}),
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
