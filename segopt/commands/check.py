"""Check a data set before training, with the same YAML that trains on it.

    python -m segopt.check --config configs/amp.yaml --config configs/data/camvid.yaml

Reports the pairs found, image sizes and channels, the raw mask values present in each
split, the class pixel histogram, suggested class weights (median frequency) and image
mean/std, then every problem at once: pairing, paths, headers, lossy (JPEG) masks,
undecodable files, mask values that are neither a class nor void, splits whose images differ
in size where the config batches them unresized. What would make ``fit``, ``validate`` or
``test`` fail on the data is reported here first. Warnings, which do not fail the check: classes
the training masks never show (fit logs the same), and validation files whose names show a group
(a video sequence) that training shares. Exits 1 when there is a problem, 0 otherwise. Reads
files only; writes nothing unless ``--json`` is given.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import ArgumentParser

from segopt.data.batching import Batching
from segopt.data.class_weights import median_frequency_weights, pixel_counts
from segopt.data.classes import absent_classes, absent_classes_warning
from segopt.data.datasets import SegSource
from segopt.data.files import DataError, decode_threads, read_image, read_mask
from segopt.data.folder import Pair, PairedFolder, decode_mask
from segopt.data.groups import shared_groups, shared_groups_warning
from segopt.data.masks import invalid_mask_values
from segopt.data.rare_crop import RARE_CLASS_BELOW, no_rare_class_problem
from segopt.data.synthetic import SyntheticShapes

_SHOWN_PROBLEMS = 25  # per-file problems printed in full; the rest are counted (all in --json)


@dataclass
class SplitStats:
    """What one split holds."""

    pairs: int = 0
    checked: int = 0
    files: list = field(default_factory=list)  # (name, "WxH") of each sample whose size is known
    sizes: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    raw_values: set = field(default_factory=set)
    pixels: np.ndarray | None = None  # per class
    present: np.ndarray | None = None  # labelled pixels of the masks containing each class
    ignored: int = 0
    channel_sum: np.ndarray | None = None
    channel_sq: np.ndarray | None = None
    channel_n: int = 0


@dataclass
class CheckResult:
    """Per-split statistics plus every problem (failures), warning (worth acting on, not a
    failure) and note (informational)."""

    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    file_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: ``check_source``'s ``measure`` of each decoded training mask, in file order.
    measured: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.file_problems


def _sample_stats(image: np.ndarray, mask: np.ndarray, num_classes: int, ignore_index: int) -> tuple:
    pixels, labelled = pixel_counts(mask, num_classes, ignore_index)
    pixels_f = image.reshape(-1, image.shape[-1]).astype(np.float64) / 255.0
    return pixels, labelled, mask.size - labelled, pixels_f.sum(0), (pixels_f**2).sum(0), pixels_f.shape[0]


def _add(stats: SplitStats, result: tuple, num_classes: int) -> None:
    pixels, labelled, ignored, csum, csq, n = result
    if stats.pixels is None:
        stats.pixels = np.zeros(num_classes, np.int64)
        stats.present = np.zeros(num_classes, np.int64)
        stats.channel_sum, stats.channel_sq = np.zeros_like(csum), np.zeros_like(csq)
    stats.pixels += pixels
    stats.present += np.where(pixels > 0, labelled, 0)
    stats.ignored += ignored
    stats.channel_sum += csum
    stats.channel_sq += csq
    stats.channel_n += n
    stats.checked += 1


def _check_folder_split(
    source: PairedFolder,
    pairs: list[Pair],
    ignore_index: int,
    stats: SplitStats,
    result: CheckResult,
    measure: Callable[[np.ndarray], Any] | None = None,
) -> None:
    decoder, k = source.masks, source.num_classes

    def one(pair: Pair) -> tuple[Any, list[object], str | None, Any]:
        if pair.image_header.size != pair.mask_header.size:
            return None, [], None, None  # already reported from the headers
        if pair.mask_header.lossy and not source.allow_lossy_masks:
            return None, [], None, None  # refused from the headers; its values would blame the class list instead
        try:
            image = read_image(pair.image, source.in_channels, pair.image_header.orientation)
            raw = read_mask(pair.mask, decoder.colour)
            values = decoder.raw_values(raw)
            mask = decode_mask(pair, raw, decoder, k, ignore_index)
            # Measured here, in the decoding thread, so the mask is decoded once for both.
            return _sample_stats(image, mask, k, ignore_index), values, None, measure(mask) if measure else None
        except DataError as err:
            return None, [], "; ".join(err.problems), None

    with ThreadPoolExecutor(decode_threads()) as pool:
        for pair in pairs:
            stats.sizes[pair.image_header.size] += 1
            stats.channels["grey" if pair.image_header.grey else pair.image_header.mode] += 1
        for sample, values, problem, measured in pool.map(one, pairs):
            stats.raw_values.update(values)
            if problem:
                result.file_problems.append(problem)
            elif sample is not None:
                _add(stats, sample, k)
                if measure is not None:
                    result.measured.append(measured)


def _check_generic_split(
    source: SegSource,
    name: str,
    ignore_index: int,
    limit: int | None,
    stats: SplitStats,
    result: CheckResult,
    measure: Callable[[np.ndarray], Any] | None = None,
) -> None:
    samples = source.split(name, ignore_index)
    count = len(samples) if limit is None else min(limit, len(samples))  # type: ignore[arg-type]
    for i in range(count):
        try:
            image, mask = samples[i]
        except DataError as err:
            result.file_problems.extend(err.problems)
            continue
        size = f"{image.shape[1]}x{image.shape[0]}"
        stats.sizes[size] += 1
        stats.files.append((f"{name} sample {i}", size))
        stats.channels["grey" if image.shape[-1] == 1 else "RGB"] += 1
        stats.raw_values.update(int(v) for v in np.unique(mask))
        bad = invalid_mask_values(mask, source.num_classes, ignore_index)
        if bad:
            result.file_problems.append(f"{name} sample {i}: mask values {bad} are neither a class nor ignore_index")
            continue
        _add(stats, _sample_stats(image, mask, source.num_classes, ignore_index), source.num_classes)
        if measure is not None:
            result.measured.append(measure(mask))


def check_source(
    source: SegSource,
    ignore_index: int,
    limit: int | None = None,
    batching: Batching | None = None,
    rare: list[tuple[str, float, float]] | None = None,
    measure: Callable[[np.ndarray], Any] | None = None,
) -> CheckResult:
    """Decode every sample (or the first ``limit`` per split) and collect statistics and problems.

    With ``batching`` (the data config's batch and size keys), a split whose images differ in
    size where batches would stack them unresized is a problem too, as it is for ``fit``; with
    ``rare`` (``(key, share, rare_class_below)`` of rare-class crops and rare-image
    oversampling that are on), training masks without a rare class for them to favour. With
    ``measure``, each training mask that decodes is also passed to it as it is decoded, and the
    results are kept in ``result.measured`` (the planner's structure widths).
    """
    result = CheckResult()
    if 0 <= ignore_index < source.num_classes:
        result.problems.append(
            f"ignore_index {ignore_index} is the id of class {source.class_names[ignore_index]!r}; pick a value "
            f"outside 0..{source.num_classes - 1} (e.g. 255)"
        )
    if isinstance(source, PairedFolder):
        index = source.index
        result.problems.extend(index.problems)
        result.notes.extend(index.notes)
        for name, pairs in index.pairs.items():
            stats = result.splits.setdefault(name, SplitStats(pairs=len(pairs)))
            train_measure = measure if name == "train" else None
            _check_folder_split(source, pairs[:limit] if limit else pairs, ignore_index, stats, result, train_measure)
    else:
        try:
            source.validate()
        except DataError as err:
            result.problems.extend(err.problems)
        for name in ("train", "val", "test"):
            if source.has_split(name):
                stats = result.splits.setdefault(name, SplitStats())
                _check_generic_split(source, name, ignore_index, limit, stats, result, measure if name == "train" else None)
                stats.pairs = len(source.split(name, ignore_index))  # type: ignore[arg-type]
    if batching is not None:
        for name, stats in result.splits.items():
            sizes = source.sizes(name) if source.has_split(name) else None
            problem = batching.problem(name, sizes if sizes is not None else stats.files)
            if problem:
                result.problems.append(problem)
    train = result.splits.get("train")
    if rare and limit is None and not result.file_problems and train is not None and train.pixels is not None:
        for key, share, below in rare:
            problem = no_rare_class_problem(train.pixels, key, share, below, source.class_names)
            if problem:
                result.problems.append(problem)
    _check_classes_seen(source, result, limit)
    if isinstance(source, PairedFolder):
        _check_groups(source, result)
    return result


def _check_classes_seen(source: SegSource, result: CheckResult, limit: int | None) -> None:
    train = result.splits.get("train")
    if train is None or train.pixels is None or result.problems or result.file_problems:
        return  # with undecodable masks the histogram is incomplete: say nothing about absence
    absent = absent_classes(train.pixels)
    if absent:
        partial = limit is not None and train.checked < train.pairs
        result.warnings.append(absent_classes_warning(absent, source.class_names, partial))


def _check_groups(source: PairedFolder, result: CheckResult) -> None:
    pairs = source.index.pairs
    if "train" not in pairs or "val" not in pairs:
        return
    stems = {split: [p.image.stem for p in pairs[split]] for split in ("train", "val")}
    shared = shared_groups(stems["train"], stems["val"], source.group_pattern)
    if shared:
        result.warnings.append(shared_groups_warning(shared, source.group_pattern))


def class_weights(stats: SplitStats) -> list[float] | None:
    """Median-frequency class weights from a split's histogram (None without labelled pixels)."""
    if stats.pixels is None or stats.pixels.sum() == 0:
        return None
    return [round(float(w), 4) for w in median_frequency_weights(stats.pixels, stats.present)]


def _values_text(values: set) -> str:
    ordered = sorted(values)
    if len(ordered) > 20:
        return f"{len(ordered)} distinct: {ordered[:10]} ... {ordered[-3:]}"
    return str(ordered)


def render(source: SegSource, ignore_index: int, result: CheckResult) -> str:
    """The human-readable report."""
    names = list(source.class_names)
    where = f" at {source.root}" if isinstance(source, PairedFolder) else ""
    decoder = f", masks {source.masks!r}" if isinstance(source, PairedFolder) else ""
    lines = [
        f"data check: {type(source).__name__}{where}",
        f"  {len(names)} classes {names}, in_channels {source.in_channels}, ignore_index {ignore_index}{decoder}",
    ]
    for split, s in result.splits.items():
        lines.append(f"\n[{split}] {s.pairs} pairs" + (f" ({s.checked} of them decoded and counted)" if s.checked != s.pairs else ""))
        lines.append(f"  image sizes: {dict(s.sizes.most_common())}")
        lines.append(f"  image channels: {dict(s.channels)}")
        lines.append(f"  mask values in the files: {_values_text(s.raw_values)}")
        if s.pixels is not None:
            total = int(s.pixels.sum()) + s.ignored
            lines.append("  class pixels:")
            width = max(len(n) for n in names)
            for i, name in enumerate(names):
                lines.append(f"    {i:>3} {name:<{width}} {int(s.pixels[i]):>12,d}  {100 * s.pixels[i] / total:6.2f} %")
            lines.append(f"    {'':>3} {'(ignored)':<{width}} {s.ignored:>12,d}  {100 * s.ignored / total:6.2f} %")
    train = result.splits.get("train")
    if train is not None and train.pixels is not None:
        weights = class_weights(train)
        if weights is not None:
            lines.append(f"\nsuggested class weights (median frequency, train): {weights}")
        mean = train.channel_sum / train.channel_n
        std = np.sqrt(np.maximum(train.channel_sq / train.channel_n - mean**2, 0))
        lines.append(
            f"image mean/std (train, pixels / 255): mean {[round(float(m), 3) for m in mean]}, "
            f"std {[round(float(v), 3) for v in std]}  (data.normalize)"
        )
    for note in result.notes:
        lines.append(f"\nnote: {note}")
    for warning in result.warnings:
        lines.append(f"\nwarning: {warning}")
    problems = result.problems + result.file_problems
    if not problems:
        lines.append("\nOK: no problems found")
    else:
        lines.append(f"\nPROBLEMS ({len(problems)}):")
        lines += [f"  - {p}" for p in result.problems]
        lines += [f"  - {p}" for p in result.file_problems[:_SHOWN_PROBLEMS]]
        hidden = len(result.file_problems) - _SHOWN_PROBLEMS
        if hidden > 0:
            lines.append(f"  ... and {hidden} more file problems (all of them: --json PATH)")
    return "\n".join(lines)


def as_json(source: SegSource, ignore_index: int, result: CheckResult) -> dict[str, Any]:
    """The report as plain data."""
    train = result.splits.get("train")
    return {
        "source": type(source).__name__,
        "class_names": list(source.class_names),
        "ignore_index": ignore_index,
        "splits": {
            name: {
                "pairs": s.pairs,
                "decoded": s.checked,
                "image_sizes": dict(s.sizes),
                "image_channels": dict(s.channels),
                "mask_values": [list(v) if isinstance(v, tuple) else v for v in sorted(s.raw_values)],
                "class_pixels": None if s.pixels is None else [int(v) for v in s.pixels],
                "ignored_pixels": s.ignored,
            }
            for name, s in result.splits.items()
        },
        "class_weights": class_weights(train) if train is not None else None,
        "notes": result.notes,
        "warnings": result.warnings,
        "problems": result.problems + result.file_problems,
    }


def _source_from_config(
    argv: list[str] | None,
) -> tuple[SegSource, int, int | None, str | None, Batching, list[tuple[str, float, float]]]:
    """Parse the training YAML with segopt's own CLI parser; instantiate only the data source."""
    from segopt.commands.from_config import ConfigOnlyCLI
    from segopt.lightning.datamodule import SegDataModule
    from segopt.lightning.module import SegModule

    class _ConfigOnly(ConfigOnlyCLI):  # the check builds the source alone; the model and trainer are not needed
        def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse type)
            super().add_arguments_to_parser(parser)
            parser.add_argument("--limit", type=int | None, default=None, help="decode at most this many pairs per split")
            parser.add_argument("--json", type=str | None, default=None, help="also write the report as JSON here")
            parser.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")

    cli = _ConfigOnly(SegModule, SegDataModule, subclass_mode_model=False, subclass_mode_data=False, run=False, args=argv)
    data = cli.config.data
    if data.source is None:
        source: SegSource = SyntheticShapes()
    else:
        source = source_from_mapping(data.source.as_dict() if hasattr(data.source, "as_dict") else data.source)
    if cli.config.json:
        defaults = cli.config.get("__default_config__") or []
        configs = [*(cli.config.get("config") or []), *(defaults if isinstance(defaults, list) else [defaults])]
        refuse_json_target(Path(cli.config.json), cli.config.overwrite, source, [Path(os.fspath(c)) for c in configs])
    batching = Batching(
        data.batch_size,
        data.eval_batch_size,
        None if data.train_size is None else tuple(data.train_size),
        None if data.eval_size is None else tuple(data.eval_size),
        bool(data.full_res_masks),
    )
    augment = data.augment
    below = augment.rare_class_below if augment is not None else RARE_CLASS_BELOW
    rare = []
    if augment is not None and augment.enabled and augment.rare_crop_share > 0:
        rare.append(("data.augment.rare_crop_share", augment.rare_crop_share, below))
    if data.get("rare_image_share"):
        rare.append(("data.rare_image_share", data.rare_image_share, below))
    return source, data.ignore_index, cli.config.limit, cli.config.json, batching, rare


def refuse_json_target(path: Path, overwrite: bool, source: SegSource, configs: list[Path]) -> None:
    """Stop before any work when ``--json`` would replace a file it must not.

    A config being read and anything inside the data set's folders are refused always; any
    other existing file unless ``--overwrite`` is given.
    """
    target = path.resolve()
    for config in configs:
        if target == config.resolve():
            raise SystemExit(
                f"error: --json {path} is the config {config} that this check reads; nothing was written. "
                f"Give the report a path of its own, e.g. --json {path.with_name(path.stem + '_check.json')}"
            )
    if isinstance(source, PairedFolder):
        dirs = [*source.image_dirs.values(), *source.mask_dirs.values()]
        for folder in dict.fromkeys(p.resolve() for p in [source.root, *(source.root / d for d in dirs)]):
            if target == folder or folder in target.parents:
                raise SystemExit(
                    f"error: --json {path} is inside the data set's folder {folder}; nothing was written. "
                    f"Write the report outside the data set, e.g. --json {folder.name}_check.json"
                )
    if path.is_dir():
        raise SystemExit(f"error: --json {path} is a folder; nothing was written. Give a file path, e.g. --json {path / 'check.json'}")
    if not path.parent.is_dir():
        raise SystemExit(
            f"error: --json {path}: its folder {path.parent} does not exist; nothing was written. Create it, or give "
            "a path in an existing folder"
        )
    if path.exists() and not overwrite:
        raise SystemExit(
            f"error: --json {path} already exists; nothing was written. Pass --overwrite to replace it, "
            "or give another --json path"
        )


def source_from_mapping(source: dict[str, Any]) -> SegSource:
    """Build a data source from its config (``{class_path: ..., init_args: {...}}``)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--source", type=SegSource)
    return parser.instantiate(parser.parse_object({"source": source})).source


def main(argv: list[str] | None = None) -> int:
    """Run the check; the exit status is 1 when a problem was found."""
    source, ignore_index, limit, json_path, batching, rare = _source_from_config(argv)
    result = check_source(source, ignore_index, limit, batching, rare)
    print(render(source, ignore_index, result))
    if json_path:
        Path(json_path).write_text(json.dumps(as_json(source, ignore_index, result), indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
