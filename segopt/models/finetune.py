"""Fine-tuning a pretrained encoder: a lower encoder learning rate and freezing for the first epochs.

A backbone with an encoder (``ResNetUNet``, ``SMPBackbone``) exposes two optional hooks that
:class:`segopt.module.SegModule` uses when present:

- ``param_groups()``: optimiser parameter groups; a group may carry ``lr_scale``, a factor on
  the optimiser's (and the schedule's) learning rate for that group.
- ``callbacks()``: Lightning callbacks the backbone needs, here :class:`EncoderFreeze`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn


def check_finetune_options(freeze_encoder_epochs: int, encoder_lr_scale: float) -> None:
    """Reject a negative freeze length or a non-positive learning-rate factor."""
    if freeze_encoder_epochs < 0:
        raise ValueError(
            f"freeze_encoder_epochs={freeze_encoder_epochs} is negative; use 0 (never freeze) or a number of epochs"
        )
    if not encoder_lr_scale > 0:
        raise ValueError(
            f"encoder_lr_scale={encoder_lr_scale} must be > 0 (e.g. 0.1 for a 10x lower encoder learning rate); "
            "to keep the encoder fixed use freeze_encoder_epochs instead"
        )


def encoder_param_groups(model: nn.Module, encoder: nn.Module, encoder_lr_scale: float) -> list[dict[str, Any]]:
    """Two groups: everything outside ``encoder`` at the base rate, the encoder at ``encoder_lr_scale`` x."""
    in_encoder = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in in_encoder]
    return [
        {"params": rest, "name": "decoder"},
        {"params": list(encoder.parameters()), "name": "encoder", "lr_scale": encoder_lr_scale},
    ]


class EncoderFreeze(Callback):
    """Keep ``encoder`` frozen during the first ``epochs`` training epochs, then train it.

    Frozen means no gradients for its weights, and its BatchNorm layers in eval mode: they
    normalise with their stored (e.g. ImageNet) statistics and do not update them. The encoder's parameters stay in the optimiser the whole time (an optimiser
    skips parameters without a gradient), so learning-rate schedules such as OneCycleLR see
    the same parameter groups from start to end; this is why Lightning's ``BackboneFinetuning``,
    which adds the encoder as a new group at unfreeze time, is not used. The state follows
    ``trainer.current_epoch`` alone, so a resumed run freezes or unfreezes correctly.
    """

    def __init__(self, encoder: nn.Module, epochs: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.epochs = epochs
        self.frozen = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        freeze = trainer.current_epoch < self.epochs
        if freeze and not self.frozen:
            BaseFinetuning.freeze(self.encoder, train_bn=False)
            # Lightning only restores the modes it found, so eval mode lasts until unfreezing.
            self.encoder.eval()
            rank_zero_info(f"segopt: encoder frozen for epochs 0-{self.epochs - 1}")
        elif not freeze and self.frozen:
            BaseFinetuning.make_trainable(self.encoder)
            self.encoder.train(pl_module.training)
            rank_zero_info(f"segopt: encoder unfrozen at epoch {trainer.current_epoch}")
        self.frozen = freeze
