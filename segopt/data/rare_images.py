"""Rare-image oversampling: a share of the training draws go to images that hold a rare class.

When a class occurs in few images (a defect in 26 of 1062 tiles), an epoch of whole images
shows it as seldom as the data set does, and a short run never learns it; a rare-class crop
cannot help, since most draws hold no pixel of it to centre on. As nnU-Net oversamples
foreground, each place of an epoch's order is, with probability ``share``, given to an image
that holds a rare class instead: the class drawn uniformly among the rare ones (so the rarest
is not drowned by the merely uncommon), then the image uniformly among those that hold it.
The draws depend only on ``(seed, epoch)``, so an interrupted epoch resumes with the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RareImages:
    """The images that hold each rare class, and the share of draws given to them.

    Args:
        share: probability that a place of the epoch's order goes to a rare-class image.
        holders: per rare class, the indices of the training images that hold it.
    """

    share: float
    holders: tuple[tuple[int, ...], ...]

    @classmethod
    def from_pixels(cls, per_image: np.ndarray, classes: Sequence[int], share: float) -> RareImages:
        """From per-image class pixels ``[N, K]`` and the rare class ids."""
        return cls(share, tuple(tuple(np.flatnonzero(per_image[:, c] > 0).tolist()) for c in classes))

    def resample(self, order: list[int], seed: int, epoch: int) -> list[int]:
        """``order`` with each place given, with probability ``share``, to a rare-class image."""
        if self.share <= 0 or not any(self.holders):
            return order
        rng = np.random.default_rng([seed, epoch, len(order)])
        n = len(order)
        taken = np.flatnonzero(rng.random(n) < self.share)
        held = [h for h in self.holders if h]
        classes = rng.integers(len(held), size=n)
        picks = rng.random(n)
        out = list(order)
        for place in taken.tolist():
            holders = held[classes[place]]
            out[place] = holders[int(picks[place] * len(holders))]
        return out
