"""The result scripts: an ablation grid (runs, report, resume, bad grid files) and the precision benchmark."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest

from segopt.data.synthetic import CLASS_NAMES
from tests.conftest import CONFIGS, ROOT, tiny_cli_args

# A few seconds per fit: 16 synthetic 32x32 images, 2 epochs, a 2-level UNet.
TINY = [
    *tiny_cli_args(num_train=16, num_val=8, base_channels=4),
    "--trainer.callbacks=[]",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def _script(name: str) -> ModuleType:
    return importlib.import_module(f"experiments.{name}")


@pytest.fixture(scope="module")
def ablate() -> ModuleType:
    return _script("ablate")


def _write_grid(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def _tiny_grid(tmp: Path) -> Path:
    base = [str(CONFIGS / "amp.yaml"), str(CONFIGS / "fp32.yaml"), *TINY]
    return _write_grid(
        tmp / "tiny.yaml",
        json.dumps(
            {
                "base": base,
                "seeds": [0, 1],
                "axes": {"loss": {"CE": [str(CONFIGS / "loss/ce.yaml")], "Dice+CE": [str(CONFIGS / "loss/dice_ce.yaml")]}},
                "baseline": {"loss": "Dice+CE"},
            }
        ),
    )


@pytest.mark.slow
def test_ablate_runs_every_cell_and_seed_then_resumes_only_missing_runs(
    ablate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = _tiny_grid(tmp_path)
    out = tmp_path / "report"
    argv = [str(grid), "--out", str(out), "--results-dir", str(tmp_path / "per_run"), "--runs-dir", str(tmp_path / "runs")]
    ablate.main(argv)

    per_run = sorted(p.name for p in (tmp_path / "per_run" / "tiny").glob("*.json"))
    assert per_run == ["loss-CE__seed0.json", "loss-CE__seed1.json", "loss-Dice+CE__seed0.json", "loss-Dice+CE__seed1.json"]
    assert (tmp_path / "runs" / "tiny" / "loss-CE" / "seed1" / "version_0" / "config.yaml").is_file()
    runs = {p: json.loads((tmp_path / "per_run" / "tiny" / p).read_text()) for p in per_run}
    assert runs["loss-CE__seed1.json"]["args"][-1] == "--seed_everything=1"
    assert runs["loss-CE__seed0.json"]["epochs"] == 2
    assert list(runs["loss-CE__seed0.json"]["val_iou"]) == list(CLASS_NAMES)

    report = json.loads(out.with_suffix(".json").read_text())
    ce = next(c for c in report["cells"] if c["cell"] == {"loss": "CE"})
    finals = [runs[f"loss-CE__seed{s}.json"]["final_val_mIoU"] for s in (0, 1)]
    assert ce["runs"] == 2 and ce["final_val_mIoU"] == finals
    assert ce["final_mean"] == pytest.approx(statistics.fmean(finals))
    assert ce["final_std"] == pytest.approx(statistics.stdev(finals))
    dice = next(c for c in report["cells"] if c["cell"] == {"loss": "Dice+CE"})
    diffs = [f - d for f, d in zip(finals, dice["final_val_mIoU"])]
    assert dice["delta"] == 0.0 and ce["delta"] == pytest.approx(statistics.fmean(diffs))
    assert ce["delta_std"] == pytest.approx(statistics.stdev(diffs)) and ce["delta_positive"] == sum(d > 0 for d in diffs)
    md = out.with_suffix(".md").read_text()
    assert f"| CE | 2/2 | {ce['final_mean']:.4f} ± {ce['final_std']:.4f} |" in md
    assert "| Dice+CE | 2/2 |" in md and "baseline" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resume: one result lost, one made with other arguments; only those two run again.
    (tmp_path / "per_run" / "tiny" / "loss-CE__seed1.json").unlink()
    stale = tmp_path / "per_run" / "tiny" / "loss-Dice+CE__seed0.json"
    stale.write_text(json.dumps({**runs["loss-Dice+CE__seed0.json"], "args": ["--trainer.max_epochs=99"]}))
    calls: list[str] = []

    def fake_fit(args: list[str]) -> dict:
        calls.append(next(a for a in args if a.startswith("--seed_everything")) + " " + next(a for a in args if "loss/" in a))
        return {"final_val_mIoU": 0.5, "best_val_mIoU": 0.6, "val_iou": runs["loss-CE__seed0.json"]["val_iou"], "epochs": 2, "precision": "32-true"}

    monkeypatch.setattr(ablate, "fit_once", fake_fit)
    ablate.main(argv)
    assert calls == [f"--seed_everything=0 {CONFIGS / 'loss/dice_ce.yaml'}", f"--seed_everything=1 {CONFIGS / 'loss/ce.yaml'}"]
    report = json.loads(out.with_suffix(".json").read_text())
    ce = next(c for c in report["cells"] if c["cell"] == {"loss": "CE"})
    assert ce["final_val_mIoU"] == [finals[0], 0.5]

    # A third time everything is finished: nothing trains.
    calls.clear()
    ablate.main(argv)
    assert calls == []

    # Grown by an axis whose first value adds no arguments: the finished runs are kept (renamed),
    # only the new value's runs train.
    grown = json.loads(grid.read_text())
    grown["axes"]["depth"] = {"two": [], "three": ["--model.backbone.init_args.depth=3"]}
    grown["baseline"] = {"loss": "Dice+CE", "depth": "two"}
    grid.write_text(json.dumps(grown))
    calls.clear()
    ablate.main(argv)
    assert calls == [f"--seed_everything={s} {CONFIGS / f'loss/{loss}.yaml'}" for s in (0, 1) for loss in ("ce", "dice_ce")]
    names = sorted(p.name for p in (tmp_path / "per_run" / "tiny").glob("*.json"))
    assert names == sorted(f"loss-{loss}__depth-{d}__seed{s}.json" for loss in ("CE", "Dice+CE") for d in ("two", "three") for s in (0, 1))
    kept = json.loads((tmp_path / "per_run" / "tiny" / "loss-CE__depth-two__seed0.json").read_text())
    assert kept["cell"] == {"loss": "CE", "depth": "two"} and kept["final_val_mIoU"] == finals[0]


BAD_GRIDS = {
    "missing config": ("base: [configs/nope.yaml]\nseeds: [0]\naxes: {loss: {CE: []}}\n", "names the config 'configs/nope.yaml', which is not a file"),
    "on/off unquoted": ("base: []\nseeds: [0]\naxes: {aug: {on: [], off: []}}\n", "has the name True (YAML reads unquoted on/off/yes/no as booleans); quote it"),
    "unknown key": ("base: []\nseeds: [0]\naxes: {loss: {CE: []}}\nseed: [1]\n", "unknown key(s) seed; the keys are name, base, seeds, axes, exclude, baseline"),
    "missing seeds": ("base: []\naxes: {loss: {CE: []}}\n", "the key 'seeds' is missing"),
    "seeds not ints": ("base: []\nseeds: [a]\naxes: {loss: {CE: []}}\n", "seeds is ['a']; give a list of integers"),
    "flag without value": ("base: [--trainer.max_epochs]\nseeds: [0]\naxes: {loss: {CE: []}}\n", "the flag '--trainer.max_epochs' without a value"),
    "exclude typo": ("base: []\nseeds: [0]\naxes: {loss: {CE: [], Focal: []}}\nexclude: [{loss: Dice}]\n", "exclude[0] gives loss='Dice'; the values of loss are CE, Focal"),
    "everything excluded": ("base: []\nseeds: [0]\naxes: {loss: {CE: []}}\nexclude: [{loss: CE}]\n", "exclude removes every cell"),
    "baseline excluded": ("base: []\nseeds: [0]\naxes: {loss: {CE: [], Focal: []}}\nexclude: [{loss: CE}]\nbaseline: {loss: CE}\n", "baseline {'loss': 'CE'} is not a cell of the grid"),
}


@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_bad_grid_file_is_refused_naming_the_key_and_fix(ablate: ModuleType, tmp_path: Path, case: str) -> None:
    body, message = BAD_GRIDS[case]
    grid = _write_grid(tmp_path / "bad.yaml", body)
    with pytest.raises(ablate.GridError) as err:
        ablate.load_grid(grid)
    assert str(err.value).startswith(f"{grid}: ")
    assert message in str(err.value)


def test_grid_cells_are_the_product_less_exclusions_with_arguments_in_order(ablate: ModuleType, tmp_path: Path) -> None:
    ce, dice = str(CONFIGS / "loss/ce.yaml"), str(CONFIGS / "loss/dice_ce.yaml")
    grid = ablate.load_grid(
        _write_grid(
            tmp_path / "g.yaml",
            f'base: [{CONFIGS / "fp32.yaml"}, --trainer.max_epochs=3]\nseeds: [4, 5, 6]\n'
            f'axes:\n  loss: {{CE: [{ce}], Dice+CE: [{dice}]}}\n  aug: {{"on": [], "off": [--data.augment.enabled=false]}}\n'
            'exclude: [{loss: CE, aug: "off"}]\n',
        )
    )
    assert [c.label for c in ablate.cells_of(grid)] == ["loss=CE, aug=on", "loss=Dice+CE, aug=on", "loss=Dice+CE, aug=off"]
    off = ablate.cells_of(grid)[2]
    assert ablate.run_args(grid, off, 5) == [
        "--config", str(CONFIGS / "fp32.yaml"), "--trainer.max_epochs=3",
        "--config", dice, "--data.augment.enabled=false", "--seed_everything=5",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("grid", sorted(p.name for p in (CONFIGS / "ablation").glob("*.yaml")))
def test_shipped_grids_build_every_cell(ablate: ModuleType, grid: str, shared_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)  # grids name their configs from the project root, as README runs them
    loaded = ablate.load_grid(CONFIGS / "ablation" / grid)
    cells = ablate.cells_of(loaded)
    assert len(cells) >= 2
    for cell in cells:  # raises GridError naming the cell on a bad flag or config
        ablate.check_cell(ablate.run_args(loaded, cell, loaded.seeds[0]) + ablate.output_args(tmp_path / "runs"), cell.label, loaded.path)


@pytest.mark.slow  # trains
def test_bench_precision_writes_one_row_per_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _script("bench_precision")
    monkeypatch.chdir(tmp_path)  # the runs' logs go to ./runs/bench_precision
    out = tmp_path / "precision"
    argv = ["--config", str(CONFIGS / "amp.yaml"), "--precisions", "32-true", "bf16-mixed", "--epochs", "2", "--steps", "2",
            "--threads", "1", "--out", str(out), "--", *TINY]  # fmt: skip
    bench.main(argv)

    payload = json.loads(out.with_suffix(".json").read_text())
    assert [r["precision"] for r in payload["rows"]] == ["32-true", "bf16-mixed"]
    assert [r["precision_ran"] for r in payload["rows"]] == ["32-true", "bf16-mixed"]
    for row in payload["rows"]:
        (run,) = row["runs"]
        assert run["epoch_images"] == [16, 16]  # 2 steps of batch 8 in each epoch
        assert len(run["epoch_seconds"]) == 2 and row["epoch_s"] == pytest.approx(run["epoch_seconds"][1], abs=0.01)
        assert row["peak_memory_mib"] > 0 and 0 <= row["val_mIoU"] <= 1
    assert payload["rows"][0]["speedup"] == 1.0 and payload["rows"][0]["memory_change_pct"] == 0.0
    md = out.with_suffix(".md").read_text()
    assert sum(line.startswith(("| 32-true |", "| bf16-mixed |")) for line in md.splitlines()) == 2
    if payload["hardware"]["device"] == "cpu":
        assert "| added by training (MiB) | added vs 32-true (%) |" in md
        assert "16-mixed is not run on a CPU" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_precision_refuses_fp16_without_a_gpu() -> None:
    bench = _script("bench_precision")
    with pytest.raises(SystemExit, match="16-mixed but there is no CUDA GPU"):
        bench.check_precisions(["32-true", "16-mixed"], "cpu")
    with pytest.raises(SystemExit, match="--precisions has 'fp16'; choose from 32-true, 16-mixed, bf16-mixed"):
        bench.check_precisions(["fp16"], "cuda")


# -- outputs never replace files silently -----------------------------------------------------

# Per script: its arguments (OUT is the output stem or folder) and the output files that exist already.
WRITERS = {
    "bench_backbones": (["--out", "OUT"], ["OUT.md"]),
    "bench_compile": (["--out", "OUT"], ["OUT.json"]),
    "bench_smp": (["--out", "OUT"], ["OUT.json", "OUT.md"]),
    "bench_data": (["--out", "OUT"], ["OUT.md"]),
    "bench_precision": (["--precisions", "32-true", "--out", "OUT"], ["OUT.png"]),
    "measure_main_job": (["--out", "OUT"], ["OUT.json"]),
    "gpu_report": (["--dry-run", "--out", "OUT"], ["OUT/gpu_dryrun_report.md"]),
    "screenshot_dashboards": (["runs/none", "--out", "OUT"], ["OUT/scalars.png"]),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_script_refuses_to_replace_an_existing_output_before_any_work(name: str, tmp_path: Path) -> None:
    argv, existing = WRITERS[name]
    out = tmp_path / "out"
    files = [Path(f.replace("OUT", str(out))) for f in existing]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"earlier results \x00\xff\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as err:
        _script(name).main([a.replace("OUT", str(out)) for a in argv])
    named = ", ".join(map(str, files))
    it = "it" if len(files) == 1 else "them"
    assert str(err.value) == (
        f"error: {named} already exist{'s' if len(files) == 1 else ''}; nothing was written. "
        f"Pass --overwrite to replace {it}, or give another --out"
    )
    assert sorted(tmp_path.rglob("*")) == before  # nothing made, not even a folder
    assert all(p.read_bytes() == b"earlier results \x00\xff\n" for p in files)


def test_bench_result_files_are_replaced_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "backbones"
    out.with_suffix(".md").write_text("earlier results\n")
    out.with_suffix(".json").write_text("{}\n")
    _script("bench_backbones").main(
        ["--configs", str(CONFIGS / "model" / "unet.yaml"), "--size", "32", "--batch", "1", "--precision", "32-true",
         "--threads", "1", "--warmup", "0", "--repeats", "1", "--out", str(out), "--overwrite"]
    )  # fmt: skip
    assert "| unet | UNet |" in out.with_suffix(".md").read_text()
    assert [row["backbone"] for row in json.loads(out.with_suffix(".json").read_text())["rows"]] == ["unet"]


def test_gpu_report_steps_refill_their_scratch_folder(tmp_path: Path) -> None:
    """The step scripts write into the report's own scratch folder, so every step passes --overwrite (before any --)."""
    plan = _script("gpu_report").steps(tmp_path, dry=True)
    commands = [cmd for step, cmds in plan.items() if step != "tests" for cmd in cmds]
    assert [cmd[1:4] for cmd in commands] == [
        ["-m", f"experiments.{name}", "--overwrite"] for name in ["bench_precision"] * 4 + ["bench_smp", "bench_data"]
    ]  # precision, then three layouts (both off is the precision step's run), smp, loader
