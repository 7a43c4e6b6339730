"""Class weights from the training masks: pixel counts, then median-frequency balancing,
inverse-sqrt frequency or the effective number of samples.

Counts run over decoded masks (no augmentation), one ``np.bincount`` per mask, in loader
worker processes when asked, so a few hundred masks take seconds. The data check can reuse
:func:`class_pixel_counts` to report class balance.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segopt.data.masks import invalid_mask_values

#: Effective-number default: counts saturate near 1 / (1 - beta) = this share of the training
#: set's labelled pixels, so the weights depend on class shares, not on how many pixels the set
#: holds. 1/64 of CamVid's 61 M labelled training pixels is about the fixed 1e6 (beta 0.999999)
#: measured there and on the magnetic tiles (91 M, where each weight moves by at most 0.02, and
#: the two are level at 30 min, results/plan.md); a fixed beta would weigh every class of a set
#: of many large images about equally.
SATURATION_SHARE = 1 / 64


@runtime_checkable
class DataWeighted(Protocol):
    """A loss whose class weights may be counted from the data (``CombinedLoss``, ``FocalLoss``).

    ``class_weight_mode`` names how (one of ``CLASS_WEIGHT_MODES``), or is None when the loss
    needs nothing; as fitting starts the data side hands its training mask counts to the model
    (:class:`TakesClassPixels`), which turns them into weights ``[K]`` for ``set_class_weights``.
    """

    class_weight_beta: float | None  # beta of the "effective_number" mode (None: from the data)

    @property
    def class_weight_mode(self) -> str | None: ...

    def set_class_weights(self, weights: torch.Tensor) -> None: ...


@runtime_checkable
class TakesClassPixels(Protocol):
    """A model that takes the training masks' class pixel counts as fitting starts (``SegModule``).

    ``SegDataModule.setup("fit")`` counts every training mask once, as it builds the training
    split, and hands the table to the model it is fitted with; the model derives its loss's
    class weights from it. The data side computes data facts, and the model imports no data module.
    """

    def set_class_pixels(self, per_image: np.ndarray) -> None:
        """Take the labelled pixels of each class in each training mask, int64 ``[N, K]``."""
        ...


def pixel_counts(mask: np.ndarray, num_classes: int, ignore_index: int) -> tuple[np.ndarray, int]:
    """Pixels of each class (int64 ``[K]``) and labelled pixels of one mask whose values are
    class ids or ``ignore_index`` (check with :func:`segopt.data.masks.invalid_mask_values`)."""
    labelled = np.asarray(mask).ravel()
    labelled = labelled[labelled != ignore_index]
    return np.bincount(labelled, minlength=num_classes).astype(np.int64), int(labelled.size)


class _MaskCounts(Dataset):
    """Per sample: (pixels of each class, valid pixels of the mask)."""

    def __init__(self, samples: Dataset[Any], num_classes: int, ignore_index: int) -> None:
        self.samples, self.num_classes, self.ignore_index = samples, num_classes, ignore_index

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        mask = np.asarray(self.samples[index][1])
        invalid = invalid_mask_values(mask, self.num_classes, self.ignore_index)
        if invalid:
            bad = invalid[0] if invalid[0] < 0 else invalid[-1]
            raise ValueError(
                f"training mask #{index} holds value {bad}, neither a class id in [0, {self.num_classes}) "
                f"nor ignore_index {self.ignore_index}; check num_classes and the mask decoding"
            )
        return pixel_counts(mask, self.num_classes, self.ignore_index)


def _as_is(item: Any) -> Any:
    return item


def class_pixels_per_image(
    samples: Dataset[Any], num_classes: int, ignore_index: int, num_workers: int = 0
) -> np.ndarray:
    """Labelled pixels of each class in each mask of ``samples`` (items ``(image, mask)``):
    int64 ``[N, K]``, ``ignore_index`` skipped."""
    table = np.zeros((len(samples), num_classes), np.int64)  # type: ignore[arg-type]
    counts = _MaskCounts(samples, num_classes, ignore_index)
    loader = DataLoader(counts, batch_size=None, num_workers=num_workers, collate_fn=_as_is)
    for index, (class_pixels, _) in enumerate(loader):
        table[index] = class_pixels
    return table


def pixel_totals(per_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, present_pixels)`` of a :func:`class_pixels_per_image` table, both int64 ``[K]``:
    the pixels of each class, and the labelled pixels of the masks in which that class occurs."""
    labelled = per_image.sum(axis=1, keepdims=True)  # every labelled pixel is some class's
    return per_image.sum(axis=0), np.where(per_image > 0, labelled, 0).sum(axis=0)


def class_pixel_counts(
    samples: Dataset[Any], num_classes: int, ignore_index: int, num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Count labelled pixels over ``samples`` (items ``(image, mask)``; ``ignore_index`` skipped).

    Returns ``(pixels, present_pixels)``, both int64 ``[K]``: the pixels of each class, and
    the labelled pixels of the masks in which that class occurs at all.
    """
    return pixel_totals(class_pixels_per_image(samples, num_classes, ignore_index, num_workers))


def median_frequency_weights(pixels: np.ndarray, present_pixels: np.ndarray) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus, 2015): ``w_c = median(f) / f_c``.

    ``f_c`` is the pixels of class c over the labelled pixels of the masks that contain c.
    A class that never occurs gets weight 0: it has no pixel for the weight to act on.
    """
    pixels = np.asarray(pixels, np.float64)
    present_pixels = np.asarray(present_pixels, np.float64)
    seen = pixels > 0
    if not seen.any():
        raise ValueError("no labelled pixel in the training masks: every pixel equals ignore_index")
    freq = np.zeros_like(pixels)
    freq[seen] = pixels[seen] / present_pixels[seen]
    weights = np.zeros_like(pixels)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return torch.tensor(weights, dtype=torch.float32)


def inverse_sqrt_frequency_weights(pixels: np.ndarray, present_pixels: np.ndarray) -> torch.Tensor:
    """Inverse square root of frequency: ``w_c ∝ 1 / sqrt(f_c)``, ``f_c`` = pixels of c / all labelled pixels.

    A milder balancing than ``1 / f_c``. Scaled so the classes that occur average 1; a class
    that never occurs gets 0. ``present_pixels`` is unused (same signature as the other modes).
    """
    pixels = _seen_pixels(pixels)
    seen = pixels > 0
    raw = np.zeros_like(pixels)
    raw[seen] = 1.0 / np.sqrt(pixels[seen] / pixels.sum())
    return _mean_one(raw, seen)


def effective_number_weights(
    pixels: np.ndarray, present_pixels: np.ndarray, beta: float | None = None
) -> torch.Tensor:
    """Class-balanced weights (Cui et al., 2019): ``w_c ∝ (1 - beta) / (1 - beta ** n_c)``.

    ``n_c`` is the pixels of class c; ``(1 - beta ** n) / (1 - beta)`` is the effective number
    of samples, close to n below about ``1 / (1 - beta)`` pixels and saturating there, so beta
    sets which counts still earn a larger weight. ``beta`` None saturates at
    :data:`SATURATION_SHARE` of all labelled pixels (:func:`data_beta`). Scaled so the classes
    that occur average 1 (as in the paper); a class that never occurs gets 0.
    """
    pixels = _seen_pixels(pixels)
    beta = data_beta(pixels) if beta is None else beta
    if not 0 <= beta < 1:
        raise ValueError(f"class weight beta must be in [0, 1), got {beta}")
    seen = pixels > 0
    raw = np.zeros_like(pixels)
    # 1 / effective number; expm1 keeps 1 - beta**n accurate where beta**n is close to 1.
    log_beta = np.log(beta) if beta > 0 else -np.inf
    raw[seen] = (1 - beta) / -np.expm1(pixels[seen] * log_beta)
    return _mean_one(raw, seen)


def data_beta(pixels: np.ndarray) -> float:
    """The effective-number beta whose counts saturate at ``SATURATION_SHARE`` of ``pixels``' sum."""
    return 1.0 - 1.0 / max(SATURATION_SHARE * float(np.sum(pixels)), 1.0)


def _seen_pixels(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, np.float64)
    if not (pixels > 0).any():
        raise ValueError("no labelled pixel in the training masks: every pixel equals ignore_index")
    return pixels


def _mean_one(raw: np.ndarray, seen: np.ndarray) -> torch.Tensor:
    return torch.tensor(raw * seen.sum() / raw[seen].sum(), dtype=torch.float32)


#: Modes accepted wherever a loss takes class weights; each maps pixel counts to weights.
CLASS_WEIGHT_MODES = {
    "median_frequency": median_frequency_weights,
    "inverse_sqrt_frequency": inverse_sqrt_frequency_weights,
    "effective_number": effective_number_weights,
}


def compute_class_weights(
    mode: str,
    samples: Dataset[Any],
    num_classes: int,
    ignore_index: int,
    num_workers: int = 0,
    beta: float | None = None,
) -> torch.Tensor:
    """Weights ``[K]`` for ``mode`` (a key of ``CLASS_WEIGHT_MODES``) from the masks of ``samples``.

    ``beta`` is used by ``effective_number`` only (None: :func:`data_beta`).
    """
    pixels, present = class_pixel_counts(samples, num_classes, ignore_index, num_workers)
    return class_weights_from_counts(mode, pixels, present, beta)


def class_weights_from_counts(
    mode: str, pixels: np.ndarray, present: np.ndarray, beta: float | None = None
) -> torch.Tensor:
    """Weights ``[K]`` for ``mode`` from class pixel counts (:func:`pixel_totals`)."""
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class weight mode {mode!r} is unknown; use one of {sorted(CLASS_WEIGHT_MODES)}")
    if mode == "effective_number":
        return effective_number_weights(pixels, present, beta)
    return CLASS_WEIGHT_MODES[mode](pixels, present)
