"""The data check is the contract: what would make fit/validate/test fail on the data is reported by
``python -m segopt.check`` first, and by fit before anything is written. Covers the EXIF orientation
policy (every file read as displayed), lossy (JPEG) masks and splits of mixed image sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from segopt.commands.check import main as check_main
from segopt.commands.cli import main as cli_main
from segopt.data import PairedFolder, SyntheticShapes
from segopt.data.batching import Batching
from segopt.data.files import ORIENTATION_TAG, DataError, orient, read_header, read_image, read_mask
from segopt.data.predict_folder import PredictFolder
from segopt.data.transforms import Augment, eval_transform
from segopt.lightning import SegDataModule
from tests.conftest import CONFIGS, tiny_cli_args


def _save(path: Path, array: np.ndarray, orientation: int | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        options["exif"] = exif
    Image.fromarray(array).save(path, **options)
    return path


def _image(h: int, w: int) -> np.ndarray:
    """A corner-marked gradient: any turn or flip changes it."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w)[None] * (255 // max(w - 1, 1))
    image[..., 1] = np.arange(h)[:, None] * (255 // max(h - 1, 1))
    image[:2, :3, 2] = 255
    return image


def _mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2] = 1
    mask[:2, :3] = 2
    return mask


def _pairs(root: Path, split: str, sizes: list[tuple[int, int]]) -> None:
    for i, (h, w) in enumerate(sizes):
        _save(root / split / f"{i}.png", _image(h, w))
        _save(root / f"{split}annot" / f"{i}.png", _mask(h, w))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _check(tmp_path: Path, root: Path, monkeypatch, capsys, **data) -> tuple[int, str]:
    config = tmp_path / "data.yaml"
    extra = "".join(f"  {key}: {value}\n" for key, value in data.items() if key != "source")
    source_extra = data.get("source", "")
    config.write_text(
        "data:\n  source:\n    class_path: segopt.data.PairedFolder\n    init_args:\n"
        f"      root: {root}\n      class_names: [a, b, c]\n{source_extra}  num_workers: 0\n{extra}"
    )
    monkeypatch.setattr(sys, "argv", ["check"])
    before = _tree(tmp_path)
    code = check_main(["--config", str(config)])
    assert _tree(tmp_path) == before  # the check reads only
    return code, capsys.readouterr().out


def _folder(root: Path, **kwargs) -> PairedFolder:
    return PairedFolder(str(root), class_names=["a", "b", "c"], **kwargs)


# -- EXIF orientation: every file is read as it is displayed ------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_pixels_as_pillow_and_opencv_display_them(tmp_path: Path, orientation: int):
    stored = _image(8, 12)
    path = _save(tmp_path / "a.png", stored, orientation)
    with Image.open(path) as im:
        displayed = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(orient(stored, orientation), displayed)
    np.testing.assert_array_equal(read_image(path, 3), displayed)
    np.testing.assert_array_equal(read_image(path, 3), cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR_RGB))
    header = read_header(path)
    assert (header.height, header.width) == displayed.shape[:2] and header.orientation == orientation
    mask_path = _save(tmp_path / "m.png", _mask(8, 12), orientation)
    with Image.open(mask_path) as im:
        np.testing.assert_array_equal(read_mask(mask_path, colour=False), np.asarray(ImageOps.exif_transpose(im)))


def _phone_photo(root: Path, mask_as: str) -> Path:
    """A JPEG stored 12 wide, 8 high, tagged to display turned a quarter (8 wide, 12 high), and its mask."""
    photo = _save(root / "train" / "p.jpg", _image(8, 12), orientation=6, quality=95)
    displayed = _mask(12, 8) if mask_as == "displayed" else _mask(8, 12)
    _save(root / "trainannot" / "p.png", displayed)
    _pairs(root, "val", [(12, 8)])
    return photo


def test_a_phone_photo_with_a_displayed_size_mask_is_checked_trained_and_predicted_as_displayed(
    tmp_path: Path, monkeypatch, capsys
):
    root = tmp_path / "data"
    photo = _phone_photo(root, "displayed")
    code, out = _check(tmp_path, root, monkeypatch, capsys)
    assert code == 0, out
    assert "image sizes: {'8x12': 1}" in out
    assert (
        f"note: 1 file(s) carry an EXIF orientation tag (e.g. {photo}: orientation 6); every image and mask is read "
        "as it is displayed (the tag applied), so a mask must match its image as an image viewer shows it"
    ) in out
    image, mask = _folder(root).split("train", 255)[0]
    assert image.shape == (12, 8, 3) and mask.shape == (12, 8)
    with Image.open(photo) as im:
        np.testing.assert_array_equal(image, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    dm = SegDataModule(_folder(root), batch_size=1, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape) == (1, 3, 12, 8) and tuple(batch["mask"].shape) == (1, 12, 8)
    predicted = PredictFolder(root / "train", 3, eval_transform())[0]
    assert predicted["size"] == (12, 8) and tuple(predicted["image"].shape) == (3, 12, 8)


def test_a_phone_photo_with_a_stored_size_mask_is_refused_by_the_check_and_by_fit(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "data"
    photo = _phone_photo(root, "stored")
    expected = (
        f"{root / 'trainannot' / 'p.png'}: mask is 12x8 but its image {photo} is 8x12 as displayed: {photo} has EXIF "
        "orientation 6, which turns its stored 12x8 pixels; segopt reads every file as displayed, so re-export the mask "
        "in the orientation the image is shown in, or save the image with the turn applied (no tag)"
    )
    code, out = _check(tmp_path, root, monkeypatch, capsys)
    assert code == 1
    assert f"PROBLEMS (1):\n  - {expected}" in out
    with pytest.raises(DataError) as error:
        SegDataModule(_folder(root), num_workers=0)
    assert error.value.problems == [expected]


# -- lossy masks -------------------------------------------------------------------------------------------------


def _jpeg_masks(root: Path) -> Path:
    _pairs(root, "train", [(16, 16), (16, 16)])
    _pairs(root, "val", [(16, 16)])
    (root / "trainannot" / "1.png").unlink()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 2  # a square of class 2 and a stripe of class 1: their edges ring under JPEG compression
    mask[:, 13:] = 1
    return _save(root / "trainannot" / "1.jpg", mask, quality=90)


LOSSY = (
    "1 mask(s) are JPEG, a lossy format, e.g. {path}: its compression changes pixel values at class edges, so edge "
    "pixels would train as the wrong class (or as no class); save the masks as PNG (lossless), exported again from "
    "the labelling tool (converting these files keeps the damage), or set data.source.init_args.allow_lossy_masks: "
    "true to train on them"
)


def test_jpeg_masks_are_refused_by_the_check_and_by_fit_with_the_reason_and_the_fix(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "data"
    path = _jpeg_masks(root)
    assert read_mask(path, colour=False).max() > 2  # the compression made values that are no class
    code, out = _check(tmp_path, root, monkeypatch, capsys)
    assert code == 1
    assert f"PROBLEMS (1):\n  - {LOSSY.format(path=path)}" in out  # the format is blamed, not the class list
    with pytest.raises(DataError) as error:
        SegDataModule(_folder(root), num_workers=0)
    assert error.value.problems == [LOSSY.format(path=path)]


def test_jpeg_masks_accepted_on_request_say_so_and_blame_the_format_for_bad_values(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "data"
    path = _jpeg_masks(root)
    code, out = _check(tmp_path, root, monkeypatch, capsys, source="      allow_lossy_masks: true\n")
    assert code == 1
    assert (
        f"note: 1 mask(s) are JPEG (lossy), e.g. {path}, accepted because allow_lossy_masks is true: pixels at class "
        "edges may carry wrong class ids"
    ) in out
    hint = "(this mask is JPEG, a lossy format whose compression invents values at class edges: save it as PNG)"
    assert f"  - {path}: mask value(s) ≥ num_classes=3 and not void: " in out and out.count(hint) == 1
    split = _folder(root, allow_lossy_masks=True).split("train", 255)
    with pytest.raises(DataError) as error:
        split[1]
    [problem] = error.value.problems
    assert problem.startswith(f"{path}: mask value(s) ≥ num_classes=3 and not void: ") and problem.endswith(hint)


# -- mixed image sizes -------------------------------------------------------------------------------------------


def test_batching_rule_names_the_split_two_files_and_the_fixes():
    sizes = [("v/a.png", "16x16"), ("v/b.png", "16x16"), ("v/c.png", "24x16")]
    assert Batching(batch_size=2).problem("val", sizes) == (
        "val images differ in size (2 sizes in 3 images): v/a.png is 16x16, v/c.png is 24x16, but data.eval_size is "
        "null, so the evaluation batches of data.batch_size=2 (data.eval_batch_size is null) images cannot be stacked; "
        "set data.eval_size: [height, width] (images resized for the network) or data.eval_batch_size: 1 (each image "
        "at its own size)"
    )
    assert Batching(batch_size=2, eval_size=(16, 16), full_res_masks=True, eval_batch_size=4).problem("test", sizes) == (
        "test images differ in size (2 sizes in 3 images): v/a.png is 16x16, v/c.png is 24x16, and data.full_res_masks "
        "keeps each mask at its own size, so the evaluation batches of data.eval_batch_size=4 masks cannot be stacked; "
        "set data.eval_batch_size: 1 or data.full_res_masks: false"
    )
    assert Batching(batch_size=8).problem("train", sizes) == (
        "train images differ in size (2 sizes in 3 images): v/a.png is 16x16, v/c.png is 24x16, but data.train_size is "
        "null, so the training batches of data.batch_size=8 images cannot be stacked; set data.train_size: [height, "
        "width] (with data.resize_mode: crop or resize) or data.batch_size: 1"
    )
    assert Batching(batch_size=2, eval_batch_size=1).problem("val", sizes) is None
    assert Batching(batch_size=2, eval_size=(16, 16)).problem("val", sizes) is None
    assert Batching(batch_size=2, train_size=(8, 8)).problem("train", sizes) is None
    assert Batching(batch_size=2).problem("val", sizes[:2]) is None


def _mixed_val(root: Path) -> None:
    _pairs(root, "train", [(16, 16), (16, 16)])
    _pairs(root, "val", [(16, 16), (24, 16)])


def _mixed_message(root: Path) -> str:
    return (
        f"val images differ in size (2 sizes in 2 images): {root / 'val' / '0.png'} is 16x16, {root / 'val' / '1.png'} "
        "is 16x24, but data.eval_size is null, so the evaluation batches of data.batch_size=2 (data.eval_batch_size is "
        "null) images cannot be stacked; set data.eval_size: [height, width] (images resized for the network) or "
        "data.eval_batch_size: 1 (each image at its own size)"
    )


def test_mixed_validation_sizes_are_reported_by_the_check_and_by_the_datamodule(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "data"
    _mixed_val(root)
    code, out = _check(tmp_path, root, monkeypatch, capsys, batch_size=2)
    assert code == 1
    assert f"PROBLEMS (1):\n  - {_mixed_message(root)}" in out
    dm = SegDataModule(_folder(root), batch_size=2, num_workers=0)
    for stage in ("fit", "validate", "test", "predict"):  # test and predict read val when there is no test split
        with pytest.raises(DataError) as error:
            (dm.setup if stage == "fit" else dm.check_batches)(stage)
        assert error.value.problems == [_mixed_message(root)]
    # predict with a folder of its own reads no split
    SegDataModule(_folder(root), batch_size=2, num_workers=0, predict_dir=str(root / "train")).check_batches("predict")
    code, out = _check(tmp_path, root, monkeypatch, capsys, batch_size=2, eval_batch_size=1)
    assert code == 0, out
    fixed = SegDataModule(_folder(root), batch_size=2, eval_batch_size=1, num_workers=0)
    fixed.setup("fit")
    assert [tuple(b["image"].shape[-2:]) for b in fixed.val_dataloader()] == [(16, 16), (24, 16)]
    assert fixed.train_dataloader().batch_size == 2


def test_fit_refuses_mixed_validation_sizes_before_writing_anything(tmp_path: Path, monkeypatch):
    root = tmp_path / "data"
    _mixed_val(root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["segopt"])  # the CLI parser must see only these args
    before = _tree(tmp_path)
    source = f"{{class_path: segopt.data.PairedFolder, init_args: {{root: {root}, class_names: [a, b, c]}}}}"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", f"--config={CONFIGS / 'amp.yaml'}", *tiny_cli_args(batch_size=2), "--trainer.accelerator=cpu",
                  f"--data.source={source}", "--data.train_size=null", "--data.eval_size=null"])
    assert exit_info.value.code == f"error: bad data: {_mixed_message(root)}"
    assert _tree(tmp_path) == before and not (tmp_path / "runs").exists()


# -- rare-class crops need a rare class ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "data", "kwargs"),
    [
        ("data.augment.rare_crop_share", dict(train_size="[8, 8]", resize_mode="crop", augment="{rare_crop_share: 0.5}"),
         dict(train_size=(8, 8), resize_mode="crop", augment=Augment(rare_crop_share=0.5))),
        ("data.rare_image_share", dict(rare_image_share=0.5), dict(rare_image_share=0.5)),
    ],
    ids=["crops", "images"],
)
def test_rare_sampling_without_a_rare_class_is_reported_by_the_check_as_fit_reports_it(
    tmp_path: Path, monkeypatch, capsys, key, data, kwargs
):
    root = tmp_path / "data"
    _pairs(root, "train", [(16, 16), (16, 16)])
    _pairs(root, "val", [(16, 16)])
    expected = (
        f"{key} is 0.5 but no class holds less than 2.00% of the training pixels (the rarest, "
        f"'c', holds 2.34%); raise data.augment.rare_class_below or set {key.rsplit('.', 1)[-1]}: 0"
    )
    code, out = _check(tmp_path, root, monkeypatch, capsys, **data)
    assert code == 1
    assert f"PROBLEMS (1):\n  - {expected}" in out
    dm = SegDataModule(_folder(root), num_workers=0, **kwargs)
    with pytest.raises(ValueError) as error:
        dm.setup("fit")
    assert str(error.value) == expected


def test_bad_eval_batch_size_names_the_key():
    with pytest.raises(ValueError) as error:
        SegDataModule(SyntheticShapes(size=16, num_train=2, num_val=1), eval_batch_size=0, num_workers=0)
    assert str(error.value) == "data.eval_batch_size is 0; it must be 1 or more, or null (data.batch_size)"


# -- a declared class the training masks never show: one rule, a warning in the check and in fit ----------------


def test_a_class_absent_from_the_training_masks_is_the_same_warning_in_the_check_and_in_fit(
    tmp_path: Path, monkeypatch, capsys, caplog
):
    root = tmp_path / "data"
    _pairs(root, "train", [(16, 16), (16, 16)])
    _pairs(root, "val", [(16, 16)])
    for mask in (root / "trainannot").iterdir():  # class 2 'c' only in the validation mask
        _save(mask, np.minimum(_mask(16, 16), 1))
    expected = (
        "class(es) 2 'c' of the 3 in class_names never appear in the training masks: a class absent from training "
        "cannot be learned (it scores IoU 0 wherever it appears); add training masks that show it, drop the name, "
        "or check the mask decoding (void values, threshold, palette)"
    )
    code, out = _check(tmp_path, root, monkeypatch, capsys)
    assert code == 0  # not bad input
    assert f"\nwarning: {expected}\n" in out and "OK: no problems found" in out
    dm = SegDataModule(_folder(root), num_workers=0)
    with caplog.at_level("WARNING", logger="segopt.lightning.datamodule"):
        dm.setup("fit")
    logged = [r.getMessage() for r in caplog.records if r.name == "segopt.lightning.datamodule"]
    assert logged == [f"segopt: warning: {expected}"]
    assert dm.train_class_pixels().tolist() == [256, 256, 0]
