"""Data sources and the dataset that applies a joint image+mask transform.

A *source* knows where samples come from (generated, folders on disk) and what the
classes are; it yields decoded pairs ``(image uint8 [H,W,C], mask integer [H,W])`` with
void already mapped to ``ignore_index``. Masks may be any integer dtype (file sources use
uint8 where the ids fit: OpenCV warps it fastest); :class:`TransformedDataset` applies one
albumentations pipeline to both arrays and returns the mask as int64.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segopt.data.files import DataError, decode_threads
from segopt.data.masks import invalid_mask_values
from segopt.data.resumable import SeededIndex

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

    def sizes(self, split: str) -> list[tuple[str, str]] | None:
        """``(sample name, "WxH")`` of every sample of ``split`` when known without decoding, else None."""
        return None

    def validate(self) -> None:  # noqa: B027 (optional: a source without cheap checks keeps this no-op)
        """Raise :class:`DataError` listing every problem found cheaply (paths, pairing, headers).

        Called when the datamodule is built, i.e. before a run writes anything.
        """


class CachedSamples(Dataset):
    """Every sample of ``samples`` decoded once, up front, and kept in memory.

    Decoding happens in the main process (threads: the decoders release the GIL), so that
    forked loader workers share the arrays instead of each decoding its own copy. Every
    bad file is reported in one :class:`DataError`.
    """

    def __init__(self, samples: Dataset[Sample], threads: int | None = None) -> None:
        count = len(samples)  # type: ignore[arg-type]
        threads = threads or decode_threads()
        problems: list[str] = []

        def load(i: int) -> Sample | None:
            try:
                return samples[i]
            except DataError as err:
                problems.extend(err.problems)
                return None

        with ThreadPoolExecutor(threads) as pool:
            items = list(pool.map(load, range(count)))
        if problems:
            raise DataError(problems, header="decoding the data set for the cache")
        self.items: list[Sample] = items  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        return self.items[index]


class TransformedDataset(Dataset):
    """Applies one albumentations ``Compose`` jointly to image and mask.

    Returns ``{"image": float [C,H,W], "mask": int64 [H,W], "index": int}`` (with
    ``widen_mask=False`` and a pipeline without normalisation: uint8 image, narrow mask).

    Args:
        samples: decoded ``(image, mask)`` pairs.
        transform: called as ``transform(image=, mask=)``.
        check_mask: ``(num_classes, ignore_index)`` to verify every transformed mask holds
            only class ids or ``ignore_index``; here, in the loader workers, rather than in
            the loss, where it would make the host wait for the device at every step.
        mask_hint: what to change when a mask fails that check.
        widen_mask: return the mask as int64; False keeps its decoded dtype (uint8 for most
            data sets) so batches are smaller until the datamodule widens them on the device.
    """

    def __init__(
        self,
        samples: Dataset[Sample],
        transform: Callable[..., dict[str, Any]],
        check_mask: tuple[int, int] | None = None,
        widen_mask: bool = True,
        mask_hint: str = "check the data's num_classes and mask decoding, or map those values to ignore_index",
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.check_mask = check_mask
        self.widen_mask = widen_mask
        self.mask_hint = mask_hint

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def reseed(self, seed: int) -> None:
        """Seed the transform's own random state (albumentations ignores numpy's global one)."""
        set_seed = getattr(self.transform, "set_random_seed", None)
        if set_seed is not None:
            set_seed(seed)

    def __getitem__(self, index: int | SeededIndex) -> dict[str, Any]:
        if isinstance(index, SeededIndex):  # from the resumable training sampler
            self.reseed(index.seed)
            index = index.index
        image, mask = self.samples[index]
        out = self.transform(image=image, mask=mask)
        mask_out = torch.as_tensor(out["mask"])
        if self.widen_mask:
            mask_out = mask_out.long()
        if self.check_mask is not None:
            self._check(mask_out, index)
        return {"image": out["image"], "mask": mask_out, "index": index}

    def _check(self, mask: torch.Tensor, index: int) -> None:
        num_classes, ignore_index = self.check_mask  # type: ignore[misc]
        values = invalid_mask_values(mask, num_classes, ignore_index)[:6]
        if values:
            raise DataError(
                f"sample {index}: after the transform the mask holds {values}, which are neither class "
                f"ids (0..{num_classes - 1}) nor ignore_index ({ignore_index}); {self.mask_hint}"
            )
