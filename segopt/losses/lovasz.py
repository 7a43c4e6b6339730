"""Lovász-softmax: a convex surrogate of each class's IoU."""

from __future__ import annotations

import torch
from torch import nn

from segopt.losses.functional import class_onehot, float32_logits, labelled


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Steps of the Jaccard loss along pixels sorted by error (Berman et al., 2018, Alg. 1)."""
    gts = fg_sorted.sum(-1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(-1)
    union = gts + (1 - fg_sorted).cumsum(-1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def lovasz_softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, per_image: bool = False
) -> torch.Tensor:
    """Lovász-softmax (Berman et al., 2018): the Lovász extension of each class's Jaccard loss.

    Averaged over the classes present in the target, per batch or (``per_image``) per image
    and then over the images with a labelled pixel (float32).
    """
    with float32_logits(logits) as logits:
        probs = logits.softmax(dim=1)
        valid = labelled(target, ignore_index)
        fg = class_onehot(target, logits.shape[1], valid).float()
        # An ignored pixel gets error 0: it sorts last, where its step multiplies 0.
        errors = (fg - probs).abs() * valid.unsqueeze(1)
        if per_image:  # groups [G, K, N]: one per image, or the whole batch as one
            errors, fg = errors.flatten(2), fg.flatten(2)
        else:
            errors, fg = errors.transpose(0, 1).flatten(1)[None], fg.transpose(0, 1).flatten(1)[None]
        errors_sorted, order = errors.sort(dim=-1, descending=True)
        losses = (errors_sorted * _lovasz_grad(fg.gather(-1, order))).sum(-1)
        present = fg.sum(-1) > 0
        per_group = (losses * present).sum(-1) / present.sum(-1).clamp_min(1)
        images = present.any(-1)
        return (per_group * images).sum() / images.sum().clamp_min(1)


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax (see :func:`lovasz_softmax_loss`).

    Args:
        num_classes: number of classes K.
        ignore_index: target value excluded from the loss.
        per_image: average per image, then over the images, instead of over the batch.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, per_image: bool = False) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.per_image = per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_softmax_loss(logits, target, self.ignore_index, self.per_image)
