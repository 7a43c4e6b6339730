"""Data sources and the dataset that applies a joint image+mask transform.

A *source* knows where samples come from (generated, folders on disk) and what the
classes are; it yields decoded pairs ``(image uint8 [H,W,C], mask int64 [H,W])`` with
void already mapped to ``ignore_index``. The datamodule wraps each split in
:class:`TransformedDataset`, which applies one albumentations pipeline to both arrays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

Sample = tuple[np.ndarray, np.ndarray]


class SegSource(ABC):
    """Where the samples of every split come from, and what their classes mean."""

    #: Human-readable class names; their count is the number of classes.
    class_names: Sequence[str]
    #: Channels of the decoded images (1 = grey, 3 = RGB).
    in_channels: int = 3

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def split(self, name: str, ignore_index: int) -> Dataset[Sample]:
        """Return the decoded samples of split ``name`` ("train", "val", "test")."""

    def has_split(self, name: str) -> bool:
        """Whether split ``name`` exists (the test split often does not)."""
        return name in ("train", "val")


class TransformedDataset(Dataset):
    """Applies one albumentations ``Compose`` jointly to image and mask.

    Returns ``{"image": float [C,H,W], "mask": int64 [H,W], "index": int}``.
    """

    def __init__(self, samples: Dataset[Sample], transform: Callable[..., dict[str, Any]]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.samples[index]
        out = self.transform(image=image, mask=mask)
        return {
            "image": out["image"],
            "mask": torch.as_tensor(out["mask"]).long(),
            "index": index,
        }
