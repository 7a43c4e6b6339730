"""Mask decoding: class ids, binary thresholds and colour palettes, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segopt.data.files import DataError
from segopt.data.masks import BinaryMask, IndexMask, PaletteMask, TableMask, mask_dtype

PATH = Path("masks/a.png")


def test_binary_0_255_becomes_0_1():
    raw = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    out = BinaryMask().decode(raw, PATH, 2, 255)
    np.testing.assert_array_equal(out, [[0, 1, 1], [0, 0, 1]])
    assert out.dtype == np.uint8


def test_binary_threshold_splits_every_value_into_one_of_two_classes():
    raw = np.array([[3, 127, 128, 250]], np.uint8)
    np.testing.assert_array_equal(BinaryMask(threshold=128).decode(raw, PATH, 2, 255), [[0, 0, 1, 1]])


def test_binary_void_value_becomes_ignore_index():
    raw = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(BinaryMask(threshold=200, void=[128]).decode(raw, PATH, 2, 255), [[0, 255, 1]])


def test_binary_refuses_0_1_masks_under_a_0_255_threshold():
    raw = np.array([[0, 1, 1]], np.uint8)
    with pytest.raises(DataError, match=r"masks/a.png: mask values are 0/1 but BinaryMask.threshold is 128.*threshold: 1"):
        BinaryMask().decode(raw, PATH, 2, 255)


def test_binary_needs_two_class_names():
    problems = BinaryMask().config_problems(["a", "b", "c"])
    assert problems == [
        "BinaryMask gives 2 classes but class_names has 3 (['a', 'b', 'c']); give two names (background first), "
        "or use IndexMask for multi-class masks"
    ]


def test_index_void_maps_to_ignore_index_and_classes_stay():
    raw = np.array([[0, 10, 11], [3, 11, 1]], np.uint8)
    out = IndexMask(void=[11]).decode(raw, PATH, 11, 255)
    np.testing.assert_array_equal(out, [[0, 10, 255], [3, 255, 1]])


def test_index_value_not_a_class_nor_void_names_file_value_and_fix():
    raw = np.array([[0, 12, 12, 11]], np.uint8)
    with pytest.raises(DataError) as err:
        IndexMask(void=[11]).decode(raw, PATH, 11, 255)
    message = str(err.value)
    assert "masks/a.png: mask value(s) ≥ num_classes=11 and not void: 12 (2 px)" in message
    assert "add it to void, now [11]" in message and "class_names" in message


def test_index_value_equal_to_ignore_index_must_be_declared_void():
    raw = np.array([[0, 255]], np.uint8)
    with pytest.raises(DataError, match=r"255 \(1 px\)"):
        IndexMask().decode(raw, PATH, 3, 255)
    np.testing.assert_array_equal(IndexMask(void=[255]).decode(raw, PATH, 3, 255), [[0, 255]])


def test_index_refuses_colour_masks():
    with pytest.raises(DataError, match="masks/a.png: mask has 3 channels but IndexMask needs one channel.*PaletteMask"):
        IndexMask().decode(np.zeros((2, 2, 3), np.uint8), PATH, 3, 255)


def test_index_void_that_is_a_class_id_is_a_config_problem():
    assert IndexMask(void=[2]).config_problems(["a", "b", "c"])[0].startswith("void value(s) [2] are also class ids")


def test_index_sixteen_bit_masks_and_negative_ignore_index():
    raw = np.array([[0, 300, 1000]], np.uint16)
    out = IndexMask(void=[1000]).decode(raw, PATH, 301, -100)
    np.testing.assert_array_equal(out, [[0, 300, -100]])
    assert out.dtype == np.int32


PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def test_palette_colours_become_class_ids_and_void_colours_ignore():
    raw = np.array([[[0, 0, 0], [128, 0, 0]], [[0, 128, 0], [255, 255, 255]]], np.uint8)
    out = PaletteMask(PALETTE, void_colours=[(255, 255, 255)]).decode(raw, PATH, 3, 255)
    np.testing.assert_array_equal(out, [[0, 1], [2, 255]])


def test_palette_unknown_colour_names_file_colour_and_fix():
    raw = np.array([[[0, 0, 0], [1, 2, 3], [1, 2, 3]]], np.uint8)
    with pytest.raises(DataError) as err:
        PaletteMask(PALETTE).decode(raw, PATH, 3, 255)
    assert "masks/a.png: mask colour(s) not in the palette: [1, 2, 3] (2 px); add each to colours" in str(err.value)
    assert "void_colours" in str(err.value)


def test_palette_config_problems():
    problems = PaletteMask([(0, 0, 0), (0, 0, 0)]).config_problems(["a", "b", "c"])
    assert problems == [
        "PaletteMask has 2 colours but class_names has 3 names; give one colour per class, in class order",
        "PaletteMask colour(s) [(0, 0, 0)] listed twice; each colour must mean one thing",
    ]


@pytest.mark.parametrize(("classes", "ignore", "dtype"), [(11, 255, np.uint8), (11, -100, np.int32), (300, 255, np.int32)])
def test_mask_dtype(classes, ignore, dtype):
    assert mask_dtype(classes, ignore) == dtype


# -- TableMask: raw value → class id by a table --------------------------------------------


def test_table_maps_values_and_void_exactly():
    table = TableMask(table={7: 0, 8: 1, 26: 2}, void=[0, 255])
    raw = np.array([[7, 8, 26], [0, 255, 7]], np.uint8)
    out = table.decode(raw, PATH, 3, 255)
    np.testing.assert_array_equal(out, [[0, 1, 2], [255, 255, 0]])
    assert out.dtype == np.uint8


def test_table_reads_16_bit_values_above_the_table():
    raw = np.array([[1000, 3]], np.uint16)
    np.testing.assert_array_equal(TableMask({1000: 1, 3: 0}).decode(raw, PATH, 2, 255), [[1, 0]])


def test_table_value_in_neither_table_nor_void_names_file_value_and_fix():
    raw = np.array([[7, 9, 9, 300]], np.uint16)
    with pytest.raises(DataError) as err:
        TableMask({7: 0, 8: 1}, void=[0]).decode(raw, PATH, 2, 255)
    assert str(err.value) == (
        "bad data: masks/a.png: mask value(s) in neither TableMask.table nor void: 9 (2 px), 300 (1 px); "
        "add each to table (value: class id) or to void"
    )


def test_table_config_problems_are_each_named():
    problems = TableMask({1: 0, 2: 5, 3: 0}, void=[3, -1]).config_problems(["a", "b"])
    assert problems == [
        "TableMask.table maps to class id(s) [5], outside 0..1 (class_names has 2 names); fix the table or add class names",
        "class(es) 1 'b' have no raw value in TableMask.table, so they can never appear; map a value to each or "
        "drop the names",
        "raw value(s) [3] are both in TableMask.table and in void; a value means one thing",
        "TableMask raw value(s) [-1] are negative; mask files hold values from 0 up",
    ]


def test_table_refuses_colour_masks():
    with pytest.raises(DataError, match="mask has 3 channels but TableMask needs one channel"):
        TableMask({0: 0}).decode(np.zeros((2, 2, 3), np.uint8), PATH, 1, 255)
