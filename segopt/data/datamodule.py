"""SegDataModule: splits of a source, the joint transforms, and the loaders."""

from __future__ import annotations

import random

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from segopt.data.datasets import SegSource, TransformedDataset
from segopt.data.synthetic import SyntheticShapes
from segopt.data.transforms import Augment, Normalize, eval_transform, train_transform


def _worker_init(worker_id: int) -> None:
    # OpenCV's own thread pool fights the loader workers for cores; one thread per worker.
    cv2.setNumThreads(0)
    # torch seeds each worker from the loader's generator; numpy and random follow it so a
    # fixed seed gives the same augmentations on every run.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SegDataModule(pl.LightningDataModule):
    """Training, validation, test and prediction loaders for one segmentation source.

    Args:
        source: where samples come from; the built-in :class:`SyntheticShapes` by default.
        batch_size: images per training batch (evaluation uses the same).
        num_workers: loader worker processes (0 loads in the main process).
        ignore_index: mask value excluded from loss and metrics; a source's void value
            and the fill of rotated-in pixels are mapped to it.
        augment: the training augmentation (the seed's recipe by default).
        normalize: per-channel mean/std applied after scaling to [0, 1].
        train_size: (height, width) training images are resized to; None keeps them.
        eval_size: (height, width) for validation/test; None keeps the original size.
    """

    def __init__(
        self,
        source: SegSource | None = None,
        batch_size: int = 16,
        num_workers: int = 2,
        ignore_index: int = 255,
        augment: Augment | None = None,
        normalize: Normalize | None = None,
        train_size: tuple[int, int] | None = None,
        eval_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.source = source if source is not None else SyntheticShapes()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.ignore_index = ignore_index
        self.augment = augment or Augment()
        self.normalize = normalize or Normalize()
        self.train_size = train_size
        self.eval_size = eval_size
        self._splits: dict[str, TransformedDataset] = {}

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def in_channels(self) -> int:
        return self.source.in_channels

    def dataset(self, split: str) -> TransformedDataset:
        """The transformed dataset of ``split``, built once."""
        if split not in self._splits:
            samples = self.source.split(split, self.ignore_index)
            if split == "train":
                transform = train_transform(
                    self.augment, self.ignore_index, self.train_size, self.normalize, self.in_channels
                )
            else:
                transform = eval_transform(self.eval_size, self.normalize, self.in_channels)
            self._splits[split] = TransformedDataset(samples, transform)
        return self._splits[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        on_gpu = self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(self.dataset(split)) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=on_gpu,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_worker_init,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self.source.has_split("test") else "val", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test" if self.source.has_split("test") else "val", shuffle=False)

