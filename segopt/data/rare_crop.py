"""Rare-class crops: a share of the training crops centred on pixels of rare classes.

Random crops seldom hold a pole or a cyclist, so those classes barely reach the loss. As
nnU-Net oversamples foreground patches, a share of the crops is centred on a pixel of a
class that holds few of the training pixels; the rare classes come from the pixel counts
of the decoded training masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import albumentations as A
import cv2
import numpy as np
from pydantic import Field

#: The default ``data.augment.rare_class_below``: a class is rare under 2 % of the training pixels.
RARE_CLASS_BELOW = 0.02


def rare_classes(pixels: np.ndarray, below: float) -> list[int]:
    """Ids of the classes that occur but hold less than ``below`` of the labelled pixels."""
    pixels = np.asarray(pixels)
    share = pixels / max(int(pixels.sum()), 1)
    return np.flatnonzero((pixels > 0) & (share < below)).tolist()


def no_rare_class_problem(
    pixels: np.ndarray, key: str, share: float, below: float, class_names: Sequence[str]
) -> str | None:
    """Why the config key ``key`` (rare-class crops or images, at ``share``) has no rare class to
    favour, or None when some class of the training pixel counts ``pixels`` is rare."""
    pixels = np.asarray(pixels)
    if rare_classes(pixels, below):
        return None
    fraction = pixels / max(int(pixels.sum()), 1)
    rarest = int(np.argmin(np.where(pixels > 0, fraction, np.inf)))
    return (
        f"{key} is {share} but no class holds less than {below:.2%} of the training pixels "
        f"(the rarest, {class_names[rarest]!r}, holds {fraction[rarest]:.2%}); raise data.augment.rare_class_below "
        f"or set {key.rsplit('.', 1)[-1]}: 0"
    )


class RareClassCrop(A.RandomCrop):
    """``RandomCrop`` that, with probability ``share``, centres the crop on a rare-class pixel.

    The class is drawn uniformly among the rare ones present in the mask (so the rarest is
    not drowned by the merely uncommon), then the pixel uniformly among that class's pixels;
    the crop is shifted to stay inside the (padded) image, so the pixel is always in it. A
    mask without a rare pixel gets a plain random crop. Draws come from the transform's own
    random state, which the pipeline's seed sets.
    """

    class InitSchema(A.RandomCrop.InitSchema):
        classes: list[int]
        share: Annotated[float, Field(ge=0, le=1)]

    def __init__(
        self,
        height: int,
        width: int,
        classes: Sequence[int],
        share: float,
        pad_if_needed: bool = False,
        pad_position: str = "center",
        border_mode: int = cv2.BORDER_CONSTANT,
        fill: float = 0.0,
        fill_mask: float = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(
            height, width, pad_if_needed=pad_if_needed, pad_position=pad_position, border_mode=border_mode,
            fill=fill, fill_mask=fill_mask, p=p,
        )  # fmt: skip
        self.classes = list(classes)
        self.share = share

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        out = super().get_params_dependent_on_data(params, data)
        if self.py_random.random() >= self.share:
            return out
        mask = np.asarray(data["mask"])
        present = [c for c in self.classes if (mask == c).any()]
        if not present:
            return out
        ys, xs = np.nonzero(mask == self.py_random.choice(present))
        pick = self.py_random.randrange(len(ys))
        pad = out["pad_params"] or {"pad_top": 0, "pad_bottom": 0, "pad_left": 0, "pad_right": 0}
        padded_h = mask.shape[0] + pad["pad_top"] + pad["pad_bottom"]
        padded_w = mask.shape[1] + pad["pad_left"] + pad["pad_right"]
        y = min(max(int(ys[pick]) + pad["pad_top"] - self.height // 2, 0), padded_h - self.height)
        x = min(max(int(xs[pick]) + pad["pad_left"] - self.width // 2, 0), padded_w - self.width)
        return {**out, "crop_coords": (x, y, x + self.width, y + self.height)}
