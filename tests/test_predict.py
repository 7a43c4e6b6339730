"""Predicting a folder of images: masks and overlays at each image's size, bad files skipped."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segopt.commands.cli import main
from segopt.core.inference import predict_probs
from segopt.core.palette import overlay
from segopt.data import SyntheticShapes
from segopt.data.transforms import eval_transform
from segopt.lightning import SegDataModule
from segopt.lightning.module import SegModule
from segopt.lightning.prediction_writer import PredictionWriter
from segopt.models import UNet
from tests.conftest import CONFIGS, quiet_trainer

# name -> (height, width, channels); odd sizes, grey and colour, PNG and JPEG
GOOD = {"a": (197, 301, 3), "b": (40, 33, 1), "c": (64, 64, 3)}



@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three images of different sizes, a corrupt PNG and a file that is not an image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    for name, (h, w, c) in GOOD.items():
        image = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        assert cv2.imwrite(str(root / (f"{name}.jpg" if name == "b" else f"{name}.png")), image)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n but the rest is not a PNG")
    (root / "notes.txt").write_text("not an image")
    return root


def _model(num_classes: int = 5) -> SegModule:
    torch.manual_seed(0)
    return SegModule(partial(UNet, base_channels=4, depth=2), num_classes=num_classes, in_channels=3).eval()


def _predict(model: SegModule, datamodule: SegDataModule, out: Path) -> PredictionWriter:
    writer = PredictionWriter(str(out))
    trainer = quiet_trainer(callbacks=[writer])
    assert trainer.predict(model, datamodule=datamodule, return_predictions=False) is None
    return writer


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_writes_a_mask_and_an_overlay_per_image_and_skips_the_bad_one(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model()
    datamodule = SegDataModule(SyntheticShapes(), num_workers=0, predict_dir=str(folder))
    with caplog.at_level(logging.WARNING):
        writer = _predict(model, datamodule, tmp_path / "out")

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.png", "a_overlay.png", "b.png", "b_overlay.png", "c.png", "c_overlay.png"
    ]  # fmt: skip
    assert [Path(p).name for p, _ in writer.skipped] == ["bad.png"]
    assert any("bad.png" in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)

    transform = eval_transform()
    for name, (h, w, _) in GOOD.items():
        mask = cv2.imread(str(tmp_path / "out" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        # The same mask as predicting the image directly (grey files are read as RGB here).
        image = _read_rgb(next(folder.glob(f"{name}.*")))
        with torch.no_grad():
            expected = predict_probs(model, transform(image=image)["image"][None]).argmax(dim=1)[0]
        assert np.array_equal(mask, expected.numpy())
        # The overlay is the shared palette over the original pixels.
        drawn = _read_rgb(tmp_path / "out" / f"{name}_overlay.png")
        assert np.array_equal(drawn, overlay(image, mask, 5, 0.5))


@pytest.mark.slow
def test_batches_of_mixed_sizes_and_resized_evaluation_still_give_original_sizes(
    folder: Path, tmp_path: Path
) -> None:
    datamodule = SegDataModule(
        SyntheticShapes(), num_workers=0, predict_dir=str(folder), predict_batch_size=4, eval_size=(48, 48)
    )
    writer = _predict(_model(), datamodule, tmp_path / "out")
    assert len(writer.written) == 3 and len(writer.overlays) == 3
    for name, (h, w, _) in GOOD.items():
        assert cv2.imread(str(tmp_path / "out" / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == (h, w)


def test_more_than_256_classes_are_written_as_uint16(folder: Path, tmp_path: Path) -> None:
    def constant_class(in_channels: int, num_classes: int) -> nn.Module:
        conv = nn.Conv2d(in_channels, num_classes, 1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        conv.bias.data[299] = 1.0  # every pixel is class 299
        return conv

    model = SegModule(constant_class, num_classes=300, in_channels=3).eval()
    _predict(model, SegDataModule(SyntheticShapes(), num_workers=0, predict_dir=str(folder)), tmp_path / "out")
    mask = cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint16
    assert mask.shape == (197, 301) and (mask == 299).all()


def test_grey_model_reads_colour_images_as_grey(folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SegModule(partial(UNet, base_channels=4, depth=2), num_classes=2, in_channels=1).eval()
    source = SyntheticShapes()
    source.in_channels = 1
    datamodule = SegDataModule(source, num_workers=0, predict_dir=str(folder))
    writer = _predict(model, datamodule, tmp_path / "out")
    assert sorted(p.name for p in writer.written) == ["a.png", "b.png", "c.png"]
    assert _read_rgb(tmp_path / "out" / "a_overlay.png").shape == (197, 301, 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "is not a folder"),
        (lambda root: root, "holds no images"),
    ],
    ids=["missing", "empty"],
)
def test_unusable_predict_folder_is_a_clear_error(tmp_path: Path, make, message: str) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    datamodule = SegDataModule(SyntheticShapes(), num_workers=0, predict_dir=str(make(tmp_path)))
    with pytest.raises(FileNotFoundError, match=rf"data\.predict_dir: .*{message}"):
        datamodule.predict_dataloader()


def test_images_sharing_a_name_are_refused(folder: Path) -> None:
    cv2.imwrite(str(folder / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    datamodule = SegDataModule(SyntheticShapes(), num_workers=0, predict_dir=str(folder))
    with pytest.raises(ValueError, match=r"a\.jpg and a\.png share the name 'a'"):
        datamodule.predict_dataloader()


def test_bad_predict_batch_size_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"data\.predict_batch_size is 0"):
        SegDataModule(SyntheticShapes(), predict_batch_size=0)


@pytest.mark.slow
def test_cli_predicts_a_folder_with_a_checkpoint_and_the_training_config(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tiny = [
        f"--config={CONFIGS / 'amp.yaml'}",
        "--data.source.init_args.size=32",
        "--data.source.init_args.num_train=8",
        "--data.source.init_args.num_val=4",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--model.backbone.init_args.base_channels=4",
        "--model.backbone.init_args.depth=2",
    ]
    main(["fit", *tiny, "--trainer.max_epochs=1"])
    ckpt = tmp_path / "runs" / "amp" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    out = tmp_path / "predictions" / "folder"
    main(
        [
            "predict",
            *tiny,
            f"--config={CONFIGS / 'predict.yaml'}",
            f"--ckpt_path={ckpt}",
            f"--data.predict_dir={folder}",
            f"--trainer.default_root_dir={out}",
            "--model.tta.hflip=true",
            "--model.sliding_window.tile=32",
        ]
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["config.yaml"] + [f"{n}{s}.png" for n in GOOD for s in ("", "_overlay")])
    for name, (h, w, _) in GOOD.items():
        assert cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == (h, w)
    saved = (out / "config.yaml").read_text()
    assert "hflip: true" in saved and "PredictionWriter" in saved
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    inputs = {p.name: p.read_bytes() for p in folder.iterdir()}
    again = ["predict", *tiny, f"--config={CONFIGS / 'predict.yaml'}", "--ckpt_path=last", f"--data.predict_dir={folder}"]

    # Run again into the same folder: refused, nothing replaced.
    with pytest.raises(SystemExit) as exit_info:
        main([*again, f"--trainer.default_root_dir={out}"])
    assert str(exit_info.value.code).startswith(
        f"error: trainer.default_root_dir {out} already holds 7 of the files this run would write "
        "(a.png, b.png, c.png and 4 more); nothing was written."
    ), exit_info.value.code
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # Into its own input folder (or one holding it): refused even with overwrite.
    for target in (folder, folder.parent):
        with pytest.raises(SystemExit, match=r"is or holds the input folder data\.predict_dir"):
            main([*again, f"--trainer.default_root_dir={target}", "--trainer.callbacks.overwrite=true"])
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == inputs
    assert not (tmp_path / "config.yaml").exists()

    # With overwrite, and the newest checkpoint found as `last` through the training config's logger.
    main([*again, f"--trainer.default_root_dir={out}", "--trainer.callbacks.overwrite=true"])
    assert sorted(p.name for p in out.iterdir()) == names
    assert "hflip: true" not in (out / "config.yaml").read_text()  # the new run's config replaced the old


# -- outputs never replace files, collide or land in the wrong folder ------------------------


def _untrained_predict(tmp_path: Path, *extra: str) -> None:
    """``predict`` of configs/amp.yaml's synthetic val split (4 images) with untrained weights: no training."""
    main(
        [
            "predict",
            f"--config={CONFIGS / 'amp.yaml'}",
            "--data.source.init_args.size=32",
            "--data.source.init_args.num_train=8",
            "--data.source.init_args.num_val=4",
            "--data.num_workers=0",
            "--model.backbone.init_args.base_channels=4",
            "--model.backbone.init_args.depth=2",
            f"--config={CONFIGS / 'predict.yaml'}",
            "--ckpt_path=untrained",
            "--trainer.enable_progress_bar=false",
            *extra,
        ]
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_predicting_a_split_refuses_to_replace_an_earlier_runs_masks_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "predictions"
    _untrained_predict(tmp_path)
    assert sorted(_files(out)) == ["00000.png", "00001.png", "00002.png", "00003.png", "config.yaml"]
    before = _files(out)
    with pytest.raises(SystemExit) as exit_info:
        _untrained_predict(tmp_path, "--model.tta.hflip=true")
    assert str(exit_info.value.code) == (
        f"error: trainer.default_root_dir {out} already holds 5 of the files this run would write "
        "(00000.png, 00001.png, 00002.png and 2 more); nothing was written. Pick an empty folder, or pass "
        "--trainer.callbacks.overwrite true (PredictionWriter's overwrite) to replace them"
    )
    assert _files(out) == before
    _untrained_predict(tmp_path, "--model.tta.hflip=true", "--trainer.callbacks.overwrite=true")
    assert "hflip: true" in (out / "config.yaml").read_text()


def test_the_config_goes_into_the_output_dir_with_the_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _untrained_predict(tmp_path, "--trainer.callbacks.output_dir=masks")
    assert sorted(_files(tmp_path / "masks")) == ["00000.png", "00001.png", "00002.png", "00003.png", "config.yaml"]
    assert "output_dir: masks" in (tmp_path / "masks" / "config.yaml").read_text()
    assert not (tmp_path / "predictions").exists()  # configs/predict.yaml's default_root_dir, shared by every run


@pytest.mark.parametrize("inside", [False, True], ids=["file", "under-a-file"])
def test_an_output_dir_that_is_a_file_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inside: bool) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "masks").write_text("not a folder")
    target = tmp_path / "masks" / "run" if inside else tmp_path / "masks"
    with pytest.raises(SystemExit) as exit_info:
        _untrained_predict(tmp_path, f"--trainer.callbacks.output_dir={target}")
    assert str(exit_info.value.code) == (
        f"error: trainer.callbacks.output_dir {target}: {tmp_path / 'masks'} is a file, not a folder; nothing was "
        f"written. Give a folder path, e.g. --trainer.callbacks.output_dir {tmp_path / 'masks_predictions'}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]
    assert (tmp_path / "masks").read_text() == "not a folder"


def test_an_image_named_like_another_images_overlay_is_refused(folder: Path, tmp_path: Path) -> None:
    assert cv2.imwrite(str(folder / "a_overlay.png"), np.zeros((8, 8, 3), np.uint8))
    datamodule = SegDataModule(SyntheticShapes(), num_workers=0, predict_dir=str(folder))
    with pytest.raises(ValueError) as error:
        _predict(_model(), datamodule, tmp_path / "out")
    assert str(error.value) == (
        f"data.predict_dir {folder}: the mask of a_overlay.png and the overlay of a.png would both be written as "
        "a_overlay.png; nothing was written. Rename one of the images, or pass --trainer.callbacks.overlay false"
    )
    assert not (tmp_path / "out").exists()

    # Without overlays the names are distinct, and the count line is what is on disk.
    writer = PredictionWriter(str(tmp_path / "out"), overlay=False)
    quiet_trainer(callbacks=[writer]).predict(_model(), datamodule=datamodule, return_predictions=False)
    on_disk = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert on_disk == ["a.png", "a_overlay.png", "b.png", "c.png"]
    assert sorted(p.name for p in writer.written) == on_disk and writer.overlays == []
