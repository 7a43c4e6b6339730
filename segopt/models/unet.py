"""UNet with BatchNorm, optionally built from the tutorial's residual blocks."""

from __future__ import annotations

import torch
from torch import nn

from segopt.models.blocks import ConvBlock, ResidualBlock, Up


class UNet(nn.Module):
    """UNet: ``depth`` down-sampling stages, width doubling from ``base_channels``.

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        num_classes: output channels (one logit per class).
        base_channels: width of the first stage.
        depth: number of 2x down-samplings; input sides must be multiples of
            ``2**depth`` (``size_multiple``; :class:`segopt.lightning.SegModule` pads to it).
        residual: use the tutorial's ResidualBlock instead of the plain conv block.
        up_mode: "bilinear" (interpolation + 1x1 conv) or "transpose".
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 32,
        depth: int = 4,
        residual: bool = False,
        up_mode: str = "bilinear",
    ) -> None:
        super().__init__()
        block = ResidualBlock if residual else ConvBlock
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.size_multiple = 2**depth
        self.stem = block(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), block(widths[i], widths[i + 1])) for i in range(depth)
        )
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], up_mode) for i in reversed(range(depth)))
        self.dec = nn.ModuleList(block(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up, dec in zip(self.up, self.dec):
            y = dec(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)
