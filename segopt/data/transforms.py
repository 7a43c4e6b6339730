"""The seed's training augmentation and the deterministic evaluation pipeline.

Both are albumentations pipelines called as ``t(image=..., mask=...)`` so that every
geometric change hits image and mask together. Masks are always resampled
nearest-neighbour (a bilinear mask invents class ids), and pixels that a rotation or
shear brings in from outside the image are filled with ``ignore_index`` in the mask:
they have no label, and calling them background would teach the model a lie.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Augment:
    """Training augmentation, defaulting to the seed's recipe.

    Args:
        enabled: False trains on un-augmented images (for ablations).
        hflip: probability of a horizontal flip.
        rotate: maximum rotation in degrees (uniform in ±rotate).
        shear: maximum shear in degrees (uniform in ±shear).
        affine_p: probability of applying the rotation+shear.
        brightness, contrast, saturation: colour-jitter strengths.
    """

    enabled: bool = True
    hflip: float = 0.5
    rotate: float = 15.0
    shear: float = 10.0
    affine_p: float = 1.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


@dataclass
class Normalize:
    """Per-channel normalisation after scaling pixels to [0, 1] (ImageNet by default)."""

    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)


def _finish(size: tuple[int, int] | None, norm: Normalize, in_channels: int) -> list[A.BasicTransform]:
    steps: list[A.BasicTransform] = []
    if size is not None:
        steps.append(A.Resize(*size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    mean, std = norm.mean[:in_channels], norm.std[:in_channels]
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return steps


def train_transform(
    augment: Augment,
    ignore_index: int,
    size: tuple[int, int] | None = None,
    norm: Normalize | None = None,
    in_channels: int = 3,
) -> A.Compose:
    """The training pipeline: the seed's augmentation, then resize and normalise."""
    norm = norm or Normalize()
    steps: list[A.BasicTransform] = []
    if augment.enabled:
        steps.append(A.HorizontalFlip(p=augment.hflip))
        steps.append(
            A.Affine(
                rotate=(-augment.rotate, augment.rotate),
                shear=(-augment.shear, augment.shear),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
                p=augment.affine_p,
            )
        )
        if in_channels == 3:
            steps.append(
                A.ColorJitter(
                    brightness=augment.brightness,
                    contrast=augment.contrast,
                    saturation=augment.saturation,
                    hue=0.0,
                    p=1.0,
                )
            )
        else:
            steps.append(
                A.RandomBrightnessContrast(
                    brightness_limit=augment.brightness, contrast_limit=augment.contrast, p=1.0
                )
            )
    return A.Compose(steps + _finish(size, norm, in_channels))


def eval_transform(size: tuple[int, int] | None = None, norm: Normalize | None = None, in_channels: int = 3) -> A.Compose:
    """The evaluation pipeline: deterministic resize (optional) and normalisation."""
    return A.Compose(_finish(size, norm or Normalize(), in_channels))
