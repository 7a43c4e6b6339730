"""PairedFolder: pairing by stem, the real data sets by config, and each bad input's error."""

from __future__ import annotations

import logging
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segopt.data import BinaryMask, DataError, IndexMask, PairedFolder, PaletteMask
from segopt.data.files import read_image
from segopt.lightning import SegDataModule

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "data"
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(h: int = 8, w: int = 10, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def _make(root: Path, stems=("a", "b", "c"), split="train", image_ext=".png", mask_ext=".png") -> None:
    for i, stem in enumerate(stems):
        _save(root / split / f"{stem}{image_ext}", _rgb(value=(40 * i) % 256))
        _save(root / f"{split}annot" / f"{stem}{mask_ext}", np.full((8, 10), i % 3, np.uint8))


def _folder(root: Path, **kwargs) -> PairedFolder:
    kwargs.setdefault("class_names", ["a", "b", "c"])
    kwargs.setdefault("image_dirs", {"train": "train", "val": "val"})
    kwargs.setdefault("mask_dirs", {"train": "trainannot", "val": "valannot"})
    return PairedFolder(str(root), **kwargs)


def _listed_folder(root: Path) -> PairedFolder:
    """Train and val pairs drawn from one folder (``all``/``allannot``) by ``train.txt`` and ``val.txt``."""
    return _folder(
        root,
        image_dirs={"train": "all", "val": "all"},
        mask_dirs={"train": "allannot", "val": "allannot"},
        split_lists={"train": "train.txt", "val": "val.txt"},
    )


@pytest.fixture
def good(tmp_path: Path) -> Path:
    _make(tmp_path, split="train")
    _make(tmp_path, stems=("v1", "v2"), split="val")
    return tmp_path


def test_pairs_by_stem_across_extensions(tmp_path: Path):
    _make(tmp_path, stems=("x", "y"), image_ext=".jpg", mask_ext=".png")
    _make(tmp_path, stems=("v",), split="val", image_ext=".bmp", mask_ext=".tif")
    source = _folder(tmp_path)
    source.validate()
    assert [(p.image.name, p.mask.name) for p in source.index.pairs["train"]] == [("x.jpg", "x.png"), ("y.jpg", "y.png")]
    image, mask = source.split("val", 255)[0]
    assert image.shape == (8, 10, 3) and mask.shape == (8, 10)


def test_split_lists_select_pairs_from_a_shared_folder(tmp_path: Path):
    _make(tmp_path, stems=("a", "b", "c", "d"), split="all")
    (tmp_path / "train.txt").write_text("a\nimages/b.png\n# comment\n")
    (tmp_path / "val.txt").write_text("c\nd\n")
    source = _listed_folder(tmp_path)
    source.validate()
    assert [p.image.stem for p in source.index.pairs["train"]] == ["a", "b"]
    assert [p.image.stem for p in source.index.pairs["val"]] == ["c", "d"]


def test_split_list_names_with_dots_match_exactly(tmp_path: Path):
    # "scan.s00" is a stem, not "scan" with an extension ".s00"; "scan.s01.png" is a file name.
    _make(tmp_path, stems=("scan", "scan.s00", "scan.s01", "scan.s02"), split="all")
    (tmp_path / "train.txt").write_text("scan.s00\nimages/scan.s01.png\n")
    (tmp_path / "val.txt").write_text("scan\n")
    source = _listed_folder(tmp_path)
    source.validate()
    assert [p.image.name for p in source.index.pairs["train"]] == ["scan.s00.png", "scan.s01.png"]
    assert [p.image.name for p in source.index.pairs["val"]] == ["scan.png"]


def test_split_list_name_with_a_dot_and_no_image_is_named_as_written(tmp_path: Path):
    _make(tmp_path, stems=("scan", "b"), split="all")
    (tmp_path / "train.txt").write_text("scan.s00\nb\n")
    (tmp_path / "val.txt").write_text("b\n")
    source = _listed_folder(tmp_path)
    assert _problems(source) == (
        f"data set {tmp_path}: split list {tmp_path / 'train.txt'} names 1 stem(s) with no image in "
        f"{tmp_path / 'all'}: ['scan.s00']; fix the list or add the images"
    )


def test_nfc_image_pairs_with_its_nfd_mask_and_a_note_says_so(tmp_path: Path, caplog):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    _save(tmp_path / "train" / f"{nfc}.png", _rgb())
    _save(tmp_path / "trainannot" / f"{nfd}.png", np.zeros((8, 10), np.uint8))
    _make(tmp_path, stems=("v",), split="val")
    source = _folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="segopt.data.folder"):
        source.validate()
    [pair] = source.index.pairs["train"]
    assert (pair.image.name, pair.mask.name) == (f"{nfc}.png", f"{nfd}.png")
    assert caplog.messages == [
        f"segopt: 1 pair(s) of split 'train' were paired after Unicode NFC normalisation of their names, e.g. image "
        f"{tmp_path / 'train' / f'{nfc}.png'} with mask {tmp_path / 'trainannot' / f'{nfd}.png'}: the names look "
        "alike but are encoded differently (one composed, one decomposed, as macOS writes them); rename them alike "
        "to silence this"
    ]


def test_seeded_val_fraction_is_reproducible_and_disjoint(tmp_path: Path):
    _make(tmp_path, stems=[str(i) for i in range(10)])
    kw = dict(image_dirs={"train": "train"}, mask_dirs={"train": "trainannot"}, val_fraction=0.3, val_seed=7)
    one, two = _folder(tmp_path, **kw), _folder(tmp_path, **kw)
    val = [p.image.stem for p in one.index.pairs["val"]]
    assert len(val) == 3 and len(one.index.pairs["train"]) == 7
    assert val == [p.image.stem for p in two.index.pairs["val"]]
    assert not set(val) & {p.image.stem for p in one.index.pairs["train"]}
    other = _folder(tmp_path, **{**kw, "val_seed": 8})
    assert val != [p.image.stem for p in other.index.pairs["val"]]


# -- bad input: one clear error per problem, raised when the datamodule is built ----------


def _problems(source: PairedFolder) -> str:
    with pytest.raises(DataError) as err:
        SegDataModule(source, num_workers=0)  # built before any Trainer writes a file
    return str(err.value)


def test_image_without_mask(good: Path):
    (good / "trainannot" / "b.png").unlink()
    message = _problems(_folder(good))
    assert f"1 image(s) without a mask in {good / 'trainannot'}, e.g. {good / 'train' / 'b.png'}" in message
    assert "add the masks or remove the images" in message


def test_mask_without_image(good: Path):
    (good / "train" / "c.png").unlink()
    message = _problems(_folder(good))
    assert f"1 mask(s) without an image in {good / 'train'}, e.g. {good / 'trainannot' / 'c.png'}" in message
    assert "add the images or remove the masks" in message


def test_corrupt_image_header_is_found_at_setup(good: Path):
    (good / "train" / "a.png").write_bytes(b"not a png at all")
    message = _problems(_folder(good))
    assert f"{good / 'train' / 'a.png'}: not a readable image" in message and "re-export it or remove it" in message


def test_truncated_image_is_found_at_decode_with_its_name(good: Path):
    path = good / "train" / "b.png"
    path.write_bytes(path.read_bytes()[:60])  # header intact, pixel data cut
    source = _folder(good)
    source.validate()
    with pytest.raises(DataError, match=f"{path}: image cannot be decoded .*re-export it or remove it"):
        source.split("train", 255)[1]


def test_float32_tiff_image_is_valid_but_its_sample_type_is_named_unsupported(good: Path):
    path = good / "train" / "b.tif"
    (good / "train" / "b.png").unlink()
    Image.fromarray(np.random.default_rng(0).random((8, 10)).astype(np.float32)).save(path)
    expected = (
        f"{path}: image decodes as a valid TIFF (10x8), not a corrupt file, but its sample type, 32-bit floating "
        "point (mode F), is not supported; supported: 8-bit or 16-bit unsigned integers (grey, grey+alpha, RGB, "
        "RGBA or palette): save it with one of those (scaling the values to 0..255 or 0..65535)"
    )
    assert _problems(_folder(good)) == f"data set {good}: {expected}"  # from the header, at setup
    with pytest.raises(DataError) as err:
        read_image(path, 3)  # and when decoded on its own (prediction folders)
    assert err.value.problems == [expected]


def test_image_and_mask_of_different_size(good: Path):
    _save(good / "trainannot" / "a.png", np.zeros((4, 5), np.uint8))
    message = _problems(_folder(good))
    assert f"{good / 'trainannot' / 'a.png'}: mask is 5x4 but its image {good / 'train' / 'a.png'} is 10x8" in message
    assert "a mask must have its image's size" in message


def test_mask_value_at_or_above_num_classes_names_file_value_and_fix(good: Path):
    _save(good / "trainannot" / "b.png", np.full((8, 10), 7, np.uint8))
    source = _folder(good)
    dm = SegDataModule(source, num_workers=0, augment=None)
    with pytest.raises(DataError) as err:
        dm.dataset("train")[1]
    assert f"{good / 'trainannot' / 'b.png'}: mask value(s) ≥ num_classes=3 and not void: 7 (80 px)" in str(err.value)


def test_all_bad_masks_are_reported_at_once_when_caching(good: Path):
    _save(good / "trainannot" / "a.png", np.full((8, 10), 9, np.uint8))
    _save(good / "trainannot" / "c.png", np.full((8, 10), 5, np.uint8))
    dm = SegDataModule(_folder(good), num_workers=0, cache=True)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert "2 problems" in str(err.value)
    assert "a.png: mask value(s)" in str(err.value) and "c.png: mask value(s)" in str(err.value)


def test_rgb_mask_colour_not_in_palette(tmp_path: Path):
    colours = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    for split in ("train", "val"):
        _save(tmp_path / split / "a.png", _rgb())
        mask = np.zeros((8, 10, 3), np.uint8)
        mask[:, :5] = (255, 0, 0)
        _save(tmp_path / f"{split}annot" / "a.png", mask)
    odd = np.zeros((8, 10, 3), np.uint8)
    odd[0, 0] = (7, 8, 9)
    _save(tmp_path / "valannot" / "a.png", odd)
    source = _folder(tmp_path, masks=PaletteMask(colours))
    _, mask = source.split("train", 255)[0]
    np.testing.assert_array_equal(mask[:, :5], 1)
    np.testing.assert_array_equal(mask[:, 5:], 0)
    with pytest.raises(DataError, match=r"valannot/a.png: mask colour\(s\) not in the palette: \[7, 8, 9\] \(1 px\)"):
        source.split("val", 255)[0]


def test_wrong_root(tmp_path: Path):
    message = _problems(_folder(tmp_path / "nope"))
    assert f"data root {tmp_path / 'nope'} does not exist" in message and "set data.source.init_args.root" in message


def test_empty_and_missing_folders_all_in_one_error(tmp_path: Path):
    (tmp_path / "train").mkdir()
    (tmp_path / "trainannot").mkdir()
    (tmp_path / "trainannot" / "notes.txt").write_text("x")
    message = _problems(_folder(tmp_path))
    assert f"folder {tmp_path / 'train'} has no image files" in message and "(it is empty)" in message
    assert "holds 1 other entries, e.g. ['notes.txt']" in message
    assert f"folder {tmp_path / 'val'} does not exist" in message
    assert "4 problems" in message


def test_grey_image_with_in_channels_3_is_converted_and_said_once(good: Path, caplog):
    _save(good / "train" / "b.png", np.full((8, 10), 77, np.uint8))
    source = _folder(good)
    with caplog.at_level(logging.WARNING, logger="segopt.data.folder"):
        dm = SegDataModule(source, num_workers=0)
        dm.dataset("train")
        dm.dataset("val")
    notes = [r.message for r in caplog.records if "grey image" in r.message]
    assert len(notes) == 1 and "1 grey image(s)" in notes[0] and "converted to 3 channels" in notes[0]
    image, _ = source.split("train", 255)[1]
    assert image.shape == (8, 10, 3) and (image == 77).all()


def test_colour_image_with_in_channels_1_is_refused(good: Path):
    message = _problems(_folder(good, in_channels=1))
    assert f"{good / 'train' / 'a.png'}: image is colour (RGB) but in_channels is 1; set in_channels: 3" in message


def test_num_classes_disagreeing_with_class_names(good: Path):
    message = _problems(_folder(good, num_classes=5))
    assert "num_classes is 5 but class_names has 3 names (['a', 'b', 'c']); make them agree" in message


def test_binary_masks_with_three_class_names(good: Path):
    message = _problems(_folder(good, masks=BinaryMask()))
    assert "BinaryMask gives 2 classes but class_names has 3" in message


def test_ignore_index_that_is_a_class_id(good: Path):
    with pytest.raises(DataError, match=r"data.ignore_index is 2, which is the id of class 'c'"):
        SegDataModule(_folder(good), ignore_index=2)


def test_colour_masks_with_index_decoder_found_from_headers(good: Path):
    _save(good / "trainannot" / "a.png", _rgb())
    message = _problems(_folder(good))
    assert f"{good / 'trainannot' / 'a.png'}: mask is colour (RGB) but IndexMask expects one channel" in message


# -- the real data sets, by config ------------------------------------------------------


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED


def _source_from(config: str, monkeypatch) -> PairedFolder:
    from segopt.commands.check import _source_from_config

    monkeypatch.chdir(PROJECT)  # the configs' roots are relative to the project root
    monkeypatch.setattr(sys, "argv", ["check"])  # the CLI parser must see only these args
    source, ignore_index, *_ = _source_from_config(["--config", "configs/amp.yaml", "--config", config])
    assert ignore_index == 255
    return source


def test_camvid_config_loads(shared: Path, monkeypatch):
    source = _source_from("configs/data/camvid.yaml", monkeypatch)
    source.validate()
    assert source.class_names == CAMVID_CLASSES
    assert {k: len(v) for k, v in source.index.pairs.items()} == {"train": 367, "val": 101}
    image, mask = source.split("train", 255)[0]
    assert image.shape == (360, 480, 3)
    assert set(np.unique(mask).tolist()) <= set(range(11)) | {255}
    assert (mask == 255).any()  # CamVid's void (11) is present and became ignore_index


def test_membrane_config_loads(shared: Path, monkeypatch):
    source = _source_from("configs/data/membrane.yaml", monkeypatch)
    source.validate()
    train, val = source.index.pairs["train"], source.index.pairs["val"]
    assert (len(train), len(val)) == (24, 6)
    assert len({p.image.name for p in train + val}) == 30
    image, mask = source.split("val", 255)[0]
    assert image.shape == (512, 512, 1)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert 0.7 < mask.mean() < 0.85  # 255 = cell interior, about 78 % of pixels


def test_real_camvid_mask_values_pass_through_index_decoder(shared: Path):
    source = PairedFolder(str(shared / "camvid"), CAMVID_CLASSES, masks=IndexMask(void=[11]))
    raw = np.asarray(Image.open(source.index.pairs["val"][0].mask))
    _, mask = source.split("val", 255)[0]
    np.testing.assert_array_equal(mask, np.where(raw == 11, 255, raw))
