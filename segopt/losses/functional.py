"""The pieces every loss term shares: float32 logits, ignored pixels, one-hot targets, Dice scores.

Targets are not checked here (that would make the host wait for the device at every step):
the data module checks every mask where it is decoded and transformed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def float32_logits(logits: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield ``logits`` as float32 with autocast off, for a loss computed inside the block.

    A 512x512 batch sums millions of probabilities, far past fp16's 65504, and bf16's 8-bit
    mantissa stops adding small terms to a large sum: every term runs in float32.
    """
    with torch.autocast(logits.device.type, enabled=False):
        yield logits.float()


def labelled(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixels that count (bool, the target's shape): not ``ignore_index``."""
    return target != ignore_index


def safe_target(target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``target`` with ignored pixels set to class 0, safe to index with; mask them by ``valid``."""
    return torch.where(valid, target, 0)


def class_onehot(target: torch.Tensor, num_classes: int, valid: torch.Tensor) -> torch.Tensor:
    """One-hot ``[B,K,H,W]`` (bool) of ``target`` ``[B,H,W]``, all False on ignored pixels."""
    classes = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
    return (target.unsqueeze(1) == classes) & valid.unsqueeze(1)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(values * weights) / sum(weights)``, 0 (not NaN) when every weight is 0."""
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def dice_scores(probs: torch.Tensor, onehot: torch.Tensor, smooth: float) -> torch.Tensor:
    """Dice per channel ``(2|P∩T| + s) / (|P| + |T| + s)``, summed over batch and pixels.

    ``probs`` must be 0 on ignored pixels. A class with nothing predicted and nothing to find
    scores 1, also when ``smooth`` is 0.
    """
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    cardinality = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth).clamp_min(1e-7)
    return torch.where(cardinality > 0, dice, torch.ones_like(dice))
