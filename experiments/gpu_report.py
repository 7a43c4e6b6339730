"""Every GPU figure of segopt in one command, or the same steps as a CPU dry run.

    python -m experiments.gpu_report             # on a CUDA machine: results/gpu_*.md/.json, under 8 minutes
    python -m experiments.gpu_report --dry-run   # anywhere: the same steps on the CPU at toy sizes, under 2 minutes

Steps, each an existing benchmark script run in its own process (so one failure leaves the
others' figures), each written to its own ``gpu_<step>.md/.json`` under ``--out``:

1. precision: the reference recipe on CamVid at 360x480 under 16-mixed, 32-true and
   bf16-mixed (``bench_precision.py``): s/epoch, peak GPU memory, val mIoU after the same
   epochs;
2. layout: 16-mixed with channels_last and ``model.compile`` on and off (three more runs of
   ``bench_precision.py``; both off is step 1's 16-mixed run, the same settings): steady
   s/epoch and the first epoch, which holds the compile;
3. resnet_vs_smp: segopt's ResNetUNet(resnet34) against segmentation_models_pytorch's
   Unet at 16-mixed (``bench_smp.py``);
4. loader: the training loader's throughput with the machine's default worker count
   (``bench_data.py``);
5. tests: the tests marked ``gpu`` (``pytest -m gpu``).

Then ``gpu_report.md/.json`` gathers them with the card's name and each step's time.
``--dry-run`` (automatic without a CUDA GPU) runs every step on the CPU at toy sizes
(bf16-mixed for 16-mixed, a 1-level UNet at 64x80, a few batches) and writes
``gpu_dryrun_*`` files under ``runs/gpu_report_dryrun/`` instead, so the command is known to
work before a GPU is lent. Files of an earlier report under ``--out`` are replaced only with
``--overwrite`` (the step scripts' own files in ``<prefix>work/`` are scratch, replaced freely).
CamVid is read from ``data/camvid`` (or under ``SEGOPT_DATA_ROOT``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["--config", "configs/amp.yaml", "--config", "configs/data/camvid.yaml"]
#: CamVid at its full 360x480, resized (no crops), decoded once.
FULL_SIZE = ["--data.resize_mode=resize", "--data.train_size=[360,480]", "--data.eval_size=[360,480]", "--data.cache=true"]
#: Dry run: a tiny UNet at 64x80 on a few batches, validated on two.
TOY = [
    "--data.resize_mode=resize", "--data.train_size=[64,80]", "--data.eval_size=[64,80]", "--data.batch_size=4",
    "--model.backbone.init_args.base_channels=4", "--model.backbone.init_args.depth=1", "--trainer.limit_val_batches=2",
]  # fmt: skip
LAYOUTS = [(cl, comp) for comp in (False, True) for cl in (False, True)]
#: Neither channels_last nor compile: the precision step's own half-precision run, not run again.
PLAIN_LAYOUT = (False, False)
STEPS = ("precision", "layout", "resnet_vs_smp", "loader", "tests")


def _python(script: str, *args: str) -> list[str]:
    # The steps write into the report's scratch folder, which every report run refills.
    return [sys.executable, "-m", f"experiments.{Path(script).stem}", "--overwrite", *args]


def half_precision(dry: bool) -> str:
    return "bf16-mixed" if dry else "16-mixed"


def steps(out: Path, dry: bool) -> dict[str, list[list[str]]]:
    """The commands of each step (most steps are one command; layout is three)."""
    half = half_precision(dry)
    sizes = TOY if dry else FULL_SIZE
    epochs = ["--epochs", "2", "--steps", "2"] if dry else ["--epochs", "4", "--steps", "22"]
    threads = ["--threads", "1"] if dry else []
    precisions = ["32-true", "bf16-mixed"] if dry else ["32-true", "16-mixed", "bf16-mixed"]
    layout = []
    for cl, comp in LAYOUTS:
        if (cl, comp) == PLAIN_LAYOUT:
            continue
        flags = [*(["--channels-last"] if cl else []), *(["--compile"] if comp else [])]
        stem = out / "layout_runs" / f"{_layout_name(cl, comp)}"
        layout.append(
            _python("bench_precision.py", *CONFIGS, "--precisions", half, *epochs, *threads, *flags, "--out", str(stem), "--", *sizes)
        )
    from segopt.lightning.datamodule import default_num_workers

    workers = "1" if dry else str(default_num_workers())
    smp = ["--device", "cpu", "--precision", half, "--batch", "1", "--size", "64", "--reps", "1", "--warmup", "0"]
    if not dry:
        smp = ["--device", "cuda", "--precision", half, "--batch", "16", "--size", "512", "--reps", "10", "--warmup", "3"]
    return {
        "precision": [
            _python("bench_precision.py", *CONFIGS, "--precisions", *precisions, *epochs, *threads, "--out", str(out / "precision"),
                    "--", *sizes)
        ],  # fmt: skip
        "layout": layout,
        "resnet_vs_smp": [_python("bench_smp.py", *smp, "--channels-last", "--out", str(out / "resnet_vs_smp"))],
        "loader": [
            _python("bench_data.py", "--images", "16" if dry else "160", "--repeats", "1", "--workers", workers,
                    "--out", str(out / "loader"))
        ],  # fmt: skip
        # One process: the two GPU tests do not repay starting test workers that each collect the suite.
        "tests": [[sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")]],
    }


def _layout_name(channels_last: bool, compiled: bool) -> str:
    return f"channels_last-{'on' if channels_last else 'off'}_compile-{'on' if compiled else 'off'}"


def run_step(name: str, commands: list[list[str]], log: Path, timeout: float) -> dict[str, Any]:
    """Run the commands of one step, logging their output; what happened and how long it took."""
    start = time.perf_counter()
    status, tail = "ok", ""
    with log.open("w") as handle:
        for command in commands:
            handle.write("$ " + " ".join(command) + "\n")
            handle.flush()
            left = timeout - (time.perf_counter() - start)
            try:
                done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                status = f"timed out after {timeout:.0f} s"
                break
            # pytest exits 5 when no test is marked gpu: nothing to run is not a failure.
            if done.returncode != 0 and not (name == "tests" and done.returncode == 5):
                status = f"failed (exit {done.returncode})"
                break
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    tail = lines[-1] if lines else ""
    return {"step": name, "status": status, "seconds": round(time.perf_counter() - start, 1), "last_line": tail}


def layout_table(out: Path, half: str) -> list[dict[str, Any]]:
    """One row per channels_last x compile run, from the JSON each wrote (both off: the precision step's)."""
    rows = []
    for cl, comp in LAYOUTS:
        plain = (cl, comp) == PLAIN_LAYOUT
        path = out / "precision.json" if plain else out / "layout_runs" / f"{_layout_name(cl, comp)}.json"
        found = [r for r in json.loads(path.read_text())["rows"] if not plain or r["precision"] == half] if path.is_file() else []
        if not found:
            continue
        row = found[0]
        rows.append(
            {
                "channels_last": cl,
                "compile": comp,
                "precision_ran": row["precision_ran"],
                "epoch_s": row["epoch_s"],
                "images_per_s": row["images_per_s"],
                "first_epoch_s": row["first_epoch_s"],
                "peak_memory_mib": row["peak_memory_mib"],
                "val_mIoU": row["val_mIoU"],
            }
        )
    return rows


def device_name(dry: bool) -> str:
    if not dry:
        return torch.cuda.get_device_name(0)
    from segopt.core.precision import cpu_name

    return f"CPU dry run: {cpu_name()}, {os.cpu_count()} logical cores"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes (automatic without a CUDA GPU)")
    parser.add_argument(
        "--out", type=Path, help="folder for the gpu_*.md/.json files (default results/, dry run: runs/gpu_report_dryrun/)"
    )
    parser.add_argument("--budget", type=float, help="seconds for all steps (default 450 on a GPU, 110 dry)")
    add_overwrite_flag(parser)
    return parser.parse_args(argv)


def report_files(out: Path, prefix: str) -> list[Path]:
    """The files a report may write under ``out`` (the scratch folder aside)."""
    files = [out / f"{prefix}{step}{suffix}" for step in STEPS[:-1] for suffix in (".json", ".md", ".png")]
    return files + [out / f"{prefix}report.json", out / f"{prefix}report.md"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    prefix = "gpu_dryrun_" if dry else "gpu_"
    # A dry run measures nothing worth keeping: its files stay out of results/ unless asked.
    args.out = args.out or (ROOT / "runs" / "gpu_report_dryrun" if dry else ROOT / "results")
    refuse_to_overwrite(report_files(args.out, prefix), args.overwrite)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (110.0 if dry else 450.0)
    # Step outputs go to <out>/<prefix><step>.*; the scratch (logs, per-run files) beside them.
    work = args.out / f"{prefix}work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "layout_runs").mkdir(exist_ok=True)
    plan = steps(work, dry)
    # Share of the budget per step, by how long each takes on a GPU.
    shares = {"precision": 0.33, "layout": 0.42, "resnet_vs_smp": 0.07, "loader": 0.08, "tests": 0.10}
    env_note = os.environ.get("SEGOPT_DATA_ROOT", "data/ under the project")
    start = time.perf_counter()
    results = []
    for name, commands in plan.items():
        print(f"gpu_report: {name} ...", flush=True)
        result = run_step(name, commands, work / f"{name}.log", shares[name] * budget)
        results.append(result)
        print(f"gpu_report: {name} {result['status']} in {result['seconds']} s", flush=True)
        if name == "layout":
            rows = layout_table(work, half_precision(dry))
            (work / "layout.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
        source = work / f"{name}.json" if name != "tests" else None
        if source is not None and source.is_file():
            (args.out / f"{prefix}{name}.json").write_text(source.read_text())
            for suffix in (".md", ".png"):
                if source.with_suffix(suffix).is_file():
                    (args.out / f"{prefix}{name}{suffix}").write_bytes(source.with_suffix(suffix).read_bytes())
    total = time.perf_counter() - start
    layout_rows = layout_table(work, half_precision(dry))
    if layout_rows:
        (args.out / f"{prefix}layout.md").write_text("\n".join(_layout_md(layout_rows, dry)) + "\n")

    report = {
        "script": "experiments/gpu_report.py" + (" --dry-run" if dry else ""),
        "dry_run": dry,
        "device": device_name(dry),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "data": f"CamVid (configs/data/camvid.yaml), data root {env_note}",
        "total_seconds": round(total, 1),
        "steps": results,
    }
    (args.out / f"{prefix}report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# GPU report{' (dry run on the CPU)' if dry else ''}",
        "",
        f"`python {report['script']}` on {report['device']}; torch {report['torch']} (CUDA {report['cuda']}), "
        f"Python {report['python']}; {report['data']}; {total:.0f} s in all.",
        "",
        "| step | status | seconds | file |",
        "| --- | --- | ---: | --- |",
        *[f"| {r['step']} | {r['status']} | {r['seconds']} | {prefix}{r['step']}.md |" for r in results],
        "",
    ]
    if dry:
        lines.append("A dry run checks that every step runs; its figures (toy sizes, CPU) measure nothing about a GPU.")
    for r in results:
        if r["status"] != "ok":
            lines.append(f"- {r['step']}: {r['status']}; last line of {work.name}/{r['step']}.log: `{r['last_line']}`")
    tests = next(r for r in results if r["step"] == "tests")
    lines.append(f"- GPU tests (`pytest -m gpu`): {tests['last_line']}")
    (args.out / f"{prefix}report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def _layout_md(rows: list[dict[str, Any]], dry: bool) -> list[str]:
    ran = rows[0]["precision_ran"]
    return [
        f"# channels_last and torch.compile ({ran}{', CPU dry run' if dry else ''})",
        "",
        "| channels_last | compile | s / epoch (steady) | images / s | first epoch s (includes compiling) | peak memory (MiB) | val mIoU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {r['channels_last']} | {r['compile']} | {r['epoch_s']} | {r['images_per_s']} | {r['first_epoch_s']} | "
            f"{r['peak_memory_mib']} | {r['val_mIoU']} |"
            for r in rows
        ],
        "",
        "Each row is one fresh `experiments/bench_precision.py` run (same seed, data and epochs); "
        "their commands are in gpu_*work/layout.log, except both off, which is the precision step's run (gpu_*work/precision.log).",
    ]


if __name__ == "__main__":
    main()
