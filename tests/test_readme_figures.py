"""README's tables of planned recipes hold the figures the runs wrote, not numbers typed by hand.

Each row of a table under "Your data in N minutes" names a series of ``results/plan/`` (the
summary ``experiments/side_by_side.py`` writes beside the per-run JSONs); each cell must be that
arm's mean ± std [range], formatted by the function that writes ``results/plan.md``'s tables.
"""

from __future__ import annotations

import json
import re

from experiments.side_by_side import spread_cell
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
MACHINE = "AMD EPYC, 2 cores, 2 torch threads, 1 loader worker"


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


def _cell(summary: dict, arm: str) -> str:
    return spread_cell(summary["machines"][MACHINE]["arms"][arm]["val_mIoU"])


def test_readme_plan_tables_hold_the_runs_figures() -> None:
    tables = _tables((ROOT / "README.md").read_text())
    assert tables, "README has no table headed '| data, budget |'"
    seen = []
    for header, rows in tables:
        for row in rows:
            assert row[0] in SERIES, f"README row {row[0]!r} names no series; add it to SERIES"
            summary = json.loads((ROOT / "results" / "plan" / f"{SERIES[row[0]]}.json").read_text())
            for column, cell in zip(header[1:], row[1:], strict=True):
                assert cell == _cell(summary, ARMS[column]), (row[0], column)
            seen.append(row[0])
    assert sorted(seen) == sorted(SERIES)


def test_the_figure_format_matches_results_plan_md() -> None:
    summary = json.loads((ROOT / "results" / "plan" / "membrane_10min.json").read_text())
    plan_md = (ROOT / "results" / "plan.md").read_text()
    assert re.search(rf"\| planned \| 1, 2 \| {re.escape(_cell(summary, 'planned'))} \|", plan_md)
