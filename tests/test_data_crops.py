"""The training crop: scale jitter (exact sizes, nearest masks, ignore_index padding) and rare-class
crops (the configured share centred on rare pixels, rare classes from the training pixel counts)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import yaml
from albumentations.pytorch import ToTensorV2
from jsonargparse import ArgumentParser

from segopt.data import IndexMask, PairedFolder, SegSource, SyntheticShapes
from segopt.data.rare_crop import RareClassCrop, rare_classes
from segopt.data.transforms import Augment, train_transform
from segopt.lightning import SegDataModule

IGNORE = 255
CLASSES = (0, 3, 7)
#: Geometry only: no affine warp or colour jitter, so the image still encodes the mask exactly.
GEOMETRY_ONLY = dict(rotate=0, shear=0, affine_p=0, brightness=0, contrast=0, saturation=0, jitter_p=0)


def coded(h: int = 96, w: int = 128, seed: int = 0, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of classes 0, 3, 7 whose image value is 20 + 30 * class (never the padding fill 0)."""
    cells = np.random.default_rng(seed).choice(CLASSES, (h // block + 1, w // block + 1))
    mask = np.kron(cells, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)
    image = np.repeat((20 + 30 * mask).astype(np.uint8)[..., None], 3, axis=2)
    return image, mask


def agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of the labelled pixels whose image value is a pure class code (not a blend of two) that
    agree with the mask; a mask flipped against its image scores about 0.5 here."""
    codes = {20 + 30 * c: c for c in CLASSES}
    pure = np.isin(image[..., 0], list(codes)) & (mask != IGNORE)
    return float((np.vectorize(codes.get)(image[..., 0][pure]) == mask[pure]).mean())


def run(augment: Augment, size=(64, 80), mode="resize", seed=0, h=96, w=128):  # noqa: ANN001, ANN201
    """One pass of the training pipeline (uint8 output) over a coded pair: image HWC, mask HW."""
    pipeline = train_transform(augment, IGNORE, size, mode=mode, seed=seed, normalize=False)
    out = pipeline(**dict(zip(("image", "mask"), coded(h, w, seed))))
    return out["image"].numpy().transpose(1, 2, 0), np.asarray(out["mask"])


def test_scale_jitter_resizes_to_the_base_then_rescales_then_crops():
    augment = Augment(random_scale=(0.5, 2.0))
    steps = [type(t) for t in train_transform(augment, IGNORE, (64, 80), mode="resize").transforms]
    assert steps[:4] == [A.Resize, A.RandomScale, A.RandomCrop, A.HorizontalFlip]
    assert steps[-3:] == [A.ColorJitter, A.Normalize, ToTensorV2]
    crop_mode = [type(t) for t in train_transform(augment, IGNORE, (64, 80), mode="crop").transforms]
    assert crop_mode[:3] == [A.RandomScale, A.RandomCrop, A.HorizontalFlip]
    scale = train_transform(augment, IGNORE, (64, 80)).transforms[1].to_dict()["transform"]
    assert (scale["scale_limit"], scale["interpolation"], scale["mask_interpolation"], scale["p"]) == (
        (-0.5, 1.0),
        1,  # linear for images
        0,  # nearest for masks
        1.0,
    )


def test_scale_jitter_is_off_by_default_and_with_augmentation_off():
    for augment in (Augment(), Augment(enabled=False, random_scale=(0.5, 2.0))):
        steps = [type(t) for t in train_transform(augment, IGNORE, (64, 80), mode="resize").transforms]
        assert A.RandomScale not in steps and A.RandomCrop not in steps


def test_half_scale_is_centred_in_the_crop_and_padded_with_ignore_index():
    image, mask = run(Augment(random_scale=(0.5, 0.5), hflip=0, **GEOMETRY_ONLY))
    assert image.shape == (64, 80, 3) and mask.shape == (64, 80)
    labelled = np.zeros((64, 80), bool)
    labelled[16:48, 20:60] = True  # 96x128 → base 64x80 → 32x40, padded equally on each side
    np.testing.assert_array_equal(mask != IGNORE, labelled)
    np.testing.assert_array_equal(image[~labelled], 0)  # the image got the fill where the mask got ignore


@pytest.mark.parametrize("mode", ["resize", "crop"])
def test_scale_jitter_keeps_masks_aligned_nearest_and_exactly_the_train_size(mode):
    padded, misaligned = 0, []
    for seed in range(16):
        image, mask = run(Augment(random_scale=(0.5, 2.0), **GEOMETRY_ONLY), mode=mode, seed=seed)
        assert image.shape == (64, 80, 3) and mask.shape == (64, 80)
        assert set(np.unique(mask).tolist()) <= {*CLASSES, IGNORE}  # nearest: no class invented between 3 and 7
        pad = mask == IGNORE
        np.testing.assert_array_equal(pad, (image == 0).all(-1))  # padding is exactly where the image is fill
        # Linear image resampling and nearest mask sampling place a block edge up to a pixel apart.
        assert agreement(image, mask) > 0.97
        misaligned.append(agreement(image[:, ::-1], mask))
        padded += pad.any()
    assert 0 < padded < 16  # some scaled below the crop (padded), some above
    assert np.mean(misaligned) < 0.7  # the measure catches a mask flipped against its image


def test_scale_jitter_composes_with_flip_rotation_and_colour():
    pipeline = train_transform(Augment(random_scale=(0.5, 2.0)), IGNORE, (64, 80), mode="resize", seed=1)
    for seed in range(4):
        out = pipeline(**dict(zip(("image", "mask"), coded(seed=seed))))
        assert tuple(out["image"].shape) == (3, 64, 80) and tuple(out["mask"].shape) == (64, 80)
        assert set(np.unique(out["mask"]).tolist()) <= {*CLASSES, IGNORE}


def test_same_seed_same_scale_jitter():
    one = run(Augment(random_scale=(0.5, 2.0)), seed=5)
    two = run(Augment(random_scale=(0.5, 2.0)), seed=5)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


@pytest.mark.slow
def test_scale_jitter_is_switched_on_from_yaml():
    text = """
    data:
      num_workers: 0
      train_size: [32, 48]
      augment: {random_scale: [0.5, 2.0]}
    """
    parser = ArgumentParser()
    parser.add_class_arguments(SegDataModule, "data")
    dm = parser.instantiate(parser.parse_object(yaml.safe_load(text))).data
    assert tuple(dm.augment.random_scale) == (0.5, 2.0)
    steps = dm.dataset("train").transform.transforms
    assert [type(t) for t in steps[:3]] == [A.Resize, A.RandomScale, A.RandomCrop]
    assert tuple(dm.dataset("train")[0]["mask"].shape) == (32, 48)


def _source() -> SyntheticShapes:
    return SyntheticShapes(size=32, num_train=2, num_val=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(train_size=(32, 32), augment=Augment(random_scale=(2.0, 0.5))), r"random_scale is \[2.0, 0.5\]; give"),
        (dict(train_size=(32, 32), augment=Augment(random_scale=(0.0, 2.0))), r"0 < low <= high, e.g. \[0.5, 2.0\]"),
        (dict(augment=Augment(random_scale=(0.5, 2.0))), r"data.train_size is null; .*set it"),
        (dict(train_size=(32, 32), augment=Augment(random_scale=None)), r"random_scale is null; give \[1.0, 1.0\] to turn"),
    ],
)
def test_bad_scale_jitter_settings_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegDataModule(_source(), num_workers=0, **kwargs)


def test_scale_jitter_with_a_pipeline_file_is_refused(tmp_path):
    path = tmp_path / "flip.yaml"
    A.save(A.Compose([A.VerticalFlip(p=1.0)]), str(path), data_format="yaml")
    with pytest.raises(ValueError, match=r"random_scale .*train_pipeline .*flip.yaml replaces data.augment"):
        SegDataModule(_source(), num_workers=0, train_size=(32, 32), train_pipeline=str(path),
                      augment=Augment(random_scale=(0.5, 2.0)))


# -- rare-class crops -------------------------------------------------------------------

RARE_AT = {5: [(100, 50)], 6: [(40 + i // 10, 150 + i % 10) for i in range(50)]}  # 1 pixel of 5, 50 of 6


def scene(h: int = 200, w: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 everywhere but one pixel of class 5 and a 5x10 patch of class 6, at least 16 px from the
    edges; the image's first channel is the class id plus 1 (the padding fill is 0)."""
    mask = np.zeros((h, w), np.uint8)
    for cls, pixels in RARE_AT.items():
        for y, x in pixels:
            mask[y, x] = cls
    image = np.dstack([mask + 1, np.zeros_like(mask), np.zeros_like(mask)]).astype(np.uint8)
    return image, mask


def rare_crop(share: float, classes=(5, 6), seed: int = 0) -> A.Compose:  # noqa: ANN001
    crop = RareClassCrop(32, 32, classes=classes, share=share, pad_if_needed=True, fill_mask=IGNORE)
    return A.Compose([crop], seed=seed)


def centres(share: float, n: int, seed: int = 0) -> list[int]:
    """The class at the centre pixel of each of ``n`` crops of the scene."""
    pipeline, (image, mask) = rare_crop(share, seed=seed), scene()
    return [int(pipeline(image=image, mask=mask)["mask"][16, 16]) for _ in range(n)]


def test_rare_classes_are_those_present_under_the_pixel_share():
    pixels = np.array([1000, 10, 0, 500, 30])  # shares .649, .0065, 0, .325, .0195
    assert rare_classes(pixels, 0.02) == [1, 4]  # class 2 never occurs: nothing to centre on
    assert rare_classes(pixels, 0.01) == [1]


def test_share_one_centres_every_crop_on_a_rare_pixel():
    assert set(centres(1.0, 200)) <= {5, 6}


def test_rare_classes_are_drawn_uniformly_not_by_pixel_count():
    # Class 5 has 1 pixel, class 6 has 50: per class, 5 is the centre of half the crops.
    # 200 draws of a fair coin: 100 ± 21 is a 3-sigma bound; the seed makes the count exact.
    assert 79 <= centres(1.0, 200).count(5) <= 121


def test_share_half_centres_half_of_the_crops_on_rare_pixels():
    # A random crop's centre hits one of 51 rare pixels with probability 51/169², about 0.2 %.
    rare = sum(c in (5, 6) for c in centres(0.5, 400))
    assert 170 <= rare <= 230  # 400 × 0.5 ± 3 sigma (sigma = 10)


def test_share_zero_keeps_crops_random():
    assert sum(c in (5, 6) for c in centres(0.0, 400)) <= 5


@pytest.mark.parametrize("side", [40, 20])  # 40: the crop shifts to stay inside; 20: it is padded too
def test_a_rare_pixel_at_the_edge_is_inside_the_crop_and_the_image_follows_the_mask(side):
    mask = np.zeros((side, side), np.uint8)
    mask[1, side - 2] = 5
    image = np.dstack([mask + 1] * 3)
    pipeline = rare_crop(1.0, classes=[5])
    for _ in range(20):
        out = pipeline(image=image, mask=mask)
        assert out["mask"].shape == (32, 32) and (out["mask"] == 5).sum() == 1
        labelled = out["mask"] != IGNORE
        assert labelled.sum() == min(side, 32) ** 2
        np.testing.assert_array_equal(out["image"][..., 0], np.where(labelled, out["mask"] + 1, 0))


def test_crop_without_rare_pixels_is_a_plain_random_crop():
    image, mask = scene()
    mask[mask > 0] = 0
    out = rare_crop(1.0)(image=image, mask=mask)
    assert out["mask"].shape == (32, 32) and set(np.unique(out["mask"]).tolist()) == {0}


def test_same_seed_same_rare_crops_and_reseeding_changes_them():
    assert centres(0.5, 50, seed=3) == centres(0.5, 50, seed=3)
    image, mask = scene()
    one, two = rare_crop(1.0, seed=3), rare_crop(1.0, seed=4)
    crops = [(one(image=image, mask=mask)["mask"], two(image=image, mask=mask)["mask"]) for _ in range(10)]
    assert any(not np.array_equal(a, b) for a, b in crops)


class Arrays(SegSource):
    """Training masks whose class pixel counts are set by hand."""

    class_names = ("road", "car", "pole", "sign")

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.pairs = pairs

    def split(self, name: str, ignore_index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.pairs


def _arrays() -> Arrays:
    """Two 100x100 masks: car 500 px (2.5 %), pole 100 (0.5 %), sign 20 (0.1 %), road the rest."""
    pairs = []
    for i in range(2):
        mask = np.zeros((100, 100), np.uint8)
        mask[:5, :50] = 1
        mask[50:55, 10 + i * 10 : 20 + i * 10] = 2
        if i == 0:
            mask[80:84, 40:45] = 3
        pairs.append((np.zeros((100, 100, 3), np.uint8), mask))
    return Arrays(pairs)


def test_datamodule_counts_the_training_masks_once_and_crops_on_the_rare_classes_from_yaml():
    text = """
    data:
      num_workers: 0
      train_size: [32, 32]
      resize_mode: crop
      augment: {rare_crop_share: 1.0, rare_class_below: 0.01}
    """
    parser = ArgumentParser()
    parser.add_class_arguments(SegDataModule, "data")
    config = parser.parse_object(yaml.safe_load(text))
    config.data.source = _arrays()
    dm = parser.instantiate(config).data
    crop = dm.dataset("train").transform.transforms[0]
    assert isinstance(crop, RareClassCrop) and (crop.classes, crop.share) == ([2, 3], 1.0)
    for i in range(2):
        mask = dm.dataset("train")[i]["mask"].numpy()
        assert ((mask == 2) | (mask == 3)).any()


def test_no_class_under_the_threshold_is_an_error_naming_the_rarest():
    dm = SegDataModule(_arrays(), num_workers=0, train_size=(32, 32), resize_mode="crop",
                       augment=Augment(rare_crop_share=0.5, rare_class_below=0.0005))
    with pytest.raises(ValueError, match=r"no class holds less than 0.05%.*'sign', holds 0.10%.*rare_class_below"):
        dm.dataset("train")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(augment=Augment(rare_crop_share=1.5)), r"rare_crop_share is 1.5; give a probability in \[0, 1\]"),
        (dict(augment=Augment(rare_class_below=0)), r"rare_class_below is 0; give a pixel share in \(0, 1\]"),
        (dict(train_size=(32, 32), augment=Augment(rare_crop_share=0.5)), r"training images are not cropped.*upper bound above 1"),
        (dict(augment=Augment(rare_crop_share=0.5)), r"not cropped \(train_size None"),
    ],
)
def test_bad_rare_crop_settings_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegDataModule(_source(), num_workers=0, **kwargs)


def test_real_camvid_crops_with_scale_jitter_and_rare_share_one_all_hold_a_rare_class():
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
    if not root.is_dir():
        pytest.skip("../shared/data is not present")
    source = PairedFolder(str(root), [str(i) for i in range(11)], masks=IndexMask(void=[11]))
    rare = [2, 6, 7, 9, 10]  # Pole, SignSymbol, Fence, Pedestrian, Bicyclist: each under 2 % of the pixels
    augment = Augment(random_scale=(0.5, 2.0), rare_crop_share=1.0)
    pipeline = train_transform(augment, IGNORE, (180, 240), mode="resize", seed=0, rare_classes=rare)
    assert any(isinstance(t, RareClassCrop) for t in pipeline.transforms)
    samples = source.split("train", IGNORE)
    for i in range(4):
        out = pipeline(**dict(zip(("image", "mask"), samples[i])))
        assert tuple(out["mask"].shape) == (180, 240)
        assert np.isin(out["mask"].numpy(), rare).any()
