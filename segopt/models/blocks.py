"""Building blocks shared by the backbones: conv-BN-ReLU, the tutorial's ResidualBlock, up-sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BatchNorm + ReLU layers (the classic UNet block, with the tutorial's BN)."""

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
    """The tutorial's residual block: two 3x3 conv + BN with an identity skip.

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


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Edge-pad H and W (bottom/right) up to a multiple of ``multiple``.

    segopt's one padding rule: :class:`segopt.lightning.SegModule` applies it around its
    backbone for training, evaluation, prediction and export alike. Written without
    shape-dependent branches, so an ONNX trace of it holds for every input size.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")
