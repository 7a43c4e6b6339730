"""Loader throughput on CamVid with the training augmentation, against a bare Python loop.

    python -m experiments.bench_data [--images 64] [--repeats 3] [--workers 1 2] [--no-cache]

The bare loop does exactly the per-sample work of a loader worker (segopt's decoders, the
CamVid config's training pipeline, the mask check, the mask as a tensor) in one process;
the loader runs the same work through ``SegDataModule``'s loader settings (persistent
workers, single-threaded OpenCV, seeded workers, prefetch, shuffled batches of 16 as in
configs/amp.yaml), without and with the in-memory cache. Two batch formats are measured,
each against its own bare loop:

- float (default on a CPU): normalised float32 images leave the workers;
- uint8 (``normalize_on_device``, default on a CUDA GPU): uint8 images leave the workers
  and are normalised on the device after the transfer (not part of the per-image work
  in either loop).

Masks leave the workers narrow (uint8) in both. Where the loader's extra time goes is
measured in one process, per image: the per-sample work, stacking a batch in ordinary
memory, and stacking it into fresh shared memory as a worker's collation does.

Throughput is images/s per worker over a whole epoch after a warm-up epoch (workers
started, files in the page cache), two ways: per CPU second of the worker processes
(read from /proc; median of ``--repeats`` interleaved runs), which measures the work per
image even on a machine shared with other jobs, and per wall-clock second (best run),
which depends on what else runs. Linux only. Writes results/bench_data.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import albumentations
import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate

from experiments.common import result_files
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite
from segopt.core.precision import cpu_name
from segopt.data import CachedSamples, IndexMask, PairedFolder, TransformedDataset
from segopt.data.roots import resolve_data_path
from segopt.data.transforms import Augment, train_transform
from segopt.lightning.datamodule import _worker_init

PROJECT = Path(__file__).resolve().parents[1]
CAMVID = PROJECT / resolve_data_path("data/camvid")  # configs/data/camvid.yaml's root
TRAIN_SIZE = (256, 256)  # configs/data/camvid.yaml: random 256x256 crops
BATCH = 16  # configs/amp.yaml: batch_size 16
NUM_CLASSES = 11
#: batch format → whether the images are normalised in the pipeline (in the workers)
FORMATS = {"float": True, "uint8": False}


def _dataset(samples: Dataset, fmt: str) -> TransformedDataset:
    """The training dataset as ``SegDataModule.dataset("train")`` builds it for ``fmt``."""
    pipeline = train_transform(Augment(), 255, TRAIN_SIZE, mode="crop", seed=0, normalize=FORMATS[fmt])
    return TransformedDataset(samples, pipeline, check_mask=(NUM_CLASSES, 255), widen_mask=False)


def breakdown(samples: Dataset, count: int, fmt: str) -> dict[str, float]:
    """CPU ms per image in one process: per-sample work, stacking batches, stacking into fresh shared memory."""
    dataset = _dataset(samples, fmt)
    cpu = time.process_time()
    items = [dataset[i] for i in range(count)]
    work = time.process_time() - cpu
    batches = [items[b : b + BATCH] for b in range(0, count, BATCH)]
    cpu = time.process_time()
    for batch in batches:
        default_collate(batch)
    stack = time.process_time() - cpu
    cpu = time.process_time()
    for batch in batches:
        for key in ("image", "mask"):
            # What default_collate does inside a worker: a new shared-memory block per batch.
            elems = [item[key] for item in batch]
            storage = elems[0]._typed_storage()._new_shared(sum(e.numel() for e in elems), device=elems[0].device)
            torch.stack(elems, 0, out=elems[0].new(storage).resize_(len(elems), *elems[0].shape))
    shared = time.process_time() - cpu
    return {"sample_ms": 1000 * work / count, "stack_ms": 1000 * stack / count, "stack_shared_ms": 1000 * shared / count}


def _children_cpu_s() -> float:
    """CPU seconds used so far by this process's live children (the loader workers; Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def bare_loop(samples: Dataset, count: int, fmt: str) -> dict[str, float]:
    """Images per wall second and per CPU second of the per-sample work in a plain loop."""
    dataset = _dataset(samples, fmt)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        dataset[i]
    return {"wall": count / (time.perf_counter() - wall), "cpu": count / (time.process_time() - cpu)}


def loader_rate(samples: Dataset, fmt: str, workers: int) -> dict[str, float]:
    """Per worker: images per wall second and per worker-CPU second over a whole (second) epoch."""
    loader = DataLoader(
        _dataset(samples, fmt),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=True,
        worker_init_fn=_worker_init,
        prefetch_factor=max(2, math.ceil(4 / workers)),  # as SegDataModule sizes it
    )
    for _ in loader:  # warm-up epoch: start the workers
        pass
    wall, cpu, main_cpu = time.perf_counter(), _children_cpu_s(), time.process_time()
    seen = sum(batch["image"].shape[0] for batch in loader)
    wall, cpu, main_cpu = time.perf_counter() - wall, _children_cpu_s() - cpu, time.process_time() - main_cpu
    del loader
    return {"wall": seen / wall / workers, "cpu": seen / max(cpu, 1e-9), "main_ms": 1000 * main_cpu / seen}




def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="CamVid training images per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of every setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-cache", action="store_true", help="leave out the in-memory cache settings")
    parser.add_argument("--note", default="", help="the conditions of the run, written into the results")
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench_data")
    add_overwrite_flag(parser)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every loop setting's runs, interleaved with their bare loops, and where the time goes."""
    # One core per loop, like one loader worker: the comparison is per core.
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    names = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]
    source = PairedFolder(str(CAMVID), names, masks=IndexMask(void=[11]))
    decoded = Subset(source.split("train", 255), range(args.images))
    start = time.perf_counter()
    cached = CachedSamples(decoded)
    cache_fill_s = time.perf_counter() - start

    caches = (False,) if args.no_cache else (False, True)
    runs: dict[str, list[dict[str, float]]] = {}
    parts: dict[str, list[dict[str, float]]] = {fmt: [] for fmt in FORMATS}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        # Each loader setting right after its bare loop, so that load changes hit both alike.
        for fmt in FORMATS:
            for w in args.workers:
                for c in caches:
                    runs.setdefault(f"{fmt}/bare", []).append(bare_loop(decoded, args.images, fmt))
                    key = f"{fmt}/w{w}" + ("/cache" if c else "")
                    runs.setdefault(key, []).append(loader_rate(cached if c else decoded, fmt, w))
            parts[fmt].append(breakdown(decoded, args.images, fmt))
    load_after = os.getloadavg()
    where = {fmt: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]} for fmt, rs in parts.items()}
    return {"runs": runs, "where": where, "cache_fill_s": cache_fill_s, "load": (load_before[0], load_after[0])}


def record(args: argparse.Namespace, measured: dict[str, Any]) -> dict[str, Any]:
    """The JSON record: settings, hardware, and the rates of every setting against its bare loop."""
    runs = measured["runs"]
    # CPU-time rates barely move with the machine's load: their median. Wall-clock rates
    # do: the best run, the one least slowed by other work.
    cpu = {k: statistics.median(r["cpu"] for r in v) for k, v in runs.items()}
    wall = {k: max(r["wall"] for r in v) for k, v in runs.items()}
    main_ms = {k: statistics.median(r["main_ms"] for r in v) for k, v in runs.items() if "main_ms" in v[0]}
    base = {k: k.split("/")[0] + "/bare" for k in runs}
    return {
        "script": "experiments/bench_data.py",
        "command": f"python -m experiments.bench_data --images {args.images} --repeats {args.repeats} "
        f"--workers {' '.join(map(str, args.workers))}" + (" --no-cache" if args.no_cache else ""),
        "conditions": args.note or "not stated",
        "data": f"CamVid train, first {args.images} images (480x360 RGB PNG)",
        "pipeline": f"random crop {TRAIN_SIZE[0]}x{TRAIN_SIZE[1]}, hflip 0.5, rotate ±15, shear 10, colour jitter 0.2, "
        "then (float format) ImageNet normalise; to tensor",
        "batch_size": BATCH,
        "repeats": args.repeats,
        "hardware": f"{cpu_name()}, {os.cpu_count()} logical cores, shared with other jobs while measured",
        "load_average_1min": [round(v, 2) for v in measured["load"]],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "albumentations": albumentations.__version__,
            "opencv": cv2.__version__,
        },
        "cache_fill_s": round(measured["cache_fill_s"], 2),
        "images_per_cpu_s_per_worker": {k: round(v, 1) for k, v in cpu.items()},
        "ratio_to_bare_cpu": {k: round(cpu[k] / cpu[base[k]], 2) for k in runs if not k.endswith("bare")},
        "images_per_wall_s_per_worker": {k: round(v, 1) for k, v in wall.items()},
        "ratio_to_bare_wall": {k: round(wall[k] / wall[base[k]], 2) for k in runs if not k.endswith("bare")},
        "main_process_cpu_ms_per_image": {k: round(v, 2) for k, v in main_ms.items()},
        "worker_extra_cpu_ms_per_image": {
            k: round(1000 / cpu[k] - 1000 / cpu[base[k]], 3) for k in runs if not k.endswith("bare") and "cache" not in k
        },
        "where_the_time_goes_cpu_ms_per_image": measured["where"],
        "all_runs": {k: [{m: round(x, 2) for m, x in r.items()} for r in v] for k, v in runs.items()},
        "targets": {"loader_vs_bare": 0.95, "cached_loader_vs_bare": 1.8},
    }


def _setting_rows(result: dict[str, Any]) -> list[str]:
    cpu, wall = result["images_per_cpu_s_per_worker"], result["images_per_wall_s_per_worker"]
    rows = []
    for key in cpu:
        fmt, *rest = key.split("/")
        if rest == ["bare"]:
            setting, main, cpu_ratio, wall_ratio = "bare loop, 1 process", "—", 1.0, 1.0
        else:
            w = int(rest[0][1:])
            setting = f"DataLoader, {w} worker{'s' if w > 1 else ''}" + (", cache" if "cache" in rest else "")
            main = f"{result['main_process_cpu_ms_per_image'][key]:.2f}"
            cpu_ratio, wall_ratio = result["ratio_to_bare_cpu"][key], result["ratio_to_bare_wall"][key]
        rows.append(f"| {fmt} | {setting} | {cpu[key]:.1f} | {cpu_ratio:.2f} | {wall[key]:.1f} | {wall_ratio:.2f} | {main} |")
    return rows


def render(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """The Markdown report of :func:`record`'s result."""
    extra, where = result["worker_extra_cpu_ms_per_image"], result["where_the_time_goes_cpu_ms_per_image"]
    load_before, load_after = result["load_average_1min"]
    return "\n".join(
        [
            "# Data loading throughput (CamVid, training augmentation)",
            "",
            f"`{result['command']}`",
            "",
            "| batches | loop | images / CPU-s per worker | × bare | images / wall-s per worker | × bare "
            "| main process CPU ms / image |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            *_setting_rows(result),
            "",
            f"- Data: {result['data']}; shuffled batches of {BATCH}, persistent workers, OpenCV single-threaded, "
            "torch 1 thread.",
            f"- Pipeline: {result['pipeline']}. float: normalised float32 images leave the workers (default on a "
            "CPU); uint8: uint8 images leave them and are normalised on the device (`normalize_on_device`, default "
            "on a CUDA GPU). Masks leave them as uint8 in both and are widened after the transfer. Each format is "
            "compared with a bare loop doing its own per-image work; each loader run follows a bare-loop run.",
            "Where the loader's time goes, CPU ms per image, measured in one process (median of the repeats):",
            "",
            "| batches | per-sample work (decode, augment, check, to tensor) | stack batches of "
            f"{BATCH} | stack into fresh shared memory (a worker's collation) | loader worker's extra over the bare loop, 1 worker |",
            "| --- | ---: | ---: | ---: | ---: |",
            *[
                f"| {fmt} | {w['sample_ms']:.3f} | {w['stack_ms']:.3f} | {w['stack_shared_ms']:.3f} | "
                + (f"{extra[f'{fmt}/w1']:.3f} |" if f"{fmt}/w1" in extra else "— |")
                for fmt, w in where.items()
            ],
            "",
            f"- Conditions: {result['conditions']}.",
            "- Targets: ≥ 0.95x the bare loop without cache, ≥ 1.8x with cache. Cache fill (decode "
            f"{args.images} pairs up front, threads): {result['cache_fill_s']:.2f} s, not in the rates.",
            "- images / CPU-s: images per CPU second of the worker processes (bare loop: of the process), "
            f"median of {args.repeats} interleaved runs; it counts the work per image and hardly depends on other "
            "jobs. images / wall-s: best run; it does depend on them (2 workers share 2 busy cores here).",
            f"- Hardware: {result['hardware']}; 1-min load average {load_before:.2f} before, "
            f"{load_after:.2f} after. Every run is in the JSON.",
            f"- Versions: Python {platform.python_version()}, torch {torch.__version__}, albumentations "
            f"{albumentations.__version__}, OpenCV {cv2.__version__}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    refuse_to_overwrite(result_files(args.out), args.overwrite)
    if not CAMVID.is_dir():
        raise SystemExit(
            f"CamVid not found at {CAMVID}; put the SegNet copy there "
            "or point SEGOPT_DATA_ROOT at the folder holding camvid/"
        )
    result = record(args, measure(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(args, result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
