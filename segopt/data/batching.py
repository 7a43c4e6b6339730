"""Whether a split's samples can be stacked into batches: one rule for fit, validate, test and the data check.

A batch is one tensor, so its images (and masks) must share a size. Training images get one
when ``data.train_size`` is set; evaluation images when ``data.eval_size`` is set (and
``full_res_masks`` is off, which keeps each mask at its own size). Otherwise a split of mixed
sizes needs batches of one image. The alternatives were rejected: padding makes an image's
prediction near its border depend on the images it happens to share a batch with, and
grouping images by size changes the batches the distributed sampler and the resumable
training loader hand out. So the rule is checked from file headers, before a run writes
anything, and the message names the split, two files of different sizes and the two fixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Batching:
    """The config keys that decide whether a split's sizes may differ.

    Args:
        batch_size: ``data.batch_size`` (training, and evaluation unless ``eval_batch_size``).
        eval_batch_size: ``data.eval_batch_size``; None evaluates in batches of ``batch_size``.
        train_size: ``data.train_size``; None keeps training images at their own size.
        eval_size: ``data.eval_size``; None keeps evaluation images at their own size.
        full_res_masks: ``data.full_res_masks``: evaluation masks keep their own size.
    """

    batch_size: int = 16
    eval_batch_size: int | None = None
    train_size: tuple[int, int] | None = None
    eval_size: tuple[int, int] | None = None
    full_res_masks: bool = False

    def problem(self, split: str, sizes: Sequence[tuple[str, str]]) -> str | None:
        """Why ``split`` (its samples' ``(name, "WxH")``) cannot be batched, or None when it can."""
        first: dict[str, str] = {}
        for name, size in sizes:
            first.setdefault(size, name)
        if len(first) < 2:
            return None
        (size_a, name_a), (size_b, name_b) = list(first.items())[:2]
        found = f"{split} images differ in size ({len(first)} sizes in {len(sizes)} images): {name_a} is {size_a}, {name_b} is {size_b}"
        if split == "train":
            if self.train_size is not None or self.batch_size == 1:
                return None
            return (
                f"{found}, but data.train_size is null, so the training batches of data.batch_size={self.batch_size} "
                "images cannot be stacked; set data.train_size: [height, width] (with data.resize_mode: crop or "
                "resize) or data.batch_size: 1"
            )
        batch = self.batch_size if self.eval_batch_size is None else self.eval_batch_size
        if batch == 1:
            return None
        key = (
            f"data.eval_batch_size={batch}"
            if self.eval_batch_size is not None
            else f"data.batch_size={batch} (data.eval_batch_size is null)"
        )
        if self.eval_size is None:
            return (
                f"{found}, but data.eval_size is null, so the evaluation batches of {key} images cannot be "
                "stacked; set data.eval_size: [height, width] (images resized for the network) or "
                "data.eval_batch_size: 1 (each image at its own size)"
            )
        if self.full_res_masks:
            return (
                f"{found}, and data.full_res_masks keeps each mask at its own size, so the evaluation batches of "
                f"{key} masks cannot be stacked; set data.eval_batch_size: 1 or data.full_res_masks: false"
            )
        return None
