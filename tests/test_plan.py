"""segopt plan: the fingerprint measures what it says, each rule's branches (a described GPU
included), the recipe it writes parses and fits, and bad input is one error line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import segopt.commands.plan as plan_command
from segopt.commands.planning.fingerprint import (
    ClassFingerprint,
    Fingerprint,
    PlanError,
    fingerprint,
    half_counts,
    histogram_median,
    thickness_histograms,
)
from segopt.commands.planning.probe import BACKBONES, Machine, Probe, StepTiming, probe_machine
from segopt.commands.planning.recipe import plan_paths
from segopt.commands.planning.rules import MIN_IMAGES, RARE_CROP_SHARE, RARE_IMAGE_SHARE, cpu_batch, plan, run_batch
from tests.conftest import CONFIGS

CPU = Machine("cpu", "Test CPU", 2, 24.0, "bf16-mixed")
GPU = Machine("cuda", "Test GPU 80GB", 16, 128.0, "16-mixed", gpu_memory_gb=80.0)


# ----------------------------------------------------------------------------- data on disk
def _write_set(
    root: Path, n_train: int = 6, n_val: int = 2, size: tuple[int, int] = (64, 96), classes: int = 3, square_every: int = 2
) -> None:
    """Grey images; masks of background (0), a 3 px wide vertical bar (1) and, in every
    ``square_every``-th training image, a 10x10 square (2)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros(size, np.uint8)
            mask[:, 20:23] = 1
            if classes > 2 and (i % square_every == 0 or split == "val"):
                mask[30:40, 50:60] = 2
            image = rng.integers(0, 255, size, dtype=np.uint8)
            cv2.imwrite(str(root / split / "images" / f"f{i}.png"), image)
            cv2.imwrite(str(root / split / "masks" / f"f{i}.png"), mask)


def _data_config(path: Path, root: Path, class_names: list[str]) -> Path:
    config = {
        "data": {
            "source": {
                "class_path": "segopt.data.PairedFolder",
                "init_args": {
                    "root": str(root),
                    "class_names": class_names,
                    "image_dirs": {"train": "train/images", "val": "val/images"},
                    "mask_dirs": {"train": "train/masks", "val": "val/masks"},
                    "in_channels": 1,
                },
            },
            "ignore_index": 255,
        }
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    _write_set(tmp_path / "set")
    return _data_config(tmp_path / "data.yaml", tmp_path / "set", ["background", "bar", "square"])


def _source(config: Path):
    from segopt.commands.from_config import build_from_config

    return build_from_config(["--config", str(config)]).datamodule.source


# ----------------------------------------------------------------------------- fingerprint
def test_thickness_of_a_line_a_bar_and_a_network() -> None:
    mask = np.zeros((60, 60), np.uint8)
    mask[10, 5:50] = 1  # a one-pixel line
    mask[20:50, 30:33] = 2  # a three-pixel bar
    grid = np.zeros((100, 100), np.uint8)
    grid[::20, :] = grid[:, ::20] = 0
    for k in range(0, 100, 20):  # a network of 5 px lines: one region, thin everywhere
        grid[k : k + 5, :] = 1
        grid[:, k : k + 5] = 1
    hist = thickness_histograms(mask, 3)
    assert histogram_median(hist[1]) == 1.0
    assert histogram_median(hist[2]) == 3.0
    assert histogram_median(thickness_histograms(grid, 2)[1]) == 5.0
    # a class filling the whole mask (a defect-free tile) has no boundary: its side, not an overflow
    assert histogram_median(thickness_histograms(np.zeros((30, 50), np.uint8), 2)[0]) == 99.0


def test_fingerprint_measures_splits_sizes_shares_and_widths(tiny: Path) -> None:
    fp = fingerprint(_source(tiny), 255)
    assert fp.images == {"train": 6, "val": 2}
    assert (fp.min_size, fp.median_size, fp.max_size, fp.sizes_vary, fp.channels) == ((64, 96), (64, 96), (64, 96), False, 1)
    assert fp.void_share == 0.0
    bar, square = fp.classes[1], fp.classes[2]
    assert (bar.images, bar.image_share, bar.width_px) == (6, 1.0, 3.0)
    assert (square.images, square.image_share) == (3, 0.5)
    assert bar.pixel_share == pytest.approx(3 * 64 / (64 * 96))
    assert square.pixel_share == pytest.approx(3 * 100 / (6 * 64 * 96))
    # the bar is 3 px in every image; the square is in 3 images, under SPREAD_MIN_IMAGES; the
    # background is narrower in the images where the square cuts it
    background = fp.classes[0]
    assert (bar.width_spread, square.width_spread) == (1.0, None)
    assert background.width_spread > 1.0
    assert fp.scale_spread == fp.as_dict()["scale_spread"] == pytest.approx((background.width_spread + 1.0) / 2)


def test_fingerprint_measures_which_half_of_the_images_each_class_prefers(tiny: Path) -> None:
    fp = fingerprint(_source(tiny), 255)
    bar, square = fp.classes[1], fp.classes[2]
    # the bar (columns 20-22 of 96, every row) lies in the left half, evenly top and bottom
    assert (bar.vertical_bias, bar.horizontal_bias) == (0.0, 1.0)
    # the square (rows 30-39 of 64, columns 50-59): 2 rows in the top half, 8 in the bottom, all right
    assert (square.vertical_bias, square.horizontal_bias) == (0.6, 1.0)
    weights = [c.pixel_share for c in fp.classes]
    for axis in ("vertical", "horizontal"):
        expected = sum(w * getattr(c, f"{axis}_bias") for w, c in zip(weights, fp.classes)) / sum(weights)
        assert getattr(fp, f"{axis}_bias") == fp.as_dict()[f"{axis}_bias"] == round(expected, 4)
    assert fp.vertical_bias < fp.horizontal_bias < 0.25


def test_half_counts_leave_out_the_middle_row_and_column_of_odd_sides() -> None:
    mask = np.zeros((3, 5), np.uint8)
    mask[1, :] = 1  # the middle row: in neither the top nor the bottom half
    mask[:, 2] = 2  # the middle column: in neither the left nor the right half
    top, bottom, left, right = half_counts(mask, 3)
    assert (top.tolist(), bottom.tolist(), left.tolist(), right.tolist()) == ([4, 0, 1], [4, 0, 1], [4, 2, 0], [4, 2, 0])


def test_fingerprint_measures_how_far_a_class_width_varies_between_images(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for split, widths in (("train", (3, 5, 9, 17)), ("val", (3,))):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, width in enumerate(widths):
            mask = np.zeros((64, 96), np.uint8)
            mask[:, 20 : 20 + width] = 1  # the same bar seen at four scales
            cv2.imwrite(str(root / split / "images" / f"f{i}.png"), np.full((64, 96), 128, np.uint8))
            cv2.imwrite(str(root / split / "masks" / f"f{i}.png"), mask)
    fp = fingerprint(_source(_data_config(tmp_path / "data.yaml", root, ["background", "bar"])), 255)
    # per-image medians 3, 5, 9 and 17 px: 25th percentile 4.5, 75th 11
    assert fp.classes[1].width_spread == round(11 / 4.5, 2) == 2.44


# ----------------------------------------------------------------------------- rules
def _fp(
    train: int = 367,
    val: int = 101,
    size: tuple[int, int] = (360, 480),
    widths=(160.0, 3.0, 80.0),
    shares=(0.60, 0.01, 0.39),
    presence=(1.0, 1.0, 1.0),
    vary: bool = False,
    spreads=(None, None, None),
    bias: tuple[float | None, float | None] = (None, None),
) -> Fingerprint:
    rows = zip(widths, shares, presence, spreads)
    classes = [ClassFingerprint(f"c{i}", s, p, round(p * train), w, sp, *bias) for i, (w, s, p, sp) in enumerate(rows)]
    return Fingerprint({"train": train, "val": val}, size, size, size, vary, 3, 0.0, [0.5] * 3, [0.2] * 3, classes)


def _probe(machine: Machine = CPU, s_per_image: float = 0.05, max_batch: int | None = None, weaker: float = 0.5) -> Probe:
    """Timed at 240x320: resnet18_unet takes s_per_image, res_unet16 ``weaker`` of it; evaluation a third."""
    timings = [
        StepTiming("resnet18_unet", (240, 320), 4, s_per_image, s_per_image / 3, max_batch),
        StepTiming("res_unet16", (240, 320), 4, s_per_image * weaker, s_per_image * weaker / 3, max_batch),
    ]
    return Probe(machine, timings)


def test_a_long_budget_buys_the_strong_network_at_the_scale_that_keeps_the_thinnest_class() -> None:
    # c1 is 3 px wide: 2/3 of 360x480 keeps it 2 px; at 0.05 s/image an hour buys far more than MIN_STEPS
    result = plan(_fp(), _probe(s_per_image=0.05), 60)
    chosen = result.chosen
    assert (chosen.backbone, chosen.mode, chosen.size) == ("resnet18_unet", "resize", (360, 480))
    assert chosen.images_seen >= MIN_IMAGES
    assert result.value("data.full_res_masks") is False


def test_a_short_budget_plans_a_smaller_size_and_says_why() -> None:
    # the residual UNet is as slow as the ResNet18-UNet here: where neither converges, the tie goes to the stronger
    long, short = (plan(_fp(), _probe(s_per_image=0.1, weaker=1.0), minutes) for minutes in (60, 10))
    assert long.chosen.size == (304, 400)  # 0.83 of 360x480, rounded to 16
    assert short.chosen.size == (240, 320)  # 2/3 of 360x480
    assert short.value("data.full_res_masks") is True
    assert short.chosen.images_seen < MIN_IMAGES
    reason = next(d.reason for d in short.decisions if d.key == "model.backbone")
    assert f"no candidate sees {MIN_IMAGES} training images in 10 min; resnet18_unet at 240x320 sees the most" in reason


def test_the_network_moves_one_way_as_the_machine_slows() -> None:
    # the residual UNet costs half as much per image: a fast machine converges the ResNet18-UNet at
    # full size; slower ones step down its sizes, then to the residual UNet, and never back
    chosen = [plan(_fp(), _probe(s_per_image=s), 60).chosen for s in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.8, 1.6)]
    assert [(c.backbone, c.size) for c in chosen] == [
        ("resnet18_unet", (360, 480)),
        ("resnet18_unet", (304, 400)),
        ("resnet18_unet", (240, 320)),
        ("res_unet16", (304, 400)),
        ("res_unet16", (240, 320)),
        ("res_unet16", (240, 320)),
        ("res_unet16", (240, 320)),
        ("res_unet16", (240, 320)),
    ]
    assert [c.images_seen >= MIN_IMAGES for c in chosen] == [True] * 5 + [False] * 3


def test_a_budget_without_one_epoch_names_the_minimum() -> None:
    with pytest.raises(PlanError, match=r"--minutes 0.5 buys no full epoch on this machine: .*give --minutes \d+ or more"):
        plan(_fp(), _probe(s_per_image=1.0), 0.5)


def test_class_weighting_follows_the_imbalance() -> None:
    imbalanced = plan(_fp(), _probe(), 60)
    balanced = plan(_fp(widths=(40.0, 20.0, 30.0), shares=(0.4, 0.3, 0.3)), _probe(), 60)
    assert imbalanced.value("model.loss.init_args.class_weights") == "effective_number"  # 60x
    assert balanced.value("model.loss.init_args.class_weights") is None


def test_classes_in_few_images_get_oversampled_images_and_in_crop_mode_crops() -> None:
    # local structures in large images: crops at full resolution; c1 is in 10 % of the images
    crops = plan(_fp(size=(1024, 1024), widths=(30.0, 3.0, 20.0), presence=(1.0, 0.1, 1.0)), _probe(), 60)
    assert crops.chosen.mode == "crop" and crops.chosen.size == (256, 256)
    assert crops.value("data.rare_image_share") == RARE_IMAGE_SHARE
    assert crops.value("data.augment.rare_crop_share") == RARE_CROP_SHARE
    assert crops.value("data.augment.rare_class_below") == pytest.approx(0.015)
    resized = plan(_fp(size=(64, 96), presence=(1.0, 0.1, 1.0)), _probe(), 60)  # too small for crops of half its side
    assert resized.chosen.mode == "resize"
    assert resized.value("data.rare_image_share") == RARE_IMAGE_SHARE
    assert resized.value("data.augment.rare_crop_share") == 0.0
    assert resized.value("data.augment.rare_class_below") == pytest.approx(0.015)
    common = plan(_fp(presence=(1.0, 0.25, 1.0)), _probe(), 60)  # in a quarter of the images: not rare
    assert common.value("data.rare_image_share") == 0.0
    assert common.value("data.augment.rare_crop_share") == 0.0
    assert "data.augment.rare_class_below" not in [d.key for d in common.decisions]


def test_rare_classes_train_on_crops_of_half_the_median_side_at_full_resolution() -> None:
    rare = plan(_fp(presence=(1.0, 0.1, 1.0)), _probe(s_per_image=0.1), 10)
    assert (rare.chosen.mode, rare.chosen.size, rare.chosen.scale) == ("crop", (192, 192), 1.0)  # 360 / 2, to a multiple of 32
    reason = next(d.reason for d in rare.decisions if d.key == "data.train_size")
    assert reason.endswith(
        "c1 (10%) in under 25% of the training images: crops of 192 px at full resolution (0.5 of the median 360x480's "
        "short side), a share of them centred on those classes"
    )
    assert rare.value("data.eval_size") is None and rare.value("data.full_res_masks") is False
    assert rare.value("data.augment.rare_crop_share") == RARE_CROP_SHARE
    large = plan(_fp(size=(1200, 1600), presence=(1.0, 0.1, 1.0)), _probe(), 60)
    assert (large.chosen.mode, large.chosen.size) == ("crop", (256, 256))  # at most CROP_SIDE
    assert plan(_fp(), _probe(s_per_image=0.1), 10).chosen.mode == "resize"  # no rare class: whole images


def test_scale_jitter_is_not_planned_at_any_scale_spread() -> None:
    for spreads in [(1.0, 1.3, 4.0), (1.0, 2.0, 4.0), (3.0, 3.0, 3.0)]:
        result = plan(_fp(spreads=spreads), _probe(), 60)
        assert result.value("data.augment.random_scale") == [1.0, 1.0]
    assert next(d.reason for d in result.decisions if d.key == "data.augment.random_scale") == (
        "widths vary 3x between images; no jitter: it lost at both spreads measured (the membranes 1.26x, CamVid 3.0x)"
    )


def test_inference_flips_along_each_axis_the_labels_do_not_prefer() -> None:
    cases = {  # (vertical, horizontal) bias of every class: tiles and sections, street scenes, unmeasured
        (0.01, 0.0): {"hflip": True, "vflip": True},
        (0.84, 0.18): {"hflip": True, "vflip": False},
        (0.84, 0.3): {"hflip": False, "vflip": False},
        (None, None): {"hflip": False, "vflip": False},
    }
    for bias, flips in cases.items():
        assert plan(_fp(bias=bias), _probe(), 60).value("model.tta") == flips
    reasons = {bias: next(d.reason for d in plan(_fp(bias=bias), _probe(), 60).decisions if d.key == "model.tta") for bias in cases}
    assert reasons[(0.01, 0.0)] == (
        "left/right bias 0.00 (<= 0.25: flipped view averaged in); top/bottom bias 0.01 (<= 0.25: flipped view averaged in); "
        "inference runs 4 passes per image"
    )
    assert reasons[(0.84, 0.18)] == (
        "left/right bias 0.18 (<= 0.25: flipped view averaged in); top/bottom bias 0.84 (> 0.25: not flipped); "
        "inference runs 2 passes per image"
    )
    assert reasons[(0.84, 0.3)] == "left/right bias 0.30 (> 0.25: not flipped); top/bottom bias 0.84 (> 0.25: not flipped); one plain pass"
    assert reasons[(None, None)] == "left/right bias unmeasured: not flipped; top/bottom bias unmeasured: not flipped; one plain pass"


def test_the_cpu_batch_holds_the_pixel_budget_within_its_bounds() -> None:
    assert cpu_batch(_fp(), (240, 320)) == 16  # CPU_BATCH_PIXELS
    assert cpu_batch(_fp(), (360, 480)) == 7  # 1.23 M / 172,800 px
    assert cpu_batch(_fp(), (128, 128)) == 16  # MAX_BATCH_CPU
    assert cpu_batch(_fp(train=24), (256, 256)) == 6  # 4 steps per epoch of 24 images
    assert cpu_batch(_fp(train=3), (1024, 1024)) == 2  # MIN_BATCH


def test_a_run_trains_at_the_batch_that_fits_on_a_gpu_and_at_the_pixel_budget_on_a_cpu() -> None:
    assert run_batch(_fp(), (240, 320), None) == 16  # CPU: CPU_BATCH_PIXELS
    assert run_batch(_fp(), (240, 320), 12) == 12  # GPU: all that fit
    assert run_batch(_fp(), (240, 320), 64) == 32  # MAX_BATCH_GPU
    assert run_batch(_fp(train=24), (240, 320), 64) == 6  # 4 steps per epoch of 24 images


def test_the_probe_times_each_size_at_its_own_batch() -> None:
    res_unet16 = next(b for b in BACKBONES if b.name == "res_unet16")
    asked = []

    def batch(size: tuple[int, int], fits: int | None) -> int:
        asked.append((size, fits))
        return {(32, 32): 3, (64, 64): 2}[size]

    probe = probe_machine([(32, 32), (64, 64)], 1, 2, (res_unet16,), batch, timed_images=1)
    assert asked == [((32, 32), None), ((64, 64), None)]  # no CUDA here: no largest batch to offer
    assert [(t.size, t.batch) for t in probe.timings] == [((32, 32), 3), ((64, 64), 2)]
    assert all(t.train_s_per_image > 0 and t.eval_s_per_image > 0 for t in probe.timings)


def test_validation_is_thinned_to_a_tenth_of_the_budget() -> None:
    # as many validation images as training ones, each a third of a training image's cost: every 4th epoch
    result = plan(_fp(train=100, val=100, widths=(160.0, 2.0, 80.0)), _probe(), 60)
    assert result.chosen.val_every == 4
    assert result.value("trainer.check_val_every_n_epoch") == 4


def test_a_described_gpu_plans_fp16_and_the_largest_batch_that_fits() -> None:
    result = plan(_fp(), _probe(GPU, s_per_image=0.002, max_batch=64), 60)
    assert result.value("trainer.precision") == "16-mixed"
    assert "runs as 16-mixed on Test GPU 80GB" in next(d.reason for d in result.decisions if d.key == "trainer.precision")
    # 64 fit at 240x320, so 28 at 360x480 (by pixels); capped by MAX_BATCH_GPU (32) and 367 // 4
    assert result.value("data.batch_size") == 28
    assert result.value("data.num_workers") == 8


def test_a_described_gpu_skips_the_sizes_where_two_images_do_not_fit() -> None:
    # 2 fit at 240x320, so 0 at 360x480 (by pixels): the plan trains at 240x320
    result = plan(_fp(), _probe(GPU, s_per_image=0.002, max_batch=2), 60)
    assert (result.chosen.size, result.value("data.batch_size")) == ((240, 320), 2)
    with pytest.raises(PlanError, match=r"^no candidate network and size fits 2 training images in the memory of Test GPU 80GB \(80 GB\); "):
        plan(_fp(), _probe(GPU, s_per_image=0.002, max_batch=1), 60)


def test_images_smaller_than_the_networks_take_are_refused() -> None:
    with pytest.raises(PlanError, match=r"the smallest training image is 24x24, below the 32 px the networks take"):
        plan(_fp(size=(24, 24)), _probe(), 60)


def test_a_class_absent_from_training_is_planned_without_and_said() -> None:
    fp = _fp(shares=(0.7, 0.3, 0.0), presence=(1.0, 1.0, 0.0))
    fp.classes[2].width_px = None
    result = plan(fp, _probe(), 60)
    assert result.notes == ["class(es) c2 never appear in the training masks: planned without them (they cannot be learned)"]
    assert result.value("model.loss.init_args.class_weights") is None  # 0.7 / 0.3, the absent class left out


# ----------------------------------------------------------------------------- the command
@pytest.fixture
def described_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_command, "probe_machine", lambda sizes, channels, classes, backbones, batch: _probe(s_per_image=0.001))


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = plan_command.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_the_written_recipe_parses_and_fits_one_step(tmp_path: Path, described_probe, capsys) -> None:  # noqa: ANN001
    _write_set(tmp_path / "set", square_every=6)  # the square in 1 of the 6 training images: rare
    tiny = _data_config(tmp_path / "data.yaml", tmp_path / "set", ["background", "bar", "square"])
    out = tmp_path / "recipes" / "tiny.yaml"
    code, printed, _ = _run(capsys, "--config", str(tiny), "--minutes", "5", "--out", str(out))
    assert code == 0, printed
    assert [p.exists() for p in plan_paths(out)] == [True, True, True]
    text = out.read_text()
    assert "  train_size: [64, 96]  # resize at 64x96: bar is 3 px wide at median (full resolution)" in text
    assert (
        "  rare_image_share: 0.33  # square (17%) in under 25% of the training images; whole images are trained, not crops"
        in text
    )
    # the bar and the square lie left and right of the middle, but 0.06 of the pixels is no preference
    assert (
        "  tta:  # left/right bias 0.06 (<= 0.25: flipped view averaged in); top/bottom bias 0.00 (<= 0.25: flipped view "
        "averaged in); inference runs 4 passes per image"
    ) in text
    assert "    hflip: true\n    vflip: true\n" in text
    record = json.loads(plan_paths(out)[1].read_text())
    assert record["fingerprint"]["classes"][1]["width_px"] == 3.0
    assert record["plan"]["chosen"]["backbone"] == "resnet18_unet"
    from segopt.commands.cli import main as cli_main

    cli_main(["fit", "--config", str(out), "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1", "--data.num_workers=0",
              f"--trainer.default_root_dir={tmp_path / 'runs'}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
              "--trainer.enable_progress_bar=false"])
    assert list((tmp_path / "runs").rglob("last.ckpt"))


def test_an_existing_out_is_refused_and_nothing_written(tiny: Path, tmp_path: Path, described_probe, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "mine.yaml"
    out.write_text("mine\n")
    code, _, err = _run(capsys, "--config", str(tiny), "--minutes", "5", "--out", str(out))
    assert code == 1
    assert err == f"error: {out} exist(s); choose another --out, or pass --overwrite to replace them\n"
    assert out.read_text() == "mine\n"
    assert not plan_paths(out)[1].exists() and not plan_paths(out)[2].exists()


def test_a_recorded_probe_replans_without_timing_again(tiny: Path, tmp_path: Path, described_probe, capsys, monkeypatch) -> None:  # noqa: ANN001
    first = tmp_path / "first.yaml"
    assert _run(capsys, "--config", str(tiny), "--minutes", "5", "--out", str(first))[0] == 0

    def no_timing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("timed the machine again")

    monkeypatch.setattr(plan_command, "probe_machine", no_timing)
    again = tmp_path / "again.yaml"
    code, printed, _ = _run(capsys, "--config", str(tiny), "--minutes", "5", "--out", str(again), "--probe-from", str(plan_paths(first)[1]))
    assert code == 0, printed
    assert f"segopt plan: read the probe of 2 network/size pairs on Test CPU from {plan_paths(first)[1]}" in printed
    records = [json.loads(plan_paths(out)[1].read_text()) for out in (first, again)]
    assert records[1]["probe"] == records[0]["probe"] and records[1]["plan"] == records[0]["plan"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("not json", "holds no recorded probe (JSONDecodeError"),
        ('{"plan": {}}', "holds no recorded probe (KeyError: 'probe')"),
        ('{"probe": {"machine": {"device": "cpu", "name": "X", "cores": 2, "memory_gb": 8, "precision": "bf16-mixed"}, "timings": []}}',
         "timed no step of res_unet16, resnet18_unet; plan without --probe-from to time this machine again"),
    ],
)  # fmt: skip
def test_a_probe_record_that_cannot_serve_is_one_error_line(tiny: Path, tmp_path: Path, capsys, record: str, message: str) -> None:  # noqa: ANN001
    recorded = tmp_path / "old.plan.json"
    recorded.write_text(record)
    out = tmp_path / "out" / "r.yaml"
    code, _, err = _run(capsys, "--config", str(tiny), "--minutes", "5", "--out", str(out), "--probe-from", str(recorded))
    assert code == 1
    assert err.startswith(f"error: --probe-from {recorded} ") and err.count("error:") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty_val", "val/images has no image files"),
        ("one_class", "num_classes is 1 (class names: ['background']), but segmentation needs at least 2 classes"),
        ("bad_mask", "the data check fails: "),
        ("no_minutes", "--minutes is 0; give the fit's budget in minutes"),
        ("not_yaml", "is not a .yaml file"),
        ("no_source", "has no data.source; give a data config"),
    ],
)
def test_bad_input_is_one_error_line_and_nothing_written(tmp_path: Path, described_probe, capsys, setup: str, message: str) -> None:  # noqa: ANN001
    root = tmp_path / "set"
    _write_set(root, classes=3)
    names, minutes, out = ["background", "bar", "square"], "5", tmp_path / "out" / "r.yaml"
    if setup == "empty_val":
        for f in (root / "val" / "images").iterdir():
            f.unlink()
        for f in (root / "val" / "masks").iterdir():
            f.unlink()
    elif setup == "one_class":
        names = ["background"]
    elif setup == "bad_mask":
        cv2.imwrite(str(root / "train" / "masks" / "f0.png"), np.full((64, 96), 7, np.uint8))
    elif setup == "no_minutes":
        minutes = "0"
    elif setup == "not_yaml":
        out = tmp_path / "out" / "r.txt"
    config = _data_config(tmp_path / "data.yaml", root, names)
    if setup == "no_source":
        config.write_text("data:\n  batch_size: 4\n")
    code, _, err = _run(capsys, "--config", str(config), "--minutes", minutes, "--out", str(out))
    assert code == 1
    assert err.startswith("error: ") and err.count("error:") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_stacked_data_configs_plan_as_fit_reads_them(shared_data: Path, tmp_path: Path, described_probe, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "membrane.yaml"
    membrane, by_slice = CONFIGS / "data" / "membrane.yaml", CONFIGS / "data" / "membrane_by_slice.yaml"
    code, printed, _ = _run(capsys, "--config", str(membrane), "--config", str(by_slice), "--minutes", "10", "--out", str(out))
    assert code == 0, printed
    recipe = yaml.safe_load(out.read_text())
    source = recipe["data"]["source"]["init_args"]
    assert (source["root"], source["val_groups"], source["val_fraction"]) == ("data/membrane", [str(i) for i in range(24, 30)], 0.0)
    assert recipe["data"]["augment"]["vflip"] == 0.5  # the data config's own setting survives
    from segopt.commands.from_config import build_from_config

    datamodule = build_from_config(["--config", str(out)]).datamodule
    val = datamodule.source.index.pairs["val"]
    assert sorted(int(p.image.stem) for p in val) == list(range(24, 30))


def test_the_console_form_runs_the_planner(tiny: Path, tmp_path: Path, described_probe, capsys) -> None:  # noqa: ANN001
    from segopt.commands.cli import main as cli_main

    out = tmp_path / "console.yaml"
    with pytest.raises(SystemExit) as exc:
        cli_main(["plan", "--config", str(tiny), "--minutes", "5", "--out", str(out)])
    assert exc.value.code == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a bare folder
def _bare(root: Path, masks: list[np.ndarray], colour: bool = False) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(masks):
        cv2.imwrite(str(root / "images" / f"p{i}.png"), np.full((40, 48, 3), 90 + i, np.uint8))
        cv2.imwrite(str(root / "masks" / f"p{i}.png"), mask[..., ::-1] if colour else mask)  # cv2 writes BGR
    return root


def test_a_bare_folder_of_binary_index_or_colour_masks_gets_its_decoding(tmp_path: Path) -> None:
    from segopt.commands.planning.folder_config import folder_data_config

    binary = np.zeros((40, 48), np.uint8)
    binary[:, 10:20] = 255
    config = folder_data_config(_bare(tmp_path / "binary", [binary] * 5))
    source = config["source"]["init_args"]
    assert source["masks"] == {"class_path": "segopt.data.BinaryMask", "init_args": {"threshold": 128}}
    assert (source["class_names"], source["image_dirs"], source["val_fraction"]) == (["background", "foreground"], {"train": "images"}, 0.2)
    index = np.zeros((40, 48), np.uint8)
    index[:, :5], index[:, 5:9], index[0, :] = 1, 2, 255
    source = folder_data_config(_bare(tmp_path / "index", [index] * 5))["source"]["init_args"]
    assert source["masks"] == {"class_path": "segopt.data.IndexMask", "init_args": {"void": [255]}}
    assert source["class_names"] == ["class_0", "class_1", "class_2"]
    colours = np.zeros((40, 48, 3), np.uint8)
    colours[:, :10] = (200, 0, 0)
    colours[:, 10:20] = (0, 0, 200)
    source = folder_data_config(_bare(tmp_path / "colour", [colours] * 5, colour=True))["source"]["init_args"]
    assert source["masks"] == {"class_path": "segopt.data.PaletteMask", "init_args": {"colours": [[0, 0, 0], [0, 0, 200], [200, 0, 0]]}}
    scaled = np.zeros((40, 48), np.uint8)
    scaled[:, :5], scaled[:, 5:9], scaled[:, 9:12] = 85, 170, 255  # ids 1..3 scaled to be visible
    source = folder_data_config(_bare(tmp_path / "scaled", [scaled] * 5))["source"]["init_args"]
    assert source["masks"] == {"class_path": "segopt.data.TableMask", "init_args": {"table": {0: 0, 85: 1, 170: 2, 255: 3}}}
    assert source["class_names"] == ["class_0", "class_1", "class_2", "class_3"]


def test_a_bare_folder_of_many_grey_values_is_one_error_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    ramp = np.tile(np.arange(48, dtype=np.uint8) * 5, (40, 1))  # 48 values up to 235: a picture, not labels
    folder = _bare(tmp_path / "ramp", [ramp, ramp[:, ::-1] + 3] * 2)
    code, _, err = _run(capsys, "--config", str(folder), "--minutes", "5", "--out", str(tmp_path / "r.yaml"))
    assert code == 1 and err.startswith("error: the grey masks hold 96 distinct values up to 238 (e.g. ")
    assert not (tmp_path / "r.yaml").exists()


def test_anti_aliased_binary_masks_are_binary_and_other_anti_aliased_masks_one_error_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from segopt.commands.planning.folder_config import folder_data_config

    disc = np.zeros((64, 64), np.uint8)
    cv2.circle(disc, (32, 32), 20, 255, -1, lineType=cv2.LINE_AA)  # blended edge values between 0 and 255
    assert 2 <= len(np.unique(disc)) - 2 < 64
    source = folder_data_config(_bare(tmp_path / "aa", [disc, disc[::-1]] * 3))["source"]["init_args"]
    assert source["masks"] == {"class_path": "segopt.data.BinaryMask", "init_args": {"threshold": 128}}
    assert source["class_names"] == ["background", "foreground"]
    scaled = np.zeros((64, 64), np.uint8)
    scaled[:, 40:] = 85
    cv2.circle(scaled, (20, 32), 12, 170, -1, lineType=cv2.LINE_AA)  # three classes, smoothed at the disc's edge
    folder = _bare(tmp_path / "scaled", [scaled] * 5)
    code, _, err = _run(capsys, "--config", str(folder), "--minutes", "5", "--out", str(tmp_path / "r.yaml"))
    assert code == 1 and err.startswith("error: the grey masks hold ")
    assert "found only at region edges between a darker and a lighter one" in err and "they look anti-aliased" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.yaml").exists()
    one_px = np.zeros((64, 64), np.uint8)
    one_px[:, 30:] = 255
    one_px[:, 30] = 128  # one value along one edge: could be a thin class, so it stays a class
    source = folder_data_config(_bare(tmp_path / "thin", [one_px] * 5))["source"]["init_args"]
    assert source["masks"]["init_args"]["table"] == {0: 0, 128: 1, 255: 2}


def test_a_bare_folder_plans_and_an_unknown_layout_is_one_error_line(tmp_path: Path, described_probe, capsys) -> None:  # noqa: ANN001
    binary = np.zeros((40, 48), np.uint8)
    binary[:, 10:13] = 255
    folder = _bare(tmp_path / "set", [binary] * 10)
    code, printed, _ = _run(capsys, "--config", str(folder), "--minutes", "5", "--out", str(tmp_path / "r.yaml"))
    assert code == 0, printed
    assert yaml.safe_load((tmp_path / "r.yaml").read_text())["data"]["source"]["init_args"]["root"] == str(folder)
    scaled = np.where(binary == 255, 170, 0).astype(np.uint8)
    scaled[:2] = 85  # class ids scaled to be visible: read through the data check as a TableMask
    code, printed, _ = _run(capsys, "--config", str(_bare(tmp_path / "scaled", [scaled] * 10)), "--minutes", "5", "--out", str(tmp_path / "t.yaml"))
    assert code == 0, printed
    masks = yaml.safe_load((tmp_path / "t.yaml").read_text())["data"]["source"]["init_args"]["masks"]
    assert masks == {"class_path": "segopt.data.TableMask", "init_args": {"table": {0: 0, 85: 1, 170: 2}}}
    (tmp_path / "odd").mkdir()
    code, _, err = _run(capsys, "--config", str(tmp_path / "odd"), "--minutes", "5", "--out", str(tmp_path / "s.yaml"))
    assert code == 1 and err.startswith(f"error: {tmp_path / 'odd'} is a folder in none of the layouts segopt plan knows")
    assert not (tmp_path / "s.yaml").exists()


def test_large_images_whose_thin_class_needs_full_resolution_are_cropped() -> None:
    # 2000x2000 with wide structures but a 2 px class: whole images at scale 1 exceed MAX_WHOLE_PIXELS
    result = plan(_fp(size=(2000, 2000), widths=(400.0, 2.0, 300.0)), _probe(), 60)
    assert (result.chosen.mode, result.chosen.size, result.chosen.scale) == ("crop", (256, 256), 1.0)
    assert "too large to train whole at a scale that keeps it, so crops at full resolution" in result.decisions[1].reason
    assert result.value("data.eval_size") is None and result.value("data.full_res_masks") is False


def test_ema_averages_the_last_tenth_of_the_planned_steps() -> None:
    long, short = plan(_fp(), _probe(s_per_image=0.01), 60), plan(_fp(), _probe(s_per_image=0.1), 10)
    assert long.value("ema.decay") == 0.99  # capped at 100 steps
    steps = short.chosen.steps
    assert short.value("ema.decay") == round(1 - 1 / max(10.0, steps / 10), 4)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (CONFIGS / "recipes").glob("*.yaml")))
def test_shipped_recipes_parse_as_fit_reads_them(recipe: str, capsys) -> None:  # noqa: ANN001
    from segopt.commands.cli import main as cli_main

    with pytest.raises(SystemExit) as done:
        cli_main(["fit", f"--config={CONFIGS / 'recipes' / recipe}", "--print_config"])
    assert done.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    record = plan_paths(CONFIGS / "recipes" / recipe)[1]
    if record.exists():  # written by segopt plan: the recipe is what its record chose
        chosen = json.loads(record.read_text())["plan"]["chosen"]
        assert resolved["data"]["train_size"] == chosen["size"]
        assert resolved["data"]["batch_size"] == chosen["batch"]
        assert resolved["trainer"]["check_val_every_n_epoch"] == chosen["val_every"]
