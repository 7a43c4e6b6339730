"""Compare the backbones of configs/model/*.yaml: parameters, GFLOPs and training-step time.

GFLOPs: one forward pass of a 1x3xSxS image in eval mode, counted by
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; convolutions and
matrix products only). Step time: forward + Dice/CE loss + backward + AdamW on a fixed
batch, all backbones run round-robin so that changes in machine load hit them alike.

    python -m experiments.bench_backbones --batch 2 --size 256 --repeats 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from experiments.common import (
    hardware,
    make_train_step,
    markdown_table,
    result_files,
    summary,
    time_interleaved,
    write_results,
)
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5  # the built-in SyntheticShapes data


def build_backbone(path: Path) -> nn.Module:
    """The backbone a configs/model/*.yaml file selects, built by segopt's own parser from
    ``configs/amp.yaml`` with that file stacked on it (the built-in data: 3 channels, 5 classes)."""
    from segopt.commands.from_config import build_from_config

    return build_from_config(["--config", str(ROOT / "configs" / "amp.yaml"), "--config", str(path)]).model.net


def default_configs() -> list[Path]:
    """configs/model/*.yaml, simplest first."""
    order = ["unet", "res_unet", "nested_unet", "resnet34_unet", "smp_unet"]
    paths = (ROOT / "configs" / "model").glob("*.yaml")
    return sorted(paths, key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem))


def gflops(net: nn.Module, size: int) -> float:
    """Forward GFLOPs of ``net`` for one 3 x size x size image."""
    net.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", type=Path, default=default_configs())
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", default="bf16-mixed", help="32-true, bf16-mixed or 16-mixed (CUDA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", "--reps", dest="repeats", type=int, default=5, help="timed round-robin runs")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "backbones")
    parser.add_argument("--note", default="", help="a line about the conditions, e.g. a shared, loaded machine")
    add_overwrite_flag(parser)
    args = parser.parse_args(argv)
    refuse_to_overwrite(result_files(args.out), args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows, steps = [], {}
    for path in args.configs:
        torch.manual_seed(0)
        net = build_backbone(path)
        name = path.stem
        rows.append(
            {
                "backbone": name,
                "class": type(net).__name__,
                "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
                "gflops": round(gflops(net, args.size), 2),
            }
        )
        steps[name] = make_train_step(net, NUM_CLASSES, args.batch, args.size, args.device, args.precision)
    times = time_interleaved(steps, args.warmup, args.repeats)
    for row in rows:
        row.update(summary(times[row["backbone"]], args.batch))

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("configs", "out")}
    hw = hardware(args.device)
    lines = [
        "# Backbones: size and training-step time",
        "",
        f"`python -m experiments.bench_backbones --batch {args.batch} --size {args.size} --precision {args.precision} "
        f"--device {args.device} --repeats {args.repeats} --warmup {args.warmup}"
        + (f" --threads {args.threads}" if args.threads else "")
        + "`",
        "",
        f"Hardware: {hw.get('gpu') or hw.get('cpu')}, {hw['torch_threads']} torch threads; torch {hw['torch']}.",
        f"GFLOPs: forward of one 3x{args.size}x{args.size} image (multiply-add = 2). Step: forward + Dice/CE + "
        f"backward + AdamW, batch {args.batch} of {args.size}x{args.size}, {args.precision}, "
        f"{NUM_CLASSES} classes; median and fastest of {args.repeats} round-robin runs.",
    ]
    if args.note:
        lines.append(f"Conditions: {args.note}")
    columns = {
        "backbone": "config",
        "class": "class",
        "params_M": "params (M)",
        "gflops": f"GFLOPs @{args.size}",
        "step_ms_median": "step ms (median)",
        "step_ms_min": "step ms (min)",
        "images_per_s": "images/s",
    }
    lines += ["", *markdown_table(rows, columns)]
    write_results(args.out, {"settings": settings, "hardware": hw, "rows": rows, "times_s": times}, lines)


if __name__ == "__main__":
    main()
