"""Write a plan out: the recipe YAML (each planned key commented with its reason), and beside
it ``<name>.plan.json`` and ``<name>.plan.md`` with the fingerprint, the probe and every decision."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

from segopt.commands.planning.fingerprint import Fingerprint
from segopt.commands.planning.probe import Probe
from segopt.commands.planning.rules import Plan

#: The optimiser and schedule every plan uses: the CamVid recipe's AdamW + OneCycle.
WEIGHT_DECAY, PCT_START = 1.0e-4, 0.2
#: Geometric augmentation of the CamVid recipe (flips and colour jitter keep their defaults).
ROTATE, SHEAR = 10.0, 5.0


def plan_paths(out: Path) -> list[Path]:
    """The three files a plan writes for ``--out``: the recipe, its .plan.json and .plan.md."""
    stem = out.with_suffix("")
    return [out, stem.with_name(stem.name + ".plan.json"), stem.with_name(stem.name + ".plan.md")]


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        if tree.get(part) is None:  # an unset section (e.g. augment: null, the defaults)
            tree[part] = {}
        tree = tree[part]
    tree[last] = value


def recipe_tree(plan: Plan, data: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The recipe as a nested dict, and the reason of each planned key (dotted path → reason)."""
    value = plan.value
    reasons: dict[str, str] = {}
    tree: dict[str, Any] = {
        "trainer": {
            "precision": value("trainer.precision"),
            "max_epochs": 100000,
            "check_val_every_n_epoch": value("trainer.check_val_every_n_epoch"),
            "logger": {"init_args": {"name": name}},
            "callbacks+": [
                {"class_path": "segopt.lightning.TimeBudget", "init_args": {"minutes": value("time_budget.minutes")}},
                {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": value("ema.decay")}},
            ],
        },
        "model": {
            "backbone": value("model.backbone"),
            "loss": {
                "class_path": "segopt.losses.CombinedLoss",
                "init_args": {
                    "ce": value("model.loss.init_args.ce"),
                    "dice": value("model.loss.init_args.dice"),
                    "class_weights": value("model.loss.init_args.class_weights"),
                },
            },
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": value("model.scheduler.init_args.max_lr"), "weight_decay": WEIGHT_DECAY}},
            "scheduler": {"class_path": "segopt.core.schedules.OneCycle", "init_args": {"max_lr": value("model.scheduler.init_args.max_lr"), "pct_start": PCT_START}},
            "tta": value("model.tta"),
        },
        "data": copy.deepcopy(data),
    }
    reasons["trainer.max_epochs"] = "an upper bound: TimeBudget sets the epochs that fit in the budget"
    for d in plan.decisions:
        if d.key.startswith("data."):
            _set(tree, d.key, d.value)
        reasons[d.key] = d.reason
    augment = tree["data"]["augment"]
    augment.setdefault("rotate", ROTATE)
    augment.setdefault("shear", SHEAR)
    reasons["trainer.callbacks+.0.init_args.minutes"] = reasons.pop("time_budget.minutes")
    reasons["trainer.callbacks+.1.init_args.decay"] = reasons.pop("ema.decay")
    reasons["model.optimizer.init_args.lr"] = reasons.pop("model.scheduler.init_args.max_lr")
    reasons["model.scheduler.init_args.max_lr"] = reasons["model.optimizer.init_args.lr"]
    return tree, reasons


def _inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").removesuffix("...").strip()


def _emit(node: dict[str, Any], path: str, reasons: dict[str, str], indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for key, value in node.items():
        dotted = f"{path}.{key}" if path else str(key)
        comment = f"  # {reasons[dotted]}" if dotted in reasons else ""
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:{comment}")
            _emit(value, dotted, reasons, indent + 1, lines)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key}:{comment}")
            for i, item in enumerate(value):
                sub: list[str] = []
                _emit(item, f"{dotted}.{i}", reasons, indent + 2, sub)
                sub[0] = f"{pad}  - {sub[0].lstrip()}"
                lines += sub
        else:
            lines.append(f"{pad}{key}: {_inline(value)}{comment}")


def render_recipe(tree: dict[str, Any], reasons: dict[str, str], header: list[str]) -> str:
    """The recipe as YAML text, each planned key followed by ``# reason``."""
    lines = [f"# {line}" if line else "#" for line in header]
    _emit(tree, "", reasons, 0, lines)
    return "\n".join(lines) + "\n"


def render_markdown(fp: Fingerprint, probe: Probe, plan: Plan, command: str) -> str:
    """The plan's report: fingerprint, probe, candidates weighed and each decision with its reason."""
    h, w = fp.median_size
    lines = [f"# Plan: {plan.minutes:g} minutes", "", f"`{command}`", "", "## Data fingerprint", ""]
    lines.append(f"Images: {', '.join(f'{k} {v}' for k, v in fp.images.items())}; sizes (HxW) min {fp.min_size[0]}x{fp.min_size[1]}, "
                 f"median {h}x{w}, max {fp.max_size[0]}x{fp.max_size[1]}{' (they vary)' if fp.sizes_vary else ''}; {fp.channels} channel(s); "
                 f"void {fp.void_share:.1%} of the training pixels; measured in {fp.seconds:.1f} s.")
    spread = "—" if fp.scale_spread is None else f"{fp.scale_spread:g}"
    lines += ["", f"Scale spread (median of the classes' width spreads): {spread}.", "",
              "| class | pixel share | in images | structure width (px, full res) | width spread between images (p75/p25) |", "|---|---|---|---|---|"]
    for c in fp.classes:
        width = "—" if c.width_px is None else f"{c.width_px:g}"
        cspread = "—" if c.width_spread is None else f"{c.width_spread:g}"
        lines.append(f"| {c.name} | {c.pixel_share:.2%} | {c.image_share:.0%} ({c.images}) | {width} | {cspread} |")
    m = probe.machine
    lines += ["", "## Machine probe", "", f"{m.device}: {m.name}, {m.cores} cores, {m.memory_gb:g} GB"
              + (f", GPU memory {m.gpu_memory_gb:g} GB" if m.gpu_memory_gb else "") + f"; `16-mixed` runs as {m.precision}; probed in {probe.seconds:.1f} s.",
              "", "| backbone | size | timed at batch | train s/image | eval s/image | largest batch |", "|---|---|---|---|---|---|"]
    for t in probe.timings:
        lines.append(f"| {t.backbone} | {t.size[0]}x{t.size[1]} | {t.batch} | {t.train_s_per_image:.4f} | {t.eval_s_per_image:.4f} | {t.max_batch or '—'} |")
    lines += ["", "## Candidates weighed", "", "| backbone | mode | size | batch | epoch s | validate every | epochs | steps | images seen |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in plan.candidates:
        mark = " **(chosen)**" if c == plan.chosen else ""
        lines.append(f"| {c.backbone}{mark} | {c.mode} | {c.size[0]}x{c.size[1]} | {c.batch} | {c.epoch_s:.1f} | {c.val_every} | {c.epochs} | {c.steps} | {c.images_seen} |")
    lines += ["", "## Decisions", "", "| key | value | why |", "|---|---|---|"]
    for d in plan.decisions:
        lines.append(f"| `{d.key}` | `{_inline(d.value)}` | {d.reason} |")
    if plan.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_plan(out: Path, fp: Fingerprint, probe: Probe, plan: Plan, data: dict[str, Any], command: str) -> list[Path]:
    """Write the recipe and its two reports; return their paths."""
    name = out.with_suffix("").name
    tree, reasons = recipe_tree(plan, data, name)
    m = probe.machine
    header = [
        f"Planned by segopt for {plan.minutes:g} minutes on {m.name} ({m.device}, {m.cores} cores, {m.precision}):",
        f"  {command}",
        f"  python -m segopt.cli fit --config {out}",
        f"The fingerprint, the probe and every decision: {plan_paths(out)[2].name} beside this file.",
        *plan.notes,
    ]
    recipe, report_json, report_md = plan_paths(out)
    write_atomic(recipe, render_recipe(tree, reasons, header))
    record = {"command": command, "fingerprint": fp.as_dict(), "probe": probe.as_dict(), "plan": plan.as_dict()}
    write_atomic(report_json, json.dumps(record, indent=2, default=str) + "\n")
    write_atomic(report_md, render_markdown(fp, probe, plan, command))
    return [recipe, report_json, report_md]
