"""Inference on images of any size: sliding-window tiling and test-time augmentation.

Everything here returns softmax probabilities ``[B,K,H,W]`` in float32 at the input's size:
tiles are blended and augmented passes are averaged as probabilities (not logits), so one
over-confident pass cannot outvote the others. The model is any callable mapping images
``[B,C,H,W]`` of any size to logits ``[B,K,H,W]``, e.g. :class:`segopt.lightning.SegModule`
(which pads to its backbone's stride; nothing here pads for the network).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]
BLENDS = ("gaussian", "constant")


@dataclass
class SlidingWindow:
    """How an image is cut into network inputs.

    Args:
        tile: (height, width) of each window, or one int for squares; None runs the whole
            image in one pass. Images smaller than a tile are padded up to it.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        blend: "gaussian" weighs each tile's pixels by a Gaussian centred on the tile, so
            its borders (which saw the least context) count least; "constant" averages.
        sigma: standard deviation of the Gaussian as a fraction of the tile side.
        tile_batch: tiles per forward pass (bounds memory on large images).
    """

    tile: int | tuple[int, int] | None = None
    overlap: float = 0.25
    blend: str = "gaussian"
    sigma: float = 0.125
    tile_batch: int = 8

    def __post_init__(self) -> None:
        if self.tile is not None:
            tile = (self.tile, self.tile) if isinstance(self.tile, int) else tuple(self.tile)
            if len(tile) != 2 or min(tile) < 1:
                raise ValueError(f"sliding_window.tile is {self.tile!r}; give a positive int or (height, width)")
            self.tile = (int(tile[0]), int(tile[1]))
        if not 0 <= self.overlap < 1:
            raise ValueError(f"sliding_window.overlap is {self.overlap}; it must be in [0, 1), e.g. 0.25")
        if self.blend not in BLENDS:
            raise ValueError(f"sliding_window.blend is {self.blend!r}; choose one of {', '.join(BLENDS)}")
        if self.sigma <= 0:
            raise ValueError(f"sliding_window.sigma is {self.sigma}; it must be > 0, e.g. 0.125")
        if self.tile_batch < 1:
            raise ValueError(f"sliding_window.tile_batch is {self.tile_batch}; it must be >= 1")


@dataclass
class TTA:
    """Test-time augmentation: each enabled view is predicted, mapped back and averaged.

    Args:
        hflip: add a horizontally flipped pass.
        vflip: add a vertically flipped pass (useful where up/down carries no meaning).
        scales: image scales to predict at, each resized back to the input size; (1.0,)
            keeps the original scale only.
    """

    hflip: bool = False
    vflip: bool = False
    scales: Sequence[float] = (1.0,)

    def __post_init__(self) -> None:
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"tta.scales is {self.scales!r}; give one or more positive factors, e.g. [0.75, 1.0, 1.25]")

    @property
    def enabled(self) -> bool:
        """Whether more than one plain pass is made."""
        return self.hflip or self.vflip or self.scales != (1.0,)


def gaussian_weights(size: tuple[int, int], sigma: float) -> torch.Tensor:
    """``[H,W]`` blending weights: a Gaussian with peak 1 at the centre, floored at 1e-3.

    The floor keeps every pixel's total weight positive where only tile borders reach it
    (the image corners).
    """
    axes = []
    for n in size:
        pos = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (pos / (sigma * n)) ** 2))
    weights = axes[0][:, None] * axes[1][None, :]
    return (weights / weights.max()).clamp_min(1e-3)


def _starts(size: int, tile: int, overlap: float) -> list[int]:
    """Window offsets covering ``[0, size)`` evenly, first at 0 and last flush with the end."""
    if size <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = math.ceil((size - tile) / stride) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _probs(model: Model, x: torch.Tensor) -> torch.Tensor:
    return model(x).float().softmax(dim=1)


def sliding_window_probs(model: Model, x: torch.Tensor, window: SlidingWindow) -> torch.Tensor:
    """Softmax probabilities of ``x`` ``[B,C,H,W]``, predicted tile by tile and blended."""
    if window.tile is None:
        return _probs(model, x)
    th, tw = window.tile
    h, w = x.shape[-2:]
    # Smaller than a tile: edge-pad so every window has the size the network was tuned for.
    x = F.pad(x, (0, max(0, tw - w), 0, max(0, th - h)), mode="replicate")
    hp, wp = x.shape[-2:]
    if window.blend == "gaussian":
        weight = gaussian_weights((th, tw), window.sigma).to(x.device)
    else:
        weight = torch.ones(th, tw, device=x.device)
    windows = [(y, xo) for y in _starts(hp, th, window.overlap) for xo in _starts(wp, tw, window.overlap)]
    batch = x.shape[0]
    total: torch.Tensor | None = None
    norm = torch.zeros(hp, wp, device=x.device)
    per_pass = max(1, window.tile_batch // batch)
    for i in range(0, len(windows), per_pass):
        chunk = windows[i : i + per_pass]
        tiles = torch.cat([x[..., y : y + th, xo : xo + tw] for y, xo in chunk])
        probs = _probs(model, tiles)
        if total is None:
            total = x.new_zeros((batch, probs.shape[1], hp, wp), dtype=torch.float32)
        for j, (y, xo) in enumerate(chunk):
            total[..., y : y + th, xo : xo + tw] += probs[j * batch : (j + 1) * batch] * weight
            norm[y : y + th, xo : xo + tw] += weight
    assert total is not None
    return (total / norm)[..., :h, :w]


def predict_probs(
    model: Model, x: torch.Tensor, window: SlidingWindow | None = None, tta: TTA | None = None
) -> torch.Tensor:
    """Softmax probabilities ``[B,K,H,W]`` (float32) of images ``x`` ``[B,C,H,W]``.

    Each TTA view (scale × flip) is predicted with ``window`` and mapped back to the input
    geometry; the views' probabilities are averaged.
    """
    window = window or SlidingWindow()
    tta = tta or TTA()
    h, w = x.shape[-2:]
    flips: list[tuple[int, ...]] = [()]
    if tta.hflip:
        flips.append((-1,))
    if tta.vflip:
        flips.append((-2,))
    total: torch.Tensor | None = None
    for scale in tta.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for dims in flips:
            probs = sliding_window_probs(model, xs.flip(dims) if dims else xs, window)
            if dims:
                probs = probs.flip(dims)
            if size != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
    assert total is not None
    return total / (len(tta.scales) * len(flips))


def masks_at_size(
    probs: torch.Tensor, valid: Sequence[tuple[int, int]], original: Sequence[tuple[int, int]]
) -> list[torch.Tensor]:
    """Per image, the class-index mask ``[H,W]`` (int64) at its original size.

    ``valid`` is each image's size inside the (padded) batch; ``original`` its size on
    disk. Where the evaluation pipeline resized the image, probabilities are resized back
    bilinearly before the argmax, so masks are never interpolated as class ids.
    """
    masks = []
    for p, (vh, vw), (oh, ow) in zip(probs, valid, original):
        p = p[:, :vh, :vw]
        if (vh, vw) != (oh, ow):
            p = F.interpolate(p[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
        masks.append(p.argmax(dim=0))
    return masks
