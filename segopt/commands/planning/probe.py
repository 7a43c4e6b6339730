"""The machine probe: the device, the precision it really runs, and timed training steps.

The planner's rules never time anything themselves: they read a :class:`Probe`, which
:func:`probe_machine` measures on this machine and a test can describe by hand (a GPU with
its name, memory and step times), so every branch of the rules runs on a CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from segopt.core.precision import cpu_has_native_bf16, cpu_name, resolve_precision
from segopt.models.contracts import size_multiple


@dataclass(frozen=True)
class Backbone:
    """A candidate network: its config entry and a short name for reports."""

    name: str
    class_path: str
    init_args: dict[str, Any]
    max_lr: float  # AdamW + OneCycle peak learning rate this backbone is trained with


#: The candidates, strongest first. The ResNet18-encoder UNet and its 1e-3 peak rate are the
#: CamVid recipe's measured choice (results/side_by_side.md); the residual UNet of width 16 is
#: the cheaper network that beat the plain UNet in results/ablation_camvid.md.
BACKBONES = (
    Backbone(
        "resnet18_unet",
        "segopt.models.ResNetUNet",
        {"encoder": "resnet18", "weights": None, "decoder_channels": [256, 128, 64, 32, 16]},
        1.0e-3,
    ),
    Backbone(
        "res_unet16",
        "segopt.models.UNet",
        {"base_channels": 16, "depth": 4, "residual": True, "up_mode": "bilinear"},
        1.0e-3,
    ),
)


@dataclass
class Machine:
    """Where training will run."""

    device: str  # "cpu" or "cuda"
    name: str  # CPU model or GPU name
    cores: int
    memory_gb: float  # host RAM
    precision: str  # what 16-mixed really runs here: "16-mixed" (fp16, CUDA), "bf16-mixed" or "32-true"
    gpu_memory_gb: float | None = None


@dataclass
class StepTiming:
    """Seconds per training image and per evaluated image of one backbone at one size."""

    backbone: str
    size: tuple[int, int]  # (height, width)
    batch: int  # the batch the steps were timed at
    train_s_per_image: float
    eval_s_per_image: float
    max_batch: int | None = None  # CUDA: the largest batch that fit in memory (None on a CPU)


@dataclass
class Probe:
    """The machine and the timings the rules read."""

    machine: Machine
    timings: list[StepTiming] = field(default_factory=list)
    seconds: float = 0.0

    def timing(self, backbone: str, size: tuple[int, int]) -> StepTiming:
        """The timing of ``backbone`` at ``size``, scaled by pixels from the nearest size timed."""
        own = [t for t in self.timings if t.backbone == backbone]
        if not own:
            raise KeyError(f"the probe timed no step of {backbone}")
        pixels = size[0] * size[1]
        near = min(own, key=lambda t: abs(t.size[0] * t.size[1] - pixels))
        ratio = pixels / (near.size[0] * near.size[1])
        max_batch = None if near.max_batch is None else max(1, int(near.max_batch / ratio))
        return StepTiming(backbone, size, near.batch, near.train_s_per_image * ratio, near.eval_s_per_image * ratio, max_batch)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Probe:
        """The probe :meth:`as_dict` wrote (a ``.plan.json``'s ``probe``)."""
        timings = [StepTiming(**{**t, "size": tuple(t["size"])}) for t in record["timings"]]
        return cls(Machine(**record["machine"]), timings, record.get("seconds", 0.0))


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def describe_machine() -> Machine:
    """This machine: the first CUDA GPU when there is one, else the CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cuda = torch.cuda.is_available()
    precision, _ = resolve_precision("16-mixed", cuda, None if cuda else cpu_has_native_bf16())
    if cuda:
        props = torch.cuda.get_device_properties(0)
        return Machine("cuda", props.name, cores, round(_memory_gb(), 1), precision, round(props.total_memory / 2**30, 1))
    return Machine("cpu", cpu_name(), cores, round(_memory_gb(), 1), precision)


def _autocast(machine: Machine) -> Any:
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(machine.precision)
    return torch.autocast(machine.device, dtype=dtype or torch.float32, enabled=dtype is not None)


def build_backbone(backbone: Backbone, in_channels: int, num_classes: int) -> torch.nn.Module:
    """The network of a candidate, as the config would build it."""
    import importlib

    module, name = backbone.class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    return cls(in_channels=in_channels, num_classes=num_classes, **backbone.init_args)


def _time_train(net: torch.nn.Module, machine: Machine, shape: tuple[int, ...], num_classes: int, steps: int) -> float:
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    images = torch.randn(shape, device=machine.device)
    masks = torch.randint(0, num_classes, (shape[0], *shape[2:]), device=machine.device)
    scaler = torch.amp.GradScaler(machine.device, enabled=machine.precision == "16-mixed")
    net.train()
    elapsed = []
    for _ in range(steps + 1):  # the first step warms up (allocations, kernel choice) and is not counted
        start = time.perf_counter()
        with _autocast(machine):
            logits = net(images)
        loss = F.cross_entropy(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if machine.device == "cuda":
            torch.cuda.synchronize()
        elapsed.append(time.perf_counter() - start)
    return min(elapsed[1:]) / shape[0]


@torch.no_grad()
def _time_eval(net: torch.nn.Module, machine: Machine, shape: tuple[int, ...]) -> float:
    net.eval()
    images = torch.randn(shape, device=machine.device)
    elapsed = []
    for _ in range(2):
        start = time.perf_counter()
        with _autocast(machine):
            net(images).float().softmax(1)
        if machine.device == "cuda":
            torch.cuda.synchronize()
        elapsed.append(time.perf_counter() - start)
    return elapsed[-1] / shape[0]


def _largest_batch(net: torch.nn.Module, machine: Machine, channels: int, size: tuple[int, int], num_classes: int, cap: int = 64) -> int:
    """CUDA: the largest power-of-two batch (up to ``cap``) whose training step fits in memory."""
    fits, batch = 1, 2
    while batch <= cap:
        try:
            _time_train(net, machine, (batch, channels, *size), num_classes, steps=0)
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        fits, batch = batch, batch * 2
    return fits


#: Training images timed per network and size, after the warm-up step: one step at a CPU run's
#: batch of 6 or more (a step's time varied about 5 % between steps at 16 images), more at smaller
#: batches; the probe of four network/size pairs at a run's batch must stay within a minute.
TIMED_IMAGES = 6


def probe_machine(
    sizes: list[tuple[int, int]],
    in_channels: int,
    num_classes: int,
    backbones: tuple[Backbone, ...] = BACKBONES,
    batch: int | Callable[[tuple[int, int], int | None], int] = 4,
    timed_images: int = TIMED_IMAGES,
) -> Probe:
    """Time training steps (after one warm-up) and an evaluation pass of every backbone at every
    size on this machine, as many steps as hold ``timed_images``; on a CUDA GPU, first the largest
    batch that fits. ``batch`` is one for all sizes, or ``batch(size, fits)`` with ``fits`` the
    largest batch that fits (None on a CPU)."""
    start = time.perf_counter()
    machine = describe_machine()
    torch.manual_seed(0)
    timings = []
    for backbone in backbones:
        net = build_backbone(backbone, in_channels, num_classes).to(machine.device)
        multiple = size_multiple(net)
        for size in sizes:
            padded = (-(-size[0] // multiple) * multiple, -(-size[1] // multiple) * multiple)
            largest = _largest_batch(net, machine, in_channels, padded, num_classes) if machine.device == "cuda" else None
            images = batch if isinstance(batch, int) else batch(size, largest)
            images = images if largest is None else min(images, largest)  # never time what cannot fit
            shape = (images, in_channels, *padded)
            train = _time_train(net, machine, shape, num_classes, steps=-(-timed_images // images))
            evaluate = _time_eval(net, machine, shape)
            timings.append(StepTiming(backbone.name, size, images, round(train, 5), round(evaluate, 5), largest))
    return Probe(machine, timings, round(time.perf_counter() - start, 2))
