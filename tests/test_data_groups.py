"""Splits by group: pooled folders, whole groups (sequences, slices) held out for validation, and the
data check's warning when file names show that validation and training share a group."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segopt.commands.check import main as check_main
from segopt.commands.check import source_from_mapping
from segopt.commands.cli import main as cli_main
from segopt.data import DataError, PairedFolder
from segopt.data.groups import HOW_TO_SPLIT, shared_groups
from segopt.lightning import SegDataModule
from tests.conftest import CONFIGS


def _pair(root: Path, split: str, stem: str) -> None:
    for folder, array in ((split, np.full((6, 8, 3), 90, np.uint8)), (f"{split}annot", np.arange(48).reshape(6, 8) % 3)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array.astype(np.uint8)).save(root / folder / f"{stem}.png")


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """CamVid's layout in small: sequence B in train/ and val/, A and C in train/ only."""
    for stem in ("A_001", "A_002", "B_f010", "B_f011", "C_7", "C_8"):
        _pair(tmp_path, "train", stem)
    for stem in ("B_f012", "B_f013"):
        _pair(tmp_path, "val", stem)
    return tmp_path


def _by_group(root: Path, **kwargs) -> PairedFolder:
    kwargs = {
        "image_dirs": {"train": ["train", "val"]},
        "mask_dirs": {"train": ["trainannot", "valannot"]},
        "group_pattern": "^([^_]+)_",
        "val_groups": ["C"],
        **kwargs,
    }
    return PairedFolder(str(root), class_names=["a", "b", "c"], **kwargs)


def _problems(source: PairedFolder) -> str:
    with pytest.raises(DataError) as err:
        source.validate()
    return str(err.value)


def test_pooled_folders_and_held_out_groups_make_disjoint_splits(frames: Path):
    source = _by_group(frames)
    source.validate()
    assert [p.image.name for p in source.index.pairs["train"]] == [
        "A_001.png", "A_002.png", "B_f010.png", "B_f011.png", "B_f012.png", "B_f013.png",
    ]  # fmt: skip
    assert [p.image.name for p in source.index.pairs["val"]] == ["C_7.png", "C_8.png"]
    assert [p.mask.parent.name for p in source.index.pairs["train"]] == ["trainannot"] * 4 + ["valannot"] * 2


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"val_groups": ["D"]}, "val_groups names ['D'], which no training image falls in; group_pattern '^([^_]+)_' "
         "finds the groups ['A', 'B', 'C']; fix val_groups or the pattern"),
        ({"val_groups": ["A", "B", "C"]}, "val_groups ['A', 'B', 'C'] hold out every group found (['A', 'B', 'C']); "
         "leave at least one for training"),
        ({"group_pattern": "^([^_]+)_f"}, "4 training image name(s) do not match group_pattern '^([^_]+)_f', e.g. "
         "{root}/train/A_001.png, so their group is unknown; fix the pattern (its first group is the group's name) "
         "or rename the files"),
        ({"group_pattern": "^[^_]+_"}, "group_pattern '^[^_]+_' has no group; put the group's part of a name in "
         "parentheses, e.g. '^([^_]+)_'"),
        ({"group_pattern": None}, "val_groups is ['C'] but group_pattern is not set; give the regular expression "
         "whose first group is a file's group, e.g. '^([^_]+)_'"),
        ({"val_fraction": 0.2}, "val_groups is ['C'] and val_fraction is 0.2; use one or the other"),
        ({"mask_dirs": {"train": ["trainannot"]}}, "image_dirs.train has 2 folder(s) ['train', 'val'] but "
         "mask_dirs.train has 1 ['trainannot']; give one mask folder per image folder, in the same order"),
    ],
)  # fmt: skip
def test_each_bad_group_setting_is_one_problem_naming_the_value_and_the_fix(frames: Path, kwargs: dict, expected: str):
    assert _problems(_by_group(frames, **kwargs)) == f"data set {frames}: " + expected.format(root=frames)


def test_val_groups_beside_a_val_folder_is_refused(frames: Path):
    source = _by_group(frames, image_dirs={"train": "train", "val": "val"}, mask_dirs={"train": "trainannot", "val": "valannot"})
    assert _problems(source) == (
        f"data set {frames}: val_groups is ['C'] but image_dirs already has a val folder; pool that folder into "
        "train (image_dirs: {train: [train, val]}) or drop val_groups"
    )


def test_a_stem_in_two_pooled_folders_is_ambiguous(frames: Path):
    _pair(frames, "val", "A_001")
    assert _problems(_by_group(frames)) == (
        f"data set {frames}: {frames / 'train' / 'A_001.png'} and {frames / 'val' / 'A_001.png'} share the stem "
        "'A_001' in the folders pooled into split 'train', so the pairing is ambiguous; rename or remove one"
    )


def test_the_default_group_guess_is_conservative():
    camvid = ["0001TP_006690", "0016E5_00390", "0006R0_f02130"]
    assert shared_groups(camvid, ["0016E5_07959"]) == {"0016E5": (1, 1)}
    assert shared_groups(["img_001", "img_002"], ["img_003"]) == {}  # one prefix for all: no groups
    assert shared_groups(["a_1", "b_2", "photo"], ["a_3"]) == {}  # a name without a frame number
    assert shared_groups(["0", "1", "2"], ["3"]) == {}  # bare numbers
    assert shared_groups(["a_1", "b_2"], ["c_3"]) == {}  # disjoint
    assert shared_groups(["s1", "s2"], ["s3"], pattern=r"^(s)\d$") == {"s": (2, 1)}  # a given pattern counts as is


def _check(tmp_path: Path, root: Path, monkeypatch, capsys, source_args: str = "") -> tuple[int, str]:
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  source:\n    class_path: segopt.data.PairedFolder\n    init_args:\n"
        f"      root: {root}\n      class_names: [a, b, c]\n{source_args}  num_workers: 0\n"
    )
    monkeypatch.setattr(sys, "argv", ["check"])
    code = check_main(["--config", str(config)])
    return code, capsys.readouterr().out


def test_check_warns_when_validation_shares_a_group_and_says_how_to_split(frames: Path, tmp_path: Path, monkeypatch, capsys):
    code, out = _check(tmp_path, frames, monkeypatch, capsys)
    assert code == 0  # a warning, not a problem
    assert (
        "\nwarning: validation and training share 1 group(s) by their file names (guessed as the prefix before a "
        "frame number; set group_pattern to read them otherwise): B (2 training, 2 validation files); related frames "
        "look alike, so such a validation score rewards memorising a group and overstates what the model does on "
        f"unseen data; {HOW_TO_SPLIT}\n"
    ) in out
    assert "OK: no problems found" in out
    by_group = (
        "      image_dirs: {train: [train, val]}\n      mask_dirs: {train: [trainannot, valannot]}\n"
        "      group_pattern: '^([^_]+)_'\n      val_groups: [B]\n"
    )
    code, out = _check(tmp_path, frames, monkeypatch, capsys, by_group)
    assert code == 0 and "warning:" not in out
    assert "[train] 4 pairs" in out and "[val] 4 pairs" in out


# -- the shipped by-group configs, on the shared data sets ----------------------------------------------------


def _resolved(monkeypatch, capsys: pytest.CaptureFixture, *configs: str) -> dict:
    """The config ``segopt.commands.cli fit --config ...`` would run, as ``--print_config`` prints it."""
    monkeypatch.setattr(sys, "argv", ["segopt"])
    with pytest.raises(SystemExit) as done:
        cli_main(["fit", *(f"--config={CONFIGS / c}" for c in configs), "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _counts(source: dict) -> dict[str, dict[str, int]]:
    folder = source_from_mapping(source)
    folder.validate()
    counts: dict[str, dict[str, int]] = {}
    for split, pairs in folder.index.pairs.items():
        for pair in pairs:
            group = pair.image.stem.split("_")[0]
            counts.setdefault(split, {}).setdefault(f"{pair.image.parent.name}/{group}", 0)
            counts[split][f"{pair.image.parent.name}/{group}"] += 1
    return counts


@pytest.mark.usefixtures("shared_data")
@pytest.mark.slow
def test_camvid_by_sequence_on_the_recipe_changes_only_which_files_form_each_split(monkeypatch, capsys):
    recipe = _resolved(monkeypatch, capsys, "recipes/camvid.yaml")
    stacked = _resolved(monkeypatch, capsys, "recipes/camvid.yaml", "data/camvid_by_sequence.yaml")
    counts = _counts(stacked["data"]["source"])
    for config in (recipe, stacked):
        for key in ("image_dirs", "mask_dirs", "group_pattern", "val_groups"):
            config["data"]["source"]["init_args"].pop(key)
    assert stacked == recipe  # sizes, augmentation, full-resolution scoring, model, trainer: all the recipe's
    assert counts == {
        "train": {"train/0001TP": 62, "train/0016E5": 204, "val/0016E5": 101},
        "val": {"train/0006R0": 101},
    }


@pytest.mark.usefixtures("shared_data")
def test_camvid_shipped_split_is_warned_about_and_the_by_sequence_split_is_not(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["check"])
    code = check_main(["--config", str(CONFIGS / "data/camvid.yaml"), "--limit", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "warning: validation and training share 1 group(s) by their file names (guessed as the prefix before a " \
        "frame number; set group_pattern to read them otherwise): 0016E5 (204 training, 101 validation files)" in out
    code = check_main(["--config", str(CONFIGS / "data/camvid.yaml"), "--config",
                       str(CONFIGS / "data/camvid_by_sequence.yaml"), "--limit", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "warning: validation and training share" not in out
    assert "[train] 367 pairs" in out and "[val] 101 pairs" in out


@pytest.mark.usefixtures("shared_data")
def test_membrane_by_slice_holds_out_the_last_contiguous_block(monkeypatch, capsys):
    stacked = _resolved(monkeypatch, capsys, "amp.yaml", "data/membrane.yaml", "data/membrane_by_slice.yaml")
    folder = source_from_mapping(stacked["data"]["source"])
    folder.validate()
    assert [int(p.image.stem) for p in folder.index.pairs["val"]] == [24, 25, 26, 27, 28, 29]
    assert sorted(int(p.image.stem) for p in folder.index.pairs["train"]) == list(range(24))


def test_datamodule_loads_a_by_group_split(frames: Path):
    dm = SegDataModule(_by_group(frames), num_workers=0, batch_size=2)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 6 and len(dm.dataset("val")) == 2
