"""Reading image and mask files: cheap headers at setup, full decodes per sample.

Headers (size, colour mode) come from Pillow, which parses only the first bytes of a
file, so pairing and size checks over a whole data set take milliseconds. Images are
decoded with OpenCV (the fastest PNG/JPEG decoder at hand); masks with Pillow, which,
unlike OpenCV, keeps the indices of palette ("P" mode) PNGs instead of expanding them
to colours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

#: File extensions (lower case) that count as images or masks.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# OpenCV >= 4.10 decodes straight to RGB; older versions decode BGR and convert.
_READ_RGB = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)

# Pillow modes with one channel; everything else ("RGB", "RGBA", "P", "CMYK", ...) is colour.
_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "LA"}


class DataError(ValueError):
    """Bad data: every problem found, each naming the file, the value found and the fix."""

    def __init__(self, problems: list[str] | str, header: str = "bad data") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = self.problems if len(self.problems) == 1 else [f"\n  - {p}" for p in self.problems]
        count = "" if len(self.problems) == 1 else f" ({len(self.problems)} problems)"
        super().__init__(f"{header}{count}: " + "".join(lines))


@dataclass(frozen=True)
class Header:
    """What a file's first bytes say: size and Pillow colour mode."""

    width: int
    height: int
    mode: str

    @property
    def grey(self) -> bool:
        return self.mode in _GREY_MODES

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def read_header(path: Path) -> Header:
    """The size and colour mode of an image file, without decoding its pixels."""
    try:
        with Image.open(path) as im:
            return Header(im.width, im.height, im.mode)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(
            f"{path}: not a readable image ({err.__class__.__name__}: {err}); "
            "re-export it or remove it (and its pair)"
        ) from None


def decode_threads() -> int:
    """Threads that decode files at once (the decoders release the GIL): the cores, at most 8."""
    return min(8, os.cpu_count() or 1)


def read_image(path: Path, channels: int) -> np.ndarray:
    """Decode an image to uint8 ``[H,W,channels]`` RGB (3) or grey (1).

    Grey files become 3 identical channels when ``channels`` is 3.
    """
    data = np.fromfile(path, dtype=np.uint8)  # imdecode, unlike imread, copes with any path
    flag = _READ_RGB if channels == 3 else cv2.IMREAD_GRAYSCALE
    image = cv2.imdecode(data, flag) if data.size else None
    if image is None:
        raise DataError(f"{path}: image cannot be decoded (corrupt or truncated file); re-export it or remove it")
    if channels == 1:
        return image[..., None]
    return image if _READ_RGB != cv2.IMREAD_COLOR else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path, colour: bool) -> np.ndarray:
    """Decode a mask's raw values: ``[H,W]`` (indices, grey) or ``[H,W,3]`` RGB when ``colour``."""
    try:
        with Image.open(path) as im:
            if colour:
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")  # bilevel: 0/255 like any other binary mask
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(
            f"{path}: mask cannot be decoded ({err.__class__.__name__}: {err}); re-export it or remove it"
        ) from None
