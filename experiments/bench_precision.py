"""Train the same model on the same data under each precision: epoch time, memory, mIoU.

    python -m experiments.bench_precision                    # CamVid, configs/amp.yaml, 3 epochs of 20 steps
    python -m experiments.bench_precision --channels-last --compile
    python -m experiments.bench_precision --epochs 4 --steps 50 -- --data.train_size=[176,240] --data.eval_size=[176,240]

Every precision trains in a fresh process (the same configs, flags and seed), so its peak
memory is its own: on a GPU ``torch.cuda.max_memory_allocated``, on a CPU the peak resident
set size of the training process from the start of training (data loader workers not
counted). Validation is switched off during the fit and run once at its end, so the epoch
times hold training only; the first epoch (worker start-up, compilation, autotuning) is
left out of the steady-state figures. A GPU runs 32-true, 16-mixed and bf16-mixed (where
the card supports bf16); a CPU runs 32-true and bf16-mixed, because 16-mixed on a CPU would
only run as bf16-mixed again (Lightning has no fp16 autocast there).

Writes ``--out``.md, .json and .png (default results/precision_<device>).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from experiments.common import hardware, markdown_table, result_files
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite

ROOT = Path(__file__).resolve().parents[1]
# Runs pass their arguments to LightningCLI explicitly; the script's own argv is not for it.
warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")

DEFAULT_CONFIGS = ["configs/amp.yaml", "configs/data/camvid.yaml"]
GPU_PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
CPU_PRECISIONS = ("32-true", "bf16-mixed")
CPU_NOTE = "16-mixed is not run on a CPU: Lightning has no fp16 autocast there and would run it as bf16-mixed (the bf16-mixed row)."
# Flags that keep the timed epochs to training alone: no checkpoint or image writing, no
# logger, no progress bar; validation inside the fit is switched off by
# check_val_every_n_epoch (see cli_args), so that trainer.validate still sees the user's limits.
QUIET_FIT = [
    "--trainer.num_sanity_val_steps=0",
    "--trainer.callbacks=[]",
    "--trainer.enable_checkpointing=false",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


class EpochTimer(pl.Callback):
    """Training seconds and images of each epoch, and the peak memory from the start of training."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.images: list[int] = []
        self.rss_start_mib: float | None = None
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            # Setup has filled the data cache and built the model: the peak from here on is training's.
            _reset_peak_rss()
            self.rss_start_mib = _proc_status_mib("VmRSS")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module)
        self.images.append(0)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.images[-1] += int(batch["image"].shape[0])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module)
        self.seconds.append(time.perf_counter() - self._start)


def _sync(module: pl.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize()


def _proc_status_mib(key: str) -> float | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MiB; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    try:  # Linux: writing 5 resets the process's peak RSS (VmHWM) to its current RSS.
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then counts from process start (ru_maxrss), still per precision


def train_once(cli_args: list[str]) -> dict[str, Any]:
    """Fit once with ``cli_args`` (configs and flags as for ``segopt.commands.cli``), then validate; the figures."""
    from segopt.commands.from_config import build_from_config

    cli = build_from_config(cli_args)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if cli.trainer.interrupted:
        raise SystemExit("error: training was interrupted; no figures written")
    cuda = cli.model.device.type == "cuda"
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        memory = {"peak_memory_mib": round(peak, 1), "memory_kind": "torch.cuda.max_memory_allocated"}
    else:
        peak = _proc_status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory = {
            "peak_memory_mib": round(peak, 1),
            "memory_kind": "peak RSS of the training process during fit",
            "rss_at_train_start_mib": None if timer.rss_start_mib is None else round(timer.rss_start_mib, 1),
        }
    metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {
        "precision_ran": str(cli.trainer.precision),
        "device": cli.model.device.type,
        "epoch_seconds": [round(s, 3) for s in timer.seconds],
        "epoch_images": timer.images,
        "val_mIoU": round(float(metrics["val/mIoU"]), 4),
        **memory,
    }


def default_precisions(device: str) -> tuple[str, ...]:
    """The precisions worth comparing on ``device`` ("cuda" or "cpu")."""
    if device != "cuda":
        return CPU_PRECISIONS
    return GPU_PRECISIONS if torch.cuda.is_bf16_supported() else GPU_PRECISIONS[:2]


def check_precisions(precisions: list[str], device: str) -> None:
    """Refuse precisions this device cannot run as asked, before anything trains."""
    known = set(GPU_PRECISIONS)
    for precision in precisions:
        if precision not in known:
            raise SystemExit(f"error: --precisions has {precision!r}; choose from {', '.join(GPU_PRECISIONS)}")
        if precision == "16-mixed" and device != "cuda":
            raise SystemExit(
                "error: --precisions has 16-mixed but there is no CUDA GPU; on a CPU Lightning would run it as "
                "bf16-mixed. Leave 16-mixed out (bf16-mixed measures what a CPU runs)."
            )


def summarise(precision: str, runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """One table row from the repeats of one precision: medians over repeats of steady-state epochs."""
    steady_s = [s for r in runs for s in r["epoch_seconds"][warmup:]]
    steady_img = [n for r in runs for n in r["epoch_images"][warmup:]]
    if not steady_s:
        raise SystemExit(f"error: --epochs must exceed --warmup-epochs ({warmup}) to leave steady-state epochs")
    per_epoch = statistics.median(steady_s)
    row: dict[str, Any] = {
        "precision": precision,
        "precision_ran": runs[0]["precision_ran"],
        "epoch_s": round(per_epoch, 2),
        "images_per_s": round(sum(steady_img) / sum(steady_s), 2),
        "first_epoch_s": round(statistics.median(r["epoch_seconds"][0] for r in runs), 2),
        "peak_memory_mib": round(statistics.median(r["peak_memory_mib"] for r in runs), 1),
        "val_mIoU": round(statistics.median(r["val_mIoU"] for r in runs), 4),
        "runs": runs,
    }
    starts = [r.get("rss_at_train_start_mib") for r in runs]
    if all(s is not None for s in starts):
        # What training itself added on top of the libraries, model and data cache.
        row["training_rise_mib"] = round(statistics.median(r["peak_memory_mib"] - s for r, s in zip(runs, starts)), 1)
    return row


def add_relative(rows: list[dict[str, Any]]) -> None:
    """Speed-up, memory change and mIoU change of each row against the first (the reference)."""
    ref = rows[0]
    for row in rows:
        row["speedup"] = round(ref["epoch_s"] / row["epoch_s"], 2)
        row["memory_change_pct"] = round(100 * (row["peak_memory_mib"] / ref["peak_memory_mib"] - 1), 1)
        if "training_rise_mib" in row and "training_rise_mib" in ref:
            row["rise_change_pct"] = round(100 * (row["training_rise_mib"] / ref["training_rise_mib"] - 1), 1)
        row["mIoU_change"] = round(row["val_mIoU"] - ref["val_mIoU"], 4)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of steady-state epoch time, peak memory and val mIoU per precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["precision"] for r in rows]
    panels = [("epoch_s", "steady-state s / epoch", "%.1f"), ("peak_memory_mib", "peak memory (MiB)", "%.0f")]
    if all("training_rise_mib" in r for r in rows):
        panels.append(("training_rise_mib", "memory added by training (MiB)", "%.0f"))
    panels.append(("val_mIoU", "final val mIoU", "%.3f"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.7 * len(panels), 3.6))
    for ax, (key, label, fmt) in zip(axes, panels):
        values = [r[key] for r in rows]
        bars = ax.bar(names, values, color=["#4c72b0", "#dd8452", "#55a868"][: len(rows)])
        ax.bar_label(bars, fmt=fmt, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", help=f"training config, repeatable (default: {' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--precisions", nargs="+", help="default: 32-true 16-mixed bf16-mixed on a GPU, 32-true bf16-mixed on a CPU")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="training batches per epoch (trainer.limit_train_batches)")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="first epochs left out of the steady-state figures")
    parser.add_argument("--repeats", type=int, default=1, help="fresh runs per precision, run round-robin; medians reported")
    parser.add_argument("--channels-last", action="store_true", help="model.channels_last: true")
    parser.add_argument("--compile", action="store_true", help="model.compile: true (torch.compile on the backbone)")
    parser.add_argument(
        "--threads", type=int, help="torch threads per run (default: torch's own); 1 avoids OpenMP stalls on cores other jobs share"
    )
    parser.add_argument("--out", help="output stem (default results/precision_<cpu|cuda>)")
    add_overwrite_flag(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: train once, write figures to this JSON
    parser.add_argument("extra", nargs="*", help="extra segopt.commands.cli flags, after --")
    return parser.parse_args(argv)


def _with_root_on_path() -> dict[str, str]:
    """This environment, with the project root importable (the child runs as ``-m experiments...`` from any folder)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def child_command(args: argparse.Namespace, precision: str, result: Path) -> list[str]:
    """The command that trains once under ``precision`` in a fresh process."""
    cmd = [sys.executable, "-m", __spec__.name, "--child", str(result)]
    if args.threads:
        cmd.append(f"--threads={args.threads}")
    return cmd + ["--", *cli_args(args, precision)]


def cli_args(args: argparse.Namespace, precision: str) -> list[str]:
    """segopt.commands.cli arguments (no subcommand) for one precision."""
    out: list[str] = []
    for config in args.config or DEFAULT_CONFIGS:
        out += ["--config", config]
    out += QUIET_FIT
    out += [
        f"--trainer.max_epochs={args.epochs}",
        f"--trainer.limit_train_batches={args.steps}",
        f"--trainer.check_val_every_n_epoch={args.epochs + 1}",
    ]
    if args.channels_last:
        out.append("--model.channels_last=true")
    if args.compile:
        out.append("--model.compile=true")
    return out + list(args.extra) + [f"--trainer.precision={precision}"]


def run_precisions(args: argparse.Namespace, precisions: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every precision's runs, each a fresh process, round-robin over the repeats."""
    scratch = Path("runs/bench_precision")
    scratch.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in precisions}
    for repeat in range(args.repeats):
        for precision in precisions:
            result = scratch / f"{precision}_{repeat}.json"
            log = scratch / f"{precision}_{repeat}.log"
            print(f"bench_precision: {precision} (repeat {repeat + 1}/{args.repeats}), log {log}", flush=True)
            with log.open("w") as handle:
                done = subprocess.run(child_command(args, precision, result), env=_with_root_on_path(), stdout=handle, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise SystemExit(f"error: the {precision} run failed (exit {done.returncode}); see {log}")
            runs[precision].append(json.loads(result.read_text()))
            print(f"  epochs {runs[precision][-1]['epoch_seconds']} s, val mIoU {runs[precision][-1]['val_mIoU']}", flush=True)
    return runs


def _where(hw: dict[str, Any]) -> str:
    return hw.get("gpu") or f"{hw.get('cpu')}, {hw['cpu_cores']} cores"


def report_md(args: argparse.Namespace, payload: dict[str, Any], device: str) -> list[str]:
    """The Markdown report of the payload :func:`main` writes as JSON."""
    hw, settings, memory_kind, loads = payload["hardware"], payload["settings"], payload["memory"], payload["load_average_1min"]
    columns = {
        "precision": "precision",
        "epoch_s": "s / epoch (steady)",
        "images_per_s": "images / s",
        "speedup": "speed-up vs 32-true",
        "peak_memory_mib": "peak memory (MiB)",
        "memory_change_pct": "memory vs 32-true (%)",
        **({"training_rise_mib": "added by training (MiB)", "rise_change_pct": "added vs 32-true (%)"} if device == "cpu" else {}),
        "val_mIoU": "final val mIoU",
        "mIoU_change": "mIoU vs 32-true",
        "first_epoch_s": "first epoch s",
    }
    return [
        f"# Mixed precision: training time, memory and mIoU ({device})",
        "",
        f"`{payload['command']}`",
        "",
        *markdown_table(payload["rows"], columns),
        "",
        f"- Hardware: {_where(hw)}; torch {hw['torch']}, {hw['torch_threads']} torch threads.",
        f"- Configs: {' + '.join(settings['configs'])}; flags: {' '.join(settings['extra_flags']) or 'none'}.",
        f"- Budget: {args.epochs} epochs of {args.steps} training batches per precision, same seed; the first "
        f"{args.warmup_epochs} epoch(s) left out of s / epoch (median of the rest) and images / s. "
        f"{args.repeats} fresh process(es) per precision, round-robin; medians over them.",
        f"- Memory: {memory_kind}"
        + (
            " (from the start of training: libraries, model and data cache included, loader workers not); "
            "added by training: that peak less the RSS when training started (activations, gradients, optimiser state)."
            if device == "cpu"
            else "."
        ),
        "- mIoU: validation split once after the fit; after so few steps it shows that training works under each "
        "precision, not the precision's effect on a converged model.",
        f"- channels_last: {args.channels_last}; torch.compile: {args.compile}.",
        f"- 1-min load average {loads['before']:.2f} before, {loads['after']:.2f} after.",
        *[f"- {n}" for n in payload["notes"]],
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = train_once(list(args.extra))
        Path(args.child).write_text(json.dumps(result) + "\n")
        return result
    if args.epochs <= args.warmup_epochs:
        raise SystemExit(f"error: --epochs {args.epochs} leaves no steady-state epoch after --warmup-epochs {args.warmup_epochs}; raise --epochs")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = args.precisions or list(default_precisions(device))
    check_precisions(precisions, device)
    out = Path(args.out or f"results/precision_{device}")
    refuse_to_overwrite(result_files(out, (".json", ".md", ".png")), args.overwrite)

    load_before = os.getloadavg()[0]
    runs = run_precisions(args, precisions)
    load_after = os.getloadavg()[0]

    rows = [summarise(p, runs[p], args.warmup_epochs) for p in precisions]
    add_relative(rows)
    hw = hardware(device)
    hw["cpu_cores"] = os.cpu_count()
    hw["torch_threads"] = args.threads or hw["torch_threads"]
    command = "python -m experiments.bench_precision " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = {
        "configs": args.config or DEFAULT_CONFIGS,
        "extra_flags": list(args.extra),
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "warmup_epochs": args.warmup_epochs,
        "repeats": args.repeats,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "threads": hw["torch_threads"],
    }
    payload = {
        "command": command.strip(),
        "hardware": hw,
        "settings": settings,
        "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "memory": rows[0]["runs"][0]["memory_kind"],
        "notes": [CPU_NOTE] if device == "cpu" else [],
        "rows": rows,
    }
    md = report_md(args, payload, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    title = f"{_where(hw)}, {hw['torch_threads']} torch thread(s): {args.epochs} epochs x {args.steps} steps per precision"
    plot(rows, out.with_suffix(".png"), title)
    print("\n".join(md))
    print(f"wrote {out}.md, .json and .png")
    return payload


if __name__ == "__main__":
    main()
