"""ResNetUNet: a torchvision ResNet encoder (optionally pretrained) with a UNet decoder."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from segopt.models.blocks import ConvBlock
from segopt.models.finetune import FinetunableEncoder

ENCODERS = ("resnet18", "resnet34", "resnet50")
_FILE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
_UP_MODES = ("nearest", "bilinear")


def _is_path(weights: str) -> bool:
    return Path(weights).suffix in _FILE_SUFFIXES or "/" in weights or "\\" in weights or Path(weights).exists()


def resolve_weights(encoder: str, name: str) -> Enum:
    """The torchvision weights enum member for ``name`` (e.g. "ResNet34_Weights.IMAGENET1K_V1",
    "IMAGENET1K_V1" or "DEFAULT"); nothing is downloaded here."""
    enum_cls = torchvision.models.get_model_weights(encoder)
    member = name.split(".", 1)[1] if name.startswith(enum_cls.__name__ + ".") else name
    if member in enum_cls.__members__:
        return enum_cls[member]
    valid = ", ".join(f"{enum_cls.__name__}.{m}" for m in enum_cls.__members__)
    raise ValueError(
        f"weights={name!r} is neither a state-dict file (no such file) nor a torchvision weight name for "
        f"{encoder}; use None, one of {valid}, or the path of a .pth state-dict file"
    )


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn RGB first-layer filters ``[O,3,k,k]`` into ``[O,in_channels,k,k]``.

    Grey input sums the RGB filters, so a grey image gives the response of the same image in
    RGB; other counts repeat the RGB filters cyclically, scaled to keep the response size.
    """
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if have != 3:
        raise ValueError(
            f"the first conv has {have} input channels; only 3 (RGB) filters can be adapted to in_channels={in_channels}"
        )
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % 3
    return weight[:, idx] * (3 / in_channels)


def load_encoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a torchvision ResNet state dict from ``path`` safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder weights file {path} does not exist; give the path of a torchvision ResNet state dict "
            "(e.g. saved with torch.save(torchvision.models.resnet34(weights='IMAGENET1K_V1').state_dict(), path)) "
            "or weights: null"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"encoder weights file {path} is not a state dict that torch.load(weights_only=True) can read ({err}); "
            "save the encoder with torch.save(model.state_dict(), path)"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"encoder weights file {path} holds a {type(state).__name__}, not a state dict")
    if "state_dict" in state and "conv1.weight" not in state:
        raise ValueError(
            f"encoder weights file {path} looks like a Lightning checkpoint; resume it with --ckpt_path, "
            "or give a torchvision ResNet state dict here"
        )
    return state


class ResNetUNet(FinetunableEncoder):
    """UNet whose encoder is a torchvision ResNet (the tutorial's pretrained ResNet34 step).

    The five encoder stages (strides 2, 4, 8, 16, 32) feed a UNet decoder of five blocks
    (up-sample x2, concatenate the skip, two conv-BN-ReLU), followed by a 3x3 head at full
    resolution: the layout of segmentation_models_pytorch's ``Unet``. Input sides must be
    multiples of 32 (``size_multiple``; :class:`segopt.lightning.SegModule` pads to it).

    Args:
        in_channels: image channels; for pretrained RGB weights and grey input the first
            filters are summed over RGB.
        num_classes: output channels.
        encoder: "resnet18", "resnet34" or "resnet50".
        weights: None (random init); a torchvision weight name such as
            "ResNet34_Weights.IMAGENET1K_V1" (torchvision downloads it once, which needs
            internet); or the path of a local state-dict file of that ResNet (``fc.*`` keys
            are ignored), loaded with ``torch.load(weights_only=True)``.
        decoder_channels: widths of the five decoder blocks, deepest first.
        decoder_interpolation: decoder up-sampling, "nearest" or "bilinear" (named as in smp;
            a different name from UNet's ``up_mode`` keeps a UNet config's value from carrying over).
        freeze_encoder_epochs: keep the encoder frozen for this many first epochs.
        encoder_lr_scale: encoder learning rate = this x the optimiser's (and schedule's).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "resnet34",
        weights: str | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_interpolation: str = "nearest",
        freeze_encoder_epochs: int = 0,
        encoder_lr_scale: float = 1.0,
    ) -> None:
        super().__init__(freeze_encoder_epochs, encoder_lr_scale)
        self.size_multiple = 32
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r} is not supported; use one of {', '.join(ENCODERS)}")
        if len(decoder_channels) != 5:
            raise ValueError(
                f"decoder_channels has {len(decoder_channels)} widths {list(decoder_channels)}; give 5, one per "
                "decoder block, deepest first, e.g. [256, 128, 64, 32, 16]"
            )
        if decoder_interpolation not in _UP_MODES:
            raise ValueError(
                f"decoder_interpolation={decoder_interpolation!r} is not one of {', '.join(_UP_MODES)}"
            )
        self.decoder_interpolation = decoder_interpolation

        self.encoder = _build_encoder(encoder, in_channels, weights)
        expansion = self.encoder.layer1[0].expansion
        # Channels of the skips at strides 2, 4, 8, 16 and of the deepest map at stride 32.
        enc = [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        skips = [enc[3], enc[2], enc[1], enc[0], 0]
        ins = [enc[4], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            ConvBlock(i + s, o) for i, s, o in zip(ins, skips, decoder_channels)
        )
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 2, 4, 8, 16, 32."""
        e = self.encoder
        f1 = e.relu(e.bn1(e.conv1(x)))
        f2 = e.layer1(e.maxpool(f1))
        f3 = e.layer2(f2)
        f4 = e.layer3(f3)
        f5 = e.layer4(f4)
        return [f1, f2, f3, f4, f5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *skips, y = self.encode(x)
        skips.reverse()
        for i, block in enumerate(self.decoder):
            y = F.interpolate(y, scale_factor=2.0, mode=self.decoder_interpolation)
            if i < len(skips):
                y = torch.cat([y, skips[i]], dim=1)
            y = block(y)
        return self.head(y)


def _build_encoder(name: str, in_channels: int, weights: str | None) -> torchvision.models.ResNet:
    if weights is None:
        net = torchvision.models.get_model(name)
        state = None
    elif _is_path(weights):
        net = torchvision.models.get_model(name)
        state = load_encoder_state_dict(weights)
    else:
        # Downloads into torchvision's cache on first use.
        net = torchvision.models.get_model(name, weights=resolve_weights(name, weights))
        state = None
    # The classifier is not used; removing it keeps every parameter trained.
    net.fc = nn.Identity()
    if state is not None:
        _load_into(net, state, name, in_channels, Path(weights))
    elif in_channels != 3:
        first = net.conv1
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        if weights is not None:
            with torch.no_grad():
                net.conv1.weight.copy_(adapt_first_conv(first.weight, in_channels))
    return net


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], name: str, in_channels: int, path: Path) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state:
        try:
            state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], in_channels)
        except ValueError as err:
            raise ValueError(f"encoder weights file {path}: {err}") from err
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches, e.g. a resnet50 file for a resnet34
        raise ValueError(
            f"encoder weights file {path} does not match encoder {name}: {err}. Give a state dict of a "
            f"torchvision {name}, or set encoder to the ResNet the file was saved from"
        ) from err
    if missing or unexpected:
        raise ValueError(
            f"encoder weights file {path} does not match encoder {name}: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}. Give a state dict of a torchvision {name} "
            "(keys conv1.weight, layer1.0.conv1.weight, ...)"
        )
