"""Backbones: nn.Modules built from (in_channels, num_classes) that map [B,C,H,W] to logits [B,K,H,W].

Optional hooks a backbone may define, used by :class:`segopt.module.SegModule`:
``param_groups()`` (optimiser groups, a group's ``lr_scale`` multiplies its learning rate) and
``callbacks()`` (Lightning callbacks it needs, e.g. encoder freezing); see
:mod:`segopt.models.finetune`.
"""

from segopt.models.finetune import EncoderFreeze
from segopt.models.nested_unet import NestedUNet
from segopt.models.resnet_unet import ResNetUNet
from segopt.models.smp_adapter import SMPBackbone
from segopt.models.unet import UNet

__all__ = ["EncoderFreeze", "NestedUNet", "ResNetUNet", "SMPBackbone", "UNet"]
