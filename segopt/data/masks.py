"""Mask decoding: the raw values of a mask file → class ids, with void → ``ignore_index``.

Four formats, chosen in YAML by ``class_path``:

- :class:`IndexMask`: pixel value = class id (CamVid, Cityscapes train ids, VOC);
- :class:`TableMask`: pixel value → class id by a table (Cityscapes label ids, ADE20K,
  any id scheme of your own);
- :class:`BinaryMask`: foreground/background by a threshold (0/255 masks → 0/1);
- :class:`PaletteMask`: RGB colour-coded masks, one colour per class.

A value that is neither a class nor declared void is an error naming the file, the value
and the fix; it is never clamped or silently ignored, since that is how wrong labels
train unnoticed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segopt.data.files import DataError

_SHOWN = 6  # offending values listed in an error before "..."


def mask_dtype(num_classes: int, ignore_index: int) -> np.dtype:
    """uint8 when every class id and ``ignore_index`` fit (the fast path), else int32.

    int32 rather than int64: OpenCV's warps and resizes (behind albumentations) have no
    64-bit integer path. The datamodule widens to int64 after the transform.
    """
    return np.dtype(np.uint8) if num_classes <= 256 and 0 <= ignore_index <= 255 else np.dtype(np.int32)


def invalid_mask_values(mask: Any, num_classes: int, ignore_index: int) -> list[int]:
    """The distinct values of ``mask`` (array or CPU tensor) that are neither a class id in
    ``[0, num_classes)`` nor ``ignore_index``, ascending: the one rule every mask must meet."""
    m = np.asarray(mask)
    bad = (m != ignore_index) & ((m < 0) | (m >= num_classes))
    return [int(v) for v in np.unique(m[bad])] if bad.any() else []


def label_image_dtype(num_classes: int) -> np.dtype:
    """uint8 when every class id fits, else uint16: the dtypes a PNG holds and OpenCV resizes,
    for class-id images written to disk or resized for display."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


def _listing(values: Sequence[object], counts: Sequence[int] | None = None) -> str:
    shown = [f"{v} ({c} px)" if counts is not None else str(v) for v, c in zip(values, counts or values)][:_SHOWN]
    return ", ".join(shown) + (", ..." if len(values) > _SHOWN else "")


class MaskDecoder(ABC):
    """Turns the raw pixels of one mask file into class ids."""

    #: Whether mask files are read as RGB (True) or as one channel of raw values.
    colour: bool = False

    def config_problems(self, class_names: Sequence[str]) -> list[str]:
        """Contradictions between this decoder and the class list (none by default)."""
        return []

    @abstractmethod
    def decode(self, raw: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
        """Class ids ``[H,W]`` (dtype :func:`mask_dtype`) of ``raw``; raise :class:`DataError` on bad values."""

    def raw_values(self, raw: np.ndarray) -> list[object]:
        """The distinct raw values in ``raw`` (for the data check's report)."""
        return [int(v) for v in np.unique(raw)]


def _check_one_channel(raw: np.ndarray, path: Path, needs: str, fix: str) -> None:
    """A colour mask given to a one-channel decoder is an error naming its channels."""
    if raw.ndim != 2:
        raise DataError(f"{path}: mask has {raw.shape[2]} channels but {needs}; {fix}")


def _check_integers(raw: np.ndarray, path: Path, needs: str, start: str) -> None:
    """Raw values that are not integers, or are negative, are an error naming the dtype or value."""
    if raw.dtype.kind not in "ui":
        raise DataError(f"{path}: mask has {raw.dtype} pixels but {needs}; save it as 8 or 16-bit")
    if raw.size and raw.min() < 0:
        raise DataError(f"{path}: mask has negative value {int(raw.min())}; {start}")


def _lookup(
    raw: np.ndarray,
    size: int,
    classes: tuple[Sequence[int], Sequence[int]],
    void: Sequence[int],
    ignore_index: int,
    invalid: int,
    path: Path,
    what: str,
    fix: str,
) -> np.ndarray:
    """Map ``raw`` through a table of ``size`` entries: ``classes`` (raw values, class ids), then
    ``void`` → ``ignore_index``, the rest ``invalid``; a raw value left invalid is an error naming it."""
    table = np.full(size, invalid, dtype=np.int64)
    table[list(classes[0])] = list(classes[1])
    table[[v for v in void if v < size]] = ignore_index
    out = table[raw]
    bad = out == invalid
    if bad.any():
        values, counts = np.unique(raw[bad], return_counts=True)
        raise DataError(f"{path}: {what} {_listing(values.tolist(), counts.tolist())}; {fix}")
    return out


class IndexMask(MaskDecoder):
    """Masks whose pixel values are class ids (one channel, 8 or 16 bit, or palette PNG).

    Args:
        void: raw values that mean "no label" (CamVid: 11); mapped to ``ignore_index``.
    """

    def __init__(self, void: list[int] | None = None) -> None:
        self.void = [int(v) for v in (void or [])]

    def config_problems(self, class_names: Sequence[str]) -> list[str]:
        clash = [v for v in self.void if 0 <= v < len(class_names)]
        if clash:
            return [
                f"void value(s) {clash} are also class ids (class_names has {len(class_names)} names, ids "
                f"0..{len(class_names) - 1}); a value is either a class or void: drop the void entry or "
                "the class name"
            ]
        return []

    def __repr__(self) -> str:
        return f"IndexMask(void={self.void})"

    def decode(self, raw: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
        _check_one_channel(
            raw, path, "IndexMask needs one channel of class ids",
            "use PaletteMask for colour-coded masks, or save the mask as 8-bit grey",
        )  # fmt: skip
        _check_integers(raw, path, "class ids must be integers", "class ids start at 0")
        # A table over every possible raw value: one gather maps classes, void and invalid at once.
        size = max(int(raw.max()) + 1, num_classes, 1)
        invalid = num_classes if num_classes != ignore_index else num_classes + 1
        ids = range(num_classes)
        out = _lookup(
            raw,
            size,
            (ids, ids),
            self.void,
            ignore_index,
            invalid,
            path,
            f"mask value(s) ≥ num_classes={num_classes} and not void:",
            f"each is a class missing from class_names (add names so num_classes covers them) or a void "
            f"label (add it to void, now {self.void})",
        )
        return out.astype(mask_dtype(num_classes, ignore_index), copy=False)


class TableMask(MaskDecoder):
    """One-channel masks whose raw values map to class ids through a table.

    Args:
        table: raw value → class id, e.g. Cityscapes ``{7: 0, 8: 1, 11: 2, ...}``
            (label ids → the 19 train ids).
        void: raw values that mean "no label"; mapped to ``ignore_index``.

    A raw value in neither is an error naming the file and the value, never a silent class.
    """

    def __init__(self, table: dict[int, int], void: list[int] | None = None) -> None:
        self.table = {int(k): int(v) for k, v in table.items()}
        self.void = [int(v) for v in (void or [])]

    def __repr__(self) -> str:
        return f"TableMask({len(self.table)} values → classes, {len(self.void)} void values)"

    def config_problems(self, class_names: Sequence[str]) -> list[str]:
        problems = []
        k = len(class_names)
        outside = sorted({v for v in self.table.values() if not 0 <= v < k})
        if outside:
            problems.append(
                f"TableMask.table maps to class id(s) {outside}, outside 0..{k - 1} (class_names has {k} names); "
                "fix the table or add class names"
            )
        unmapped = [f"{i} {class_names[i]!r}" for i in range(k) if i not in set(self.table.values())]
        if unmapped:
            problems.append(
                f"class(es) {', '.join(unmapped[:_SHOWN])}{', ...' if len(unmapped) > _SHOWN else ''} have no raw "
                "value in TableMask.table, so they can never appear; map a value to each or drop the names"
            )
        both = sorted(set(self.table) & set(self.void))
        if both:
            problems.append(f"raw value(s) {both} are both in TableMask.table and in void; a value means one thing")
        negative = sorted(v for v in [*self.table, *self.void] if v < 0)
        if negative:
            problems.append(f"TableMask raw value(s) {negative} are negative; mask files hold values from 0 up")
        return problems

    def decode(self, raw: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
        _check_one_channel(raw, path, "TableMask needs one channel of raw values", "use PaletteMask for colour-coded masks")
        _check_integers(raw, path, "TableMask needs integers", "mask values start at 0")
        invalid = -1
        size = max(int(raw.max()) + 1 if raw.size else 1, *(v + 1 for v in [*self.table, *self.void, 0]))
        out = _lookup(
            raw,
            size,
            (list(self.table), list(self.table.values())),
            self.void,
            ignore_index,
            invalid,
            path,
            "mask value(s) in neither TableMask.table nor void:",
            "add each to table (value: class id) or to void",
        )
        return out.astype(mask_dtype(num_classes, ignore_index), copy=False)


class BinaryMask(MaskDecoder):
    """Two-class masks: raw value ≥ ``threshold`` is class 1 (0/255 → 0/1).

    Every value maps to a class, so noise in the values never stops a run; that is no
    licence for JPEG masks, whose compression still moves pixels across the threshold at
    the edges: :class:`~segopt.data.PairedFolder` refuses them unless ``allow_lossy_masks``.

    Args:
        threshold: smallest raw value that counts as foreground.
        void: raw values that mean "no label" (e.g. 128 for an uncertain band).
    """

    def __init__(self, threshold: int = 128, void: list[int] | None = None) -> None:
        self.threshold = threshold
        self.void = [int(v) for v in (void or [])]

    def config_problems(self, class_names: Sequence[str]) -> list[str]:
        if len(class_names) != 2:
            return [
                f"BinaryMask gives 2 classes but class_names has {len(class_names)} ({list(class_names)}); "
                "give two names (background first), or use IndexMask for multi-class masks"
            ]
        return []

    def __repr__(self) -> str:
        return f"BinaryMask(threshold={self.threshold}, void={self.void})"

    def decode(self, raw: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
        _check_one_channel(raw, path, "BinaryMask needs one grey channel", "save the mask as 8-bit grey")
        if self.threshold > 1 and raw.max() == 1:
            # 0/1 masks under a 0/255 threshold would silently become all background.
            raise DataError(
                f"{path}: mask values are 0/1 but BinaryMask.threshold is {self.threshold}, so every pixel "
                "would be background; set threshold: 1 (or use IndexMask)"
            )
        out = (raw >= self.threshold).astype(mask_dtype(num_classes, ignore_index))
        if self.void:
            out[np.isin(raw, self.void)] = ignore_index
        return out


class PaletteMask(MaskDecoder):
    """Colour-coded RGB masks: ``colours[i]`` is the colour of class ``i``.

    Args:
        colours: one ``[R, G, B]`` per class, in class order.
        void_colours: colours that mean "no label"; mapped to ``ignore_index``.
    """

    colour = True

    def __init__(self, colours: list[tuple[int, int, int]], void_colours: list[tuple[int, int, int]] | None = None) -> None:
        self.colours = [tuple(int(c) for c in rgb) for rgb in colours]
        self.void_colours = [tuple(int(c) for c in rgb) for rgb in (void_colours or [])]
        codes = [self._code(c) for c in self.colours + self.void_colours]
        order = np.argsort(codes)
        self._codes = np.asarray(codes, dtype=np.int64)[order]
        self._ids = np.arange(len(codes))[order]

    def __repr__(self) -> str:
        return f"PaletteMask({len(self.colours)} colours, void_colours={[list(c) for c in self.void_colours]})"

    @staticmethod
    def _code(rgb: tuple[int, ...]) -> int:
        return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]

    def config_problems(self, class_names: Sequence[str]) -> list[str]:
        problems = []
        if len(self.colours) != len(class_names):
            problems.append(
                f"PaletteMask has {len(self.colours)} colours but class_names has {len(class_names)} names; "
                "give one colour per class, in class order"
            )
        every = self.colours + self.void_colours
        dupes = sorted({c for c in every if every.count(c) > 1})
        if dupes:
            problems.append(f"PaletteMask colour(s) {dupes} listed twice; each colour must mean one thing")
        bad = [c for c in every if len(c) != 3 or not all(0 <= v <= 255 for v in c)]
        if bad:
            problems.append(f"PaletteMask colour(s) {bad} are not [R, G, B] with values 0..255")
        return problems

    def decode(self, raw: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
        if raw.ndim != 3 or raw.shape[2] != 3:
            raise DataError(f"{path}: PaletteMask needs an RGB mask but found shape {raw.shape}; save it as RGB")
        code = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
        pos = np.searchsorted(self._codes, code).clip(max=len(self._codes) - 1)
        known = self._codes[pos] == code
        if not known.all():
            values, counts = np.unique(code[~known], return_counts=True)
            colours = [[int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255] for v in values]
            raise DataError(
                f"{path}: mask colour(s) not in the palette: {_listing(colours, counts.tolist())}; add each to "
                "colours (as a new class, with a class name) or to void_colours"
            )
        ids = self._ids[pos]
        out = np.where(ids < len(self.colours), ids, ignore_index)
        return out.astype(mask_dtype(num_classes, ignore_index), copy=False)

    def raw_values(self, raw: np.ndarray) -> list[object]:
        flat = np.unique(raw.reshape(-1, 3), axis=0)
        return [tuple(int(v) for v in rgb) for rgb in flat]
