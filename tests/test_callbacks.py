"""Checkpoint writes that survive a kill, and the overlay picture's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segopt.core.palette import colorize, legend, palette
from segopt.lightning.callbacks import AtomicCheckpointIO


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 7, "w": torch.ones(3)}, path)

    real_save = torch.save

    def dies_half_way(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 truncated")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # the process is killed in the middle of writing

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 7
    assert torch.equal(loaded["w"], torch.ones(3))


def test_colorize_uses_the_palette_and_marks_ignored_pixels() -> None:
    mask = np.array([[0, 1], [2, 255]])
    rgb = colorize(mask, num_classes=3)
    colours = palette(3)
    assert (rgb[0, 0] == colours[0]).all() and (rgb[0, 1] == colours[1]).all() and (rgb[1, 0] == colours[2]).all()
    assert rgb[1, 1].tolist() == [255, 0, 255]


def test_legend_shows_every_class_colour() -> None:
    names = ["Sky", "Building", "Pole", "Road"]
    strip = legend(names, width=300)
    assert strip.shape[1] == 300 and strip.dtype == np.uint8
    found = {tuple(c) for c in strip.reshape(-1, 3)}
    assert all(tuple(c) in found for c in palette(len(names)))
