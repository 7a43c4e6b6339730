"""SMPBackbone: any segmentation_models_pytorch architecture and encoder as a segopt backbone.

segmentation_models_pytorch is an optional extra: ``pip install "segopt[smp]"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segopt.models.finetune import FinetunableEncoder


def _import_smp() -> Any:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise ImportError(
            "SMPBackbone needs segmentation_models_pytorch, which is not installed; "
            'install the extra with: pip install "segopt[smp]"'
        ) from err
    return smp


class SMPBackbone(FinetunableEncoder):
    """A segmentation_models_pytorch model built with ``smp.create_model``.

    Input sides must be multiples of the encoder's output stride (``size_multiple``;
    :class:`segopt.lightning.SegModule` pads to it).

    Args:
        in_channels: image channels (smp adapts pretrained first filters itself).
        num_classes: output channels.
        arch: smp architecture name, e.g. "Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus".
        encoder_name: smp encoder name, e.g. "resnet34", "efficientnet-b0".
        encoder_weights: None, or smp's pretrained weight name such as "imagenet"
            (downloaded by smp, which needs internet).
        freeze_encoder_epochs: keep the encoder frozen for this many first epochs.
        encoder_lr_scale: encoder learning rate = this x the optimiser's (and schedule's).
        arch_kwargs: further keyword arguments of the architecture (e.g.
            ``decoder_channels``); in Python they may also be passed as ``**kwargs``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        arch: str = "Unet",
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        freeze_encoder_epochs: int = 0,
        encoder_lr_scale: float = 1.0,
        arch_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(freeze_encoder_epochs, encoder_lr_scale)
        smp = _import_smp()
        options = {**(arch_kwargs or {}), **kwargs}
        if "aux_params" in options:
            raise ValueError(
                "SMPBackbone does not take aux_params: an smp classification head makes the model return "
                "(masks, labels), which is not a segmentation backbone's output; remove aux_params"
            )
        archs = {key: cls.__name__ for key, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}
        if arch.lower() not in archs:
            raise ValueError(f"arch={arch!r} is not an smp architecture; use one of {', '.join(archs.values())}")
        self.model = smp.create_model(
            archs[arch.lower()],
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            **options,
        )
        self.size_multiple = int(getattr(self.model.encoder, "output_stride", 32))

    @property
    def encoder(self) -> nn.Module:
        """The smp encoder."""
        return self.model.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
