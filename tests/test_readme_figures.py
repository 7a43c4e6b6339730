"""README's tables of planned recipes hold the figures the runs wrote, not numbers typed by hand.

Each row of a table under "Your data in N minutes" names a series of ``results/plan/`` (the
summary ``experiments/side_by_side.py`` writes beside the per-run JSONs) and, in its second cell,
the machine; each figure must be that arm's mean ± std [range] on that machine, formatted by the
function that writes ``results/plan.md``'s tables. A planned cell that ends in ``(recipe <sha>)``
holds the runs of that version of the recipe, e.g. one planned before a rule changed.
"""

from __future__ import annotations

import json
import re

from experiments.side_by_side import machine_label, spread_cell
from tests.conftest import ROOT

#: README's row labels → the series under results/plan/.
SERIES = {
    "membranes split by slice, 10 min": "membrane_10min",
    "magnetic tiles split by tile, 10 min": "magnetic_tiles_10min",
    "magnetic tiles split by tile, 30 min": "magnetic_tiles_30min",
    "CamVid split by sequence, 60 min": "camvid_60min",
}
#: README's column headers → the arm labels of the runs.
ARMS = {"planned": "planned", "amp.yaml + budget": "amp", "peer": "peer", "hand-tuned": "hand-tuned"}
#: README's machine cells → the machine labels of the runs (seeds pool only within one machine).
MACHINES = {
    "AMD EPYC": "AMD EPYC, 2 cores, 2 torch threads, 1 loader worker",
    "Intel Xeon": "Intel(R) Xeon(R) Processor, 2 cores, 2 torch threads, 1 loader worker",
}
#: A planned cell may name the version of the recipe its runs trained: ``... (recipe <sha256[:8]>)``.
RECIPE_NOTE = re.compile(r"(?P<cell>.+) \(recipe (?P<sha>[0-9a-f]{8})\)")


def _tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """The tables whose first header cell is ``data, budget``: their headers and rows of cells."""
    found, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| data, budget |"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip().replace("**", "") for c in row.strip("|").split("|")])
            found.append((header, rows))
    return found


def _planned_version(series: str, machine: str, sha: str, arms: dict) -> str:
    """The arm of the planned recipe's version ``sha`` on ``machine``: ``planned, recipe <sha>``, or
    ``planned`` itself when its runs trained that version."""
    if f"planned, recipe {sha}" in arms:
        return f"planned, recipe {sha}"
    runs = [json.loads(p.read_text()) for p in (ROOT / "results" / "plan" / series).glob("planned_seed*.json")]
    trained = {str(r["seed"]): r["val_mIoU"] for r in runs
               if machine_label(r["hardware"]) == machine and r["settings"].get("config_sha256", "").startswith(sha)}  # fmt: skip
    assert trained == arms["planned"]["per_seed"], f"{series}: no arm on {machine} trained recipe {sha}"
    return "planned"


def _cell(series: str, machine: str, column: str, cell: str) -> tuple[str, str]:
    """The figure the runs wrote for this cell, and the cell's figure without its recipe note."""
    arms = json.loads((ROOT / "results" / "plan" / f"{series}.json").read_text())["machines"][machine]["arms"]
    arm = ARMS[column]
    if column == "planned" and (note := RECIPE_NOTE.fullmatch(cell)):
        arm, cell = _planned_version(series, machine, note["sha"], arms), note["cell"]
    return spread_cell(arms[arm]["val_mIoU"]), cell


def test_readme_plan_tables_hold_the_runs_figures() -> None:
    tables = _tables((ROOT / "README.md").read_text())
    assert tables, "README has no table headed '| data, budget |'"
    seen = set()
    for header, rows in tables:
        assert header[1] == "machine", header
        for row in rows:
            assert row[0] in SERIES, f"README row {row[0]!r} names no series; add it to SERIES"
            assert row[1] in MACHINES, f"README row {row[0]!r}: machine {row[1]!r} is not in MACHINES"
            for column, cell in zip(header[2:], row[2:], strict=True):
                wrote, shown = _cell(SERIES[row[0]], MACHINES[row[1]], column, cell)
                assert shown == wrote, (row[0], row[1], column)
            seen.add(row[0])
    assert seen == set(SERIES)


def test_the_figure_format_matches_results_plan_md() -> None:
    machine = MACHINES["AMD EPYC"]
    summary = json.loads((ROOT / "results" / "plan" / "membrane_10min.json").read_text())
    plan_md = (ROOT / "results" / "plan.md").read_text()
    cell = spread_cell(summary["machines"][machine]["arms"]["planned"]["val_mIoU"])
    assert re.search(rf"\| planned \| 1, 2 \| {re.escape(cell)} \|", plan_md)
