"""SegDataModule: splits of a source, the joint transforms, and the loaders."""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader, Dataset, get_worker_info

from segopt.data.batching import Batching
from segopt.data.class_weights import TakesClassPixels, class_pixels_per_image, pixel_totals
from segopt.data.classes import absent_classes, absent_classes_warning
from segopt.data.datasets import CachedSamples, SegSource, TransformedDataset
from segopt.data.files import DataError
from segopt.data.folder import FolderSplit
from segopt.data.predict_folder import PredictFolder, collate_predict
from segopt.data.rare_crop import no_rare_class_problem, rare_classes
from segopt.data.rare_images import RareImages
from segopt.data.resumable import ResumableLoader, ResumableSampler
from segopt.data.synthetic import SyntheticShapes
from segopt.data.transforms import (
    Augment,
    Normalize,
    ResizeMode,
    eval_transform,
    load_pipeline,
    train_transform,
)

log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """Loader workers for this machine: one per usable CPU core less one for the main process, 1 to 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def _worker_init(worker_id: int) -> None:
    # OpenCV's own thread pool fights the loader workers for cores; one thread per worker.
    cv2.setNumThreads(0)
    # torch gives each worker base_seed + worker_id, base_seed drawn from the (seeded) global
    # generator. albumentations keeps its own random state and ignores numpy's, so the
    # pipeline is reseeded explicitly; mixing in the rank keeps DDP ranks from repeating
    # each other's augmentations.
    info = get_worker_info()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    seed = int(np.random.SeedSequence([info.seed if info else torch.initial_seed(), rank]).generate_state(1)[0])
    np.random.seed(seed)
    random.seed(seed)
    if info is not None and isinstance(info.dataset, TransformedDataset):
        info.dataset.reseed(seed)


def _trained_batches(trainer: pl.Trainer) -> Callable[[], int]:
    return lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed


class SegDataModule(pl.LightningDataModule):
    """Training, validation, test and prediction loaders for one segmentation source.

    Args:
        source: where samples come from; the built-in :class:`SyntheticShapes` by default.
        batch_size: images per training batch (and per evaluation batch, unless ``eval_batch_size``).
        eval_batch_size: images per validation/test batch; None (default) uses ``batch_size``.
            Images of one batch must share a size: with validation/test images of several
            sizes and ``eval_size`` null, set it to 1 (checked before a run writes anything,
            see :mod:`segopt.data.batching`).
        num_workers: loader worker processes (0 loads in the main process); None (default)
            sizes them from the machine: one per CPU core this process may use, less one for
            the main process, at most 8 (:func:`default_num_workers`).
        prefetch_factor: batches each worker loads ahead; None (default) keeps at least 4
            batches in flight in all (2 per worker from 2 workers on).
        ignore_index: mask value excluded from loss and metrics; a source's void value
            and the fill of rotated-in pixels are mapped to it.
        augment: the training augmentation (the tutorial's recipe by default).
        normalize: per-channel mean/std applied after scaling to [0, 1].
        train_size: (height, width) of training images; None keeps them as they are.
        eval_size: (height, width) for validation/test (resized); None keeps the original size.
        full_res_masks: with ``eval_size``, resize only the validation/test images and keep
            their masks at the labels' own resolution: the network sees the scale it was
            trained at, and its probabilities are resized up before the argmax, so mIoU is
            measured at full resolution.
        resize_mode: how training images reach ``train_size``: "resize" scales the whole
            image, "crop" takes a random crop at full resolution (smaller images padded,
            mask padding = ``ignore_index``).
        rare_image_share: probability that a place in an epoch's training order goes to an
            image holding a rare class (one with less than ``augment.rare_class_below`` of the
            training pixels) instead (:mod:`segopt.data.rare_images`); 0 (default) keeps every
            epoch a plain permutation.
        train_pipeline: a file saved by ``albumentations.save`` (.yaml/.json) that replaces
            ``augment``; ``train_size`` still applies first, normalisation is appended
            unless the file ends with it.
        cache: decode every sample once, up front, and keep it in memory (fast epochs for
            data sets that fit in RAM; all bad files are reported before training).
        pin_memory: page-locked batches for faster host→GPU copies; None turns it on when
            training on a CUDA GPU.
        persistent_workers: keep loader workers alive between epochs.
        normalize_on_device: training batches leave the workers as uint8 images (4x fewer
            bytes through shared memory and to the GPU than float32), normalised after the
            transfer to the device. Items of ``dataset("train")`` are then uint8. None
            (default) turns it on when training on a CUDA GPU. Masks of every split always
            leave the workers narrow (their decoded dtype, uint8 for up to 256 classes) and
            are widened to int64 after the transfer.
        predict_dir: a folder of images (any size) for ``predict``; None predicts the
            test split (or validation when there is none).
        predict_batch_size: images per prediction batch; images of different sizes in a
            batch are edge-padded to the largest, so 1 keeps each mask independent of
            the other images.
    """

    def __init__(
        self,
        source: SegSource | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        ignore_index: int = 255,
        augment: Augment | None = None,
        normalize: Normalize | None = None,
        train_size: tuple[int, int] | None = None,
        eval_size: tuple[int, int] | None = None,
        full_res_masks: bool = False,
        resize_mode: ResizeMode = "resize",
        rare_image_share: float = 0.0,
        train_pipeline: str | None = None,
        cache: bool = False,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        normalize_on_device: bool | None = None,
        predict_dir: str | None = None,
        predict_batch_size: int = 1,
    ) -> None:
        super().__init__()
        self.source = source if source is not None else SyntheticShapes()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.prefetch_factor = prefetch_factor
        self.ignore_index = ignore_index
        self.augment = augment or Augment()
        self.normalize = normalize or Normalize()
        self.train_size = train_size
        self.eval_size = eval_size
        self.full_res_masks = full_res_masks
        self.resize_mode = resize_mode
        self.rare_image_share = rare_image_share
        self.train_pipeline = train_pipeline
        self.cache = cache
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.normalize_on_device = normalize_on_device
        self._validate()
        if predict_batch_size < 1:
            raise ValueError(f"data.predict_batch_size is {predict_batch_size}; it must be 1 or more")
        self.predict_dir = predict_dir
        self.predict_batch_size = predict_batch_size
        self._splits: dict[str, TransformedDataset] = {}
        self._norm_stats: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._resume_from: dict[str, Any] | None = None  # a checkpoint's loader place, until the loader is built
        self._train_loader: ResumableLoader | None = None
        self._train_per_image: np.ndarray | None = None
        self._rare_images: RareImages | None = None

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def in_channels(self) -> int:
        return self.source.in_channels

    def _validate(self) -> None:
        """Every cheap check (paths, pairing, headers, config), before a run writes anything."""
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size is {self.batch_size}; it must be 1 or more, e.g. 16")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(
                f"data.eval_batch_size is {self.eval_batch_size}; it must be 1 or more, or null (data.batch_size)"
            )
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers is {self.num_workers}; it must be 0 (load in the main process) or more")
        for key in ("train_size", "eval_size"):
            size = getattr(self, key)
            if size is not None and (len(size) != 2 or min(size) < 1):
                raise ValueError(f"data.{key} is {list(size)}; give [height, width] in pixels, both 1 or more, or null")
        if 0 <= self.ignore_index < self.num_classes:
            raise DataError(
                f"data.ignore_index is {self.ignore_index}, which is the id of class "
                f"{self.class_names[self.ignore_index]!r}; pick a value outside 0..{self.num_classes - 1} (e.g. 255)"
            )
        self.source.validate()
        self._validate_scale()
        self._validate_rare_crops()
        if not 0 <= self.rare_image_share <= 1:
            raise ValueError(
                f"data.rare_image_share is {self.rare_image_share}; give a probability in [0, 1], e.g. 0.33, or 0 for none"
            )
        if self.train_pipeline is not None:
            load_pipeline(self.train_pipeline)

    def _validate_scale(self) -> None:
        if self.augment.random_scale is None:
            raise ValueError("data.augment.random_scale is null; give [1.0, 1.0] to turn the scale jitter off, or [low, high]")
        scale = tuple(self.augment.random_scale)
        if scale == (1.0, 1.0):
            return
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(
                f"data.augment.random_scale is {list(scale)}; give [low, high] with 0 < low <= high, e.g. [0.5, 2.0]"
            )
        if self.train_size is None:
            raise ValueError(
                f"data.augment.random_scale is {list(scale)} but data.train_size is null; the scale jitter crops "
                "to train_size, so set it (e.g. train_size: [180, 240])"
            )
        if self.train_pipeline is not None:
            raise ValueError(
                f"data.augment.random_scale is {list(scale)} but data.train_pipeline {self.train_pipeline} replaces "
                "data.augment; add A.RandomScale + A.RandomCrop to that file, or drop train_pipeline"
            )

    def _validate_rare_crops(self) -> None:
        share, below = self.augment.rare_crop_share, self.augment.rare_class_below
        if not 0 <= share <= 1:
            raise ValueError(f"data.augment.rare_crop_share is {share}; give a probability in [0, 1], e.g. 0.5")
        if not 0 < below <= 1:
            raise ValueError(f"data.augment.rare_class_below is {below}; give a pixel share in (0, 1], e.g. 0.02")
        if share == 0:
            return
        if self.train_size is None or (self.resize_mode == "resize" and self.augment.random_scale[1] <= 1):
            raise ValueError(
                f"data.augment.rare_crop_share is {share} but training images are not cropped (train_size "
                f"{self.train_size}, resize_mode {self.resize_mode!r}, random_scale {list(self.augment.random_scale)}); "
                "set train_size with resize_mode: crop, or random_scale with an upper bound above 1 (e.g. [0.5, 2.0])"
            )
        if self.train_pipeline is not None:
            raise ValueError(
                f"data.augment.rare_crop_share is {share} but data.train_pipeline {self.train_pipeline} replaces "
                "data.augment; drop one of them"
            )

    def train_class_pixels(self) -> np.ndarray:
        """Pixels of each class ``[K]`` in the decoded training masks (``ignore_index`` left out),
        counted once as the training split is built."""
        return pixel_totals(self.train_pixels_per_image())[0]

    def train_pixels_per_image(self) -> np.ndarray:
        """Pixels of each class in each decoded training mask, int64 ``[N, K]``, counted once as the
        training split is built (what class weights and rare-image oversampling are made from)."""
        self.dataset("train")
        return self._train_per_image  # type: ignore[return-value]

    @property
    def rare_images(self) -> RareImages | None:
        """The training split's rare-image oversampling (``rare_image_share``); None when it is off."""
        self.dataset("train")
        return self._rare_images

    def _count_train(self, samples: Dataset) -> np.ndarray:
        # A folder's masks are counted without decoding its images, unless the cache holds both.
        counted = samples.masks_only() if isinstance(samples, FolderSplit) else samples
        # In this process: a bad mask met here is one clean error, not a loader worker's traceback.
        per_image = class_pixels_per_image(counted, self.num_classes, self.ignore_index)
        pixels, _ = pixel_totals(per_image)
        if self.rare_image_share > 0:
            classes = self._rare_classes(pixels, "data.rare_image_share", self.rare_image_share)
            self._rare_images = RareImages.from_pixels(per_image, classes, self.rare_image_share)
        absent = absent_classes(pixels)
        if absent:
            rank_zero_only(log.warning)("segopt: warning: %s", absent_classes_warning(absent, self.class_names))
        self._train_per_image = per_image
        return pixels

    def _rare_classes(self, pixels: np.ndarray, key: str, share: float) -> list[int]:
        """The rare classes that ``key`` (rare-class crops or images, at ``share``) favours, from
        the training masks' pixel counts."""
        below = self.augment.rare_class_below
        problem = no_rare_class_problem(pixels, key, share, below, self.class_names)
        if problem:
            raise ValueError(problem)
        rare = rare_classes(pixels, below)
        fraction = pixels / max(int(pixels.sum()), 1)
        shown = ", ".join(f"{self.class_names[c]} ({fraction[c]:.2%})" for c in rare)
        rank_zero_info(f"segopt: {key} {share} favours {shown}")
        return rare

    def _crop_classes(self, pixels: np.ndarray) -> list[int]:
        """The classes rare-class crops centre on (none when they are off)."""
        if not (self.augment.enabled and self.augment.rare_crop_share > 0):
            return []
        return self._rare_classes(pixels, "data.augment.rare_crop_share", self.augment.rare_crop_share)

    def batching(self) -> Batching:
        """The keys that decide whether a split's images of several sizes can be batched."""
        return Batching(self.batch_size, self.eval_batch_size, self.train_size, self.eval_size, self.full_res_masks)

    def check_batches(self, stage: str) -> None:
        """Raise :class:`DataError` when a split that ``stage`` loads holds images of several sizes
        that its batches would have to stack; from file headers, so before a run writes anything
        (the command line calls it before the Trainer runs). Sources that cannot tell their
        sizes without decoding are left to the data check."""
        eval_split = self._eval_split()
        predicted = [] if self.predict_dir is not None else [eval_split]
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": [eval_split], "predict": predicted}.get(stage, [])
        rule = self.batching()
        problems = []
        for split in splits:
            sizes = self.source.sizes(split) if self.source.has_split(split) else None
            problem = rule.problem(split, sizes) if sizes else None
            if problem:
                problems.append(problem)
        if problems:
            raise DataError(problems)

    def setup(self, stage: str) -> None:
        self.check_batches(stage)
        # Built here, in the main process, so a cache is filled once and shared by forked workers.
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": [self._eval_split()]}.get(stage, [])
        for split in splits:
            self.dataset(split)
        # Lightning sets up the datamodule before the model: a model that derives class weights
        # from the data gets the counts made as the training split was built.
        model = self.trainer.lightning_module if stage == "fit" and self.trainer is not None else None
        if isinstance(model, TakesClassPixels):
            model.set_class_pixels(self.train_pixels_per_image())

    def _eval_split(self) -> str:
        return "test" if self.source.has_split("test") else "val"

    def dataset(self, split: str) -> TransformedDataset:
        """The transformed dataset of ``split``, built once."""
        if split not in self._splits:
            samples = self.source.split(split, self.ignore_index)
            if self.cache:
                samples = CachedSamples(samples)
            hint = {}
            on_device = self.normalizes_on_device()
            if split == "train":
                # Seeded from torch's global seed so a fixed seed reproduces the augmentation
                # in the main process; loader workers reseed it (see _worker_init).
                transform = train_transform(
                    self.augment,
                    self.ignore_index,
                    self.train_size,
                    self.normalize,
                    self.in_channels,
                    mode=self.resize_mode,
                    pipeline=self.train_pipeline,
                    seed=torch.initial_seed() % 2**32,
                    normalize=not on_device,
                    rare_classes=self._crop_classes(self._count_train(samples)),
                )
                if self.train_pipeline is not None:
                    hint["mask_hint"] = (
                        f"in the pipeline file give every padding/rotation fill_mask: {self.ignore_index} "
                        "and mask_interpolation: 0 (nearest)"
                    )
            else:
                transform = eval_transform(self.eval_size, self.normalize, self.in_channels, self.full_res_masks)
            # Masks leave the workers narrow (uint8 for up to 256 classes: 8x fewer bytes to copy
            # into shared memory and to the device) and are widened to int64 after the transfer.
            check = (self.num_classes, self.ignore_index)
            self._splits[split] = TransformedDataset(samples, transform, check_mask=check, widen_mask=False, **hint)
        return self._splits[split]

    def decoded(self, split: str) -> Dataset:
        """The decoded ``(image uint8 [H,W,C], mask [H,W])`` pairs of ``split`` before any
        transform (from the cache when ``cache`` is on): what class weights and the overlays read."""
        return self.dataset(split).samples

    def _on_cuda(self) -> bool:
        return self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)

    def normalizes_on_device(self) -> bool:
        """Whether training batches leave the workers as uint8 (``normalize_on_device``, or a CUDA run)."""
        return self._on_cuda() if self.normalize_on_device is None else self.normalize_on_device

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B,C,H,W]`` → float, scaled to [0, 1] and normalised, on their device."""
        c = images.shape[1]
        key = (images.device, c)
        if key not in self._norm_stats:
            # Made once per device: building them from Python numbers copies host→device, and a
            # copy from ordinary (unpinned) memory makes the host wait for the GPU, every step.
            mean = torch.tensor(self.normalize.mean[:c], device=images.device).view(1, c, 1, 1)
            std = torch.tensor(self.normalize.std[:c], device=images.device).view(1, c, 1, 1)
            self._norm_stats[key] = (mean, std)
        mean, std = self._norm_stats[key]
        return (images.float() / 255.0 - mean) / std

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Narrow masks (always) and uint8 images (normalize_on_device) are widened here, on the device.
        if isinstance(batch, dict):
            if isinstance(batch.get("image"), torch.Tensor) and batch["image"].dtype == torch.uint8:
                batch["image"] = self.normalize_images(batch["image"])
            if isinstance(batch.get("mask"), torch.Tensor) and batch["mask"].dtype != torch.int64:
                batch["mask"] = batch["mask"].long()
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The training loader's place (epoch, batches trained, random states), kept in fit checkpoints."""
        return {} if self._train_loader is None else {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Build the next training loader at the checkpoint's place.

        Lightning calls this as a fit resumes, before anything builds the training loader
        (it restores the module, then the datamodule, then configures the optimisers, whose
        schedule sizes the run and so builds the loader).
        """
        self._resume_from = state_dict.get("train_loader")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # Pinned batches let Lightning's host→GPU copy run asynchronously (non_blocking).
        pin = self._on_cuda() if self.pin_memory is None else self.pin_memory
        dataset = self.dataset(split)
        batch_size = self.batch_size if shuffle or self.eval_batch_size is None else self.eval_batch_size
        options: dict[str, Any] = {
            "batch_size": batch_size,
            "drop_last": shuffle and len(dataset) > batch_size,
            "num_workers": self.num_workers,
            "pin_memory": pin,
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
            "worker_init_fn": _worker_init,
            "prefetch_factor": self._prefetch(),
        }
        if not shuffle or self.trainer is None:
            return DataLoader(dataset, shuffle=shuffle, **options)
        # Shuffled through a sampler whose position checkpoints keep, so a resumed run sees
        # the batches, in the order and with the augmentation, the interrupted one would have.
        trainer = self.trainer
        sampler = ResumableSampler(
            dataset,
            torch.initial_seed() % 2**31,
            self.batch_size,
            trainer.world_size,
            trainer.global_rank,
            rare_images=self._rare_images,
        )
        resume, self._resume_from = self._resume_from, None
        self._train_loader = ResumableLoader(dataset, sampler, _trained_batches(trainer), resume, **options)
        return self._train_loader

    def _prefetch(self) -> int | None:
        if self.num_workers == 0:
            return None  # the DataLoader refuses a prefetch factor without workers
        if self.prefetch_factor is not None:
            return self.prefetch_factor
        return max(2, math.ceil(4 / self.num_workers))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._eval_split(), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dir is not None:
            folder = PredictFolder(
                self.predict_dir, self.in_channels, eval_transform(self.eval_size, self.normalize, self.in_channels)
            )
            return DataLoader(
                folder,
                batch_size=self.predict_batch_size,
                num_workers=self.num_workers,
                collate_fn=collate_predict,
                worker_init_fn=_worker_init,
                prefetch_factor=self._prefetch(),
            )
        return self._loader("test" if self.source.has_split("test") else "val", shuffle=False)

