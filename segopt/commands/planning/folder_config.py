"""A data config for a bare folder, so that ``segopt plan`` can be pointed at the data itself.

Three layouts are recognised (``ROOT`` is the folder given):

- ``ROOT/images`` and ``ROOT/masks`` (validation: 20 % held out, seeded);
- ``ROOT/train`` and ``ROOT/trainannot``, with ``ROOT/val`` and ``ROOT/valannot`` if present (SegNet);
- ``ROOT/train/images`` and ``ROOT/train/masks``, with ``ROOT/val/images`` and ``ROOT/val/masks`` if present.

The mask decoding follows from the values found in every mask: only 0 and 255 → two classes
(:class:`~segopt.data.BinaryMask`); small integers → one class per value
(:class:`~segopt.data.IndexMask`, 255 as void when it occurs beside them); a few values spread
over 0..255, e.g. ids scaled to be visible → one class per value (:class:`~segopt.data.TableMask`);
0 and 255 with values found only at region edges between them (anti-aliased binary masks) → two
classes at the threshold 128 (other anti-aliased masks are refused); colours → one class per
colour (:class:`~segopt.data.PaletteMask`). The class names are placeholders (``class_0`` ...):
the written recipe is the place to rename them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segopt.commands.planning.fingerprint import PlanError
from segopt.data.files import EXTENSIONS, decode_threads, read_header, read_mask

#: More distinct colours (or grey values) than this are not a palette (anti-aliased or lossy masks);
#: grey values below it are class ids.
MAX_PALETTE = 64
LAYOUTS = (
    ({"train": "images"}, {"train": "masks"}),
    ({"train": "train", "val": "val"}, {"train": "trainannot", "val": "valannot"}),
    ({"train": "train/images", "val": "val/images"}, {"train": "train/masks", "val": "val/masks"}),
)


def _layout(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    for images, masks in LAYOUTS:
        if (root / images["train"]).is_dir() and (root / masks["train"]).is_dir():
            have_val = "val" in images and (root / images["val"]).is_dir() and (root / masks["val"]).is_dir()
            keep = ("train", "val") if have_val else ("train",)
            return {k: v for k, v in images.items() if k in keep}, {k: v for k, v in masks.items() if k in keep}
    raise PlanError(
        f"{root} is a folder in none of the layouts segopt plan knows (images/ + masks/; train/ + trainannot/; "
        "train/images/ + train/masks/); give a data config instead (see configs/data/)"
    )


def _solid_values(raw: np.ndarray) -> np.ndarray:
    """The grey values of ``raw`` with a pixel that is not strictly between a lower and a higher neighbour.

    A value whose every pixel lies between its neighbours is their blend (anti-aliasing, a
    bilinear resize); a class's value has pixels that are not, unless the class is one pixel thin
    and runs along an edge between a darker and a lighter class.
    """
    kernel = np.ones((3, 3), np.uint8)
    between = (cv2.erode(raw, kernel) < raw) & (raw < cv2.dilate(raw, kernel))
    return np.unique(raw[~between])


def _mask_values(paths: list[Path], colour: bool) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values (rows of colours) in ``paths``; for grey masks, also those found only at edges."""

    def values(path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = read_mask(path, colour)
        if colour:
            return np.unique(raw.reshape(-1, raw.shape[-1])[:, :3], axis=0), np.empty(0)
        found = np.unique(raw)
        return found, (_solid_values(raw) if raw.dtype == np.uint8 else found)

    with ThreadPoolExecutor(decode_threads()) as pool:
        found = list(pool.map(values, paths))
    every = np.unique(np.concatenate([f[0] for f in found]), axis=0)
    if colour:
        return every, np.empty(0)
    return every, np.setdiff1d(every, np.concatenate([f[1] for f in found]))


def _masks(paths: list[Path]) -> tuple[dict[str, Any], list[str]]:
    """The mask decoder's config and placeholder class names, from the values in ``paths``."""
    colour = not all(read_header(p).grey or read_header(p).mode == "P" for p in paths[:20])
    values, edges = _mask_values(paths, colour)
    if colour:
        if len(values) > MAX_PALETTE:
            raise PlanError(
                f"the colour masks hold {len(values)} distinct colours (e.g. {paths[0]}), more than a palette of "
                f"{MAX_PALETTE}: they look anti-aliased or lossy; save them with one exact colour per class, or give a data config"
            )
        colours = [[int(c) for c in rgb] for rgb in values]
        return {"class_path": "segopt.data.PaletteMask", "init_args": {"colours": colours}}, [f"class_{i}" for i in range(len(colours))]
    found = [int(v) for v in values]
    binary = {"class_path": "segopt.data.BinaryMask", "init_args": {"threshold": 128}}, ["background", "foreground"]
    if set(found) <= {0, 255}:
        return binary
    solid = sorted(set(found) - {int(v) for v in edges})
    if solid == [0, 255] and len(edges) >= 2:
        return binary  # anti-aliased binary masks: the blended edge values go to the nearer side
    classes = [v for v in found if v != 255]
    if max(classes) < MAX_PALETTE:
        void = [255] if 255 in found else None
        names = [f"class_{i}" for i in range(max(classes) + 1)]
        return {"class_path": "segopt.data.IndexMask", "init_args": {"void": void}}, names
    if len(found) > MAX_PALETTE:
        raise PlanError(
            f"the grey masks hold {len(found)} distinct values up to {max(found)} (e.g. {paths[0]}): not class ids; "
            "give a data config with the mask decoding (configs/data/ shows BinaryMask, TableMask and PaletteMask)"
        )
    if len(edges) >= 2:
        raise PlanError(
            f"the grey masks hold {len(edges)} value(s) found only at region edges between a darker and a lighter one "
            f"({', '.join(str(int(v)) for v in edges[:6])}{' ...' if len(edges) > 6 else ''}; e.g. {paths[0]}): they look "
            "anti-aliased; save them without smoothing (nearest-neighbour resize), or give a data config"
        )
    # Few values spread over 0..255 (e.g. 0, 85, 170, 255: ids scaled to be visible): one class
    # per value, in value order; 255 is a class here, as the values leave no room for void.
    table = {v: i for i, v in enumerate(found)}
    return {"class_path": "segopt.data.TableMask", "init_args": {"table": table}}, [f"class_{i}" for i in range(len(found))]


def folder_data_config(root: Path) -> dict[str, Any]:
    """The ``data:`` section that reads the bare folder ``root``."""
    images, masks = _layout(root)
    mask_files = sorted(p for p in (root / masks["train"]).iterdir() if p.suffix.lower() in EXTENSIONS)
    image_files = sorted(p for p in (root / images["train"]).iterdir() if p.suffix.lower() in EXTENSIONS)
    if not mask_files or not image_files:
        raise PlanError(f"{root / (masks if not mask_files else images)['train']} holds no image files; fix the folder")
    decoder, names = _masks(mask_files)
    grey = all(read_header(p).grey for p in image_files[:20])
    init_args: dict[str, Any] = {
        "root": str(root),
        "class_names": names,
        "image_dirs": images,
        "mask_dirs": masks,
        "masks": decoder,
        "in_channels": 1 if grey else 3,
    }
    if "val" not in images:
        init_args |= {"val_fraction": 0.2, "val_seed": 0}
    return {"source": {"class_path": "segopt.data.PairedFolder", "init_args": init_args}, "ignore_index": 255}
