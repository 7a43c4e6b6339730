"""Declared classes that the training masks never show: one rule for the data check, fit and plans.

A class absent from the training masks cannot be learned, yet it is not bad input (a data set
may declare classes its current labels lack), so everywhere it is a warning, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def absent_classes(pixels: np.ndarray) -> list[int]:
    """The class ids with no pixel in ``pixels`` (per-class pixel counts ``[K]`` of the training masks)."""
    return [int(i) for i in np.flatnonzero(np.asarray(pixels) == 0)]


def absent_classes_warning(absent: Sequence[int], class_names: Sequence[str], partial: bool = False) -> str:
    """The warning for :func:`absent_classes`' result; ``partial`` when only some masks were read."""
    listed = ", ".join(f"{i} {class_names[i]!r}" for i in absent)
    return (
        f"class(es) {listed} of the {len(class_names)} in class_names never appear in the training masks: a class "
        "absent from training cannot be learned (it scores IoU 0 wherever it appears); add training masks that "
        "show it, drop the name, or check the mask decoding (void values, threshold, palette)"
        + (" [only the first files were read]" if partial else "")
    )
