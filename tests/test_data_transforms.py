"""The joint augmentation: masks stay aligned with images, fills are ignore_index, every knob reaches albumentations."""

from __future__ import annotations

import copy
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import yaml
from albumentations.pytorch import ToTensorV2
from jsonargparse import ArgumentParser

from segopt.data import DataError, PairedFolder, SyntheticShapes
from segopt.data.masks import IndexMask
from segopt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Augment, augmentation, eval_transform, train_transform
from segopt.lightning import SegDataModule

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IGNORE = 255


def pattern(h: int = 96, w: int = 128, seed: int = 0, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Random blocks: bright pixels are class 1, dark ones class 0, so the mask is derivable from the image."""
    cells = np.random.default_rng(seed).integers(0, 2, (h // block + 1, w // block + 1))
    mask = np.kron(cells, np.ones((block, block), np.uint8))[:h, :w].astype(np.uint8)
    image = np.repeat(np.where(mask == 1, 210, 45).astype(np.uint8)[..., None], 3, axis=2)
    return image, mask


def agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of labelled pixels whose class equals what the image says (bright = 1)."""
    labelled = mask != IGNORE
    return float(((image[..., 0] > 127) == (mask == 1))[labelled].mean())


def _unnormalise(tensor) -> np.ndarray:  # noqa: ANN001
    x = tensor.numpy().transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    return (x * 255).clip(0, 255).astype(np.uint8)


EVERY_KNOB = Augment(vflip=0.5, scale=(0.8, 1.2), translate=0.1, hue=0.05)


def _steps() -> list[A.BasicTransform]:
    """Every step of the training pipeline before normalisation, each forced to fire."""
    crop = train_transform(EVERY_KNOB, IGNORE, (64, 64), mode="crop").transforms[0]
    resize = train_transform(EVERY_KNOB, IGNORE, (64, 64), mode="resize").transforms[0]
    steps = [crop, resize, *augmentation(EVERY_KNOB, IGNORE)]
    forced = []
    for step in steps:
        step = copy.deepcopy(step)
        step.p = 1.0
        forced.append(step)
    return forced


@pytest.mark.parametrize("step", _steps(), ids=lambda s: type(s).__name__)
def test_image_and_mask_stay_aligned_under_each_transform(step):
    for seed in range(4):
        image, mask = pattern(48, 80, seed)  # smaller than the crop in height: padding too
        out = A.Compose([step], seed=seed)(image=image, mask=mask)
        assert out["mask"].shape == out["image"].shape[:2]
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1, IGNORE}
        assert agreement(out["image"], out["mask"]) > 0.97


def test_alignment_measure_catches_a_misaligned_pair():
    image, mask = pattern(seed=1)
    assert agreement(image[:, ::-1], mask) < 0.7  # the tutorial's bug: image flipped, mask not


def test_full_training_pipeline_keeps_alignment_and_valid_values():
    pipeline = train_transform(EVERY_KNOB, IGNORE, (64, 64), mode="crop", seed=3)
    changed = 0
    for seed in range(8):
        image, mask = pattern(80, 100, seed)
        out = pipeline(image=image, mask=mask)
        out_mask = np.asarray(out["mask"])
        assert set(np.unique(out_mask).tolist()) <= {0, 1, IGNORE}
        assert agreement(_unnormalise(out["image"]), out_mask) > 0.97
        changed += not np.array_equal(out_mask[:64, :64], mask[:64, :64])
    assert changed >= 6  # the augmentation really moved things


def test_rotation_fill_is_ignore_index_never_a_class():
    affine = copy.deepcopy(augmentation(Augment(rotate=30, shear=0), IGNORE)[1])
    assert isinstance(affine, A.Affine)
    affine.p = 1.0
    image = np.full((64, 64, 3), 200, np.uint8)
    mask = np.ones((64, 64), np.uint8)  # every pixel class 1: any other value came from the fill
    filled = 0
    for seed in range(6):
        out = A.Compose([affine], seed=seed)(image=image, mask=mask)
        assert set(np.unique(out["mask"]).tolist()) <= {1, IGNORE}
        outside = out["mask"] == IGNORE
        assert out["image"][outside].mean() < 100  # the image got the fill (0) at the same pixels
        filled += int(outside.sum())
    assert filled > 0.03 * 6 * 64 * 64


def test_crop_padding_is_ignore_index():
    crop = train_transform(Augment(enabled=False), IGNORE, (64, 64), mode="crop").transforms[0]
    out = A.Compose([crop])(image=np.full((40, 40, 3), 9, np.uint8), mask=np.zeros((40, 40), np.uint8))
    assert out["mask"].shape == (64, 64)
    assert (out["mask"] == IGNORE).sum() == 64 * 64 - 40 * 40
    assert (out["mask"] == 0).sum() == 40 * 40


def test_eval_pipeline_is_deterministic():
    pipeline = eval_transform((48, 64))
    assert [type(t) for t in pipeline.transforms] == [A.Resize, A.Normalize, ToTensorV2]
    image, mask = pattern(seed=2)
    one, two = pipeline(image=image, mask=mask), pipeline(image=image, mask=mask)
    assert (one["image"] == two["image"]).all() and np.array_equal(one["mask"], two["mask"])


def test_every_augment_parameter_is_settable_from_yaml():
    text = """
    data:
      num_workers: 0
      augment: {hflip: 0.3, vflip: 0.2, rotate: 7, shear: 3, scale: [0.8, 1.2], translate: 0.1, affine_p: 0.6,
                brightness: 0.1, contrast: 0.15, saturation: 0.25, hue: 0.05, jitter_p: 0.4, fill: 9}
    """
    parser = ArgumentParser()
    parser.add_class_arguments(SegDataModule, "data")
    dm = parser.instantiate(parser.parse_object(yaml.safe_load(text))).data
    flip, vflip, affine, jitter = (t.to_dict()["transform"] for t in augmentation(dm.augment, IGNORE))
    assert (flip["p"], vflip["p"]) == (0.3, 0.2)
    assert affine["rotate"] == (-7.0, 7.0) and affine["shear"] == {"x": (-3.0, 3.0), "y": (0.0, 0.0)}
    assert affine["scale"] == {"x": (0.8, 1.2), "y": (0.8, 1.2)}
    assert affine["translate_percent"] == {"x": (-0.1, 0.1), "y": (-0.1, 0.1)}
    assert (affine["p"], affine["fill"], affine["fill_mask"], affine["mask_interpolation"]) == (0.6, 9.0, 255, 0)
    assert jitter["brightness"] == (0.9, 1.1) and jitter["contrast"] == (0.85, 1.15)
    assert jitter["saturation"] == (0.75, 1.25) and jitter["hue"] == (-0.05, 0.05) and jitter["p"] == 0.4


def test_grey_images_get_brightness_contrast_instead_of_colour_jitter():
    steps = augmentation(Augment(), IGNORE, in_channels=1)
    assert type(steps[-1]) is A.RandomBrightnessContrast
    out = train_transform(Augment(), IGNORE, (32, 32), in_channels=1, seed=0)(
        image=np.full((40, 40, 1), 100, np.uint8), mask=np.zeros((40, 40), np.uint8)
    )
    assert tuple(out["image"].shape) == (1, 32, 32)


# -- a user's own albumentations pipeline -----------------------------------------------


def _source() -> SyntheticShapes:
    return SyntheticShapes(size=32, num_train=2, num_val=1)


def test_custom_pipeline_file_replaces_the_augmentation(tmp_path: Path):
    path = tmp_path / "flip.yaml"
    A.save(A.Compose([A.VerticalFlip(p=1.0)]), str(path), data_format="yaml")
    dm = SegDataModule(_source(), num_workers=0, train_pipeline=str(path))
    image, mask = _source().split("train", IGNORE)[0]
    item = dm.dataset("train")[0]
    np.testing.assert_array_equal(item["mask"].numpy(), mask[::-1])
    np.testing.assert_allclose(item["image"].numpy()[0], ((image[::-1, :, 0] / 255.0) - 0.485) / 0.229, atol=1e-5)


def test_custom_whole_pipeline_ending_in_to_tensor_is_used_as_is(tmp_path: Path):
    path = tmp_path / "whole.json"
    A.save(A.Compose([A.HorizontalFlip(p=1.0), A.Normalize(mean=0, std=1), ToTensorV2()]), str(path))
    dm = SegDataModule(_source(), num_workers=0, train_pipeline=str(path))
    image, _ = _source().split("train", IGNORE)[0]
    np.testing.assert_allclose(dm.dataset("train")[0]["image"].numpy()[1], image[:, ::-1, 1] / 255.0, atol=1e-6)


def test_custom_pipeline_whose_fill_is_a_wrong_class_is_caught(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    A.save(A.Compose([A.Affine(rotate=(40, 45), fill_mask=100, p=1.0)]), str(path), data_format="yaml")
    dm = SegDataModule(_source(), num_workers=0, train_pipeline=str(path))
    with pytest.raises(DataError, match=r"mask holds \[100\].*fill_mask: 255"):
        dm.dataset("train")[0]


def test_missing_custom_pipeline_file_fails_when_the_datamodule_is_built(tmp_path: Path):
    with pytest.raises(DataError, match=r"data.train_pipeline .*nope.yaml does not exist.*albumentations.save"):
        SegDataModule(_source(), train_pipeline=str(tmp_path / "nope.yaml"))


def test_real_camvid_masks_after_augmentation_hold_only_classes_or_ignore():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    source = PairedFolder(str(SHARED / "camvid"), [str(i) for i in range(11)], masks=IndexMask(void=[11]))
    pipeline = train_transform(Augment(), IGNORE, (256, 256), mode="crop", seed=0)
    samples = source.split("train", IGNORE)
    seen: set[int] = set()
    for i in range(3):
        image, mask = samples[i]
        out = pipeline(image=image, mask=mask)
        values = set(np.unique(out["mask"]).tolist())
        assert values <= set(range(11)) | {IGNORE}
        seen |= values
    assert IGNORE in seen and len(seen) >= 6
