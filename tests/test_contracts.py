"""The written contracts: a backbone's size multiple read one way with one default, the optimiser
group's rate scale by one key, and TimeBudget's refusal of a module it cannot re-plan."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from segopt.lightning.module import SegModule
from segopt.lightning.time_budget import Replannable, TimeBudget
from segopt.models import ResNetUNet, UNet
from segopt.models.contracts import DEFAULT_SIZE_MULTIPLE, LR_SCALE, Backbone, lr_scale, size_multiple


def test_size_multiple_is_the_backbones_own_or_the_one_default() -> None:
    assert size_multiple(UNet(3, 2, base_channels=4, depth=3)) == 8
    assert isinstance(UNet(3, 2, base_channels=4, depth=2), Backbone)
    plain = nn.Conv2d(3, 2, 1)
    assert not isinstance(plain, Backbone)
    assert size_multiple(plain) == DEFAULT_SIZE_MULTIPLE == 1


def test_the_encoder_group_carries_its_rate_scale_under_the_one_key() -> None:
    net = ResNetUNet(3, 2, encoder="resnet18", weights=None, decoder_channels=[8, 8, 8, 8, 8], encoder_lr_scale=0.1)
    decoder, encoder = net.param_groups()
    assert (decoder["name"], encoder["name"], encoder[LR_SCALE]) == ("decoder", "encoder", 0.1)
    assert (lr_scale(decoder), lr_scale(encoder)) == (1.0, 0.1)


class _Plain(pl.LightningModule):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_time_budget_refuses_a_module_without_build_scheduler_naming_the_method() -> None:
    assert isinstance(SegModule(num_classes=2), Replannable)
    assert not isinstance(_Plain(), Replannable)
    with pytest.raises(TypeError) as error:
        TimeBudget(minutes=1).setup(None, _Plain(), "fit")  # type: ignore[arg-type]
    assert str(error.value) == (
        "TimeBudget re-plans the schedule through the module's build_scheduler(optimizer, total_steps), "
        "which _Plain does not have; use segopt.lightning.SegModule or add that method"
    )
