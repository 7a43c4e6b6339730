"""Reading image and mask files: cheap headers at setup, full decodes per sample.

Headers (size, colour mode, format, EXIF orientation) come from Pillow, which parses
only the first bytes of a file, so pairing and size checks over a whole data set take
milliseconds. Images are decoded with OpenCV (the fastest PNG/JPEG decoder at hand); masks
with Pillow, which, unlike OpenCV, keeps the indices of palette ("P" mode) PNGs instead of
expanding them to colours.

One orientation policy for every file: a file is read **as it is displayed**. An EXIF
orientation tag (phone photos carry one) is applied to images and masks alike, by this
module rather than by either decoder (OpenCV would apply it, Pillow would not), so the
sizes in the headers, the decoded pixels, training and prediction all agree with what an
image viewer or a browser-based labelling tool shows.
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

# OpenCV would apply the EXIF orientation itself, Pillow would not: both are told to leave it
# to orient(), so images and masks follow one rule.
_IGNORE_ORIENTATION = cv2.IMREAD_IGNORE_ORIENTATION

#: The EXIF tag of the orientation (1 = as stored; 5-8 swap width and height).
ORIENTATION_TAG = 0x0112

# Pillow formats whose compression changes pixel values; TIFF counts when JPEG-compressed.
_LOSSY_FORMATS = {"JPEG", "MPO"}

# Pillow modes with one channel; everything else ("RGB", "RGBA", "P", "CMYK", ...) is colour.
_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "LA"}

#: The image sample types OpenCV decodes (16-bit ones are scaled to 8 bits).
SUPPORTED_SAMPLES = "8-bit or 16-bit unsigned integers (grey, grey+alpha, RGB, RGBA or palette)"

# Pillow (mode, format) of valid files whose samples OpenCV cannot decode. A 32-bit integer
# mode "I" is only refused from a TIFF: older Pillows open 16-bit PNGs as "I" too.
_UNSUPPORTED_SAMPLES = {"F": "32-bit floating point", "I": "32-bit integer"}


class DataError(ValueError):
    """Bad data: every problem found, each naming the file, the value found and the fix."""

    def __init__(self, problems: list[str] | str, header: str = "bad data") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = self.problems if len(self.problems) == 1 else [f"\n  - {p}" for p in self.problems]
        count = "" if len(self.problems) == 1 else f" ({len(self.problems)} problems)"
        super().__init__(f"{header}{count}: " + "".join(lines))


@dataclass(frozen=True)
class Header:
    """What a file's first bytes say: size as displayed, Pillow colour mode and format, EXIF orientation."""

    width: int
    height: int
    mode: str
    format: str = "PNG"
    orientation: int = 1
    lossy: bool = False

    @property
    def rotated(self) -> bool:
        """Whether the orientation swaps width and height (the stored pixels are ``height x width``)."""
        return self.orientation in (5, 6, 7, 8)

    @property
    def grey(self) -> bool:
        return self.mode in _GREY_MODES

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def unsupported_samples(self) -> str | None:
        """The sample type when images of it cannot be decoded (32-bit float or integer), else None."""
        if self.mode == "F" or (self.mode == "I" and self.format == "TIFF"):
            return _UNSUPPORTED_SAMPLES[self.mode]
        return None


def unsupported_samples_problem(path: Path, header: Header) -> str | None:
    """The problem of an image file that is valid but whose sample type cannot be decoded, else None."""
    samples = header.unsupported_samples
    if samples is None:
        return None
    return (
        f"{path}: image decodes as a valid {header.format} ({header.size}), not a corrupt file, but its sample "
        f"type, {samples} (mode {header.mode}), is not supported; supported: {SUPPORTED_SAMPLES}: save it with one of "
        "those (scaling the values to 0..255 or 0..65535)"
    )


def read_header(path: Path) -> Header:
    """The size and colour mode of an image file, without decoding its pixels."""
    try:
        with Image.open(path) as im:
            orientation = _orientation(im)
            width, height = (im.height, im.width) if orientation in (5, 6, 7, 8) else (im.width, im.height)
            lossy = im.format in _LOSSY_FORMATS or "jpeg" in str(im.info.get("compression", ""))
            return Header(width, height, im.mode, str(im.format), orientation, lossy)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(
            f"{path}: not a readable image ({err.__class__.__name__}: {err}); "
            "re-export it or remove it (and its pair)"
        ) from None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation of an open file (1 when it has none or an invalid one)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # an eXIf chunk after the pixels would cost a full decode to find; OpenCV reads it no better
    value = im.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels ``[H,W,...]`` turned as EXIF ``orientation`` (1..8) says they are displayed."""
    if orientation in (5, 6, 7, 8):
        array = array.swapaxes(0, 1)  # 5 is the transpose; 6, 7, 8 are it followed by a flip
    flip_rows = orientation in (3, 4, 7, 8)
    flip_cols = orientation in (2, 3, 6, 7)
    if flip_rows:
        array = array[::-1]
    if flip_cols:
        array = array[:, ::-1]
    return np.ascontiguousarray(array) if orientation != 1 else array


def decode_threads() -> int:
    """Threads that decode files at once (the decoders release the GIL): the cores, at most 8."""
    return min(8, os.cpu_count() or 1)


def read_image(path: Path, channels: int, orientation: int | None = None) -> np.ndarray:
    """Decode an image to uint8 ``[H,W,channels]`` RGB (3) or grey (1), as displayed.

    Grey files become 3 identical channels when ``channels`` is 3. ``orientation`` is the
    file's EXIF orientation when its header was read already; None reads it here.
    """
    data = np.fromfile(path, dtype=np.uint8)  # imdecode, unlike imread, copes with any path
    flag = (_READ_RGB if channels == 3 else cv2.IMREAD_GRAYSCALE) | _IGNORE_ORIENTATION
    image = cv2.imdecode(data, flag) if data.size else None
    if image is None:
        raise DataError(_undecodable(path))
    if orientation is None:
        orientation = read_header(path).orientation
    if channels == 1:
        image = image[..., None]
    elif _READ_RGB == cv2.IMREAD_COLOR:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return orient(image, orientation)


def _undecodable(path: Path) -> str:
    """Why OpenCV could not decode ``path``: a sample type it lacks, or a damaged file."""
    try:
        problem = unsupported_samples_problem(path, read_header(path))
    except DataError:
        problem = None
    return problem or f"{path}: image cannot be decoded (corrupt or truncated file); re-export it or remove it"


def read_mask(path: Path, colour: bool) -> np.ndarray:
    """Decode a mask's raw values, as displayed: ``[H,W]`` (indices, grey) or ``[H,W,3]`` RGB when ``colour``."""
    try:
        with Image.open(path) as im:
            orientation = _orientation(im)
            if colour:
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")  # bilevel: 0/255 like any other binary mask
            return orient(np.asarray(im), orientation)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(
            f"{path}: mask cannot be decoded ({err.__class__.__name__}: {err}); re-export it or remove it"
        ) from None
