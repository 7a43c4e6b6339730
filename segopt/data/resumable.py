"""A training loader that stops anywhere and continues exactly: order, position, augmentation, RNG.

Each epoch's order is a permutation drawn from ``(seed, epoch)``, and each sample's
augmentation is seeded from ``(seed, epoch, position in that order)``: a sample is
augmented the same whichever worker loads it, however many workers there are, and
whether or not the run was interrupted before it. The loader is stateful in Lightning's
sense (``state_dict``/``load_state_dict``), so checkpoints keep the epoch, the batches
already trained and the random states of the training processes (Python, NumPy, torch,
CUDA); a resumed loader skips exactly the batches already trained.
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


class SeededIndex(NamedTuple):
    """A sample index with the seed of its augmentation."""

    index: int
    seed: int


class ResumableSampler(DistributedSampler):
    """Shuffled indices with per-sample seeds; ``skip`` drops the first batches of the next pass.

    A :class:`DistributedSampler` (one process: ``num_replicas=1``), so Lightning neither
    wraps nor replaces it and calls ``set_epoch`` every epoch.
    """

    def __init__(self, dataset: Dataset, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        #: Batches of this process to leave out at the start of the next pass (set on resume).
        self.skip = 0

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
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


class ResumableLoader(DataLoader):
    """The training DataLoader over a :class:`ResumableSampler`, with a state Lightning checkpoints.

    Args:
        dataset: the training set (items are fetched with :class:`SeededIndex`).
        sampler: its :class:`ResumableSampler`.
        progress: batches of the current epoch already trained (from the Trainer's loop).
        **kwargs: the other DataLoader arguments.
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, progress: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.progress = progress

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
        """Continue after the batches the checkpoint had trained, with each process's random states."""
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        if state["batches"] >= len(self):
            sampler.set_epoch(state["epoch"] + 1)
        else:
            sampler.set_epoch(state["epoch"])
            sampler.skip = state["batches"]
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        saved = state.get("random_states") or []
        if len(saved) == world:  # a run resumed on as many processes as it was saved from
            _set_random_states(saved[rank])
