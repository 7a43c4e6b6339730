"""A training loader that stops anywhere and continues exactly: order, position, augmentation, RNG.

Each epoch's order is a permutation drawn from ``(seed, epoch)``, and each sample's
augmentation is seeded from ``(seed, epoch, position in that order)``: a sample is
augmented the same whichever worker loads it, however many workers there are, and
whether or not the run was interrupted before it. The loader is stateful in Lightning's
sense (``state_dict``), so checkpoints keep the epoch, the batches already trained and the
random states of the training processes (Python, NumPy, torch, CUDA); a resumed loader
skips exactly the batches already trained.

The loader's place (epoch, batches trained, random states) is kept by the datamodule in its
``state_dict``, which Lightning writes into every fit checkpoint and hands back through
``load_state_dict`` before the run builds its training loader (a schedule sized to the run
builds it, with its first iterator, as the optimisers are configured). The loader has the same
two methods because Lightning takes a loader without them for one that cannot resume
mid-epoch; the copy Lightning keeps under the checkpoint's loops comes back only to a loader
built after the loops are restored, so segopt reads the datamodule's. The random states are put
back as the first batch after the resume is drawn: by then the sanity check and the epoch's start
have run, as they had in the run that stopped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segopt.data.rare_images import RareImages


class SeededIndex(NamedTuple):
    """A sample index with the seed of its augmentation."""

    index: int
    seed: int


class ResumableSampler(DistributedSampler):
    """Shuffled indices with per-sample seeds; ``skip`` drops the first batches of the next pass.

    With ``rare_images``, a share of the order goes to images that hold a rare class
    (:class:`segopt.data.rare_images.RareImages`), drawn from ``(seed, epoch)`` as the order is.

    A :class:`DistributedSampler` (one process: ``num_replicas=1``), so Lightning neither
    wraps nor replaces it and calls ``set_epoch`` every epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        rare_images: RareImages | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        #: Oversampling of images that hold a rare class (applied to the whole order, before it is split by rank).
        self.rare_images = rare_images
        #: Batches of this process to leave out at the start of the next pass (set on resume).
        self.skip = 0

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        if self.rare_images is not None:
            order = self.rare_images.resample(order, self.seed, self.epoch)
        total = math.ceil(n / self.num_replicas) * self.num_replicas
        order += order[: total - n]  # pad so every process gets as many (DistributedSampler's rule)
        positions = range(self.rank, total, self.num_replicas)
        start, self.skip = self.skip * self.batch_size, 0
        for position in list(positions)[start:]:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0])
            yield SeededIndex(order[position], seed)


def _random_states() -> dict[str, Any]:
    """This process's random states, as tensors and plain numbers (``torch.load(weights_only=True)`` reads them)."""
    version, keys, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [name, torch.from_numpy(mt.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    version, keys, gauss = states["python"]
    random.setstate((version, tuple(keys), gauss))
    name, mt, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, mt.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def restore_random_states(saved: list[dict[str, Any]]) -> bool:
    """Set this process's random states to its own in ``saved`` (one per process); False (nothing
    set) when ``saved`` comes from another number of processes."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if len(saved) != world:
        return False
    _set_random_states(saved[rank])
    return True


class ResumableLoader(DataLoader):
    """The training DataLoader over a :class:`ResumableSampler`, with a place to resume from.

    Args:
        dataset: the training set (items are fetched with :class:`SeededIndex`).
        sampler: its :class:`ResumableSampler`.
        progress: batches of the current epoch already trained (from the Trainer's loop).
        resume_from: the place (:meth:`state_dict`) of the checkpoint a fit resumes from, if any.
        **kwargs: the other DataLoader arguments.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: ResumableSampler,
        progress: Callable[[], int],
        resume_from: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Each iterator draws its workers' base seed from this generator, not the global one: a
        # resumed run makes its first iterator at another point than a run that never stopped.
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.progress = progress
        self._random_states_to_restore: list[dict[str, Any]] | None = None
        if resume_from is not None:
            self.load_state_dict(resume_from)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches trained in it, and the random states of every training process."""
        states = _random_states()
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
        else:
            gathered = [states]
        return {"epoch": self.sampler.epoch, "batches": int(self.progress()), "random_states": gathered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches the checkpoint had trained, with its random states from the first batch on."""
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        if state["batches"] >= len(self):
            sampler.set_epoch(state["epoch"] + 1)
            sampler.skip = 0
        else:
            sampler.set_epoch(state["epoch"])
            sampler.skip = state["batches"]
        self._random_states_to_restore = state["random_states"]

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        return iterator if self._random_states_to_restore is None else self._restoring(iterator)

    def _restoring(self, iterator: Iterator[Any]) -> Iterator[Any]:
        # A generator: this runs at the first batch asked for, not as the iterator is made (Lightning
        # makes one when it sizes the run, before the sanity check).
        states, self._random_states_to_restore = self._random_states_to_restore, None
        if states is not None:
            restore_random_states(states)
        yield from iterator
