"""What a backbone and its optimiser groups promise the rest of segopt, written once.

A backbone is any ``nn.Module`` built from ``(in_channels, num_classes)`` that maps
``[B,C,H,W]`` to logits ``[B,K,H,W]``. If it needs its input sides to be multiples of some
number (a UNet of depth d: 2**d), it says so in ``size_multiple``; the module pads to it.
A backbone that trains parts at different rates returns optimiser groups whose
``LR_SCALE`` entry multiplies that group's rate, through the whole schedule.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, runtime_checkable

from torch import nn

#: A backbone that does not say takes any input size.
DEFAULT_SIZE_MULTIPLE = 1

#: The optimiser group key whose value multiplies that group's learning rate (and schedule).
LR_SCALE = "lr_scale"


@runtime_checkable
class Backbone(Protocol):
    """A backbone that states the multiple its input sides must be."""

    size_multiple: int


def size_multiple(net: nn.Module) -> int:
    """What ``net``'s input sides must be a multiple of: its ``size_multiple``, else ``DEFAULT_SIZE_MULTIPLE``."""
    return int(net.size_multiple) if isinstance(net, Backbone) else DEFAULT_SIZE_MULTIPLE


class ParamGroup(TypedDict, total=False):
    """An optimiser group a backbone hands out: its parameters, a name for logs, its rate scale."""

    params: list[nn.Parameter]
    name: str
    lr_scale: float


def lr_scale(group: dict[str, Any]) -> float:
    """The factor on an optimiser group's rate (1 when the group sets none)."""
    return float(group.get(LR_SCALE, 1.0))
