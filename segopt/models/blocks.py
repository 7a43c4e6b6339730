"""Building blocks shared by the backbones: conv-BN-ReLU, the seed's ResidualBlock, up-sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BatchNorm + ReLU layers (the classic UNet block, with the seed's BN)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """The seed's residual block: two 3x3 conv + BN with an identity skip.

    When the channel count changes, the skip is a 1x1 conv + BN projection.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.skip: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class Up(nn.Module):
    """Doubles the spatial size: bilinear interpolation + 1x1 conv, or a transposed conv."""

    def __init__(self, in_channels: int, out_channels: int, mode: str = "bilinear") -> None:
        super().__init__()
        if mode == "bilinear":
            self.up: nn.Module = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
            )
        elif mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            raise ValueError(f"up-sampling mode {mode!r} is not one of 'bilinear', 'transpose'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W (bottom/right, reflect where possible) up to a multiple; return the original size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: the top-left ``size`` of ``x`` (``x`` itself when unpadded)."""
    h, w = size
    # Slicing an unpadded map would still add a copy to the backward pass.
    return x if x.shape[-2:] == (h, w) else x[..., :h, :w]
