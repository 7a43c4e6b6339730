"""Write ``results/plan.md``: the planned recipes against ``amp.yaml`` and the peer, from the files
the runs wrote.

    python -m experiments.plan_report --overwrite

For every series ``results/plan/<name>_<minutes>min/`` run by ``experiments/plan_evidence.sh``
(per-run JSONs of ``experiments/side_by_side.py``), it summarises the arms per machine (mean, sample
std and range over seeds of the final val mIoU, and every pair's lead, resolved only when it
exceeds both arms' seed range with two seeds or more each), and sets beside them what the
planner chose and predicted (the ``.plan.json`` beside the recipe the planned runs trained:
``configs/recipes/<name>_<minutes>min.yaml``, or on another machine the one planned there) against
the epochs the runs really trained. Nothing here is typed by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from experiments.side_by_side import (
    PLANNED,
    _f,
    _machine_lines,
    _stats,
    compare,
    machine_label,
    run_label,
    spread_cell,
    summarise,
    verdict,
)
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite

ROOT = Path(__file__).resolve().parents[1]


def planned_recipe(out: Path, label: str) -> tuple[Path, str | None]:
    """The recipe the planned arm's latest run on machine ``label`` trained, and the sha256 of its
    bytes then; a series from before runs recorded their recipe: ``configs/recipes/<series>.yaml``."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{PLANNED}_seed*.json"))]
    runs = [r for r in runs if machine_label(r["hardware"]) == label and r["settings"].get("config")]
    if not runs:
        return ROOT / "configs" / "recipes" / f"{out.name}.yaml", None
    latest = max(runs, key=lambda r: r.get("finished", ""))["settings"]
    return ROOT / latest["config"], latest.get("config_sha256")


def _plan_lines(recipe: Path, ran_sha256: str | None, entry: dict[str, Any]) -> list[str]:
    """What the planner chose and predicted, and what the planned runs trained."""
    plan_json = recipe.with_name(f"{recipe.stem}.plan.json")
    if not plan_json.is_file():
        return [f"(no {plan_json.relative_to(ROOT)}: the planned recipe's record is missing)"]
    if ran_sha256 and recipe.is_file() and hashlib.sha256(recipe.read_bytes()).hexdigest() != ran_sha256:
        return [f"The planned runs trained an earlier version of `{recipe.relative_to(ROOT)}` (sha256 {ran_sha256[:8]}); "
                "the recipe planned since has no runs on this machine yet, and its record "
                f"(`{plan_json.relative_to(ROOT)}`) is not theirs."]  # fmt: skip
    record = json.loads(plan_json.read_text())
    chosen, machine = record["plan"]["chosen"], record["probe"]["machine"]
    planned = entry["arms"].get(PLANNED)
    trained = ", ".join(map(str, planned["epochs"])) if planned else "—"
    return [
        f"Planned by `{record['command']}` on {machine['name']} ({machine['cores']} cores, {machine['precision']}): "
        f"{chosen['backbone']}, {chosen['mode']} {chosen['size'][0]}x{chosen['size'][1]}, batch {chosen['batch']}, "
        f"validation every {chosen['val_every']} epoch(s); predicted {chosen['epochs']} epochs, trained {trained}. "
        f"Every decision and its reason: `{plan_json.relative_to(ROOT).with_name(plan_json.name.replace('.plan.json', '.plan.md'))}`.",
    ]


def flip_lines(out: Path) -> list[str]:
    """Test-time flips on finished runs' own last checkpoints, rescored without training
    (``experiments/bench_inference.py --settings plain hflip hflip+vflip``, one JSON per run in
    ``<series>/tta/``), per machine: each run's scores and each setting's lead over the plain pass."""
    machines: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for path in sorted((out / "tta").glob("*.json")):
        run = json.loads((out / path.name).read_text())
        scores = {row["setting"]: row for row in json.loads(path.read_text())}
        machines.setdefault(machine_label(run["hardware"]), []).append((run, scores))
    lines = []
    for label, found in machines.items():
        settings = list(dict.fromkeys(name for _, scores in found for name in scores))
        lines += ["", f"#### Test-time flips on these runs' last checkpoints, {label}", "",
                  f"Each run's final checkpoint rescored on the same validation set by `experiments/bench_inference.py` "
                  f"(`{out.relative_to(ROOT)}/tta/`), no training; `plain` is the one pass fit scores with; `hflip` takes 2 passes "
                  "per image and `hflip+vflip` 4.", "",
                  "| run | fit's score | " + " | ".join(settings) + " |", "|---|---|" + "---|" * len(settings)]  # fmt: skip
        groups: dict[str, list[dict[str, Any]]] = {}  # seeds pool within one arm and recipe version only
        for run, scores in found:
            cells = " | ".join(_f(scores[s]["val/mIoU"]) if s in scores else "—" for s in settings)
            sha = run["settings"].get("config_sha256")
            version = f", recipe {sha[:8]}" if sha else ""
            groups.setdefault(run_label(run) + version, []).append(scores)
            lines.append(f"| {run_label(run)} seed {run['seed']}{version} | {_f(run.get('val_mIoU_fit', run['val_mIoU']))} | {cells} |")
        for group, members in groups.items():
            prefix = f"{group}, " if len(groups) > 1 else ""
            scored = [s for s in settings if any(s in scores for scores in members)]
            arms = {s: {"val_mIoU": _stats([scores[s]["val/mIoU"] for scores in members if s in scores])} for s in scored}
            lines += ["", *[f"{prefix}{s}: {spread_cell(arms[s]['val_mIoU'])}" + "  " for s in scored]]
            lines += [line for s in scored if s != "plain" for line in ("", prefix + verdict(compare(s, "plain", arms)))]
    return lines


def report(series: list[Path]) -> list[str]:
    lines = [
        "# segopt plan: the planned recipe against amp.yaml and the peer",
        "",
        "Written by `python -m experiments.plan_report --overwrite` from the runs of `bash experiments/plan_evidence.sh NAME MINUTES "
        "DATA_CONFIG...` (which calls `experiments/side_by_side.py`). Per data set and budget: the recipe `segopt plan` wrote "
        "(`planned`), `configs/amp.yaml` with the same `TimeBudget` added (`amp`), and the hand-written peer (smp UNet on "
        "ResNet34, no weights, CE + Dice, Adam 1e-4, its size from the median image fitted to 256 a side); seeds 1 and 2; "
        "the final checkpoint's val mIoU at the labels' resolution, scored as the recipe's `validate` and `predict` infer "
        "(with a planned recipe's test-time flips; its in-fit score, one plain pass, is given beside the table), "
        "mean ± sample std [range]. A lead counts as resolved only when it "
        "exceeds both arms' seed range. Each run's JSON holds its settings, hardware and the command that repeats it.",
    ]
    for out in series:
        summary = summarise(out)
        match = re.fullmatch(r"(.+)_(\d+(?:\.\d+)?)min", out.name)
        name, minutes = (match.group(1), match.group(2)) if match else (out.name, "?")
        lines += ["", f"## {name}, {minutes} minutes ({', '.join(f'`{d}`' for d in summary['data'])})"]
        for label, entry in summary["machines"].items():
            recipe, ran = planned_recipe(out, label)
            lines += ["", f"### {label}", "", *_plan_lines(recipe, ran, entry), "", *_machine_lines(entry)]
        lines += flip_lines(out)
    return lines


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "results" / "plan", help="folder of the series (one sub-folder each)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "plan.md")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    refuse_to_overwrite([args.out], args.overwrite)
    series = sorted(d for d in args.runs.iterdir() if d.is_dir() and any(d.glob("*_seed*.json")))
    if not series:
        raise SystemExit(f"error: {args.runs} holds no series with finished runs; run experiments/plan_evidence.sh first")
    args.out.write_text("\n".join(report(series)) + "\n")
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
