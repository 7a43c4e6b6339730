"""scripts/side_by_side.py: the peer arm's run and JSON, the segopt arm's TensorBoard reading, the summary."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from tests.test_scripts_results import _script


@pytest.fixture(scope="module")
def sbs() -> ModuleType:
    return _script("side_by_side")


def _camvid(root: Path, train: int = 4, val: int = 2) -> Path:
    """A tiny folder in CamVid's layout: 36x48 RGB PNGs and index masks 0..11 (11 void)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            cv2.imwrite(str(root / split / f"f{i}.png"), rng.integers(0, 256, (36, 48, 3), dtype=np.uint8))
            cv2.imwrite(str(root / f"{split}annot" / f"f{i}.png"), rng.integers(0, 12, (36, 48), dtype=np.uint8))
    return root


@pytest.mark.slow
def test_peer_arm_writes_its_json_and_the_summary_and_skips_it_on_rerun(sbs: ModuleType, tmp_path: Path) -> None:
    data = _camvid(tmp_path / "camvid")
    out = tmp_path / "results" / "side_by_side"
    argv = ["--arm", "peer", "--seeds", "0", "--data", str(data), "--out", str(out), "--max-epochs", "2",
            "--val-every", "1", "--size", "36", "48", "--batch-size", "2", "--threads", "1"]  # fmt: skip
    summary_md = sbs.main(argv)

    (path,) = out.glob("peer_seed0_*-1t.json")  # named after the machine: 1 torch thread
    run = json.loads(path.read_text())
    assert (run["arm"], run["seed"], run["epochs"]) == ("peer", 0, 2)
    assert [p["epoch"] for p in run["curve"]] == [1, 2]
    assert all("val_mIoU" in p for p in run["curve"])  # --val-every 1
    assert run["curve"][-1]["val_mIoU"] == round(run["val_mIoU"], 4)
    assert 0.0 <= run["val_mIoU"] <= 1.0
    assert list(run["val_iou"]) == sbs.CLASS_NAMES
    assert run["settings"]["size"] == [36, 48] and run["settings"]["batch_size"] == 2
    assert run["hardware"]["torch_threads"] == 1 and run["hardware"]["loader_workers"] == 1
    assert run["hardware"]["cpu"] and run["hardware"]["cores"] >= 1
    assert run["wall_s"] >= run["curve"][-1]["elapsed_s"] > 0

    assert summary_md == tmp_path / "results" / "side_by_side.md"
    summary = json.loads(summary_md.with_suffix(".json").read_text())
    (machine,) = summary["machines"].values()
    assert machine["arms"]["peer"]["per_seed"] == {"0": run["val_mIoU"]}
    assert "segopt_minus_peer" not in machine  # one arm only
    assert "| peer | 0 |" in summary_md.read_text()

    before = path.read_text()
    sbs.main(argv)  # finished: skipped, not retrained
    assert path.read_text() == before
    assert list(out.glob("*.json")) == [path]


def test_a_seed_runs_afresh_on_another_machine_or_recipe_keeping_the_earlier_run(sbs: ModuleType, tmp_path: Path) -> None:
    data = _camvid(tmp_path / "camvid")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trainer: {max_epochs: 1}\n")
    argv = ["--arm", "segopt", "--data", str(data), "--config", str(recipe)]

    def stem(arm: str, *extra: str) -> str:
        return sbs.run_stem(sbs.parse_args([*argv, *extra]), arm, 3)

    first = stem("segopt", "--threads", "2")
    sha = sbs.recipe_sha256(sbs.parse_args(argv))
    assert first.startswith("segopt_seed3_") and first.endswith(f"-{sbs.os.cpu_count()}c-2t_{sha[:8]}")
    assert stem("segopt", "--threads", "1") != first  # another machine setting
    assert stem("peer", "--threads", "2") == first.replace("segopt", "peer", 1).rsplit("_", 1)[0]  # the peer has no recipe
    recipe.write_text("trainer: {max_epochs: 2}\n")
    assert stem("segopt", "--threads", "2") != first  # an edited recipe


def test_validation_scores_probabilities_resized_to_the_label(sbs: ModuleType) -> None:
    import torch

    class Half(torch.nn.Module):
        """Predicts class 0 on the left half and class 1 on the right half of its input."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 11, *x.shape[-2:])
            w = x.shape[-1]
            logits[:, 0, :, : w // 2] = 5
            logits[:, 1, :, w // 2 :] = 5
            return logits

    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[..., 4:] = 1
    mask[0, 0, 0] = 11  # void: ignored
    loader = [(torch.zeros(1, 3, 4, 4), mask)]  # network at 4x4, label at 8x8
    miou, iou = sbs.validate(Half(), loader, "cpu", lambda: torch.autocast("cpu", enabled=False))
    assert iou[:2] == [1.0, 1.0]
    assert all(np.isnan(v) for v in iou[2:])  # absent classes stay out of the mean
    assert miou == 1.0


def test_segopt_arm_reads_the_final_epoch_not_the_best(sbs: ModuleType, tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for epoch, (miou, pole) in enumerate([(0.30, 0.1), (0.50, 0.2), (0.45, 0.3)]):
        step = 10 * (epoch + 1)
        writer.add_scalar("epoch", epoch, step)
        writer.add_scalar("val/mIoU", miou, step)
        writer.add_scalar("val/iou/Pole", pole, step)
    writer.close()
    result = sbs.read_tensorboard(tmp_path, t0=0.0)
    assert result["epochs"] == 3
    assert result["val_mIoU"] == pytest.approx(0.45)
    assert result["val_iou"]["Pole"] == pytest.approx(0.3)
    assert result["val_iou"]["Sky"] is None
    assert [p["epoch"] for p in result["curve"]] == [1, 2, 3]
    assert [p["val_mIoU"] for p in result["curve"]] == [0.3, 0.5, 0.45]


def test_segopt_arm_without_val_mIoU_is_a_clear_error(sbs: ModuleType, tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("train/loss", 1.0, 1)
    writer.close()
    with pytest.raises(RuntimeError, match=r"no val/mIoU scalar .*train/loss"):
        sbs.read_tensorboard(tmp_path, t0=0.0)


def _fake_run(out: Path, arm: str, seed: int, miou: float, cpu: str = "X", recipe: str = "r1", finished: str = "1") -> None:
    hw = {"cpu": cpu, "cores": 2, "torch_threads": 2, "loader_workers": 1, "gpu": None}
    iou = dict.fromkeys(["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"], miou)
    curve = [{"epoch": 5, "elapsed_s": 1800.0, "val_mIoU": miou / 2}, {"epoch": 10, "elapsed_s": 3600.0, "val_mIoU": miou}]
    settings = {"config_sha256": recipe} if arm == "segopt" else {}
    run = {"arm": arm, "seed": seed, "epochs": 10, "wall_s": 3600.0, "val_mIoU": miou, "val_iou": iou, "hardware": hw,
           "curve": curve, "settings": settings, "finished": finished}
    (out / f"{arm}_seed{seed}_{cpu}.json").write_text(json.dumps(run))


@pytest.mark.parametrize(("segopt", "exceeds"), [((0.60, 0.62), True), ((0.50, 0.56), False)])
def test_summary_says_whether_the_lead_exceeds_the_seed_spread(sbs: ModuleType, tmp_path: Path, segopt: tuple, exceeds: bool) -> None:
    out = tmp_path / "side_by_side"
    out.mkdir()
    _fake_run(out, "peer", 0, 0.45)
    _fake_run(out, "peer", 1, 0.49)
    for seed, miou in enumerate(segopt):
        _fake_run(out, "segopt", seed, miou)
    sbs.write_summary(out)
    summary = json.loads((tmp_path / "side_by_side.json").read_text())["machines"]["X, 2 cores, 2 torch threads, 1 loader worker"]
    assert summary["segopt_minus_peer"] == pytest.approx(sum(segopt) / 2 - 0.47)
    assert summary["spread"] == pytest.approx(max(0.04, segopt[1] - segopt[0]))
    assert summary["exceeds_spread"] is exceeds
    assert ("does not exceed" in (tmp_path / "side_by_side.md").read_text()) is not exceeds
    assert (tmp_path / "side_by_side.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the learning curves


def test_summary_pools_seeds_per_machine_and_leaves_out_an_earlier_recipe(sbs: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "side_by_side"
    out.mkdir()
    _fake_run(out, "peer", 0, 0.40, cpu="A")
    _fake_run(out, "segopt", 0, 0.50, cpu="A")
    _fake_run(out, "peer", 1, 0.55, cpu="B")
    _fake_run(out, "segopt", 0, 0.58, cpu="B", recipe="old", finished="1")
    _fake_run(out, "segopt", 1, 0.66, cpu="B", recipe="new", finished="2")
    sbs.write_summary(out)
    machines = json.loads((tmp_path / "side_by_side.json").read_text())["machines"]
    a, b = machines["A, 2 cores, 2 torch threads, 1 loader worker"], machines["B, 2 cores, 2 torch threads, 1 loader worker"]
    assert a["segopt_minus_peer"] == pytest.approx(0.10)
    assert b["arms"]["segopt"]["per_seed"] == {"1": 0.66}
    assert b["superseded_segopt_seeds"] == [0]
    assert b["segopt_minus_peer"] == pytest.approx(0.11)
    md = (tmp_path / "side_by_side.md").read_text()
    assert "Left out: segopt seed(s) 0, run with an earlier version of the recipe." in md
    assert "segopt − peer: +0.110 mIoU; not resolved yet: peer and segopt have one seed, and the seed range needs two per arm." in md


def test_bad_data_folder_is_a_clear_error(sbs: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        sbs.parse_args(["--arm", "peer", "--data", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert "--data" in err and "nope is not a folder" in err


def test_data_folder_without_images_names_the_folder(sbs: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no PNG images in .*train"):
        sbs.CamVidFolder(tmp_path, "train", None)


def test_data_follows_segopt_data_root_and_both_arms_name_it_as_given(
    sbs: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "camvid").mkdir()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    monkeypatch.setenv("SEGOPT_DATA_ROOT", str(tmp_path))
    args = sbs.parse_args(["--arm", "segopt", "--config", str(recipe), "--seeds", "3", "--segopt-arg=--trainer.max_epochs=2"])
    assert args.data == tmp_path / "camvid"  # the peer reads here ...
    assert sbs.settings(args, "peer")["data"] == "data/camvid"  # ... and results name it as given
    cmd = sbs.segopt_command(args, 3, tmp_path / "runs" / "segopt_seed3")
    assert cmd[1:6] == ["-m", "segopt.cli", "fit", "--config", str(recipe)]
    assert "--seed_everything=3" in cmd and "--data.source.init_args.root=data/camvid" in cmd
    assert f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}" in cmd
    assert "--trainer.logger.init_args.name=segopt_seed3" in cmd and "--trainer.logger.init_args.version=0" in cmd
    assert cmd[-1] == "--trainer.max_epochs=2"
