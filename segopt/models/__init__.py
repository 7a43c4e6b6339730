"""Backbones: nn.Modules built from (in_channels, num_classes) that map [B,C,H,W] to logits [B,K,H,W]."""

from segopt.models.unet import UNet

__all__ = ["UNet"]
