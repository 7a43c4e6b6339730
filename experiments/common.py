"""Shared pieces of the experiments: one training step, interleaved timing, a quiet evaluation
Trainer, hardware, the machine's load from other processes, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segopt.core.precision import cpu_name
from segopt.losses import CombinedLoss

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast region Lightning's MixedPrecision plugin opens for ``precision``."""
    if precision == "32-true":
        return contextlib.nullcontext()
    if precision == "16-mixed" and device == "cpu":
        raise ValueError("precision 16-mixed needs a CUDA GPU; use bf16-mixed on a CPU")
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def evaluation_trainer(precision: str, accelerator: str = "auto", **kwargs: Any) -> Any:
    """A Trainer for validating or predicting a trained model in a script: one device, no logger,
    checkpoints, progress bar or summary (``kwargs`` go to the Trainer, e.g. ``callbacks``)."""
    import lightning.pytorch as pl  # here: the other experiments need no Lightning

    return pl.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip


def make_train_step(
    net: nn.Module, num_classes: int, batch: int, size: int, device: str, precision: str, channels_last: bool = False
) -> Callable[[], None]:
    """A closure running one training step (forward, Dice+CE loss, backward, AdamW) on fixed data."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    net = net.to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch, size, size), generator=gen).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    criterion = CombinedLoss(num_classes, 255)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")

    def step() -> None:
        with autocast(device, precision):
            out = net(x)
            outs = out if isinstance(out, list) else [out]
            loss = sum(criterion(o, y) for o in outs) / len(outs)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, reps: int) -> dict[str, list[float]]:
    """Seconds per call of each step, run round-robin so that load changes hit all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: list[float], batch: int) -> dict[str, float]:
    """Median and fastest step time (ms) and the median throughput (images/s)."""
    median = statistics.median(seconds)
    return {
        "step_ms_median": round(1000 * median, 1),
        "step_ms_min": round(1000 * min(seconds), 1),
        "images_per_s": round(batch / median, 2),
    }


def hardware(device: str) -> dict[str, Any]:
    """What ran the benchmark: CPU model and threads, or the GPU name, and library versions."""
    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    else:
        info["cpu"] = cpu_name()
    return info


#: Above this share of the machine's CPU taken by other processes, a timed run's figure is suspect:
#: on 2 cores, a tenth of a core already costs a time-budgeted run some of its steps.
SHARED_CPU_SHARE = 0.05


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall seconds, CPU seconds busy on the whole machine, CPU seconds of this process and its
    waited-for children); None where ``/proc/stat`` does not exist (not Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
    return time.time(), busy, own


#: How ``reference_step_s`` measures, recorded beside its figure: only figures measured one way are
#: compared (the first records took the median of 7 steps, which reads slower than the fastest).
REFERENCE_STEP_METHOD = "fastest of 10"


def reference_step_s(reps: int = 10) -> float:
    """The fastest of ``reps`` timed float32 training steps of a small conv net on the CPU, at the
    current torch threads: this host's speed, recorded beside a timed run (the fastest, as
    a moment's load elsewhere only slows steps down; the median of 7 varied by 20 % between two
    runs in a row on one host). Machines of one kind
    differ (one 2-core host trained a recipe's epoch in 57 s, another in 100 s), and a time
    budget buys epochs by that speed."""
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 1))
    x = torch.randn(8, 3, 128, 128, generator=generator)
    target = torch.randint(0, 4, (8, 128, 128), generator=generator)
    times = []
    for i in range(reps + 2):  # two warm-up steps
        start = time.perf_counter()
        net.zero_grad()
        nn.functional.cross_entropy(net(x), target).backward()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return round(min(times), 4)


def other_cpu_share(before: tuple[float, float, float] | None, after: tuple[float, float, float] | None, cores: int) -> float | None:
    """The share of the machine's CPU (all cores over the wall time between two snapshots) that
    processes other than this one and its children took, hypervisor steal included."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    other = (after[1] - before[1]) - (after[2] - before[2])
    return round(max(0.0, other) / ((after[0] - before[0]) * cores), 3)


def markdown_table(rows: list[dict[str, Any]], columns: dict[str, str]) -> Iterator[str]:
    """Lines of a markdown table of ``rows``; ``columns`` maps row keys to headers."""
    yield "| " + " | ".join(columns.values()) + " |"
    yield "|" + "|".join("---" for _ in columns) + "|"
    for row in rows:
        yield "| " + " | ".join(str(row[k]) for k in columns) + " |"


def result_files(stem: Path, suffixes: Iterable[str] = (".json", ".md")) -> list[Path]:
    """The files a script writes beside ``stem``: ``stem.json``, ``stem.md`` and so on."""
    return [stem.with_suffix(suffix) for suffix in suffixes]


def write_results(stem: Path, payload: dict[str, Any], markdown: list[str]) -> None:
    """Write ``stem``.json and ``stem``.md."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    print("\n".join(markdown))
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")
