"""Training-step time of a backbone with and without ``model.compile``, and the time the first compiled step takes.

    python -m experiments.bench_compile --batch 4 --size 128 --reps 10 --threads 1

Both arms are the same network (the reference recipe's UNet unless --base/--depth say
otherwise), the same batch, Dice+CE and AdamW (``experiments.common.make_train_step``); the
compiled arm is compiled in place as ``model.compile: true`` does (``segopt.core.compiling``).
The first compiled step, which compiles forward and backward, is timed alone; then the
arms run round-robin so that changes in machine load hit both alike. Writes ``--out``.md/.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch

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
from segopt.core.compiling import compile_backbone
from segopt.models import UNet

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--base", type=int, default=16, help="UNet base_channels (the recipe: 16)")
    parser.add_argument("--depth", type=int, default=4, help="UNet depth (the recipe: 4)")
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or 16-mixed (CUDA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--note", default="", help="the conditions of the run, written into the results")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "compile_cpu")
    add_overwrite_flag(parser)
    args = parser.parse_args(argv)
    refuse_to_overwrite(result_files(args.out), args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    eager = UNet(3, NUM_CLASSES, base_channels=args.base, depth=args.depth)
    compiled = copy.deepcopy(eager)
    problem = compile_backbone(compiled, args.mode, torch.device(args.device))
    if problem is not None:
        raise SystemExit(f"error: torch.compile cannot run here: {problem}")
    steps = {
        name: make_train_step(net, NUM_CLASSES, args.batch, args.size, args.device, args.precision)
        for name, net in (("eager", eager), ("model.compile", compiled))
    }
    start = time.perf_counter()
    steps["model.compile"]()  # compiles forward and backward
    first_step_s = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    times = time_interleaved(steps, args.warmup, args.reps)
    load_after = os.getloadavg()[0]
    rows = [{"arm": name, **summary(t, args.batch)} for name, t in times.items()]
    speedup = rows[0]["step_ms_median"] / rows[1]["step_ms_median"]
    hw = hardware(args.device)
    command = (
        f"python -m experiments.bench_compile --batch {args.batch} --size {args.size} --base {args.base} --depth {args.depth} "
        f"--precision {args.precision} --mode {args.mode} --reps {args.reps} --warmup {args.warmup}"
        + (f" --threads {args.threads}" if args.threads else "")
    )
    payload = {
        "script": "experiments/bench_compile.py",
        "command": command,
        "conditions": args.note or "not stated",
        "hardware": hw,
        # The project-relative path: a results file names no folder of the machine it ran on.
        "settings": vars(args) | {"out": os.path.relpath(args.out, ROOT)},
        "first_compiled_step_s": round(first_step_s, 2),
        "rows": rows,
        "compiled_speedup_median": round(speedup, 3),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "all_step_s": {k: [round(s, 4) for s in v] for k, v in times.items()},
    }
    where = hw.get("gpu") or f"{hw.get('cpu')}, {os.cpu_count()} logical cores"
    md = [
        "# model.compile: training-step time",
        "",
        f"`{command}`",
        "",
        *markdown_table(rows, {"arm": "arm", "step_ms_median": "step ms (median)", "step_ms_min": "step ms (min)",
                               "images_per_s": "images / s"}),  # fmt: skip
        "",
        f"- compiled / eager: **{speedup:.2f}x** by median step; the first compiled step (compiling forward and "
        f"backward) took {first_step_s:.1f} s.",
        f"- Step: forward, Dice+CE, backward, AdamW on {args.batch} images of {args.size}x{args.size}, UNet base "
        f"{args.base} depth {args.depth}, {args.precision}, torch.compile mode {args.mode}; {args.warmup} warm-up and "
        f"{args.reps} timed steps per arm, round-robin.",
        f"- Hardware: {where}; torch {hw['torch']}, {hw['torch_threads']} torch thread(s); 1-min load average "
        f"{load_before:.2f} before, {load_after:.2f} after. Conditions: {payload['conditions']}.",
    ]
    write_results(args.out, payload, md)


if __name__ == "__main__":
    main()
