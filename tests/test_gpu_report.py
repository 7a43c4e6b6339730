"""experiments/gpu_report.py's dry run: every step runs on the CPU and its files are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA

STEPS = ["precision", "layout", "resnet_vs_smp", "loader", "tests"]


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_report(tmp_path: Path) -> None:
    if not (SHARED_DATA / "camvid").is_dir():
        pytest.skip("CamVid is not present")
    pytest.importorskip("segmentation_models_pytorch")
    (tmp_path / "gpu_dryrun_report.md").write_text("an earlier report\n")  # replaced: --overwrite
    # The budget is generous: a test makes no timing claim (the dry run takes under 2 minutes on 2 free cores).
    done = subprocess.run(
        [sys.executable, "-m", "experiments.gpu_report", "--dry-run", "--out", str(tmp_path), "--budget", "1500",
         "--overwrite"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_dryrun_report.json").read_text())
    assert report["dry_run"] is True
    assert [(s["step"], s["status"]) for s in report["steps"]] == [(s, "ok") for s in STEPS]
    for step in STEPS[:-1]:
        assert (tmp_path / f"gpu_dryrun_{step}.md").is_file(), step
    precision = json.loads((tmp_path / "gpu_dryrun_precision.json").read_text())
    assert [r["precision"] for r in precision["rows"]] == ["32-true", "bf16-mixed"]
    layout = (tmp_path / "gpu_dryrun_layout.md").read_text().splitlines()
    assert [line.split(" | ")[:2] for line in layout if line.startswith(("| True", "| False"))] == [
        ["| False", "False"], ["| True", "False"], ["| False", "True"], ["| True", "True"]
    ]  # fmt: skip
    text = (tmp_path / "gpu_dryrun_report.md").read_text()
    assert text.startswith("# GPU report (dry run on the CPU)")
    assert "GPU tests (`pytest -m gpu`):" in text
