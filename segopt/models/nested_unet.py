"""NestedUNet (UNet++): densely nested skip pathways with optional deep supervision."""

from __future__ import annotations

import torch
from torch import nn

from segopt.models.blocks import ConvBlock, ResidualBlock


class NestedUNet(nn.Module):
    """UNet++ (Zhou et al., 2018).

    Node ``X[i][j]`` sits at depth ``i`` (stride ``2**i``) after ``j`` nested convolutions:
    ``X[i][0]`` is the encoder, and ``X[i][j]`` convolves the concatenation of
    ``X[i][0..j-1]`` with the up-sampled ``X[i+1][j-1]``.

    Args:
        in_channels: image channels.
        num_classes: output channels.
        base_channels: width at depth 0; it doubles with each depth.
        depth: number of 2x down-samplings; input sides must be multiples of ``2**depth``
            (``size_multiple``; :class:`segopt.lightning.SegModule` pads to it).
        deep_supervision: put a 1x1 head on every ``X[0][j]``; in training the forward
            returns those ``depth`` logits (the full-depth head last) for a weighted loss
            (``SegModule.aux_weights``); in evaluation it returns the last head only.
        residual: use the tutorial's ResidualBlock in every node.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 32,
        depth: int = 4,
        deep_supervision: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth} must be at least 1")
        block = ResidualBlock if residual else ConvBlock
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.size_multiple = 2**depth
        self.deep_supervision = deep_supervision
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.nodes = nn.ModuleDict()
        for i in range(depth + 1):
            for j in range(depth + 1 - i):
                if j == 0:
                    cin = in_channels if i == 0 else widths[i - 1]
                else:
                    cin = j * widths[i] + widths[i + 1]
                self.nodes[f"{i}_{j}"] = block(cin, widths[i])
        n_heads = depth if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], num_classes, 1) for _ in range(n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        grid: list[list[torch.Tensor]] = [[] for _ in range(self.depth + 1)]
        for k in range(self.depth + 1):
            grid[k].append(self.nodes[f"{k}_0"](x if k == 0 else self.pool(grid[k - 1][0])))
            # The new encoder node completes one anti-diagonal of nested nodes.
            for j in range(1, k + 1):
                i = k - j
                inputs = [*grid[i][:j], self.up(grid[i + 1][j - 1])]
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat(inputs, dim=1)))
        if self.deep_supervision and self.training:
            return [head(y) for head, y in zip(self.heads, grid[0][1:])]
        return self.heads[-1](grid[0][-1])
