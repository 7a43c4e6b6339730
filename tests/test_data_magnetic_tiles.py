"""The magnetic tiles: masks to class indices, a split by tile stratified by class, and the real archive's pins."""

from __future__ import annotations

import json
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segopt.commands.check import source_from_mapping
from segopt.commands.fetch import MARKER, main
from segopt.public_data.catalog import DATA_SETS
from segopt.public_data.download import FetchError
from segopt.public_data.magnetic_tiles import GROUP_GAP, groups, prepare, split, tile_names
from tests.conftest import CONFIGS, SHARED_DATA
from tests.test_data_fetch import TILES, _files, tiles_archive, tiles_pixels

ARCHIVE = SHARED_DATA.parent / "archives" / "Magnetic-tile-defect-datasets.-master.zip"

STEMS = [
    "Free_exp1_num_10", "Free_exp2_num_30", "Crack_exp3_num_50",  # one tile, two folders
    *(f"Free_exp1_num_{n}" for n in (1000, 2000, 3000, 4000, 5000)),
    "Crack_exp1_num_7000", f"Crack_exp2_num_{7000 + GROUP_GAP}", f"Crack_exp1_num_{7001 + 2 * GROUP_GAP}",
    "Crack_x",  # no running number: a group of its own
]


def test_groups_join_near_running_numbers_across_folders():
    assert groups(STEMS) == [
        ["Free_exp1_num_10", "Free_exp2_num_30", "Crack_exp3_num_50"],
        ["Free_exp1_num_1000"], ["Free_exp1_num_2000"], ["Free_exp1_num_3000"], ["Free_exp1_num_4000"],
        ["Free_exp1_num_5000"],
        ["Crack_exp1_num_7000", "Crack_exp2_num_7300"],  # exactly GROUP_GAP apart: one tile
        ["Crack_exp1_num_7601"],  # one more: the next
        ["Crack_x"],
    ]


def test_split_keeps_groups_whole_and_stratifies_by_class():
    # Strata: the first group is Crack's (its rarest folder), so Crack has 5 photos in 4 groups and Free 5 in
    # 5; each stratum's 20 % is 1 photo: the first one-photo group in sha256 order of its first stem.
    assert split(STEMS) == {
        "train": ["Crack_exp1_num_7000", "Crack_exp1_num_7601", "Crack_exp2_num_7300", "Crack_x",
                  "Free_exp1_num_1000", "Free_exp1_num_3000", "Free_exp1_num_4000", "Free_exp1_num_5000"],
        "val": ["Crack_exp3_num_50", "Free_exp1_num_10", "Free_exp1_num_2000", "Free_exp2_num_30"],
    }
    assert split(list(reversed(STEMS))) == split(STEMS)


def test_tile_names_carry_the_group():
    assert tile_names(STEMS) == {
        "Free_exp1_num_10": "tile000_Free_exp1_num_10", "Free_exp2_num_30": "tile000_Free_exp2_num_30",
        "Crack_exp3_num_50": "tile000_Crack_exp3_num_50",
        **{f"Free_exp1_num_{n}": f"tile{t:03d}_Free_exp1_num_{n}" for t, n in enumerate((1000, 2000, 3000, 4000, 5000), 1)},
        "Crack_exp1_num_7000": "tile006_Crack_exp1_num_7000", "Crack_exp2_num_7300": "tile006_Crack_exp2_num_7300",
        "Crack_exp1_num_7601": "tile007_Crack_exp1_num_7601", "Crack_x": "tile008_Crack_x",
    }


def _unpacked(tmp_path: Path) -> Path:
    (filename, data), = tiles_archive().items()
    (tmp_path / filename).write_bytes(data)
    with zipfile.ZipFile(tmp_path / filename) as z:
        z.extractall(tmp_path / "raw")
    return tmp_path / "raw"


def test_masks_become_the_folders_class_ids_above_127(tmp_path: Path):
    raw = _unpacked(tmp_path)
    prepare(raw, tmp_path / "out")
    expected = tiles_pixels()
    for path, array in expected.items():
        if path.startswith("masks/"):
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / path)), array)
    assert Counter(int(v) for p, a in expected.items() if p.startswith("masks/") for v in np.unique(a)) == Counter(
        {0: 11, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1}
    )
    assert sorted(_files(tmp_path / "out")) == sorted(set(expected) | {"train.txt", "val.txt"})


def test_a_photo_without_its_mask_stops_the_preparation(tmp_path: Path):
    raw = _unpacked(tmp_path)
    photo = raw / "Magnetic-tile-defect-datasets.-master" / "MT_Crack" / "Imgs" / f"{TILES['Crack'][0][1]}.jpg"
    photo.with_suffix(".png").unlink()
    message = f"{photo} has no mask (looked for {photo.with_suffix('.png')}); the archive is incomplete"
    with pytest.raises(FetchError, match=f"^{re.escape(message)}$"):
        prepare(raw, tmp_path / "out")


def test_another_archive_is_named(tmp_path: Path):
    (tmp_path / "raw" / "unet-master").mkdir(parents=True)
    with pytest.raises(FetchError, match=r"^the archive holds 0 folders with an MT_Blowhole/ folder inside; expected "
                                         r"exactly one\. Top level: \['unet-master'\]; is it the magnetic-tile"):
        prepare(tmp_path / "raw", tmp_path / "out")


#: Photos per folder and split of the real archive (all 1344, whole tiles on one side).
REAL_SPLIT = {"train": {"Blowhole": 92, "Break": 71, "Crack": 45, "Fray": 26, "Free": 751, "Uneven": 77},
              "val": {"Blowhole": 23, "Break": 14, "Crack": 12, "Fray": 6, "Free": 201, "Uneven": 26}}


@pytest.mark.slow  # unpacks and digests 1344 photos and masks (about 15 s on 2 cores)
def test_the_real_archive_is_laid_out_as_recorded(tmp_path: Path, capsys):
    if not ARCHIVE.is_file():
        pytest.skip("the shared archives are not present")
    code = main(["magnetic_tiles", "--from", str(ARCHIVE), "--root", str(tmp_path), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err  # the decoded pixels equal the recorded digests, and the data check is clean
    assert "differ" not in err and "OK: no problems found" in out
    target = tmp_path / "magnetic_tiles"
    pins = DATA_SETS["magnetic_tiles"].content
    assert json.loads((target / MARKER).read_text())["content"] == {p.folder: f"sha256:{p.sha256}" for p in pins}
    listed = {s: (target / f"{s}.txt").read_text().split() for s in ("train", "val")}
    folders = {s: dict(sorted(Counter(n.split("_")[1] for n in names).items())) for s, names in listed.items()}
    assert folders == REAL_SPLIT
    tiles = {s: {n.partition("_")[0] for n in names} for s, names in listed.items()}
    assert len(tiles["train"]) + len(tiles["val"]) == 184 and not tiles["train"] & tiles["val"]
    data = yaml.safe_load((CONFIGS / "data" / "magnetic_tiles.yaml").read_text())["data"]
    source = source_from_mapping(dict(data["source"], init_args=dict(data["source"]["init_args"], root=str(target))))
    assert {s: len(p) for s, p in source.index.pairs.items()} == {"train": 1062, "val": 282}
