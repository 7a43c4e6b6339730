"""Scale jitter before the training crop: exact sizes, nearest masks, ignore_index padding, YAML switch."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import yaml
from albumentations.pytorch import ToTensorV2
from jsonargparse import ArgumentParser

from segopt.data import SegDataModule, SyntheticShapes
from segopt.data.transforms import Augment, train_transform

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
