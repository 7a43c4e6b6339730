"""Digests of decoded pixels: pin what a data set holds, not the bytes of the archive it came in.

A folder's digest is the sha256 of a ``sha256sum``-style listing, one line per image file
(the files training reads: those directly in the folder with an image extension), in
sorted name order::

    <sha256 of the file's pixels>  <file name>\\n

where a file's pixels are the array segopt's own reader returns (:func:`read_image` as RGB or
grey, or :func:`read_mask` for raw mask values), hashed as ``"<shape, x-joined> <dtype.str>\\n"``
followed by its bytes in C order. A PNG re-encoded with other compression or metadata keeps
its digest; a changed pixel, a renamed, added or removed file does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segopt.data.files import EXTENSIONS, DataError, decode_threads, read_image, read_mask

#: How a folder's files are decoded, by name: as training reads images (RGB or grey) or masks.
READERS: dict[str, Callable[[Path], np.ndarray]] = {
    "rgb": lambda path: read_image(path, 3),
    "grey": lambda path: read_image(path, 1),
    "mask": lambda path: read_mask(path, colour=False),
}


@dataclass(frozen=True)
class ContentPin:
    """The recorded pixels of one folder of a prepared data set.

    Args:
        folder: relative to the data set, e.g. ``"trainannot"`` or ``"train/image"``.
        read_as: a key of :data:`READERS`, as the data set's config reads the folder.
        sha256: :func:`pixel_digest` of the folder, in hex; None when none is recorded yet (the
            folder is still decoded whole and its digest kept with the data set, for ``--verify``).
    """

    folder: str
    read_as: str
    sha256: str | None


def array_digest(array: np.ndarray) -> str:
    """The sha256 of one decoded array: its shape and dtype, then its bytes in C order."""
    h = hashlib.sha256(f"{'x'.join(map(str, array.shape))} {array.dtype.str}\n".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def file_digests(folder: Path, read_as: str, progress: bool = False) -> dict[str, str]:
    """The :func:`array_digest` of every image file in ``folder``, by file name, in name order."""
    if read_as not in READERS:
        raise ValueError(f"read_as {read_as!r} is not one of {sorted(READERS)}")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; the data set lacks it")
    read = READERS[read_as]
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    with ThreadPoolExecutor(decode_threads()) as pool:  # the decoders release the GIL
        digests = pool.map(lambda name: array_digest(read(folder / name)), names)
        bar = tqdm(digests, total=len(names), desc=f"pixels {folder.name}", unit="file", disable=not progress, leave=False)
        return dict(zip(names, bar))


def listing_digest(digests: dict[str, str]) -> str:
    """The folder digest of :func:`file_digests`' result (see the module docstring)."""
    return hashlib.sha256("".join(f"{digests[name]}  {name}\n" for name in sorted(digests)).encode()).hexdigest()


def pixel_digest(folder: Path, read_as: str, progress: bool = False) -> str:
    """The digest of the decoded pixels of every image file in ``folder`` (see the module docstring)."""
    return listing_digest(file_digests(folder, read_as, progress))
