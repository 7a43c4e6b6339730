"""Pixel digests: what they cover (decoded arrays, names) and what they ignore (encoding, other files)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from segopt.data.files import DataError
from segopt.public_data.content import pixel_digest


def written_out_digest(arrays: dict[str, np.ndarray]) -> str:
    """The digest format, written out apart from segopt: a sha256 of ``<array sha256>  <name>`` lines."""
    lines = ""
    for name in sorted(arrays):
        array = arrays[name]
        header = f"{'x'.join(map(str, array.shape))} {array.dtype.str}\n".encode()
        lines += f"{hashlib.sha256(header + array.tobytes()).hexdigest()}  {name}\n"
    return hashlib.sha256(lines.encode()).hexdigest()


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"b.png": rng.integers(0, 255, (6, 5, 3), np.uint8), "a.png": rng.integers(0, 255, (6, 5, 3), np.uint8)}


def _write(folder: Path, arrays: dict[str, np.ndarray], **save: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        Image.fromarray(array).save(folder / name, **save)
    return folder


def test_digest_is_of_the_decoded_arrays_in_name_order(tmp_path: Path):
    arrays = _arrays()
    assert pixel_digest(_write(tmp_path / "f", arrays), "rgb") == written_out_digest(arrays)


def test_grey_images_are_digested_with_their_channel_axis(tmp_path: Path):
    grey = {"0.png": np.arange(30, dtype=np.uint8).reshape(6, 5)}
    folder = _write(tmp_path / "f", grey)
    assert pixel_digest(folder, "grey") == written_out_digest({"0.png": grey["0.png"][..., None]})
    assert pixel_digest(folder, "mask") == written_out_digest(grey)


def test_re_encoding_keeps_the_digest(tmp_path: Path):
    arrays = _arrays()
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "another encoder")
    fast = _write(tmp_path / "fast", arrays, compress_level=0)
    small = _write(tmp_path / "small", arrays, compress_level=9, pnginfo=text)
    assert (fast / "a.png").read_bytes() != (small / "a.png").read_bytes()
    assert pixel_digest(fast, "rgb") == pixel_digest(small, "rgb") == written_out_digest(arrays)


def test_a_changed_pixel_or_name_changes_the_digest(tmp_path: Path):
    arrays = _arrays()
    before = pixel_digest(_write(tmp_path / "f", arrays), "rgb")
    arrays["a.png"][0, 0, 0] ^= 1
    assert pixel_digest(_write(tmp_path / "f", arrays), "rgb") != before
    arrays["a.png"][0, 0, 0] ^= 1
    assert pixel_digest(_write(tmp_path / "f", arrays), "rgb") == before
    (tmp_path / "f" / "a.png").rename(tmp_path / "f" / "c.png")
    renamed = pixel_digest(tmp_path / "f", "rgb")
    assert renamed != before
    assert renamed == written_out_digest({"b.png": arrays["b.png"], "c.png": arrays["a.png"]})


def test_files_training_does_not_read_are_left_out(tmp_path: Path):
    arrays = _arrays()
    folder = _write(tmp_path / "f", arrays)
    (folder / "README.txt").write_text("not an image")
    _write(folder / "aug", {"x.png": arrays["a.png"]})
    assert pixel_digest(folder, "rgb") == written_out_digest(arrays)


def test_a_missing_folder_is_a_data_error(tmp_path: Path):
    message = f"bad data: {tmp_path / 'gone'} is not a folder; the data set lacks it"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        pixel_digest(tmp_path / "gone", "mask")


def test_an_unknown_reader_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match=r"^read_as 'colour' is not one of \['grey', 'mask', 'rgb'\]$"):
        pixel_digest(tmp_path, "colour")
