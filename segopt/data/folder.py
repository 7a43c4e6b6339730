"""PairedFolder: images in one folder, masks in another, paired by file stem.

Covers the common layouts with config alone: CamVid/SegNet (``train/`` + ``trainannot/``),
ISBI membranes (``train/image`` + ``train/label``, validation held out by a seeded
fraction), any data set with split-list files, and splits by group (several folders pooled,
whole sequences held out for validation, see :mod:`segopt.data.groups`). Indexing reads names and file headers
only, so every pairing, path, size and channel problem is reported at once, before a
run writes anything; pixel values are checked as each mask is decoded.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from segopt.data.datasets import Sample, SegSource
from segopt.data.files import (
    EXTENSIONS,
    DataError,
    Header,
    read_header,
    read_image,
    read_mask,
    unsupported_samples_problem,
)
from segopt.data.groups import group_of, pattern_problem
from segopt.data.masks import IndexMask, MaskDecoder
from segopt.data.roots import DATA_ROOT_ENV, describe, resolve_data_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One image file and its mask file, with their headers."""

    image: Path
    mask: Path
    image_header: Header
    mask_header: Header


@dataclass
class FolderIndex:
    """The pairs of every split, and what is wrong (problems) or merely worth saying (notes)."""

    pairs: dict[str, list[Pair]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def decode_mask(pair: Pair, raw: np.ndarray, decoder: MaskDecoder, num_classes: int, ignore_index: int) -> np.ndarray:
    """``decoder.decode`` of a pair's mask; bad values in a lossy mask (accepted with
    ``allow_lossy_masks``) are blamed on the compression, the likeliest cause, not the class list."""
    try:
        return decoder.decode(raw, pair.mask, num_classes, ignore_index)
    except DataError as err:
        if not pair.mask_header.lossy:
            raise
        raise DataError(
            [f"{p} (this mask is {pair.mask_header.format}, a lossy format whose compression invents values "
             "at class edges: save it as PNG)" for p in err.problems]
        ) from None


class FolderSplit(Dataset):
    """Decoded samples of one split of a :class:`PairedFolder`."""

    def __init__(self, pairs: list[Pair], decoder: MaskDecoder, num_classes: int, in_channels: int, ignore_index: int) -> None:
        self.pairs = pairs
        self.decoder = decoder
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        pair = self.pairs[index]
        image = read_image(pair.image, self.in_channels, pair.image_header.orientation)
        raw = read_mask(pair.mask, self.decoder.colour)
        if raw.shape[:2] != image.shape[:2]:
            raise DataError(
                f"{pair.mask}: mask is {raw.shape[1]}x{raw.shape[0]} but image {pair.image} is "
                f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size"
            )
        return image, decode_mask(pair, raw, self.decoder, self.num_classes, self.ignore_index)

    def masks_only(self) -> FolderMasks:
        """The same split with its masks decoded and its images left unread, for counting classes."""
        return FolderMasks(self)


class FolderMasks(Dataset):
    """Items ``(None, mask)`` of a :class:`FolderSplit`: its class ids without decoding the images."""

    def __init__(self, split: FolderSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[None, np.ndarray]:
        s = self.split
        pair = s.pairs[index]
        return None, decode_mask(pair, read_mask(pair.mask, s.decoder.colour), s.decoder, s.num_classes, s.ignore_index)


def _key(stem: str) -> str:
    """The name a file is paired by: its stem in Unicode NFC, so that an NFC image (macOS writes
    NFD names) pairs with its NFD mask although their bytes differ."""
    return unicodedata.normalize("NFC", stem)


def _folders(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _files_by_stem(folder: Path, problems: list[str]) -> dict[str, Path]:
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        problems.append(f"folder {folder} {what} (resolved: {folder.resolve()}); fix root or the folder names")
        return {}
    found: dict[str, Path] = {}
    others: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in EXTENSIONS:
            others.append(path.name)
            continue
        key = _key(path.stem)
        if key in found:
            how = "" if found[key].stem == path.stem else " after Unicode NFC normalisation"
            problems.append(
                f"{folder}: {found[key].name} and {path.name} share the stem {key!r}{how}, so the pairing "
                "is ambiguous; remove or rename one"
            )
            continue
        found[key] = path
    if not found:
        extra = f" (it holds {len(others)} other entries, e.g. {others[:3]})" if others else " (it is empty)"
        problems.append(
            f"folder {folder} has no image files with extensions {', '.join(EXTENSIONS)}{extra}; fix the path"
        )
    return found


def _listed_stem(line: str) -> str:
    """The stem a split-list line names: a name with an image extension is a file name, any other
    name is a stem as it stands (``scan.s00`` is the stem of ``scan.s00.png``); a folder part is dropped."""
    name = line.replace("\\", "/").rsplit("/", 1)[-1]
    suffix = Path(name).suffix
    return _key(name[: -len(suffix)] if suffix.lower() in EXTENSIONS else name)


def _listed_stems(path: Path, problems: list[str]) -> list[str] | None:
    if not path.is_file():
        problems.append(f"split list {path} does not exist (resolved: {path.resolve()}); fix split_lists")
        return None
    lines = [line.strip() for line in path.read_text().splitlines()]
    # Entries may be bare stems, file names or paths: "a", "a.png", "images/a.png".
    return [_listed_stem(line) for line in lines if line and not line.startswith("#")]


class PairedFolder(SegSource):
    """A data set on disk: per split an image folder and a mask folder, paired by file stem.

    Extensions may differ between an image and its mask (``a.jpg`` ↔ ``a.png``); names are
    compared in Unicode NFC (a note says when that is what paired them). Folder
    and list paths are relative to ``root``; ``root`` is relative to the working directory,
    except that a leading ``data/`` is read from ``$SEGOPT_DATA_ROOT`` when that is set
    (see :mod:`segopt.data.roots`).

    Args:
        root: the data set's folder.
        class_names: one name per class, in class-id order (their count is num_classes).
        image_dirs: split → image folder, e.g. ``{train: train, val: val}``, or a list of
            folders pooled into that split, e.g. ``{train: [train, val]}``.
        mask_dirs: split → mask folder (or list, in the order of ``image_dirs``' list), with
            the same splits as ``image_dirs``.
        split_lists: optional split → text file of names (one per line) selecting that
            split's pairs from its folders; lets several splits share one folder. A name
            with an image extension is a file name, any other is a stem as written.
        val_fraction: when ``image_dirs`` has no ``val``, the fraction of training pairs
            held out for validation (chosen by ``val_seed``).
        val_seed: seed of that hold-out choice.
        group_pattern: a regular expression whose first group, searched in an image's stem,
            is its group (a sequence, volume or source image), e.g. ``^([^_]+)_`` for
            CamVid's ``0006R0_f02130``. The data check uses it to warn when validation and
            training share a group (without it, it guesses conservatively).
        val_groups: when ``image_dirs`` has no ``val``, the groups (by ``group_pattern``)
            whose training pairs are held out for validation, whole: related frames never
            straddle the split.
        masks: how mask pixels become class ids (class ids by default; see segopt.data.masks).
        in_channels: 3 for RGB, 1 for grey. Grey files are converted to 3 channels when this
            is 3 (a note is logged); colour files are refused when it is 1.
        num_classes: optional; when given it must equal ``len(class_names)``.
        allow_lossy_masks: accept masks stored in a lossy format (JPEG). Refused by default:
            the compression changes pixel values at class edges, so edge pixels train with
            wrong class ids; save masks as PNG instead.

    Every file is read as it is displayed: an EXIF orientation tag turns images and masks
    alike (see :mod:`segopt.data.files`).
    """

    def __init__(
        self,
        root: str,
        class_names: list[str],
        image_dirs: dict[str, str | list[str]] | None = None,
        mask_dirs: dict[str, str | list[str]] | None = None,
        split_lists: dict[str, str] | None = None,
        val_fraction: float = 0.0,
        val_seed: int = 0,
        group_pattern: str | None = None,
        val_groups: list[str] | None = None,
        masks: MaskDecoder | None = None,
        in_channels: int = 3,
        num_classes: int | None = None,
        allow_lossy_masks: bool = False,
    ) -> None:
        self.given_root = Path(root)
        self.root = resolve_data_path(root)
        self.class_names = list(class_names)
        self.image_dirs = dict(image_dirs or {"train": "train", "val": "val"})
        self.mask_dirs = dict(mask_dirs or {"train": "trainannot", "val": "valannot"})
        self.split_lists = dict(split_lists or {})
        self.val_fraction = val_fraction
        self.val_seed = val_seed
        self.group_pattern = group_pattern
        self.val_groups = [str(g) for g in val_groups or []]
        self.masks = masks if masks is not None else IndexMask()
        self.in_channels = in_channels
        self.declared_num_classes = num_classes
        self.allow_lossy_masks = allow_lossy_masks
        self._index: FolderIndex | None = None
        self._noted = False

    # -- indexing (names and headers only) -------------------------------------------

    @property
    def index(self) -> FolderIndex:
        """Pairs per split and every problem found, computed once from names and headers."""
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def _config_problems(self) -> list[str]:
        problems = []
        if not self.class_names:
            problems.append("class_names is empty; list one name per class")
        if self.declared_num_classes is not None and self.declared_num_classes != len(self.class_names):
            problems.append(
                f"num_classes is {self.declared_num_classes} but class_names has {len(self.class_names)} names "
                f"({self.class_names}); make them agree (or drop num_classes)"
            )
        if self.in_channels not in (1, 3):
            problems.append(f"in_channels is {self.in_channels}; use 3 (RGB) or 1 (grey)")
        if set(self.image_dirs) != set(self.mask_dirs):
            problems.append(
                f"image_dirs has splits {sorted(self.image_dirs)} but mask_dirs has {sorted(self.mask_dirs)}; "
                "give each split both an image and a mask folder"
            )
        for split in sorted(set(self.image_dirs) & set(self.mask_dirs)):
            images, masks = _folders(self.image_dirs[split]), _folders(self.mask_dirs[split])
            if not images or len(images) != len(masks):
                problems.append(
                    f"image_dirs.{split} has {len(images)} folder(s) {images} but mask_dirs.{split} has "
                    f"{len(masks)} {masks}; give one mask folder per image folder, in the same order"
                )
        unknown = sorted(set(self.split_lists) - set(self.image_dirs))
        if unknown:
            problems.append(f"split_lists names split(s) {unknown} that image_dirs lacks ({sorted(self.image_dirs)})")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction is {self.val_fraction}; use a fraction in [0, 1), e.g. 0.2")
        elif "val" in self.image_dirs and self.val_fraction > 0:
            problems.append(
                f"val_fraction is {self.val_fraction} but image_dirs already has a val folder; use one or the other"
            )
        elif "val" not in self.image_dirs and self.val_fraction == 0 and not self.val_groups:
            problems.append(
                "no validation split: add image_dirs.val and mask_dirs.val, or set val_fraction (e.g. 0.2), "
                "or group_pattern and val_groups"
            )
        problems += self._group_problems()
        if "train" not in self.image_dirs:
            problems.append(f"image_dirs has no train split (splits: {sorted(self.image_dirs)}); add image_dirs.train")
        return problems + self.masks.config_problems(self.class_names)

    def _group_problems(self) -> list[str]:
        problem = pattern_problem(self.group_pattern) if self.group_pattern is not None else None
        if problem:
            return [problem]
        if not self.val_groups:
            return []
        if self.group_pattern is None:
            return [f"val_groups is {self.val_groups} but group_pattern is not set; give the regular expression "
                    "whose first group is a file's group, e.g. '^([^_]+)_'"]  # fmt: skip
        if "val" in self.image_dirs:
            return [f"val_groups is {self.val_groups} but image_dirs already has a val folder; pool that folder "
                    "into train (image_dirs: {train: [train, val]}) or drop val_groups"]  # fmt: skip
        if self.val_fraction > 0:
            return [f"val_groups is {self.val_groups} and val_fraction is {self.val_fraction}; use one or the other"]
        return []

    def _build_index(self) -> FolderIndex:
        index = FolderIndex(problems=self._config_problems())
        if not self.root.is_dir():
            index.problems.append(
                f"data root {self.root} does not exist (resolved: {self.root.resolve()})"
                f"{describe(self.given_root, self.root)}; set data.source.init_args.root to the data set's "
                f"folder (relative to where you run segopt) or {DATA_ROOT_ENV} to the folder holding it"
            )
            return index
        grey_images: list[Path] = []
        for split in sorted(set(self.image_dirs) & set(self.mask_dirs)):
            pairs = self._pair(split, index)
            for pair in pairs:
                self._check_headers(pair, index.problems, grey_images)
            index.pairs[split] = pairs
        if grey_images:
            index.notes.append(
                f"{len(grey_images)} grey image(s) (e.g. {grey_images[0]}) are converted to 3 channels because "
                "in_channels is 3; set in_channels: 1 if the whole data set is grey"
            )
        every = [pair for pairs in index.pairs.values() for pair in pairs]
        self._check_lossy(every, index)
        turned = [(path, header) for pair in every for path, header in ((pair.image, pair.image_header), (pair.mask, pair.mask_header)) if header.orientation != 1]
        if turned:
            path, header = turned[0]
            index.notes.append(
                f"{len(turned)} file(s) carry an EXIF orientation tag (e.g. {path}: orientation {header.orientation}); "
                "every image and mask is read as it is displayed (the tag applied), so a mask must match its image "
                "as an image viewer shows it"
            )
        if "val" not in self.image_dirs and "train" in index.pairs:
            if self.val_groups and self.group_pattern is not None and not self._group_problems():
                self._hold_out_groups(index)
            elif 0 < self.val_fraction < 1:
                self._hold_out(index)
        return index

    def _pair(self, split: str, index: FolderIndex) -> list[Pair]:
        problems = index.problems
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        mask_dir_of: dict[str, Path] = {}  # where each image's mask is looked for
        image_dirs = [self.root / d for d in _folders(self.image_dirs[split])]
        for image_dir, mask_dir in zip(image_dirs, [self.root / d for d in _folders(self.mask_dirs[split])]):
            found_images = _files_by_stem(image_dir, problems)
            found_masks = _files_by_stem(mask_dir, problems)
            if not found_images or not found_masks:
                continue
            orphans = sorted(set(found_masks) - set(found_images))
            if orphans and split not in self.split_lists:
                problems.append(
                    f"{len(orphans)} mask(s) without an image in {image_dir}, e.g. {found_masks[orphans[0]]}; "
                    "add the images or remove the masks"
                )
            for key, path in found_images.items():
                if key in images:
                    problems.append(
                        f"{images[key]} and {path} share the stem {key!r} in the folders pooled into split "
                        f"{split!r}, so the pairing is ambiguous; rename or remove one"
                    )
                    continue
                images[key], mask_dir_of[key] = path, mask_dir
                if key in found_masks:
                    masks[key] = found_masks[key]
        if not images:
            return []
        stems = sorted(images)
        if split in self.split_lists:
            listed = _listed_stems(self.root / self.split_lists[split], problems)
            if listed is None:
                return []
            missing = [s for s in listed if s not in images]
            if missing:
                problems.append(
                    f"split list {self.root / self.split_lists[split]} names {len(missing)} stem(s) with no image in "
                    f"{', '.join(map(str, image_dirs))}: {missing[:5]}; fix the list or add the images"
                )
            stems = [s for s in dict.fromkeys(listed) if s in images]
        lonely: dict[Path, list[str]] = {}
        for stem in stems:
            if stem not in masks:
                lonely.setdefault(mask_dir_of[stem], []).append(stem)
        for mask_dir, keys in lonely.items():
            problems.append(
                f"{len(keys)} image(s) without a mask in {mask_dir}, e.g. {images[keys[0]]} (expected "
                f"{mask_dir / images[keys[0]].stem}.png or another image extension); add the masks or remove the images"
            )
        pairs = []
        for stem in stems:
            if stem not in masks:
                continue
            try:
                pairs.append(Pair(images[stem], masks[stem], read_header(images[stem]), read_header(masks[stem])))
            except DataError as err:
                problems.extend(err.problems)
        normalised = [pair for pair in pairs if pair.image.stem != pair.mask.stem]
        if normalised:
            first = normalised[0]
            index.notes.append(
                f"{len(normalised)} pair(s) of split {split!r} were paired after Unicode NFC normalisation of their "
                f"names, e.g. image {first.image} with mask {first.mask}: the names look alike but are encoded "
                "differently (one composed, one decomposed, as macOS writes them); rename them alike to silence this"
            )
        return pairs

    def _check_lossy(self, pairs: list[Pair], index: FolderIndex) -> None:
        lossy = [pair for pair in pairs if pair.mask_header.lossy]
        if not lossy:
            return
        first = lossy[0]
        if self.allow_lossy_masks:
            index.notes.append(
                f"{len(lossy)} mask(s) are {first.mask_header.format} (lossy), e.g. {first.mask}, accepted because "
                "allow_lossy_masks is true: pixels at class edges may carry wrong class ids"
            )
            return
        index.problems.append(
            f"{len(lossy)} mask(s) are {first.mask_header.format}, a lossy format, e.g. {first.mask}: its "
            "compression changes pixel values at class edges, so edge pixels would train as the wrong class (or "
            "as no class); save the masks as PNG (lossless), exported again from the labelling tool (converting "
            "these files keeps the damage), or set data.source.init_args.allow_lossy_masks: true to train on them"
        )

    def _check_headers(self, pair: Pair, problems: list[str], grey_images: list[Path]) -> None:
        img, msk = pair.image_header, pair.mask_header
        if (img.width, img.height) != (msk.width, msk.height):
            turned = [(path, h) for path, h in ((pair.image, img), (pair.mask, msk)) if h.rotated]
            if turned and (img.width, img.height) == (msk.height, msk.width):
                path, header = turned[0]
                problems.append(
                    f"{pair.mask}: mask is {msk.size} but its image {pair.image} is {img.size} as displayed: "
                    f"{path} has EXIF orientation {header.orientation}, which turns its stored "
                    f"{header.height}x{header.width} pixels; segopt reads every file as displayed, so re-export the "
                    "mask in the orientation the image is shown in, or save the image with the turn applied (no tag)"
                )
                return
            problems.append(
                f"{pair.mask}: mask is {msk.size} but its image {pair.image} is {img.size}; a mask must have "
                "its image's size (re-export it, resizing with nearest neighbour if at all)"
            )
        samples = unsupported_samples_problem(pair.image, img)
        if samples:
            problems.append(samples)
        elif img.grey and self.in_channels == 3:
            grey_images.append(pair.image)
        elif not img.grey and self.in_channels == 1:
            problems.append(
                f"{pair.image}: image is colour ({img.mode}) but in_channels is 1; set in_channels: 3, "
                "or convert the images to grey"
            )
        if self.masks.colour and msk.grey:
            problems.append(
                f"{pair.mask}: mask is grey ({msk.mode}) but {type(self.masks).__name__} expects RGB colours; "
                "use IndexMask or BinaryMask for grey masks"
            )
        elif not self.masks.colour and msk.mode not in ("P",) and not msk.grey:
            problems.append(
                f"{pair.mask}: mask is colour ({msk.mode}) but {type(self.masks).__name__} expects one channel; "
                "use PaletteMask with the class colours, or save the masks as 8-bit grey class ids"
            )

    def _hold_out(self, index: FolderIndex) -> None:
        train = index.pairs["train"]
        n_val = round(len(train) * self.val_fraction)
        if n_val < 1 or n_val >= len(train):
            index.problems.append(
                f"val_fraction {self.val_fraction} of {len(train)} training pairs leaves {n_val} for validation "
                f"and {len(train) - n_val} for training; pick a fraction that leaves at least one of each"
            )
            return
        held = set(np.random.default_rng(self.val_seed).permutation(len(train))[:n_val].tolist())
        index.pairs["val"] = [p for i, p in enumerate(train) if i in held]
        index.pairs["train"] = [p for i, p in enumerate(train) if i not in held]

    def _hold_out_groups(self, index: FolderIndex) -> None:
        pattern = str(self.group_pattern)
        train = index.pairs["train"]
        groups = [group_of(_key(pair.image.stem), pattern) for pair in train]
        unmatched = [pair.image for pair, group in zip(train, groups) if group is None]
        if unmatched:
            index.problems.append(
                f"{len(unmatched)} training image name(s) do not match group_pattern {pattern!r}, e.g. "
                f"{unmatched[0]}, so their group is unknown; fix the pattern (its first group is the group's name) "
                "or rename the files"
            )
            return
        found = sorted(set(groups), key=str)
        missing = [g for g in self.val_groups if g not in found]
        if missing:
            index.problems.append(
                f"val_groups names {missing}, which no training image falls in; group_pattern {pattern!r} finds "
                f"the groups {found[:20]}{' ...' if len(found) > 20 else ''}; fix val_groups or the pattern"
            )
            return
        if set(found) <= set(self.val_groups):
            index.problems.append(
                f"val_groups {self.val_groups} hold out every group found ({found}); leave at least one for training"
            )
            return
        held = set(self.val_groups)
        index.pairs["val"] = [p for p, g in zip(train, groups) if g in held]
        index.pairs["train"] = [p for p, g in zip(train, groups) if g not in held]

    # -- SegSource --------------------------------------------------------------------

    def validate(self) -> None:
        """Raise one :class:`DataError` listing every pairing, path, size and channel problem."""
        index = self.index
        if index.problems:
            raise DataError(index.problems, header=f"data set {self.root}")
        if not self._noted:
            self._noted = True
            for note in index.notes:
                log.warning("segopt: %s", note)

    def has_split(self, name: str) -> bool:
        return name in self.index.pairs

    def folders(self) -> list[Path]:
        """The data root and every image and mask folder of every split (pooled ones included)."""
        names = [d for dirs in (self.image_dirs, self.mask_dirs) for value in dirs.values() for d in _folders(value)]
        return list(dict.fromkeys([self.root, *(self.root / name for name in names)]))

    def split(self, name: str, ignore_index: int) -> FolderSplit:
        self.validate()
        if name not in self.index.pairs:
            raise KeyError(f"data set {self.root} has no split {name!r}; it has {sorted(self.index.pairs)}")
        return FolderSplit(self.index.pairs[name], self.masks, self.num_classes, self.in_channels, ignore_index)

    def sizes(self, split: str) -> list[tuple[str, str]] | None:
        """``(image path, "WxH")`` of every pair of ``split``, as displayed, from the headers."""
        return [(str(p.image), p.image_header.size) for p in self.index.pairs.get(split, [])]

    def summary(self) -> dict[str, object]:
        """Counts per split and image sizes, for reports."""
        return {
            split: {"pairs": len(pairs), "sizes": dict(Counter(p.image_header.size for p in pairs))}
            for split, pairs in self.index.pairs.items()
        }
