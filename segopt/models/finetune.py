"""Fine-tuning a pretrained encoder: a lower encoder learning rate and freezing for the first epochs.

A backbone with an encoder (``ResNetUNet``, ``SMPBackbone``) subclasses
:class:`FinetunableEncoder`. The backbone only says *how* (which parameters are the encoder,
at what learning-rate factor, how to freeze it); *when* is the training loop's business:
:class:`segopt.lightning.SegModule` builds its optimiser from :meth:`~FinetunableEncoder.param_groups`
and registers :class:`segopt.lightning.EncoderFreeze`, which calls
:meth:`~FinetunableEncoder.freeze_encoder` and :meth:`~FinetunableEncoder.unfreeze_encoder`.
"""

from __future__ import annotations

from torch import nn

from segopt.models.contracts import ParamGroup


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


class FinetunableEncoder(nn.Module):
    """A backbone with an encoder that may train at a lower rate and start frozen.

    Subclasses call ``super().__init__(freeze_encoder_epochs, encoder_lr_scale)`` and provide
    ``encoder``, the encoder's module (an attribute or a property).

    Args:
        freeze_encoder_epochs: the encoder is frozen during this many first training epochs.
        encoder_lr_scale: the encoder trains at this times the optimiser's (and schedule's) rate.
    """

    encoder: nn.Module

    def __init__(self, freeze_encoder_epochs: int = 0, encoder_lr_scale: float = 1.0) -> None:
        super().__init__()
        check_finetune_options(freeze_encoder_epochs, encoder_lr_scale)
        self.freeze_encoder_epochs = freeze_encoder_epochs
        self.encoder_lr_scale = encoder_lr_scale

    def param_groups(self) -> list[ParamGroup]:
        """Optimiser groups: everything outside the encoder ("decoder") at the base rate, then
        the encoder ("encoder") with ``lr_scale``: the factor by which
        :class:`segopt.lightning.SegModule` and :mod:`segopt.core.schedules` multiply that group's rate."""
        in_encoder = {id(p) for p in self.encoder.parameters()}
        rest = [p for p in self.parameters() if id(p) not in in_encoder]
        return [
            ParamGroup(params=rest, name="decoder"),
            ParamGroup(params=list(self.encoder.parameters()), name="encoder", lr_scale=self.encoder_lr_scale),
        ]

    def freeze_encoder(self) -> None:
        """No gradients for the encoder, and its BatchNorm layers normalise with their stored
        statistics without updating them (eval mode). Its parameters stay in the optimiser, which
        skips parameters without a gradient, so a schedule sees the same groups from start to end."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def unfreeze_encoder(self, training: bool = True) -> None:
        """Undo :meth:`freeze_encoder`; ``training`` is the mode the encoder returns to."""
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        self.encoder.train(training)
