"""One colour palette for every picture segopt draws: TensorBoard overlays and predict output."""

from __future__ import annotations

import cv2
import numpy as np

# Distinct, colour-blind-aware first colours (Okabe-Ito + Tableau), then a deterministic
# spread for data sets with many classes.
_BASE = np.array(
    [
        [0, 0, 0],
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [0, 114, 178],
        [213, 94, 0],
        [204, 121, 167],
        [148, 103, 189],
        [140, 86, 75],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
        [255, 255, 255],
    ],
    dtype=np.uint8,
)
IGNORE_COLOUR = np.array([255, 0, 255], dtype=np.uint8)


def palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 RGB colours; class i always gets the same colour."""
    if num_classes <= len(_BASE):
        return _BASE[:num_classes].copy()
    rng = np.random.default_rng(0)
    extra = rng.integers(0, 256, (num_classes - len(_BASE), 3), dtype=np.uint8)
    return np.concatenate([_BASE, extra])


def colorize(mask: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Class-index mask ``[H,W]`` → RGB ``[H,W,3]``; ignored pixels in magenta."""
    colours = palette(num_classes)
    valid = (mask >= 0) & (mask < num_classes)
    out = np.empty((*mask.shape, 3), np.uint8)
    out[valid] = colours[mask[valid]]
    out[~valid] = IGNORE_COLOUR
    return out


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised ``mask`` over an RGB (or grey) uint8 ``image``."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    colour = colorize(mask, num_classes).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def legend(class_names: list[str], width: int, swatch: int = 14) -> np.ndarray:
    """An RGB strip ``[h, width, 3]`` naming each class beside its palette colour."""
    colours = palette(len(class_names))
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1
    cells = [swatch + 6 + cv2.getTextSize(n, font, scale, thickness)[0][0] + 12 for n in class_names]
    rows: list[list[tuple[int, int]]] = [[]]
    x = 0
    for i, w in enumerate(cells):
        if x + w > width and rows[-1]:
            rows.append([])
            x = 0
        rows[-1].append((i, x))
        x += w
    line = swatch + 8
    strip = np.full((line * len(rows), width, 3), 255, np.uint8)
    for r, entries in enumerate(rows):
        y = r * line + 4
        for i, x in entries:
            strip[y : y + swatch, x : x + swatch] = colours[i]
            cv2.putText(strip, class_names[i], (x + swatch + 4, y + swatch - 3), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return strip
