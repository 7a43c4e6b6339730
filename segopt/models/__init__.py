"""Backbones: nn.Modules built from (in_channels, num_classes) that map [B,C,H,W] to logits [B,K,H,W].

Plain PyTorch, no Lightning. A backbone with a pretrained encoder subclasses
:class:`FinetunableEncoder` (parameter groups, freezing), which the Lightning layer drives.
"""

from segopt.models.finetune import FinetunableEncoder
from segopt.models.nested_unet import NestedUNet
from segopt.models.resnet_unet import ResNetUNet
from segopt.models.smp_adapter import SMPBackbone
from segopt.models.unet import UNet

__all__ = ["FinetunableEncoder", "NestedUNet", "ResNetUNet", "SMPBackbone", "UNet"]
