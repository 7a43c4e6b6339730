"""Training-step throughput of segopt's ResNetUNet(resnet34) beside segmentation_models_pytorch's Unet("resnet34").

Both get the same batch, size, precision, loss (Dice/CE) and optimiser (AdamW); they are run
round-robin so that changes in machine load hit both alike. Target: ours >= 0.95x theirs.

    python -m experiments.bench_smp --batch 4 --size 256 --precision bf16-mixed          # CPU
    python -m experiments.bench_smp --device cuda --precision 16-mixed --batch 16 --size 512  # GPU
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from experiments.common import (
    autocast,
    hardware,
    make_train_step,
    markdown_table,
    result_files,
    summary,
    time_interleaved,
    write_results,
)
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite
from segopt.models import ResNetUNet

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5
TARGET = 0.95


def op_counts(net: torch.nn.Module, precision: str) -> Counter[str]:
    """How often each aten op runs in one CPU forward + backward of a small batch."""
    x = torch.randn(2, 3, 64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with autocast("cpu", "32-true" if precision == "16-mixed" else precision):
            out = net.train()(x)
        out.float().square().mean().backward()
    return Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", default="bf16-mixed", help="32-true, bf16-mixed or 16-mixed (CUDA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true", help="also time both in channels-last format")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", "--reps", dest="repeats", type=int, default=8, help="timed round-robin runs")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "resnet_vs_smp")
    parser.add_argument("--note", default="", help="a line about the conditions, e.g. a shared, loaded machine")
    add_overwrite_flag(parser)
    return parser.parse_args(argv)


def throughput_ratios(rows: list[dict[str, Any]], formats: list[bool]) -> dict[str, dict[str, float]]:
    """Ours over theirs, per memory format: by median step and by fastest step."""
    ratios = {}
    for cl in formats:
        suffix = " (channels_last)" if cl else ""
        a = next(r for r in rows if r["model"] == "segopt ResNetUNet" + suffix)
        b = next(r for r in rows if r["model"] == "smp Unet" + suffix)
        ratios["channels_last" if cl else "contiguous"] = {
            "median": round(a["images_per_s"] / b["images_per_s"], 3),
            # The fastest run is the least disturbed by other work on a shared machine.
            "fastest": round(b["step_ms_min"] / a["step_ms_min"], 3),
        }
    return ratios


def report_lines(
    args: argparse.Namespace, smp_version: str, hw: dict[str, Any], rows: list[dict[str, Any]],
    ratios: dict[str, dict[str, float]], op_diff: dict[str, list[int]], op_calls: int,
) -> list[str]:  # fmt: skip
    """The Markdown report."""
    lines = [
        "# ResNetUNet(resnet34) vs segmentation_models_pytorch Unet(resnet34): training-step throughput",
        "",
        f"`python -m experiments.bench_smp --batch {args.batch} --size {args.size} --precision {args.precision} "
        f"--device {args.device} --repeats {args.repeats} --warmup {args.warmup}"
        + (f" --threads {args.threads}" if args.threads else "")
        + (" --channels-last" if args.channels_last else "")
        + "`",
        "",
        f"Hardware: {hw.get('gpu') or hw.get('cpu')}, {hw['torch_threads']} torch threads; torch {hw['torch']}, "
        f"segmentation_models_pytorch {smp_version}.",
        f"Step: forward + Dice/CE + backward + AdamW, batch {args.batch} of {args.size}x{args.size}, "
        f"{args.precision}, {NUM_CLASSES} classes; median and fastest of {args.repeats} round-robin runs.",
    ]
    if args.note:
        lines.append(f"Conditions: {args.note}")
    columns = {
        "model": "model",
        "params": "parameters",
        "step_ms_median": "step ms (median)",
        "step_ms_min": "step ms (min)",
        "images_per_s": "images/s",
    }
    lines += ["", *markdown_table(rows, columns), ""]
    for layout, ratio in ratios.items():
        verdict = "meets" if ratio["median"] >= TARGET else "misses"
        lines.append(
            f"- ours / theirs throughput ({layout}): **{ratio['median']:.3f}x** by median step, "
            f"{ratio['fastest']:.3f}x by fastest step — {verdict} the {TARGET}x target"
        )
    if op_diff:
        lines.append(f"- aten op counts per forward+backward differ (ours, theirs): {op_diff}")
    else:
        lines.append(f"- both run the same aten ops the same number of times per forward+backward ({op_calls} calls)")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    refuse_to_overwrite(result_files(args.out), args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise SystemExit('this benchmark needs segmentation_models_pytorch: pip install "segopt[smp]"') from err

    def ours() -> torch.nn.Module:
        torch.manual_seed(0)
        return ResNetUNet(3, NUM_CLASSES, encoder="resnet34")

    def theirs() -> torch.nn.Module:
        torch.manual_seed(0)
        return smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=NUM_CLASSES)

    params = {
        "segopt ResNetUNet": sum(p.numel() for p in ours().parameters()),
        "smp Unet": sum(p.numel() for p in theirs().parameters()),
    }
    # Same kernels in the same numbers means any gap in time is the machine, not the model.
    ours_ops, theirs_ops = op_counts(ours(), args.precision), op_counts(theirs(), args.precision)
    op_diff = {k: [ours_ops[k], theirs_ops[k]] for k in sorted(ours_ops | theirs_ops) if ours_ops[k] != theirs_ops[k]}
    formats = [False, True] if args.channels_last else [False]
    steps = {}
    for cl in formats:
        suffix = " (channels_last)" if cl else ""
        for name, build in (("segopt ResNetUNet", ours), ("smp Unet", theirs)):
            steps[name + suffix] = make_train_step(
                build(), NUM_CLASSES, args.batch, args.size, args.device, args.precision, channels_last=cl
            )
    times = time_interleaved(steps, args.warmup, args.repeats)
    rows = [{"model": name, "params": params[name.split(" (")[0]], **summary(seconds, args.batch)} for name, seconds in times.items()]
    ratios = throughput_ratios(rows, formats)
    hw = hardware(args.device)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    lines = report_lines(args, smp.__version__, hw, rows, ratios, op_diff, sum(ours_ops.values()))
    payload = {"settings": settings, "aten_op_count_differences": op_diff, "hardware": hw, "rows": rows, "ratio_ours_over_theirs": ratios, "times_s": times}
    write_results(args.out, payload, lines)


if __name__ == "__main__":
    main()
