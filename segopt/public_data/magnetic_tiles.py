r"""The magnetic-tile surface-defect data set: class-index masks from per-folder binary ones, and a grouped split.

The repository (Huang, Qiu and Yuan, The Visual Computer 2020) keeps one folder per defect,
``MT_<Defect>/Imgs/NAME.jpg`` with its mask ``NAME.png`` beside it: 0 background, 255 defect,
anti-aliased in between. The defect's class is its folder's, so each mask is thresholded at
> 127 and written as a class-index PNG: 0 background, 1 Blowhole, 2 Break, 3 Crack, 4 Fray,
5 Uneven (``MT_Free`` tiles have no defect: all background). Files are laid out as
``images/tile<T>_<Folder>_<NAME>.jpg`` (the photo, unchanged) and ``masks/tile<T>_<Folder>_<NAME>.png``,
T numbering the tile groups below (so a name shows its group: ``group_pattern: '^(tile\d+)_'``),
with ``train.txt`` and ``val.txt`` listing the stems of each split.

There is no official split, and the photos are not independent: a name ``exp<E>_num_<N>`` is
one of six exposures (E = 1..6) of a tile, and a tile's exposures carry nearby running numbers
N (mostly 10 to 80 apart), sometimes in two folders (exposure 3 of a frayed tile filed under Break)
or interleaved with another tile's. A split by name would put exposures of one tile on both
sides. So photos are grouped by N: sorted, a new group starts where N jumps by more than
:data:`GROUP_GAP`. Each group is assigned whole, stratified by class: a group belongs to the
stratum of its rarest folder; within a stratum groups are taken in the order of the sha256 of
their first stem, and one goes to validation when that brings the stratum's validation share
of its own folder's photos closer to :data:`VAL_SHARE`. Deterministic, and the same on every
machine.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from segopt.data.files import DataError, read_mask
from segopt.public_data.download import FetchError

#: Class names in class-id order; ids 1.. are the defect folders ``MT_<name>``.
CLASS_NAMES = ("background", "Blowhole", "Break", "Crack", "Fray", "Uneven")
#: The defect-free folder: its tiles' masks are all background.
FREE = "Free"
FOLDERS = (*CLASS_NAMES[1:], FREE)
#: Mask values above this are defect (the masks' edges are anti-aliased).
THRESHOLD = 127
#: A jump in running number above this starts a new group. A tile's exposures mostly lie 10 to 80
#: apart; Blowhole, Break and Crack fall in as many groups with any gap from 200 to 600.
GROUP_GAP = 300
VAL_SHARE = 0.2

_NUMBER = re.compile(r"_num_(\d+)$")


def groups(stems: list[str]) -> list[list[str]]:
    """Stems (``<Folder>_exp<E>_num_<N>``) grouped by running number; a stem without one is a group of its own."""
    numbered = sorted((int(m.group(1)), stem) for stem in stems if (m := _NUMBER.search(stem)))
    found: list[list[str]] = []
    last = None
    for number, stem in numbered:
        if last is None or number - last > GROUP_GAP:
            found.append([])
        found[-1].append(stem)
        last = number
    return found + [[stem] for stem in sorted(stems) if not _NUMBER.search(stem)]


def tile_names(stems: list[str]) -> dict[str, str]:
    """Each stem's name in the laid-out data set: ``tile<T>_<stem>``, T its group's place in :func:`groups`."""
    return {stem: f"tile{t:03d}_{stem}" for t, group in enumerate(groups(stems)) for stem in group}


def split(stems: list[str]) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}``, sorted: whole groups, stratified by class (see the module docstring)."""
    folder_of = {stem: stem.partition("_")[0] for stem in stems}
    count = Counter(folder_of.values())
    strata: dict[str, list[list[str]]] = defaultdict(list)
    for group in groups(stems):
        strata[min({folder_of[s] for s in group}, key=lambda f: (count[f], f))].append(group)
    val: list[str] = []
    for folder, members in strata.items():
        target = VAL_SHARE * sum(folder_of[s] == folder for g in members for s in g)
        taken = 0
        for group in sorted(members, key=lambda g: hashlib.sha256(g[0].encode()).hexdigest()):
            own = sum(folder_of[s] == folder for s in group)
            if abs(taken + own - target) < abs(taken - target):
                val += group
                taken += own
    chosen = set(val)
    return {"train": sorted(s for s in stems if s not in chosen), "val": sorted(val)}


def _top(raw: Path) -> Path:
    found = sorted(p for p in raw.iterdir() if p.is_dir() and (p / f"MT_{FOLDERS[0]}").is_dir())
    if len(found) != 1:
        raise FetchError(
            f"the archive holds {len(found)} folders with an MT_{FOLDERS[0]}/ folder inside; expected exactly one. "
            f"Top level: {sorted(p.name for p in raw.iterdir())[:8]}; is it the magnetic-tile repository's archive?"
        )
    return found[0]


def prepare(raw: Path, out: Path) -> None:
    """Lay the unpacked repository in ``raw`` out in ``out`` (images/, masks/, train.txt, val.txt)."""
    top = _top(raw)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    photos: dict[str, Path] = {}
    for folder in FOLDERS:
        imgs = top / f"MT_{folder}" / "Imgs"
        found = sorted(imgs.glob("*.jpg"))
        if not found:
            raise FetchError(f"{imgs} holds no .jpg photos; the archive is not the magnetic-tile repository's")
        photos |= {f"{folder}_{photo.stem}": photo for photo in found}
    names = tile_names(list(photos))
    for stem, photo in photos.items():
        folder = stem.partition("_")[0]
        class_id = CLASS_NAMES.index(folder) if folder != FREE else 0
        mask_file = photo.with_suffix(".png")
        if not mask_file.is_file():
            raise FetchError(f"{photo} has no mask (looked for {mask_file}); the archive is incomplete")
        try:
            raw_mask = read_mask(mask_file, colour=False)
        except DataError as err:
            raise FetchError(str(err)) from err
        if raw_mask.ndim != 2:
            raise FetchError(f"{mask_file}: mask has {raw_mask.shape[2]} channels; the repository's masks are grey")
        mask = np.where(raw_mask > THRESHOLD, class_id, 0).astype(np.uint8)
        Image.fromarray(mask).save(out / "masks" / f"{names[stem]}.png")
        photo.replace(out / "images" / f"{names[stem]}.jpg")
    for name, listed in split(list(photos)).items():
        (out / f"{name}.txt").write_text("".join(f"{n}\n" for n in sorted(names[stem] for stem in listed)))
