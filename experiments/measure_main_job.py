"""Time README's main command and report what it reached, from the run it wrote.

    python -m experiments.measure_main_job --overwrite        # runs: python -m segopt.cli fit --config configs/amp.yaml
    python -m experiments.measure_main_job --out results/main_job_5 -- --trainer.max_epochs 5   # extra CLI flags after --

Writes results/main_job.json and results/main_job.md (``--out``): wall time, final and best
val/mIoU, epochs, and the checkpoints and event files the run left. Files that exist are
replaced only with ``--overwrite``; without it the script stops before training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.common import result_files
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite
from segopt.core.precision import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/amp.yaml")
    parser.add_argument("--out", default="results/main_job")
    parser.add_argument("extra", nargs="*", help="extra flags for the CLI (after --)")
    add_overwrite_flag(parser)
    args = parser.parse_args(argv)
    out = ROOT / args.out
    refuse_to_overwrite(result_files(out), args.overwrite)

    runs = ROOT / "runs"
    before = set(runs.glob("*/version_*")) if runs.exists() else set()
    cmd = [sys.executable, "-m", "segopt.commands.cli", "fit", "--config", args.config, *args.extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    (run,) = set(runs.glob("*/version_*")) - before

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    miou = [e.value for e in events.Scalars("val/mIoU")]
    result = {
        "command": "python -m segopt.cli fit --config " + " ".join([args.config, *args.extra]),
        "wall_seconds": round(wall, 1),
        "epochs": len(miou),
        "final_val_mIoU": round(miou[-1], 4),
        "best_val_mIoU": round(max(miou), 4),
        "val_mIoU_per_epoch": [round(m, 4) for m in miou],
        "checkpoints": sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")),
        "event_files": len(list(run.glob("events.out.tfevents.*"))),
        "hardware": _cuda() or f"{cpu_name()}, {os.cpu_count()} CPU cores, no GPU",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        "| command | hardware | wall time | epochs | final val mIoU | best val mIoU |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        f"| `{result['command']}` | {result['hardware']} | {wall / 60:.1f} min | {result['epochs']} "
        f"| {result['final_val_mIoU']:.4f} | {result['best_val_mIoU']:.4f} |\n"
    )
    print(json.dumps(result, indent=2))




def _cuda() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


if __name__ == "__main__":
    main()
