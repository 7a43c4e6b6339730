"""experiments/side_by_side.py: both arms on any data config, the budget added to a recipe, the summary's verdicts."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import yaml

from experiments.common import REFERENCE_STEP_METHOD
from tests.test_scripts_results import _script

ROOT = Path(__file__).resolve().parents[1]
COLOURS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


@pytest.fixture(scope="module")
def sbs() -> ModuleType:
    return _script("side_by_side")


def _paired_folder(root: Path, grey: bool, train: int = 4, val: int = 2) -> Path:
    """A tiny PairedFolder and its data config: 3 classes; grey images with index masks (3 = void,
    validation images of two sizes), or RGB images with colour masks (white = void)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            h, w = (40, 56) if split == "train" or i % 2 == 0 or not grey else (48, 64)
            image = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
            ids = rng.integers(0, 4, (h, w), dtype=np.uint8)
            mask = ids if grey else np.array([*COLOURS, [255, 255, 255]], dtype=np.uint8)[ids][..., ::-1]
            cv2.imwrite(str(root / "images" / split / f"f{i}.png"), image)
            cv2.imwrite(str(root / "labels" / split / f"f{i}.png"), mask)
    masks = (
        {"class_path": "segopt.data.IndexMask", "init_args": {"void": [3]}}
        if grey
        else {"class_path": "segopt.data.PaletteMask", "init_args": {"colours": COLOURS, "void_colours": [[255, 255, 255]]}}
    )
    source = {
        "class_path": "segopt.data.PairedFolder",
        "init_args": {"root": str(root), "class_names": ["bg", "a", "b"], "image_dirs": {"train": "images/train", "val": "images/val"},
                      "mask_dirs": {"train": "labels/train", "val": "labels/val"}, "masks": masks, "in_channels": 1 if grey else 3},
    }  # fmt: skip
    config = root / "data.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": source, "ignore_index": 255, "train_size": [32, 32], "resize_mode": "crop",
                                               "eval_size": None, "eval_batch_size": 1}}))  # fmt: skip
    return config


# ----------------------------------------------------------------------------- both arms, end to end
@pytest.mark.slow
@pytest.mark.parametrize("grey", [True, False], ids=["grey", "rgb"])
def test_both_arms_train_on_a_paired_folder_and_the_summary_compares_them(sbs: ModuleType, tmp_path: Path, grey: bool) -> None:
    data = _paired_folder(tmp_path / "data", grey)
    out = tmp_path / "results" / "sbs"
    common = ["--data-config", str(data), "--out", str(out), "--seeds", "0", "--threads", "1"]
    peer_argv = [*common, "--arm", "peer", "--max-epochs", "1", "--batch-size", "2"]
    sbs.main(peer_argv)
    (peer_path,) = out.glob("peer_seed0_*-1t_*.json")
    peer = json.loads(peer_path.read_text())
    assert (peer["arm"], peer["seed"], peer["epochs"]) == ("peer", 0, 1)
    assert list(peer["val_iou"]) == ["bg", "a", "b"] == peer["settings"]["class_names"]
    assert 0.0 <= peer["val_mIoU"] <= 1.0 and peer["curve"][-1]["val_mIoU"] == round(peer["val_mIoU"], 4)
    s = peer["settings"]
    assert s["model"] == f'smp.Unet("resnet34", encoder_weights=None, in_channels={1 if grey else 3}, classes=3)'
    assert s["size"] == [32, 64]  # the median 40x56 scaled by 1, rounded to multiples of 32
    assert s["size_rule"] == "median training image 40x56 (HxW) scaled to fit 256 a side, rounded to multiples of 32"
    assert s["val_batch_size"] == (1 if grey else 2)  # grey validation images differ in size
    assert s["data_config"] == str(data) and s["data_config_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert peer_path.stem.endswith(s["run_sha256"][:8])
    assert s["repeat"].startswith("python -m experiments.side_by_side --arm peer --label peer --seeds 0 --data-config")

    tiny = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--data.batch_size=2", "--data.cache=false",
            "--model.backbone.init_args.base_channels=4", "--model.backbone.init_args.depth=2", "--trainer.enable_progress_bar=false"]  # fmt: skip
    flip = "--model.tta.hflip=true"  # scored as validate and predict infer: with the flipped view
    summary_md = sbs.main([*common, "--arm", "segopt", "--label", "amp", "--config", "configs/amp.yaml",
                           *(f"--segopt-arg={a}" for a in [*tiny, flip])])  # fmt: skip
    (amp_path,) = out.glob("amp_seed0_*.json")
    amp = json.loads(amp_path.read_text())
    assert amp["arm"] == "segopt" and amp["epochs"] == 1 and list(amp["val_iou"]) == ["bg", "a", "b"]
    assert {k: v for k, v in amp["inference"].items() if k != "seconds"} == {"hflip": True, "vflip": False, "scales": [1.0]}
    assert amp["curve"][-1]["val_mIoU"] == round(amp["val_mIoU_fit"], 4) and list(amp["val_iou_fit"]) == ["bg", "a", "b"]
    assert amp["settings"]["data_config_stacked"] is True and amp["command"][3:6] == ["--config", "configs/amp.yaml", "--config"]
    if sys.platform == "linux":  # the share of the CPU other processes took while each arm ran
        assert all(0.0 <= json.loads(p.read_text())["other_cpu_share"] <= 1.0 for p in (peer_path, amp_path))
    assert all(json.loads(p.read_text())["reference_step_s"] > 0 for p in (peer_path, amp_path))
    assert all(json.loads(p.read_text())["reference_step_method"] == REFERENCE_STEP_METHOD for p in (peer_path, amp_path))

    summary = json.loads(summary_md.with_suffix(".json").read_text())
    (machine,) = summary["machines"].values()
    assert list(machine["arms"]) == ["peer", "amp"]
    (pair,) = machine["pairs"]
    assert (pair["a"], pair["b"], pair["few_seeds"], pair["resolved"]) == ("amp", "peer", ["peer", "amp"], False)
    assert "| class | peer | amp |" in summary_md.read_text()
    assert "amp is scored as its recipe's `validate` and `predict` infer: averaging hflip views" in summary_md.read_text()

    before = peer_path.read_text()
    sbs.main(peer_argv)  # finished: skipped, not retrained
    assert peer_path.read_text() == before


def test_a_recipe_that_infers_in_one_pass_is_not_rebuilt_to_be_rescored(
    sbs: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segopt.commands.from_config as from_config

    class Built(Exception):
        pass

    def build(cli_args: list[str]) -> None:
        raise Built(cli_args)

    monkeypatch.setattr(from_config, "build_from_config", build)
    data = _paired_folder(tmp_path / "data", grey=True)
    plain = sbs.parse_args(["--arm", "segopt", "--label", "amp", "--config", "configs/amp.yaml", "--data-config", str(data)])
    assert sbs.score_as_recipe_infers(plain, sbs.plan_recipe(plain, sbs.load_data_config(data)), tmp_path, {}) == {}
    flipped = sbs.parse_args([*["--arm", "segopt", "--label", "amp", "--config", "configs/amp.yaml"],
                              *["--data-config", str(data), "--segopt-arg=--model.tta.vflip=true"]])  # fmt: skip
    with pytest.raises(Built):  # a flip added on the command line is read too
        sbs.score_as_recipe_infers(flipped, sbs.plan_recipe(flipped, sbs.load_data_config(data)), tmp_path, {})


# ----------------------------------------------------------------------------- the segopt arm's command
def test_a_recipe_without_data_or_budget_gets_both_added(sbs: ModuleType, tmp_path: Path) -> None:
    data = _paired_folder(tmp_path / "data", grey=True)
    args = sbs.parse_args(["--arm", "segopt", "--label", "amp", "--config", "configs/amp.yaml", "--minutes", "7.5", "--data-config", str(data)])
    recipe = sbs.plan_recipe(args, sbs.load_data_config(data))
    assert (recipe.data_config, recipe.budget_minutes, recipe.own_minutes) == ((data,), 7.5, None)
    cmd = sbs.segopt_command(args, recipe, 1, tmp_path / "runs" / "amp_seed1")
    assert cmd[1:8] == ["-m", "segopt.commands.cli", "fit", "--config", "configs/amp.yaml", "--config", str(data)]
    assert cmd[-2:] == [
        "--trainer.max_epochs=100000",
        '--trainer.callbacks+={"class_path": "segopt.lightning.TimeBudget", "init_args": {"minutes": 7.5}}',
    ]
    bare = sbs.Recipe(recipe.path, recipe.sha256, recipe.identity, None, None, None)
    assert sbs.run_sha256(args, sbs.load_data_config(data), recipe) != sbs.run_sha256(args, sbs.load_data_config(data), bare)


def test_a_recipe_with_its_own_budget_and_data_runs_as_it_is(sbs: ModuleType, tmp_path: Path) -> None:
    recipe_path = Path("configs/recipes/camvid.yaml")
    args = sbs.parse_args(["--arm", "segopt", "--config", str(recipe_path), "--minutes", "10", "--threads", "2"])
    data = sbs.load_data_config(args.data_config)  # configs/data/camvid.yaml, the recipe's own source
    recipe = sbs.plan_recipe(args, data)
    assert (recipe.data_config, recipe.budget_minutes, recipe.own_minutes) == (None, None, 60.0)
    assert sbs.settings(args, data, recipe, 2)["minutes"] == 60.0  # the budget it ran with: its own
    cmd = sbs.segopt_command(args, recipe, 2, tmp_path / "segopt_seed2")
    assert cmd[4:7] == ["--config", str(recipe_path), "--seed_everything=2"]
    assert not [a for a in cmd if "TimeBudget" in a or "max_epochs" in a]


def test_a_run_is_named_by_what_its_configs_say_not_their_bytes(sbs: ModuleType, tmp_path: Path) -> None:
    """A comment edit or a class moved to another module keeps a recorded run; a changed value does not."""
    text = Path("configs/recipes/camvid.yaml").read_text()
    assert "segopt.lightning.TimeBudget" in text and "minutes: 60" in text
    variants = {
        "same": text,
        "comment": "# a new first line\n" + text.replace("  # ", "  #  "),
        "moved": text.replace("segopt.lightning.TimeBudget", "segopt.time_budget.TimeBudget"),
        "value": text.replace("minutes: 60", "minutes: 59"),
        "other class": text.replace("segopt.lightning.TimeBudget", "segopt.lightning.OtherBudget"),
    }
    names = {}
    for name, variant in variants.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(variant)
        args = sbs.parse_args(["--arm", "segopt", "--config", str(path)])
        data = sbs.load_data_config(args.data_config)
        names[name] = sbs.run_sha256(args, data, sbs.plan_recipe(args, data))
    assert names["comment"] == names["moved"] == names["same"]
    assert len({names["same"], names["value"], names["other class"]}) == 3


def test_a_recipe_on_other_data_than_the_data_config_is_one_error_line(sbs: ModuleType, tmp_path: Path) -> None:
    data = _paired_folder(tmp_path / "data", grey=True)
    args = sbs.parse_args(["--arm", "segopt", "--data-config", str(data), "--config", "configs/recipes/camvid.yaml"])
    with pytest.raises(SystemExit) as exc:
        sbs.plan_recipe(args, sbs.load_data_config(data))
    assert str(exc.value) == (
        f"error: configs/recipes/camvid.yaml trains on its own data.source (root data/camvid), not the pairs of --data-config "
        f"{data} (root {tmp_path / 'data'}); give the data config the recipe was written for (then any overlays), or a "
        "recipe without data of its own (e.g. configs/amp.yaml)"
    )


def test_a_seed_runs_afresh_on_another_machine_or_settings(sbs: ModuleType, tmp_path: Path) -> None:
    data_path = _paired_folder(tmp_path / "data", grey=False)
    data = sbs.load_data_config(data_path)

    def stem(*extra: str) -> str:
        args = sbs.parse_args(["--arm", "peer", "--data-config", str(data_path), "--size", "32", "32", *extra])
        return sbs.run_stem(args, 3, sbs.run_sha256(args, data, None))

    first = stem("--threads", "2")
    assert first.startswith("peer_seed3_") and f"-{sbs.os.cpu_count()}c-2t_" in first
    assert stem("--threads", "1") != first  # another machine setting
    assert stem("--threads", "2", "--size", "64", "64") != first  # other settings
    assert stem("--threads", "2", "--label", "peer2").replace("peer2", "peer", 1) == first


def test_default_size_is_the_median_image_fit_to_256_a_side_in_multiples_of_32(sbs: ModuleType) -> None:
    class Sizes:
        def __init__(self, *sizes: str) -> None:
            self._sizes = [(f"f{i}", s) for i, s in enumerate(sizes)]

        def sizes(self, split: str) -> list[tuple[str, str]]:
            return self._sizes

    assert sbs.default_size(Sizes("480x360", "480x360", "960x720"))[0] == (192, 256)  # CamVid
    assert sbs.default_size(Sizes("512x512"))[0] == (256, 256)  # membranes
    assert sbs.default_size(Sizes("2000x1000", "1200x400", "100x100")) == (
        (96, 256),  # 400 x 256/1200 = 85 → 96
        "median training image 400x1200 (HxW) scaled to fit 256 a side, rounded to multiples of 32",
    )


# ----------------------------------------------------------------------------- scoring
def test_validation_scores_probabilities_resized_to_the_label(sbs: ModuleType) -> None:
    import torch

    class Half(torch.nn.Module):
        """Predicts class 0 on the left half and class 1 on the right half of its input."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            w = x.shape[-1]
            logits[:, 0, :, : w // 2] = 5
            logits[:, 1, :, w // 2 :] = 5
            return logits

    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[..., 4:] = 1
    mask[0, 0, 0] = 255  # void: ignored
    loader = [(torch.zeros(1, 1, 4, 4), mask)]  # network at 4x4, label at 8x8
    miou, iou = sbs.validate(Half(), loader, "cpu", lambda: torch.autocast("cpu", enabled=False), 3, 255)
    assert iou[:2] == [1.0, 1.0]
    assert np.isnan(iou[2])  # an absent class stays out of the mean
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
    result = sbs.read_tensorboard(tmp_path, 0.0, ["Sky", "Pole"])
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
        sbs.read_tensorboard(tmp_path, 0.0, ["Sky"])


# ----------------------------------------------------------------------------- the summary
def _fake_run(out: Path, arm: str, seed: int, miou: float, cpu: str = "X", recipe: str = "r1", finished: str = "1",
              label: str | None = None, config: tuple[str, str] | None = None, other_cpu: float | None = None,
              ref_step: float | None = None, ref_method: str | None = REFERENCE_STEP_METHOD) -> None:  # fmt: skip
    """A per-run JSON as the script writes it; without ``label``, as it wrote them before labels (CamVid only).
    ``config``: the recipe's path and the sha256 of its bytes."""
    hw = {"cpu": cpu, "cores": 2, "torch_threads": 2, "loader_workers": 1, "gpu": None}
    iou = dict.fromkeys(["Sky", "Building", "Pole"], miou)
    curve = [{"epoch": 5, "elapsed_s": 1800.0, "val_mIoU": miou / 2}, {"epoch": 10, "elapsed_s": 3600.0, "val_mIoU": miou}]
    settings = {"run_sha256": recipe} if label is None else {"label": label, "run_sha256": recipe}
    if config is not None:
        settings |= {"config": config[0], "config_sha256": config[1]}
    run = {"arm": arm, "seed": seed, "epochs": 10, "wall_s": 3600.0, "val_mIoU": miou, "val_iou": iou, "hardware": hw,
           "curve": curve, "settings": {"data": "data/x", **settings}, "finished": finished}  # fmt: skip
    if other_cpu is not None:
        run["other_cpu_share"] = other_cpu
    if ref_step is not None:
        run["reference_step_s"] = ref_step
        run["reference_step_method"] = ref_method
    (out / f"{label or arm}_seed{seed}_{cpu}_{recipe}.json").write_text(json.dumps(run))


def test_summary_gives_every_pair_of_arms_a_verdict(sbs: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "sbs"
    out.mkdir()
    for label, arm, mious in [("peer", "peer", (0.45, 0.49)), ("amp", "segopt", (0.47, 0.50)),
                              ("planned", "segopt", (0.60, 0.62)), ("one", "segopt", (0.70,))]:  # fmt: skip
        for seed, miou in enumerate(mious):
            _fake_run(out, arm, seed, miou, label=label)
    md = sbs.write_summary(out).read_text()
    (machine,) = json.loads((tmp_path / "sbs.json").read_text())["machines"].values()
    assert list(machine["arms"]) == ["peer", "amp", "one", "planned"]
    assert [(p["a"], p["b"], p["resolved"]) for p in machine["pairs"]] == [
        ("amp", "peer", False), ("one", "peer", False), ("planned", "peer", True),
        ("one", "amp", False), ("planned", "amp", True), ("planned", "one", False),
    ]  # fmt: skip
    lines = [line for line in md.splitlines() if " mIoU; " in line]
    assert lines == [
        "amp − peer: +0.015 mIoU; not resolved yet: this does not exceed the larger seed range of the two arms (0.040).",
        "one − peer: +0.230 mIoU; not resolved yet: one has one seed, and the seed range needs two per arm.",
        "planned − peer: +0.140 mIoU; resolved: this exceeds the larger seed range of the two arms (0.040).",
        "one − amp: +0.215 mIoU; not resolved yet: one has one seed, and the seed range needs two per arm.",
        "planned − amp: +0.125 mIoU; resolved: this exceeds the larger seed range of the two arms (0.030).",
        "planned − one: -0.090 mIoU; not resolved yet: one has one seed, and the seed range needs two per arm.",
    ]
    assert "| class | peer | amp | one | planned |" in md and "| Pole | 0.470 | 0.485 | 0.700 | 0.610 |" in md
    assert (tmp_path / "sbs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the learning curves


def test_a_lead_equal_to_the_seed_range_or_with_one_seed_is_not_resolved(sbs: ModuleType) -> None:
    def arm(*values: float) -> dict:
        return {"val_mIoU": sbs._stats(list(values))}

    arms = {"p": arm(0.5, 0.75), "q": arm(1.0, 1.25), "r": arm(2.0)}
    assert sbs.compare("q", "p", arms) == {"a": "q", "b": "p", "lead": 0.5, "spread": 0.25, "few_seeds": [], "resolved": True}
    arms["q"] = arm(0.75, 1.25)
    assert sbs.compare("q", "p", arms)["resolved"] is False  # lead 0.375 < range 0.5
    assert sbs.compare("r", "p", arms)["few_seeds"] == ["r"] and sbs.compare("r", "p", arms)["resolved"] is False


def test_summary_pools_seeds_per_machine_and_leaves_out_an_earlier_recipe(sbs: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "side_by_side"
    out.mkdir()  # files as written before labels and data configs: they summarise as they did
    _fake_run(out, "peer", 0, 0.40, cpu="A")
    _fake_run(out, "segopt", 0, 0.50, cpu="A")
    _fake_run(out, "peer", 1, 0.55, cpu="B")
    _fake_run(out, "segopt", 0, 0.58, cpu="B", recipe="old", finished="1")
    _fake_run(out, "segopt", 1, 0.66, cpu="B", recipe="new", finished="2")
    sbs.write_summary(out)
    machines = json.loads((tmp_path / "side_by_side.json").read_text())["machines"]
    a, b = machines["A, 2 cores, 2 torch threads, 1 loader worker"], machines["B, 2 cores, 2 torch threads, 1 loader worker"]
    assert a["pairs"][0]["lead"] == pytest.approx(0.10)
    assert b["arms"]["segopt"]["per_seed"] == {"1": 0.66}
    assert b["superseded"] == {"segopt": [0]}
    assert b["pairs"][0]["lead"] == pytest.approx(0.11)
    md = (tmp_path / "side_by_side.md").read_text()
    assert "Left out: segopt seed(s) 0, run with an earlier version of the recipe." in md
    assert "segopt − peer: +0.110 mIoU; not resolved yet: peer and segopt have one seed, and the seed range needs two per arm." in md


def test_an_ablation_pairs_with_the_version_of_the_planned_recipe_it_ran_against(sbs: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "series"
    out.mkdir()
    old, renamed, new = ("rec.yaml", "aaaa1111" * 8), ("rec.yaml", "bbbb2222" * 8), ("rec.yaml", "cccc3333" * 8)
    for seed, miou in ((1, 0.60), (2, 0.62)):
        _fake_run(out, "peer", seed, miou, label="peer", recipe="p", finished="0")
    runs = [("planned", "v1", old, "1", (0.50, 0.51)), ("no-x", "x1", renamed, "3", (0.40, 0.42)),  # the same recipe, renamed paths
            ("planned", "v2", new, "5", (0.70, 0.71)), ("no-y", "y2", new, "7", (0.65, 0.66))]  # fmt: skip
    for label, key, config, finished, mious in runs:
        for seed, miou in zip((1, 2), mious):
            _fake_run(out, "segopt", seed, miou, label=label, recipe=key, finished=finished + str(seed), config=config)
    md = sbs.write_summary(out).read_text()
    (machine,) = json.loads((tmp_path / "series.json").read_text())["machines"].values()
    assert list(machine["arms"]) == ["peer", "no-x", "no-y", "planned", "planned, recipe aaaa1111"]
    assert machine["arms"]["planned"]["per_seed"] == {"1": 0.70, "2": 0.71}
    assert machine["superseded"] == {} and machine["earlier_recipe"] == ["no-x"]
    assert {(p["a"], p["b"]) for p in machine["pairs"]} == {
        ("no-x", "peer"), ("no-y", "peer"), ("planned", "peer"), ("planned, recipe aaaa1111", "peer"),
        ("planned", "no-y"), ("planned, recipe aaaa1111", "no-x"), ("planned, recipe aaaa1111", "planned"),
    }  # fmt: skip
    assert "not with `planned`: no-x." in md
    (out / "no-y_seed1_X_y2.json").unlink()
    (out / "no-y_seed2_X_y2.json").unlink()
    for seed in (1, 2):  # no ablation ran against v1 or v3: the version the current plan replaced (v2) is shown
        _fake_run(out, "segopt", seed, 0.80, label="planned", recipe="v3", finished="9" + str(seed), config=("rec.yaml", "dddd" * 16))
    (out / "no-x_seed1_X_x1.json").unlink()
    (out / "no-x_seed2_X_x1.json").unlink()
    sbs.write_summary(out)
    (machine,) = json.loads((tmp_path / "series.json").read_text())["machines"].values()
    assert list(machine["arms"]) == ["peer", "planned", "planned, recipe cccc3333"]
    assert machine["superseded"] == {"planned": [1, 2]} and machine["earlier_recipe"] == []


# ----------------------------------------------------------------------------- bad input
def test_a_missing_data_config_is_one_error_line(sbs: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        sbs.main(["--arm", "peer", "--data-config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")])
    assert str(exc.value) == f"error: --data-config {tmp_path / 'nope.yaml'} does not exist; give a data config such as configs/data/camvid.yaml"
    assert not (tmp_path / "out").exists()


def test_a_data_config_without_a_source_is_one_error_line(sbs: ModuleType, tmp_path: Path) -> None:
    config = tmp_path / "data.yaml"
    config.write_text("data: {batch_size: 4}\n")
    with pytest.raises(SystemExit) as exc:
        sbs.load_data_config(config)
    assert str(exc.value) == (
        f"error: {config} has no data.source; give a data config whose data.source names the data set (see configs/data/camvid.yaml)"
    )


def test_an_out_folder_of_another_data_set_is_one_error_line(sbs: ModuleType, tmp_path: Path) -> None:
    data = _paired_folder(tmp_path / "data", grey=True)
    out = tmp_path / "side_by_side"
    out.mkdir()
    _fake_run(out, "peer", 0, 0.4)  # on data/x
    with pytest.raises(SystemExit) as exc:
        sbs.main(["--arm", "peer", "--data-config", str(data), "--out", str(out)])
    assert str(exc.value) == (
        f"error: --out {out} holds runs on data/x (e.g. peer_seed0_X_r1.json), not on {tmp_path / 'data'}; "
        f"give another --out for this data set, e.g. --out {out}_data"
    )


def test_a_label_that_cannot_name_a_file_is_one_error_line(sbs: ModuleType) -> None:
    with pytest.raises(SystemExit) as exc:
        sbs.parse_args(["--arm", "peer", "--label", "a b"])
    assert str(exc.value) == "error: --label 'a b' must be letters, digits, '.' or '-' (it names files), e.g. --label amp-10min"


def test_stacked_data_configs_and_a_planned_recipe_reading_the_same_pairs(sbs: ModuleType, shared_data: Path, tmp_path: Path) -> None:
    """A by-group overlay stacks on its data config, and a recipe whose data.source is written out in
    full (as segopt plan writes it) but reads the very same pairs runs on it without a second stack."""
    overlay = ["configs/data/membrane.yaml", "configs/data/membrane_by_slice.yaml"]
    data = sbs.load_data_config([Path(p) for p in overlay])
    assert sorted(Path(p).stem for p, _ in data.source.sizes("val")) == [str(i) for i in range(24, 30)]
    written = {k: v for k, v in data.source_mapping["init_args"].items() if v is not None}  # as segopt plan writes it
    source = {**data.source_mapping, "init_args": written}
    assert source != data.source_mapping
    recipe_path = tmp_path / "planned.yaml"
    recipe_path.write_text(yaml.safe_dump({"data": {"source": source}}))
    args = sbs.parse_args(["--arm", "segopt", "--label", "planned", "--config", str(recipe_path), "--data-config", *overlay])
    assert sbs.plan_recipe(args, data).data_config is None
    amp = sbs.parse_args(["--arm", "segopt", "--label", "amp", "--config", "configs/amp.yaml", "--minutes", "10", "--data-config", *overlay])
    cmd = sbs.segopt_command(amp, sbs.plan_recipe(amp, data), 1, tmp_path / "amp_seed1")
    assert cmd[4:10] == ["--config", "configs/amp.yaml", "--config", overlay[0], "--config", overlay[1]]
    # a recipe written for the base data config (as configs/recipes/camvid.yaml is for camvid.yaml) gets only the overlay
    base = tmp_path / "base_recipe.yaml"
    base.write_text(yaml.safe_dump({"data": {"source": sbs.load_data_config(Path(overlay[0])).source_mapping}}))
    tuned = sbs.parse_args(["--arm", "segopt", "--label", "tuned", "--config", str(base), "--data-config", *overlay])
    stacked = sbs.plan_recipe(tuned, data)
    assert stacked.data_config == (Path(overlay[1]),)
    cmd = sbs.segopt_command(tuned, stacked, 1, tmp_path / "tuned_seed1")
    assert cmd[4:8] == ["--config", str(base), "--config", overlay[1]]


def test_plan_report_is_written_from_the_series_files_and_the_plan_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = _script("plan_report")
    runs = tmp_path / "plan" / "tiny_10min"
    runs.mkdir(parents=True)
    for label, arm, mious in [("peer", "peer", (0.45, 0.49)), ("amp", "segopt", (0.47, 0.50)), ("planned", "segopt", (0.60, 0.62))]:
        for seed, miou in enumerate(mious, start=1):
            _fake_run(runs, arm, seed, miou, label=label)
    recipes = tmp_path / "configs" / "recipes"
    recipes.mkdir(parents=True)
    chosen = {"backbone": "resnet18_unet", "mode": "crop", "size": [256, 256], "batch": 6, "val_every": 4, "epochs": 120}
    machine = {"name": "Test CPU", "cores": 2, "precision": "bf16-mixed"}
    (recipes / "tiny_10min.plan.json").write_text(json.dumps({"command": "python -m segopt.plan ...", "plan": {"chosen": chosen}, "probe": {"machine": machine}}))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    out = tmp_path / "plan.md"
    report.main(["--runs", str(tmp_path / "plan"), "--out", str(out)])
    text = out.read_text()
    assert "## tiny, 10 minutes (`data/x`)" in text
    assert ("resnet18_unet, crop 256x256, batch 6, validation every 4 epoch(s); predicted 120 epochs, trained 10, 10. "
            "Every decision and its reason: `configs/recipes/tiny_10min.plan.md`.") in text  # fmt: skip
    assert "| planned | 1, 2 | 0.610 ± 0.014 [0.600–0.620] | 0.600, 0.620 | 10, 10 | 60.0, 60.0 |" in text
    assert "planned − amp: +0.125 mIoU; resolved: this exceeds the larger seed range of the two arms (0.030)." in text
    with pytest.raises(SystemExit, match="already exists; nothing was written"):
        report.main(["--runs", str(tmp_path / "plan"), "--out", str(out)])


def test_plan_report_sets_flip_rescores_beside_the_fits_own_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = _script("plan_report")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    runs = tmp_path / "results" / "plan" / "tiny_10min"
    (runs / "tta").mkdir(parents=True)
    for seed, (plain, flipped) in enumerate([(0.30, 0.33), (0.28, 0.32)], start=1):
        _fake_run(runs, "segopt", seed, plain, label="planned")
        (stem,) = [p.stem for p in runs.glob(f"planned_seed{seed}_*.json")]
        rows = [{"setting": name, "val/mIoU": v, "seconds": 1.0} for name, v in (("plain", plain), ("hflip+vflip", flipped))]
        (runs / "tta" / f"{stem}.json").write_text(json.dumps(rows))
    lines = report.flip_lines(runs)
    assert lines[1] == "#### Test-time flips on these runs' last checkpoints, X, 2 cores, 2 torch threads, 1 loader worker"
    assert "| run | fit's score | plain | hflip+vflip |" in lines
    assert "| planned seed 1 | 0.300 | 0.300 | 0.330 |" in lines and "| planned seed 2 | 0.280 | 0.280 | 0.320 |" in lines
    assert lines[-1] == "hflip+vflip − plain: +0.035 mIoU; resolved: this exceeds the larger seed range of the two arms (0.020)."


def test_plan_report_pools_flip_rescores_within_one_arm_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = _script("plan_report")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    runs = tmp_path / "results" / "plan" / "tiny_10min"
    (runs / "tta").mkdir(parents=True)
    for label, scores in [("planned", [(0.30, 0.33), (0.31, 0.34)]), ("other", [(0.20, 0.21), (0.40, 0.41)])]:
        for seed, (plain, flipped) in enumerate(scores, start=1):
            _fake_run(runs, "segopt", seed, plain, label=label)
            (stem,) = [p.stem for p in runs.glob(f"{label}_seed{seed}_*.json")]
            rows = [{"setting": name, "val/mIoU": v, "seconds": 1.0} for name, v in (("plain", plain), ("hflip", flipped))]
            (runs / "tta" / f"{stem}.json").write_text(json.dumps(rows))
    lines = report.flip_lines(runs)
    assert "| planned seed 2 | 0.310 | 0.310 | 0.340 |" in lines and "| other seed 1 | 0.200 | 0.200 | 0.210 |" in lines
    # Pooled, the other arm's 0.20-0.40 would hide the planned arm's resolved +0.030.
    assert "planned, hflip − plain: +0.030 mIoU; resolved: this exceeds the larger seed range of the two arms (0.010)." in lines
    assert "other, hflip − plain: +0.010 mIoU; not resolved yet: this does not exceed the larger seed range of the two arms (0.200)." in lines


def test_plan_report_reads_each_machines_plan_from_the_recipe_its_runs_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = _script("plan_report")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    runs = tmp_path / "results" / "plan" / "tiny_10min"
    (runs / "recipes").mkdir(parents=True)
    recipes = tmp_path / "configs" / "recipes"
    recipes.mkdir(parents=True)
    machine = {"name": "Test CPU", "cores": 2, "precision": "bf16-mixed"}
    for recipe, epochs in [(recipes / "tiny_10min.yaml", 120), (runs / "recipes" / "y.yaml", 240)]:
        recipe.write_text(f"# planned for {epochs} epochs\n")
        chosen = {"backbone": "resnet18_unet", "mode": "crop", "size": [256, 256], "batch": 6, "val_every": 4, "epochs": epochs}
        recipe.with_name(f"{recipe.stem}.plan.json").write_text(json.dumps({"command": "plan", "plan": {"chosen": chosen}, "probe": {"machine": machine}}))
    shipped = ("configs/recipes/tiny_10min.yaml", "0" * 64)  # trained before the shipped recipe was re-planned
    other = ("results/plan/tiny_10min/recipes/y.yaml", hashlib.sha256(b"# planned for 240 epochs\n").hexdigest())
    for seed in (1, 2):
        _fake_run(runs, "segopt", seed, 0.6, cpu="X", label="planned", config=shipped)
        _fake_run(runs, "segopt", seed, 0.7, cpu="Y", label="planned", config=other)
    text = "\n".join(report.report([runs]))
    x, y = text.split("### Y")
    assert ("The planned runs trained an earlier version of `configs/recipes/tiny_10min.yaml` (sha256 00000000); the recipe "
            "planned since has no runs on this machine yet, and its record (`configs/recipes/tiny_10min.plan.json`) is not theirs.") in x  # fmt: skip
    assert ("predicted 240 epochs, trained 10, 10. Every decision and its reason: `results/plan/tiny_10min/recipes/y.plan.md`.") in y


def test_a_run_on_a_shared_machine_is_named_in_the_summary(sbs: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "sbs"
    out.mkdir()
    _fake_run(out, "segopt", 1, 0.60, label="planned", other_cpu=0.01)
    _fake_run(out, "segopt", 2, 0.62, label="planned", other_cpu=0.12)
    _fake_run(out, "segopt", 1, 0.50, label="amp")  # recorded before the share was: not named
    md = sbs.write_summary(out).read_text()
    assert (
        "On a shared machine: other processes took more than 5% of the CPU during planned seed 2 (12%). "
        "A time budget then buys fewer epochs, and those figures are suspect." in md
    )
    assert md.count("On a shared machine") == 1
    # capped at 10 epochs and trained them: the machine's other load cost it time, not epochs
    _fake_run(out, "segopt", 1, 0.55, label="capped", other_cpu=0.30, recipe="r2")
    run = out / "capped_seed1_X_r2.json"
    run.write_text(json.dumps(json.loads(run.read_text()) | {"settings": {"data": "data/x", "label": "capped", "run_sha256": "r2", "extra_args": ["--trainer.max_epochs=10"]}}))
    md = sbs.write_summary(out).read_text()
    assert "capped seed 1" not in md and "planned seed 2 (12%)" in md
    arms = json.loads((out.parent / "sbs.json").read_text())["machines"]["X, 2 cores, 2 torch threads, 1 loader worker"]["arms"]
    assert arms["planned"]["other_cpu_share"] == {"1": 0.01, "2": 0.12}
    assert arms["amp"]["other_cpu_share"] == {"1": None}


def test_other_processes_cpu_share_between_two_snapshots() -> None:
    from experiments.common import cpu_snapshot, other_cpu_share

    # 100 s on 2 cores; the machine was busy 200 CPU-s, this process and its children 180
    assert other_cpu_share((0.0, 100.0, 10.0), (100.0, 300.0, 190.0), 2) == 0.1
    assert other_cpu_share((0.0, 100.0, 10.0), (100.0, 150.0, 70.0), 2) == 0.0  # clock granularity: never negative
    assert other_cpu_share(None, (1.0, 2.0, 3.0), 2) is None
    if sys.platform == "linux":
        before = cpu_snapshot()
        end = time.process_time() + 0.2
        while time.process_time() < end:  # spin: this process's own CPU time grows
            pass
        after = cpu_snapshot()
        assert before is not None and after is not None
        assert after[2] - before[2] >= 0.2 and after[1] > before[1]


def test_hosts_of_different_speed_are_named_in_the_summary(sbs: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "sbs"
    out.mkdir()
    _fake_run(out, "segopt", 1, 0.60, label="planned", ref_step=0.40)
    _fake_run(out, "segopt", 2, 0.62, label="planned", ref_step=0.43)
    _fake_run(out, "segopt", 1, 0.50, label="amp")  # recorded before the speed was: left out
    _fake_run(out, "segopt", 1, 0.55, label="earlier", ref_step=0.60, ref_method=None)  # another method: left out
    assert "Host speed varies" not in sbs.write_summary(out).read_text()  # within 10 %
    _fake_run(out, "segopt", 2, 0.52, label="amp", ref_step=0.50)
    md = sbs.write_summary(out).read_text()
    assert (
        "Host speed varies: a reference training step (`experiments/common.py`) took 0.400–0.500 s across these runs "
        "(amp seed 2 0.500, planned seed 1 0.400, planned seed 2 0.430)." in md
    )
