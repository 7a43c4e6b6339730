"""SyntheticShapes: the built-in data set, generated in memory from (seed, index).

Each image shows overlapping disks, rectangles, triangles and rings in random colours and
textures on a textured, noisy background. Colour says nothing about the class, so a model
has to learn shape; occlusion and rings (whose hole shows what lies beneath) make the
exact mask non-trivial. No files, no download: the same (seed, index) always gives the
same pair.
"""

from __future__ import annotations

import cv2
import numpy as np
from torch.utils.data import Dataset

from segopt.data.datasets import Sample, SegSource

CLASS_NAMES = ("background", "disk", "rectangle", "triangle", "ring")
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def _texture(rng: np.random.Generator, size: int, base: np.ndarray, contrast: float) -> np.ndarray:
    """A [size,size,3] float layer around colour ``base``: solid, stripes, checker or blotches."""
    kind = rng.integers(4)
    if kind == 0:
        return np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    other = np.clip(base + rng.uniform(-contrast, contrast, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 1:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        t = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == 2:
        cell = int(rng.integers(3, 9))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    else:
        small = rng.uniform(0, 1, (max(2, size // 16), max(2, size // 16))).astype(np.float32)
        t = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    t = t[..., None]
    return (base * (1 - t) + other * t).astype(np.float32)


def _distinct_colour(rng: np.random.Generator, avoid: np.ndarray, min_distance: float = 80.0) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` away from ``avoid`` (so shapes stay visible)."""
    while True:
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - avoid) >= min_distance:
            return colour


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """A boolean [size,size] mask of one shape of class ``cls`` at a random place."""
    m = np.zeros((size, size), np.uint8)
    r = rng.uniform(0.12, 0.26) * size
    cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
    if cls == 1:  # disk
        cv2.circle(m, (int(cx), int(cy)), int(r), 1, -1, lineType=cv2.LINE_8)
    elif cls == 2:  # rotated rectangle
        w, h = r * rng.uniform(1.2, 2.0), r * rng.uniform(0.6, 1.4)
        box = cv2.boxPoints(((cx, cy), (w, h), rng.uniform(0, 180)))
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    elif cls == 3:  # triangle
        a0 = rng.uniform(0, 2 * np.pi)
        angles = a0 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        pts = np.stack([cx + 1.2 * r * np.cos(angles), cy + 1.2 * r * np.sin(angles)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    else:  # ring
        cv2.circle(m, (int(cx), int(cy)), int(r), 1, -1)
        cv2.circle(m, (int(cx), int(cy)), int(r * rng.uniform(0.45, 0.7)), 0, -1)
    return m.astype(bool)


def generate(seed: int, index: int, size: int = 128) -> Sample:
    """Generate sample ``index`` of the data set with ``seed``: (uint8 [H,W,3], int64 [H,W])."""
    rng = np.random.default_rng([seed, index])
    background = rng.uniform(0, 255, 3)
    image = _texture(rng, size, background, contrast=30.0)
    # A smooth illumination gradient, so absolute brightness is no cue either.
    ramp = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), size, dtype=np.float32)
    image *= (ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None])
    mask = np.zeros((size, size), np.int64)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        shape = _shape_mask(rng, cls, size)
        image[shape] = _texture(rng, size, _distinct_colour(rng, background), contrast=20.0)[shape]
        mask[shape] = cls
    image += rng.normal(0, rng.uniform(2, 12), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class SyntheticSplit(Dataset):
    """One split of :class:`SyntheticShapes`; items are generated on access."""

    def __init__(self, seed: int, offset: int, length: int, size: int) -> None:
        self.seed, self.offset, self.length, self.size = seed, offset, length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return generate(self.seed, self.offset + index, self.size)


class SyntheticShapes(SegSource):
    """Built-in data: 4 shape classes plus background, generated deterministically.

    Args:
        size: side of the square images in pixels.
        num_train: training samples per epoch.
        num_val: validation samples (also used as the test split).
        seed: changes every generated image; splits never share an index.
    """

    def __init__(self, size: int = 128, num_train: int = 1024, num_val: int = 128, seed: int = 0) -> None:
        self.size, self.num_train, self.num_val, self.seed = size, num_train, num_val, seed
        self.class_names = list(CLASS_NAMES)
        self.in_channels = 3

    def has_split(self, name: str) -> bool:
        return name in _SPLIT_OFFSET

    def split(self, name: str, ignore_index: int) -> SyntheticSplit:
        length = self.num_train if name == "train" else self.num_val
        return SyntheticSplit(self.seed, _SPLIT_OFFSET[name], length, self.size)
