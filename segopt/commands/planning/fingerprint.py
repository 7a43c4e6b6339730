"""The data fingerprint: what a data set holds, measured once, for the planning rules.

Read through the data check's own path (:func:`segopt.commands.check.check_source`): a problem the
check reports stops the plan with the check's message. On top of the check's statistics
(images per split, sizes, channels, class pixels, channel mean/std) the fingerprint measures,
on the decoded training masks at full resolution, the share of images each class appears in
and each class's structure width: the median of its local thickness along the ridge of the
distance transform (a pole 3 px wide measures 3, and so does a network of 3 px membranes),
and how much that width varies from image to image (the scale the objects are seen at).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from segopt.commands.check import CheckResult, check_source
from segopt.data.datasets import SegSource


class PlanError(ValueError):
    """Input the planner cannot plan for; the message names the file or key, the value and the fix."""


@dataclass
class ClassFingerprint:
    """One class of the training masks."""

    name: str
    pixel_share: float  # of the labelled training pixels
    image_share: float  # of the training images it appears in
    images: int  # training images it appears in
    width_px: float | None  # median local thickness at full resolution (px); None when absent
    #: the interquartile ratio (75th / 25th percentile) of its per-image median width: 1 when
    #: every image shows it at one size; None when it is in fewer than ``SPREAD_MIN_IMAGES`` images
    width_spread: float | None = None
    # How unevenly its pixels fall between the two halves of the images, top against bottom and
    # left against right: |a - b| / (a + b), 0 when even, 1 when all in one half.
    vertical_bias: float | None = None
    horizontal_bias: float | None = None


@dataclass
class Fingerprint:
    """What the planning rules read about a data set."""

    images: dict[str, int]  # per split
    min_size: tuple[int, int]  # (height, width) of the smallest training image (by area)
    median_size: tuple[int, int]
    max_size: tuple[int, int]
    sizes_vary: bool
    channels: int
    void_share: float  # of all training mask pixels
    mean: list[float]  # per channel, of the training images scaled to [0, 1]
    std: list[float]
    classes: list[ClassFingerprint] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def scale_spread(self) -> float | None:
        """The median over classes of their ``width_spread``: how far the scale of the objects
        varies between images (CamVid's cars near and far: 3.0; sections at one magnification: 1.3)."""
        spreads = [c.width_spread for c in self.classes if c.width_spread is not None]
        return float(statistics.median(spreads)) if spreads else None

    def _bias(self, axis: str) -> float | None:
        pairs = [(c.pixel_share, getattr(c, f"{axis}_bias")) for c in self.classes if getattr(c, f"{axis}_bias") is not None]
        total = sum(share for share, _ in pairs)
        return round(sum(share * bias for share, bias in pairs) / total, 4) if total > 0 else None

    @property
    def vertical_bias(self) -> float | None:
        """The pixel-weighted mean of the classes' ``vertical_bias``: 0 when no class prefers the
        top or the bottom of the images (tiles, sections), near 1 when they do (sky above road)."""
        return self._bias("vertical")

    @property
    def horizontal_bias(self) -> float | None:
        """The pixel-weighted mean of the classes' ``horizontal_bias`` (left against right)."""
        return self._bias("horizontal")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scale_spread": self.scale_spread, "vertical_bias": self.vertical_bias,
                "horizontal_bias": self.horizontal_bias}


#: Thickness histogram bins: half a pixel wide, up to this many pixels (wider counts in the last bin).
_WIDTH_BINS = 2048
_BIN_PX = 0.5
#: A class's width spread is measured only when it is in at least this many training images.
SPREAD_MIN_IMAGES = 4


def thickness_histograms(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, a histogram (``[K, bins]``, half-pixel bins) of its local thickness in one decoded
    mask, each ridge pixel weighted by its thickness (about the pixels of its cross-section).

    The local thickness is read on the ridge of the distance transform (the pixels at least as
    far from the class's boundary as their 8 neighbours): ``2 d - 1`` for a ridge pixel at L2
    distance ``d``, so a one-pixel line measures 1 and a three-pixel bar 3, for every stretch of
    a network of lines (membranes) as for an isolated pole. The image border is not a boundary.
    """
    hist = np.zeros((num_classes, _WIDTH_BINS), np.int64)
    present = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    kernel = np.ones((3, 3), np.uint8)
    for c in np.flatnonzero(present):
        region = (mask == c).astype(np.uint8)
        # padded by replication so that the image border is not a boundary
        dist = cv2.distanceTransform(cv2.copyMakeBorder(region, 1, 1, 1, 1, cv2.BORDER_REPLICATE), cv2.DIST_L2, 5)[1:-1, 1:-1]
        # a class that fills the whole mask has no boundary (OpenCV's distances are then huge): its
        # thickness is taken as the mask's larger side
        dist = np.minimum(dist, float(max(mask.shape)))
        ridge = (dist > 0) & (dist >= cv2.dilate(dist, kernel) - 1e-3)
        widths = 2.0 * dist[ridge] - 1.0
        # each ridge pixel stands for the cross-section through it: weighted by its width, the
        # one-pixel ridges that every jagged boundary grows count for what they cover
        bins = np.minimum((widths / _BIN_PX).astype(np.int64), _WIDTH_BINS - 1)
        hist[c] = np.rint(np.bincount(bins, weights=widths, minlength=_WIDTH_BINS)).astype(np.int64)
    return hist


def half_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, its pixels in the top, bottom, left and right halves of one mask (``[4, K]``);
    the middle row or column of an odd side counts in neither half."""
    h, w = mask.shape[:2]
    halves = (mask[: h // 2], mask[h - h // 2 :], mask[:, : w // 2], mask[:, w - w // 2 :])
    return np.stack([np.bincount(part.ravel(), minlength=num_classes)[:num_classes] for part in halves])


def _bias(a: int, b: int) -> float | None:
    return round(float(abs(a - b) / (a + b)), 4) if a + b > 0 else None


def histogram_median(hist: np.ndarray) -> float | None:
    """The median thickness (px) of one class's histogram, None when it is empty."""
    total = int(hist.sum())
    if total == 0:
        return None
    return float(np.searchsorted(np.cumsum(hist), total / 2.0) * _BIN_PX)


def _sizes(result: CheckResult, split: str) -> list[tuple[int, int]]:
    sizes = []
    for size, count in result.splits[split].sizes.items():
        width, height = (int(v) for v in str(size).split("x"))
        sizes += [(height, width)] * count
    return sizes


def check_problems(result: CheckResult) -> str | None:
    """The data check's problems as one message, or None when the check passes."""
    problems = result.problems + result.file_problems
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more: run python -m segopt.check with the same --config)" if len(problems) > 3 else ""
    return "the data check fails: " + "; ".join(problems[:3]) + more


def fingerprint(source: SegSource, ignore_index: int) -> Fingerprint:
    """Measure ``source``'s fingerprint; raise :class:`PlanError` with the data check's message on bad data."""
    import time

    start = time.perf_counter()
    k = source.num_classes
    result = check_source(source, ignore_index, measure=lambda mask: (thickness_histograms(mask, k), half_counts(mask, k)))
    problem = check_problems(result)
    if problem:
        raise PlanError(problem)
    for split in ("train", "val"):
        if split not in result.splits or result.splits[split].pairs == 0:
            raise PlanError(f"the {split} split is empty; the plan needs training and validation images (fix the data config's {split} folders or lists)")
    if source.num_classes < 2:
        raise PlanError(
            f"class_names has {source.num_classes} class ({source.class_names}); segmentation needs at least two "
            "(e.g. background and the object)"
        )
    count = len(result.measured)
    hist = np.zeros((k, _WIDTH_BINS), np.int64)
    images = np.zeros(k, np.int64)
    per_image = np.full((count, k), np.nan)  # each image's median width of each class in it
    halves = np.zeros((4, k), np.int64)
    for i, (per_mask, mask_halves) in enumerate(result.measured):
        halves += mask_halves
        present = per_mask.sum(1) > 0
        hist += per_mask
        images += present
        for c in np.flatnonzero(present):
            per_image[i, c] = histogram_median(per_mask[c])
    train = result.splits["train"]
    pixels = train.pixels if train.pixels is not None else np.zeros(k, np.int64)
    labelled = max(int(pixels.sum()), 1)
    classes = []
    for c in range(k):
        width = histogram_median(hist[c])
        seen = per_image[:, c][~np.isnan(per_image[:, c])]
        spread = None
        if seen.size >= SPREAD_MIN_IMAGES:
            q25, q75 = np.percentile(seen, [25, 75])
            spread = round(float(q75 / max(q25, _BIN_PX)), 2)
        classes.append(
            ClassFingerprint(
                source.class_names[c], float(pixels[c]) / labelled, float(images[c]) / max(count, 1), int(images[c]), width, spread,
                vertical_bias=_bias(halves[0, c], halves[1, c]), horizontal_bias=_bias(halves[2, c], halves[3, c]),
            )
        )
    sizes = sorted(_sizes(result, "train"), key=lambda hw: (hw[0] * hw[1], hw))
    channels = train.channel_sum.size if train.channel_sum is not None else (1 if getattr(source, "in_channels", 3) == 1 else 3)
    n = max(train.channel_n, 1)
    mean = (train.channel_sum / n) if train.channel_sum is not None else np.zeros(channels)
    var = (train.channel_sq / n - mean**2) if train.channel_sq is not None else np.ones(channels)
    return Fingerprint(
        images={name: s.pairs for name, s in result.splits.items()},
        min_size=sizes[0],
        median_size=(int(statistics.median_low(h for h, _ in sizes)), int(statistics.median_low(w for _, w in sizes))),
        max_size=sizes[-1],
        sizes_vary=len(set(sizes)) > 1,
        channels=int(channels),
        void_share=train.ignored / max(train.ignored + labelled, 1),
        mean=[round(float(v), 4) for v in mean],
        std=[round(float(v), 4) for v in np.sqrt(np.maximum(var, 1e-12))],
        classes=classes,
        seconds=round(time.perf_counter() - start, 2),
    )
