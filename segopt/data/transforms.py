"""The tutorial's training augmentation and the deterministic evaluation pipeline.

Both are albumentations pipelines called as ``t(image=..., mask=...)`` so that every
geometric change hits image and mask together. Masks are always resampled
nearest-neighbour (a bilinear mask invents class ids), and pixels that a rotation, shear
or crop padding brings in from outside the image are filled with ``ignore_index`` in the
mask: they have no label, and calling them background would teach the model a lie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from segopt.data.files import DataError
from segopt.data.rare_crop import RARE_CLASS_BELOW, RareClassCrop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: How training images reach ``train_size``: scaled whole, or a random crop at full resolution.
ResizeMode = Literal["resize", "crop"]


@dataclass
class Augment:
    """Training augmentation, defaulting to the tutorial's recipe.

    Args:
        enabled: False trains on un-augmented images (for ablations).
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip (0 in the tutorial; useful for aerial/EM images).
        rotate: maximum rotation in degrees (uniform in ±rotate).
        shear: maximum horizontal shear in degrees (uniform in ±shear).
        scale: range of the affine zoom factor; (1, 1) keeps the scale.
        translate: maximum shift as a fraction of the image side (uniform in ±translate).
        affine_p: probability of applying rotation, shear, scale and shift.
        brightness, contrast, saturation, hue: colour-jitter strengths (saturation and hue
            apply to RGB images only).
        jitter_p: probability of applying the colour jitter.
        fill: image value for pixels brought in by rotation, shear or crop padding (the
            mask always gets ``ignore_index``).
        random_scale: range of a random resize factor applied before the crop to
            ``train_size`` (scale jitter, e.g. (0.5, 2.0)); relative to ``train_size`` with
            resize_mode "resize", to the image itself with "crop". (1, 1) keeps the scale.
        rare_crop_share: probability that a training crop is centred on a pixel of a rare
            class (nnU-Net's foreground oversampling); 0 keeps every crop random.
        rare_class_below: a class is rare when it holds less than this fraction of the
            labelled pixels of the training masks.
    """

    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.0
    rotate: float = 15.0
    shear: float = 10.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    affine_p: float = 1.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0
    jitter_p: float = 1.0
    fill: float = 0.0
    random_scale: tuple[float, float] = (1.0, 1.0)
    rare_crop_share: float = 0.0
    rare_class_below: float = RARE_CLASS_BELOW


@dataclass
class Normalize:
    """Per-channel normalisation after scaling pixels to [0, 1] (ImageNet by default)."""

    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)


def _size_steps(
    size: tuple[int, int],
    mode: ResizeMode,
    ignore_index: int,
    fill: float,
    scale: tuple[float, float] = (1.0, 1.0),
    rare: Sequence[int] = (),
    rare_share: float = 0.0,
) -> list[A.BasicTransform]:
    """Bring training images to ``size``: resize to it or not, jitter the scale or not, then crop
    (a share of the crops centred on the ``rare`` classes)."""
    if mode not in ("resize", "crop"):
        raise ValueError(f"resize_mode is {mode!r}; use 'resize' (scale the whole image) or 'crop' (random crop)")
    steps: list[A.BasicTransform] = []
    if mode == "resize":
        steps.append(A.Resize(*size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
        if scale == (1.0, 1.0):
            return steps
    if scale != (1.0, 1.0):
        steps.append(
            A.RandomScale(
                scale_limit=(scale[0] - 1.0, scale[1] - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    # Images smaller than the crop are padded; the padding is unlabelled, hence ignore_index.
    pad = {"pad_if_needed": True, "border_mode": cv2.BORDER_CONSTANT, "fill": fill, "fill_mask": ignore_index}
    if rare and rare_share > 0:
        steps.append(RareClassCrop(*size, classes=rare, share=rare_share, **pad))
    else:
        steps.append(A.RandomCrop(*size, **pad))
    return steps


def _finish(norm: Normalize, in_channels: int) -> list[A.BasicTransform]:
    mean, std = norm.mean[:in_channels], norm.std[:in_channels]
    return [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]


def augmentation(augment: Augment, ignore_index: int, in_channels: int = 3) -> list[A.BasicTransform]:
    """The tutorial's joint augmentation: flips, rotation+shear (+scale, shift), colour jitter.

    The tutorial's separate rotation and shear become one affine warp: the same distribution
    of geometry with one interpolation of the image instead of two.
    """
    if not augment.enabled:
        return []
    steps: list[A.BasicTransform] = [A.HorizontalFlip(p=augment.hflip)]
    if augment.vflip > 0:
        steps.append(A.VerticalFlip(p=augment.vflip))
    steps.append(
        A.Affine(
            rotate=(-augment.rotate, augment.rotate),
            # Horizontal shear only, as the tutorial's torchvision RandomAffine(shear=10).
            shear={"x": (-augment.shear, augment.shear), "y": (0.0, 0.0)},
            scale=tuple(augment.scale),
            translate_percent=(-augment.translate, augment.translate),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=augment.fill,
            fill_mask=ignore_index,
            p=augment.affine_p,
        )
    )
    if in_channels == 3:
        jitter: A.BasicTransform = A.ColorJitter(
            brightness=augment.brightness,
            contrast=augment.contrast,
            saturation=augment.saturation,
            hue=augment.hue,
            p=augment.jitter_p,
        )
    else:
        jitter = A.RandomBrightnessContrast(
            brightness_limit=augment.brightness, contrast_limit=augment.contrast, p=augment.jitter_p
        )
    steps.append(jitter)
    return steps


def load_pipeline(path: str | Path) -> A.Compose:
    """Read a pipeline saved by ``albumentations.save`` (``.json``, ``.yaml`` or ``.yml``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data.train_pipeline {path} does not exist (resolved: {path.resolve()}); write one with "
            "albumentations.save(pipeline, path, data_format='yaml'), or set train_pipeline: null"
        )
    fmt = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"
    try:
        pipeline = A.load(str(path), data_format=fmt)
    except Exception as err:  # noqa: BLE001 (albumentations raises many kinds; all mean "bad file")
        raise DataError(
            f"data.train_pipeline {path}: not a pipeline albumentations can load ({type(err).__name__}: {err}); "
            "write it with albumentations.save(pipeline, path, data_format='yaml')"
        ) from None
    if not isinstance(pipeline, A.Compose):
        pipeline = A.Compose([pipeline])
    return pipeline


def _complete(pipeline: A.Compose, norm: Normalize | None, in_channels: int) -> list[A.BasicTransform]:
    """A user pipeline plus whatever of normalise + to-tensor it lacks at its end (no normalise when ``norm`` is None)."""
    steps = list(pipeline.transforms)
    if steps and isinstance(steps[-1], ToTensorV2):
        return steps
    if norm is None or any(isinstance(t, A.Normalize) for t in steps):
        return [*steps, ToTensorV2()]
    return steps + _finish(norm, in_channels)


def train_transform(
    augment: Augment,
    ignore_index: int,
    size: tuple[int, int] | None = None,
    norm: Normalize | None = None,
    in_channels: int = 3,
    mode: ResizeMode = "resize",
    pipeline: str | Path | None = None,
    seed: int | None = None,
    normalize: bool = True,
    rare_classes: Sequence[int] = (),
) -> A.Compose:
    """The training pipeline: size (resize or crop, scale jitter), augmentation, normalisation.

    Sizing comes first so the augmentation works on the smaller image; the scale jitter
    (``augment.random_scale``) and the crops centred on ``rare_classes``
    (``augment.rare_crop_share``) belong to the sizing and are off when ``augment`` is. ``pipeline``, a
    file saved by ``albumentations.save``, replaces ``augment``; it is completed with
    normalisation and to-tensor unless it already ends with them. ``normalize=False``
    ends with a uint8 tensor instead, for normalising on the device.
    """
    norm = (norm or Normalize()) if normalize else None
    steps: list[A.BasicTransform] = []
    if size is not None:
        if augment.enabled and pipeline is None:
            jitter = (tuple(augment.random_scale), rare_classes, augment.rare_crop_share)
        else:
            jitter = ((1.0, 1.0), (), 0.0)
        steps += _size_steps(tuple(size), mode, ignore_index, augment.fill, *jitter)  # type: ignore[arg-type]
    if pipeline is not None:
        steps += _complete(load_pipeline(pipeline), norm, in_channels)
    else:
        end = _finish(norm, in_channels) if norm is not None else [ToTensorV2()]
        steps += augmentation(augment, ignore_index, in_channels) + end
    return A.Compose(steps, seed=seed)


class ResizeImage(A.ImageOnlyTransform):
    """Resize the image only (bilinear); the mask keeps its size so it is scored as labelled."""

    def __init__(self, height: int, width: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.height, self.width = height, width

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:  # type: ignore[override]
        return cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_LINEAR).reshape(
            self.height, self.width, *img.shape[2:]
        )

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width")


def eval_transform(
    size: tuple[int, int] | None = None,
    norm: Normalize | None = None,
    in_channels: int = 3,
    full_res_masks: bool = False,
) -> A.Compose:
    """The evaluation pipeline: deterministic resize (optional) and normalisation.

    With ``full_res_masks`` only the image is resized to ``size``; the mask keeps the
    labels' own resolution and the model's probabilities are resized up to it before the
    argmax, so training at a reduced size never flatters the metric.
    """
    steps: list[A.BasicTransform] = []
    if size is not None and full_res_masks:
        steps.append(ResizeImage(*size))
    elif size is not None:
        steps.append(A.Resize(*size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    # Image and mask differ in size once the image alone is resized.
    return A.Compose(steps + _finish(norm or Normalize(), in_channels), is_check_shapes=not full_res_masks)
