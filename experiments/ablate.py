"""Run a grid of training settings over several seeds and report val mIoU per cell.

    python -m experiments.ablate configs/ablation/camvid_loss_aug.yaml
    python -m experiments.ablate configs/ablation/camvid_loss_aug.yaml --dry-run    # list the runs, train nothing

The grid file names the base configs and flags, the seeds, and one or more axes; each value
of an axis is a list of extra ``--config`` files and/or ``--key=value`` flags::

    base: [configs/amp.yaml, configs/data/camvid.yaml, --trainer.max_epochs=12]
    seeds: [0, 1, 2]
    axes:
      loss:
        CE: [configs/loss/ce.yaml]
        Dice+CE: [configs/loss/dice_ce.yaml]
      augmentation:
        "on": []
        "off": [--data.augment.enabled=false]
    exclude:                      # optional: cells of the product not to run
      - {loss: CE, augmentation: "off"}
    baseline: {loss: Dice+CE, augmentation: "on"}   # optional: differences are taken against it

Paths are relative to the project root, where the script runs. Every cell of the product
(less ``exclude``) is trained once per seed (all cells for the first seed, then the next) with ``segopt.commands.cli fit`` and
``--seed_everything=<seed>``; its TensorBoard run goes under ``--runs-dir`` (git-ignored)
and its figures to a small JSON under ``--results-dir``. A run whose JSON exists with the
same arguments is not run again, so the same command resumes an interrupted grid, and a
grid grown by an axis whose first value adds no arguments (e.g. ``backbone: {UNet: [],
ResUNet: [configs/model/res_unet.yaml]}``) reuses the runs it already has. After
every run the report is rewritten from the JSONs found: ``--out``.md, .json and .png (mean
± sample standard deviation over seeds of the final-epoch val mIoU, the best epoch's val
mIoU, and per-class IoU). The final epoch is the headline: with OneCycle the last epoch is
the one the schedule aims at, and picking the best epoch by val mIoU flatters each cell by
its own noise. The logger must be a TensorBoardLogger (segopt/commands/trainer_defaults.yaml's is).

Unlike the other scripts, this one has no ``--overwrite``: its per-run JSONs are its resume
state and its report is rebuilt from them, so running the same command again resumes the
grid or refreshes the report without a flag. A per-run JSON is replaced only by the run of
its own cell and seed (when the file was made with other arguments); ``--out`` is rewritten
after every run, so give each grid a report stem of its own (the default is).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from experiments.common import hardware

ROOT = Path(__file__).resolve().parents[1]
# Runs pass their arguments to LightningCLI explicitly; the script's own argv is not for it.
warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")

GRID_KEYS = ("name", "base", "seeds", "axes", "exclude", "baseline")


class GridError(ValueError):
    """A grid file that cannot be run as written; the message names the key and the fix."""


@dataclass
class Grid:
    """A parsed grid file: base arguments, seeds and axes (value name → CLI arguments)."""

    path: Path
    name: str
    base: list[str]
    seeds: list[int]
    axes: dict[str, dict[str, list[str]]]
    exclude: list[dict[str, str]] = field(default_factory=list)
    baseline: dict[str, str] | None = None


@dataclass(frozen=True)
class Cell:
    """One combination of axis values."""

    values: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{axis}={value}" for axis, value in self.values)

    @property
    def slug(self) -> str:
        """A file-name-safe id, unique within a grid."""
        return "__".join(f"{_safe(axis)}-{_safe(value)}" for axis, value in self.values)

    def as_dict(self) -> dict[str, str]:
        return dict(self.values)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text)


def _cli_items(items: Any, where: str, grid_path: Path) -> list[str]:
    """Check a list of config files / flags and turn it into segopt.commands.cli arguments."""
    if items is None:
        items = []
    if not isinstance(items, list):
        raise GridError(f"{grid_path}: {where} is {items!r}; give a list of config files and --key=value flags ([] for none)")
    args: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise GridError(f"{grid_path}: {where} has {item!r}; each entry is a config path or a --key=value flag, as a string")
        if item.startswith("--"):
            if "=" not in item:
                raise GridError(f"{grid_path}: {where} has the flag {item!r} without a value; write it as one string --key=value")
            args.append(item)
        else:
            if not Path(item).is_file():
                raise GridError(
                    f"{grid_path}: {where} names the config {item!r}, which is not a file (paths are relative to the "
                    f"project root, where the script runs; cwd is {Path.cwd()}); fix the path or remove it"
                )
            args += ["--config", item]
    return args


def _value_name(name: Any, where: str, grid_path: Path) -> str:
    if not isinstance(name, str):
        hint = " (YAML reads unquoted on/off/yes/no as booleans)" if isinstance(name, bool) else ""
        raise GridError(f"{grid_path}: {where} has the name {name!r}{hint}; quote it, e.g. \"{str(name).lower()}\"")
    return name


def _selection(raw: Any, axes: dict[str, dict[str, list[str]]], where: str, grid_path: Path) -> dict[str, str]:
    """A mapping axis → value name, each checked against the axes."""
    if not isinstance(raw, dict) or not raw:
        raise GridError(f"{grid_path}: {where} is {raw!r}; give a mapping of axis to value, e.g. {{loss: CE}}")
    picked: dict[str, str] = {}
    for axis, value in raw.items():
        if axis not in axes:
            raise GridError(f"{grid_path}: {where} names the axis {axis!r}; the axes are {', '.join(axes)}")
        value = _value_name(value, f"{where} ({axis})", grid_path)
        if value not in axes[axis]:
            raise GridError(f"{grid_path}: {where} gives {axis}={value!r}; the values of {axis} are {', '.join(axes[axis])}")
        picked[axis] = value
    return picked


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; every problem raises :class:`GridError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist; pass a YAML file such as configs/ablation/camvid_loss_aug.yaml")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise GridError(f"{path}: the file holds {type(raw).__name__}, not a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise GridError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; the keys are {', '.join(GRID_KEYS)}")
    for key in ("base", "seeds", "axes"):
        if key not in raw:
            raise GridError(f"{path}: the key {key!r} is missing; see the example in experiments/ablate.py")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise GridError(f"{path}: seeds is {seeds!r}; give a list of integers, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{path}: seeds {seeds} repeat a seed; each seed once")
    if not isinstance(raw["axes"], dict) or not raw["axes"]:
        raise GridError(f"{path}: axes is {raw['axes']!r}; give at least one axis, e.g. axes: {{loss: {{CE: [configs/loss/ce.yaml]}}}}")
    axes: dict[str, dict[str, list[str]]] = {}
    for axis, values in raw["axes"].items():
        axis = _value_name(axis, "axes", path)
        if not isinstance(values, dict) or not values:
            raise GridError(f"{path}: axes.{axis} is {values!r}; give a mapping of value name to a list of configs/flags")
        axes[axis] = {
            _value_name(name, f"axes.{axis}", path): _cli_items(items, f"axes.{axis}.{name}", path)
            for name, items in values.items()
        }
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list):
        raise GridError(f"{path}: exclude is {exclude!r}; give a list of mappings, e.g. [{{loss: CE, augmentation: \"off\"}}]")
    grid = Grid(
        path=path,
        name=_safe(str(raw.get("name") or path.stem)),
        base=_cli_items(raw["base"], "base", path),
        seeds=seeds,
        axes=axes,
        exclude=[_selection(e, axes, f"exclude[{i}]", path) for i, e in enumerate(exclude)],
    )
    if not cells_of(grid):
        raise GridError(f"{path}: exclude removes every cell of the grid; drop some exclusions")
    if raw.get("baseline") is not None:
        baseline = _selection(raw["baseline"], axes, "baseline", path)
        if set(baseline) != set(axes) or _cell_from(axes, baseline) not in cells_of(grid):
            raise GridError(f"{path}: baseline {baseline} is not a cell of the grid; name one value of every axis, not excluded")
        grid.baseline = baseline
    return grid


def _cell_from(axes: dict[str, dict[str, list[str]]], values: dict[str, str]) -> Cell:
    return Cell(tuple((axis, values[axis]) for axis in axes))


def cells_of(grid: Grid) -> list[Cell]:
    """The product of the axes, in file order, less the excluded cells."""
    cells = []
    for combo in itertools.product(*grid.axes.values()):
        values = dict(zip(grid.axes, combo))
        if any(all(values[a] == v for a, v in rule.items()) for rule in grid.exclude):
            continue
        cells.append(_cell_from(grid.axes, values))
    return cells


def run_args(grid: Grid, cell: Cell, seed: int) -> list[str]:
    """segopt.commands.cli arguments (no subcommand, no output paths) of one run; a finished run is matched on these."""
    args = list(grid.base)
    for axis, value in cell.values:
        args += grid.axes[axis][value]
    return args + [f"--seed_everything={seed}"]


def output_args(run_dir: Path) -> list[str]:
    """Where a run writes its TensorBoard events (and checkpoints, if the configs keep any)."""
    return [
        f"--trainer.logger.init_args.save_dir={run_dir.parent}",
        f"--trainer.logger.init_args.name={run_dir.name}",
        "--trainer.logger.init_args.version=0",
    ]


def check_cell(args: list[str], label: str, grid_path: Path) -> None:
    """Build a run's objects without training, so that a bad flag stops the grid before hours of runs."""
    from segopt.commands.from_config import build_from_config

    try:
        build_from_config(args)
    except SystemExit as err:
        raise GridError(f"{grid_path}: cell {label}: segopt.commands.cli rejected its arguments (its message is above): {' '.join(args)}") from err
    except Exception as err:  # noqa: BLE001 (re-raised with the cell named)
        raise GridError(f"{grid_path}: cell {label}: {type(err).__name__}: {err}") from err


def fit_once(args: list[str]) -> dict[str, Any]:
    """Train one run in this process; final and best val mIoU, per-class IoU, epochs, precision."""
    from segopt.commands.cli import main as cli_main

    cli = cli_main(["fit", *args])
    trainer = cli.trainer
    if trainer.interrupted:
        raise SystemExit("ablate: interrupted; finished runs are kept, run the same command again to resume")
    metrics = trainer.callback_metrics
    if "val/mIoU" not in metrics:
        raise GridError("the run logged no val/mIoU; the grid's runs must validate (trainer.limit_val_batches > 0)")
    result = {
        "final_val_mIoU": _number(metrics["val/mIoU"]),
        "best_val_mIoU": _number(metrics.get("val/mIoU_best", metrics["val/mIoU"])),
        "val_iou": {name: _number(metrics.get(f"val/iou/{name}", float("nan"))) for name in cli.model.class_names},
        "epochs": trainer.current_epoch,
        "precision": str(trainer.precision),
    }
    del cli, trainer
    gc.collect()
    return result


def _number(value: Any) -> float | None:
    """A rounded float, None for NaN (a class absent from the validation set)."""
    number = float(value)
    return None if math.isnan(number) else round(number, 6)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarise(grid: Grid, cells: list[Cell], results: dict[tuple[Cell, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: runs found, mean ± std of final and best val mIoU, per-class mean and std, Δ to the baseline."""
    rows = []
    for cell in cells:
        runs = [results[(cell, s)] for s in grid.seeds if (cell, s) in results]
        final = [r["final_val_mIoU"] for r in runs]
        best = [r["best_val_mIoU"] for r in runs]
        mean, std = _mean_std(final)
        best_mean, best_std = _mean_std(best)
        per_class = {}
        names = list(runs[0]["val_iou"]) if runs else []
        for name in names:
            m, s = _mean_std([r["val_iou"][name] for r in runs if r["val_iou"][name] is not None])
            per_class[name] = {"mean": m, "std": s}
        rows.append(
            {
                "cell": cell.as_dict(),
                "label": cell.label,
                "runs": len(runs),
                "seeds": [s for s in grid.seeds if (cell, s) in results],
                "final_val_mIoU": final,
                "final_mean": mean,
                "final_std": std,
                "best_val_mIoU": best,
                "best_mean": best_mean,
                "best_std": best_std,
                "val_iou": per_class,
                "minutes_per_run": statistics.fmean(r["seconds"] for r in runs) / 60 if runs else None,
                "precision": runs[0]["precision"] if runs else None,
            }
        )
    if grid.baseline is not None:
        base = next(r for r in rows if r["cell"] == grid.baseline)
        for row in rows:
            # Paired by seed: a seed gives every cell the same initial weights and data order,
            # so much of the spread between seeds is shared and cancels in the difference.
            common = [s for s in row["seeds"] if s in base["seeds"]]
            diffs = [
                row["final_val_mIoU"][row["seeds"].index(s)] - base["final_val_mIoU"][base["seeds"].index(s)] for s in common
            ]
            mean, std = _mean_std(diffs)
            row["delta"], row["delta_std"], row["delta_seeds"] = mean, std, len(diffs)
            row["delta_positive"] = sum(d > 0 for d in diffs)
    return rows


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def markdown(grid: Grid, rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """The report: one row per cell, then per-class IoU, then settings and hardware."""
    axes = list(grid.axes)
    has_delta = grid.baseline is not None
    head = [*axes, "runs", "final val mIoU (mean ± std)"]
    head += ["Δ vs baseline, paired by seed", "seeds above baseline"] if has_delta else []
    head += ["best-epoch val mIoU", "final mIoU per seed", "min / run"]
    lines = [
        f"# Ablation: {grid.name}",
        "",
        f"`{meta['command']}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in rows:
        cells = [row["cell"][a] for a in axes] + [f"{row['runs']}/{len(grid.seeds)}", _fmt(row["final_mean"], row["final_std"])]
        if has_delta:
            if row["cell"] == grid.baseline:
                cells += ["baseline", "—"]
            elif row["delta"] is None:
                cells += ["—", "—"]
            else:
                spread = "" if row["delta_std"] is None else f" ± {row['delta_std']:.4f}"
                cells += [f"{row['delta']:+.4f}{spread}", f"{row['delta_positive']}/{row['delta_seeds']}"]
        cells += [
            _fmt(row["best_mean"], row["best_std"]),
            ", ".join(f"{v:.4f}" for v in row["final_val_mIoU"]) or "—",
            "—" if row["minutes_per_run"] is None else f"{row['minutes_per_run']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    names = next((list(r["val_iou"]) for r in rows if r["val_iou"]), [])
    if names:
        lines += ["", "Per-class IoU at the final epoch (mean over seeds):", ""]
        lines.append("| cell | " + " | ".join(names) + " |")
        lines.append("|---|" + "|".join("---" for _ in names) + "|")
        for row in rows:
            if row["val_iou"]:
                values = [row["val_iou"][n]["mean"] for n in names]
                lines.append(f"| {row['label']} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in values) + " |")
    lines += [
        "",
        f"- Metric: val mIoU at the final epoch, mean ± sample standard deviation over seeds {', '.join(map(str, grid.seeds))} "
        "(`--seed_everything`); the best epoch's val mIoU (val/mIoU_best) beside it."
        + (
            " Δ: per seed, the cell's final val mIoU less the baseline's with the same seed; mean ± sample standard "
            "deviation of those differences (a seed gives every cell the same initial weights, so the spread between "
            "seeds that all cells share cancels)."
            if has_delta
            else ""
        ),
        f"- Base: {' '.join(_plain(grid.base))}",
        *[
            f"- Axis {axis}: " + "; ".join(f"{name} = {' '.join(_plain(items)) or '(base)'}" for name, items in values.items())
            for axis, values in grid.axes.items()
        ],
        *([f"- Not run: {'; '.join(', '.join(f'{a}={v}' for a, v in e.items()) for e in grid.exclude)}"] if grid.exclude else []),
        f"- Precision that ran: {', '.join(sorted({r['precision'] for r in rows if r['precision']}))}.",
        f"- Hardware: {meta['where']}; torch {meta['hardware']['torch']}, {meta['hardware']['torch_threads']} torch thread(s). "
        f"1-min load average {meta['load_average_1min']['start']:.2f} at the start of this invocation, "
        f"{meta['load_average_1min']['now']:.2f} when written.",
        f"- Per-run figures: {meta['results_dir']}/*.json.",
    ]
    return lines


def _plain(args: list[str]) -> list[str]:
    """Arguments as a reader writes them: config files without the --config before each."""
    return [a for a in args if a != "--config"]


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Final val mIoU per cell (bar: mean, error bar: std, dots: seeds) and per-class IoU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["runs"]]
    names = list(rows[0]["val_iou"])
    labels = [" / ".join(r["cell"].values()) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 2.4]})
    x = range(len(rows))
    colours = plt.get_cmap("tab10").colors
    left.bar(x, [r["final_mean"] for r in rows], yerr=[r["final_std"] or 0 for r in rows], capsize=4, color=colours[: len(rows)])
    for i, r in enumerate(rows):
        left.scatter([i] * len(r["final_val_mIoU"]), r["final_val_mIoU"], color="black", s=10, zorder=3)
    left.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    left.set_ylabel("final val mIoU (mean ± std, dots: seeds)")
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        means = [r["val_iou"][n]["mean"] or 0 for n in names]
        stds = [r["val_iou"][n]["std"] or 0 for n in names]
        right.bar([j + (i - (len(rows) - 1) / 2) * width for j in range(len(names))], means, width, yerr=stds,
                  capsize=1.5, label=labels[i], color=colours[i % len(colours)])
    right.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("val IoU at the final epoch")
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(grid: Grid, cells: list[Cell], results: dict[tuple[Cell, int], dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    """Rewrite ``out``.md/.json/.png from the runs found so far."""
    rows = summarise(grid, cells, results)
    meta = {**meta, "load_average_1min": {**meta["load_average_1min"], "now": round(os.getloadavg()[0], 2)}}
    payload = {
        "grid": {
            "file": str(grid.path),
            "name": grid.name,
            "base": grid.base,
            "seeds": grid.seeds,
            "axes": grid.axes,
            "exclude": grid.exclude,
            "baseline": grid.baseline,
        },
        "metric": "val mIoU at the final epoch; mean and sample std over seeds",
        **meta,
        "cells": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(markdown(grid, rows, meta)) + "\n")
    if any(r["runs"] for r in rows):
        plot(rows, out.with_suffix(".png"), f"{grid.name}: final val mIoU over seeds {grid.seeds} ({meta['where']})")


def _finished_runs(results_dir: Path) -> dict[tuple[str, ...], tuple[Path, dict[str, Any]]]:
    """Finished runs of a grid by their arguments, so that a run is found again whatever its cell is now called."""
    found: dict[tuple[str, ...], tuple[Path, dict[str, Any]]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"ablate: {path} is not valid JSON; its run counts as not finished", flush=True)
            continue
        found.setdefault(tuple(record.get("args", [])), (path, record))
    return found


def _adopt(found: tuple[Path, dict[str, Any]], path: Path, grid: Grid, cell: Cell, rename: bool) -> dict[str, Any]:
    """A finished run's record under its cell's current name (an axis added with no arguments renames cells)."""
    old, record = found
    if rename and old != path and not path.exists():
        record = {**record, "grid": grid.name, "cell": cell.as_dict()}
        _write_json(path, record)
        old.unlink()
        print(f"ablate: {old.name} is {cell.label} now; renamed to {path.name}", flush=True)
    return record


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # a crash mid-write never leaves a truncated result that counts as finished


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help="grid YAML file (see above)")
    parser.add_argument("--out", help="report stem (default results/ablation_<grid name>)")
    parser.add_argument("--results-dir", default="results/ablation_runs", help="per-run JSONs go to <this>/<grid name>/")
    parser.add_argument("--runs-dir", default="runs/ablation", help="TensorBoard runs go to <this>/<grid name>/ (git-ignored)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own); 1 avoids OpenMP stalls on cores other jobs share")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether each is finished; train nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Run (or resume) a grid and write its report; returns the report stem."""
    args = parse_args(argv)
    try:
        grid = load_grid(args.grid)
    except GridError as err:
        raise SystemExit(f"error: {err}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    cells = cells_of(grid)
    out = Path(args.out or f"results/ablation_{grid.name}")
    results_dir = Path(args.results_dir) / grid.name
    runs_dir = Path(args.runs_dir) / grid.name
    # Seed by seed across all cells: a grid stopped part-way still compares every cell.
    plan = [(cell, seed) for seed in grid.seeds for cell in cells]

    finished = _finished_runs(results_dir)
    results: dict[tuple[Cell, int], dict[str, Any]] = {}
    pending = []
    for cell, seed in plan:
        path = results_dir / f"{cell.slug}__seed{seed}.json"
        found = finished.get(tuple(run_args(grid, cell, seed)))
        if found is not None:
            results[(cell, seed)] = _adopt(found, path, grid, cell, rename=not args.dry_run)
            continue
        if path.is_file():
            print(f"ablate: {path} was made with other arguments; {cell.label} seed {seed} runs again", flush=True)
        pending.append((cell, seed))
    print(f"ablate: {grid.name}: {len(cells)} cells x {len(grid.seeds)} seeds = {len(plan)} runs; "
          f"{len(results)} finished earlier, {len(pending)} to run", flush=True)
    if args.dry_run:
        for i, (cell, seed) in enumerate(plan, 1):
            state = "finished" if (cell, seed) in results else "to run"
            print(f"  [{i}/{len(plan)}] {cell.label} seed {seed}: {state}\n      segopt.commands.cli fit {' '.join(run_args(grid, cell, seed))}")
        return out

    hw = hardware("cuda" if torch.cuda.is_available() else "cpu")
    hw["cpu_cores"] = os.cpu_count()
    meta = {
        "command": "python -m experiments.ablate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": hw,
        "where": hw.get("gpu") or f"{hw.get('cpu')}, {hw['cpu_cores']} cores",
        "load_average_1min": {"start": round(os.getloadavg()[0], 2)},
        "results_dir": str(results_dir),
    }
    for cell in dict.fromkeys(cell for cell, _ in pending):
        check_cell(run_args(grid, cell, grid.seeds[0]) + output_args(runs_dir / "check"), cell.label, grid.path)

    results_dir.mkdir(parents=True, exist_ok=True)
    spent: list[float] = []
    for cell, seed in pending:
        i = plan.index((cell, seed)) + 1
        eta = f", ETA {_duration(statistics.fmean(spent) * (len(pending) - len(spent)))}" if spent else ""
        print(f"ablate: [{i}/{len(plan)}] {cell.label} seed {seed}: training ({len(spent)}/{len(pending)} done this time{eta})", flush=True)
        run_dir = runs_dir / cell.slug / f"seed{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # what an interrupted attempt left; it never finished
        cli_args = run_args(grid, cell, seed)
        start = time.perf_counter()
        figures = fit_once(cli_args + output_args(run_dir))
        seconds = time.perf_counter() - start
        spent.append(seconds)
        record = {"grid": grid.name, "cell": cell.as_dict(), "seed": seed, "args": cli_args, "seconds": round(seconds, 1), **figures}
        _write_json(results_dir / f"{cell.slug}__seed{seed}.json", record)
        results[(cell, seed)] = record
        print(f"ablate: [{i}/{len(plan)}] {cell.label} seed {seed}: final val mIoU {figures['final_val_mIoU']:.4f} "
              f"(best {figures['best_val_mIoU']:.4f}) in {_duration(seconds)}", flush=True)
        write_report(grid, cells, results, out, meta)
    write_report(grid, cells, results, out, meta)
    print(f"ablate: wrote {out}.md, .json and .png", flush=True)
    return out


if __name__ == "__main__":
    main()
