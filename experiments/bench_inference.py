"""Inference: what TTA and sliding windows change on a validation set, or prediction throughput.

    python -m experiments.bench_inference --config configs/amp.yaml --config configs/data/membrane.yaml \
        --ckpt_path runs/amp/version_0/checkpoints/last.ckpt --tile 256 --out results/inference_membrane.md
    python -m experiments.bench_inference --config configs/amp.yaml --config configs/data/membrane.yaml \
        --folder data/membrane/test --out results/inference_throughput.md

Without ``--folder``: validates one checkpoint once per inference setting (plain, flips,
scales, tiles) with the config's data and precision, and writes val mIoU, Dice, accuracy and
wall time per setting to a Markdown table (and the same rows as JSON beside it).

With ``--folder``: images per second of ``predict`` on that folder (decode, normalise,
network, argmax at the original size, write the mask PNG; no overlays) through segopt's
Trainer and PredictionWriter, against a bare loop doing the same work with OpenCV and the
same network (images read with segopt's reader, as displayed, as ``predict`` reads them), run alternately ``--repeats`` times so that other load hits both alike; then
the exported ONNX graph in ONNX Runtime against the same torch network on the same inputs
(network only). ``--ckpt_path`` is optional there: throughput does not depend on weights.

An existing ``--out`` (or the JSON beside it) is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from experiments.common import evaluation_trainer
from segopt.commands.from_config import build_from_config, load_weights
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite
from segopt.core.inference import TTA, SlidingWindow


def settings(tile: int) -> dict[str, tuple[TTA, SlidingWindow]]:
    """The compared settings, by name."""
    return {
        "plain": (TTA(), SlidingWindow()),
        "hflip": (TTA(hflip=True), SlidingWindow()),
        "hflip+vflip": (TTA(hflip=True, vflip=True), SlidingWindow()),
        # Street scenes have an up and a down: their TTA flips left-right only.
        "hflip, scales 0.75/1/1.25": (TTA(hflip=True, scales=(0.75, 1.0, 1.25)), SlidingWindow()),
        "hflip+vflip, scales 0.75/1/1.25": (TTA(hflip=True, vflip=True, scales=(0.75, 1.0, 1.25)), SlidingWindow()),
        f"tiles {tile}, overlap 0, constant": (TTA(), SlidingWindow(tile=tile, overlap=0.0, blend="constant")),
        f"tiles {tile}, overlap 0.5, gaussian": (TTA(), SlidingWindow(tile=tile, overlap=0.5)),
    }


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", type=Path, help="checkpoint (.ckpt); required without --folder")
    parser.add_argument("--folder", type=Path, help="measure prediction throughput on the images of this folder")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each arm (--folder)")
    parser.add_argument("--images", type=int, default=0, help="use only the first N images of --folder (0: all)")
    parser.add_argument("--tile", type=int, default=256, help="sliding-window tile side in pixels")
    parser.add_argument(
        "--out", "--output", dest="out", type=Path, required=True, help="Markdown file to write (.json beside it)"
    )
    parser.add_argument("--note", default="", help="how the checkpoint was trained, copied into the report")
    parser.add_argument(
        "--settings", nargs="+", metavar="NAME", help="measure only these settings, by name (default: all of them)"
    )
    add_overwrite_flag(parser)
    args, cli_args = parser.parse_known_args(argv)
    refuse_to_overwrite([args.out, args.out.with_suffix(".json")], args.overwrite)
    if args.folder is not None:
        return throughput(args, cli_args)
    if args.ckpt_path is None:
        parser.error("--ckpt_path is required without --folder")

    chosen = settings(args.tile)
    if args.settings:
        unknown = [name for name in args.settings if name not in chosen]
        if unknown:
            parser.error(f"--settings {unknown} unknown; choose from {list(chosen)}")
        chosen = {name: chosen[name] for name in args.settings}
    cli = build_from_config(cli_args)
    try:
        model = load_weights(cli.model, args.ckpt_path)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    precision = cli.trainer.precision
    trainer = evaluation_trainer(precision)
    rows = []
    for name, (tta, window) in chosen.items():
        model.tta, model.sliding_window = tta, window
        start = time.perf_counter()
        metrics = trainer.validate(model, datamodule=cli.datamodule, verbose=False)[0]
        seconds = time.perf_counter() - start
        rows.append(
            {
                "setting": name,
                "val/mIoU": metrics["val/mIoU"],
                "val/dice": metrics["val/dice"],
                "val/acc": metrics["val/acc"],
                "seconds": seconds,
                "val_iou": {c: metrics[f"val/iou/{c}"] for c in model.class_names},
            }
        )
        print(f"{name}: mIoU {metrics['val/mIoU']:.4f} ({seconds:.1f} s)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = (
        "python -m experiments.bench_inference "
        + " ".join([*cli_args, f"--ckpt_path {args.ckpt_path}", f"--tile {args.tile}"])
        + (" --settings " + " ".join(f"'{name}'" for name in args.settings) if args.settings else "")
    )
    lines = [
        "# Inference settings on the validation set",
        "",
        f"- command: `{command}`",
        f"- device: {_device()}; precision {precision}; torch {torch.__version__}",
        *([f"- checkpoint: {args.note}"] if args.note else []),
        f"- validation images: {len(cli.datamodule.dataset('val'))}",
        "",
        "| setting | val mIoU | val Dice | val acc | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['setting']} | {r['val/mIoU']:.4f} | {r['val/dice']:.4f} | {r['val/acc']:.4f} | {r['seconds']:.1f} |"
        for r in rows
    ]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return rows


# -- prediction throughput ------------------------------------------------------------------


def _bare_predict(
    net: torch.nn.Module, paths: list[Path], out: Path, in_channels: int, normalize, precision: str
) -> None:  # noqa: ANN001
    """Read, normalise, pad, run the network, argmax, crop, write: the per-image work of predict, by hand."""
    from experiments.common import autocast
    from segopt.data.files import read_image

    mean = np.asarray(normalize.mean[:in_channels], np.float32) * 255
    std = np.asarray(normalize.std[:in_channels], np.float32) * 255
    for path in paths:
        image = read_image(path, in_channels)  # [H,W,C] as displayed (EXIF orientation applied), as predict reads it
        x = torch.from_numpy(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1))[None]
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, (-w) % 32, 0, (-h) % 32), mode="replicate")
        with torch.inference_mode(), autocast("cpu", precision):
            ids = net(x)[0, :, :h, :w].argmax(0)
        cv2.imwrite(str(out / f"{path.stem}.png"), ids.numpy().astype(np.uint8))


def _segopt_predict(cli, folder: Path, out: Path, precision: str) -> None:  # noqa: ANN001
    from segopt.lightning.prediction_writer import PredictionWriter

    cli.datamodule.predict_dir = str(folder)
    trainer = evaluation_trainer(precision, accelerator="cpu", callbacks=[PredictionWriter(str(out), overlay=False)])
    trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)


def _time_arms(arms: dict[str, Any], scratch: Path, repeats: int, count: int) -> tuple[dict[str, list[float]], float]:
    """Seconds of each arm's runs (alternating; a first round warms up and is not counted), and
    the share of pixels on which the arms' last masks agree."""
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(repeats + 1):  # the first round warms up (page cache, allocator) and is not counted
        for index, (name, arm) in enumerate(arms.items()):
            out = scratch / f"out_{repeat}_{index}"
            out.mkdir()
            start = time.perf_counter()
            arm(out)
            if repeat:
                seconds[name].append(time.perf_counter() - start)
            assert len(list(out.glob("*.png"))) == count, f"{name} wrote {len(list(out.glob('*.png')))} masks"
    # The two arms do the same work: their masks must agree (up to argmax ties of softmax vs logits).
    same = total = 0
    for mask in (scratch / f"out_{repeats}_0").glob("*.png"):
        ours, bare = (cv2.imread(str(scratch / f"out_{repeats}_{i}" / mask.name), cv2.IMREAD_UNCHANGED) for i in (0, 1))
        same, total = same + int((ours == bare).sum()), total + ours.size
    return seconds, same / total


def _onnx_vs_torch(
    model: torch.nn.Module, scratch: Path, in_channels: int, size: tuple[int, int], passes: int
) -> tuple[list[dict], str]:
    """Images/s of the exported ONNX graph in ONNX Runtime and of the module in torch, alternating."""
    import statistics

    from segopt.core.onnx_export import export_onnx

    try:
        import onnxruntime as ort
    except ImportError as err:
        return [], f"not measured: {err}"
    session = ort.InferenceSession(
        str(export_onnx(model, scratch / "model.onnx", in_channels)), providers=["CPUExecutionProvider"]
    )
    h, w = size
    x = torch.randn(1, in_channels, h, w, generator=torch.Generator().manual_seed(0))
    engines = {
        "torch (float32)": lambda: model(x),
        "ONNX Runtime (float32, CPUExecutionProvider)": lambda: session.run(["logits"], {"image": x.numpy()}),
    }
    times: dict[str, list[float]] = {k: [] for k in engines}
    with torch.inference_mode():
        for i in range(passes + 1):
            for k, run in engines.items():
                start = time.perf_counter()
                run()
                if i:
                    times[k].append(time.perf_counter() - start)
    rows = [{"engine": k, "images_per_s": round(1 / statistics.median(t), 2)} for k, t in times.items()]
    rows[1]["vs_torch"] = round(rows[1]["images_per_s"] / rows[0]["images_per_s"], 2)
    return rows, f"{passes} passes each of one {h}x{w} image, alternating, median"


def _report_lines(args: argparse.Namespace, payload: dict[str, Any], num_workers: int) -> list[str]:
    """The Markdown report of :func:`throughput`'s payload."""
    rates, ratio = payload["images_per_s"], payload["segopt_vs_bare"]
    names = list(rates)
    load, onnx_rows = payload["load_average_1min"], payload["onnx"]
    lines = [
        "# Prediction throughput on a folder",
        "",
        f"`{payload['command']}`",
        "",
        "| loop | images / s (median of runs) | × bare loop |",
        "| --- | ---: | ---: |",
        *[f"| {k} | {rates[k]:.2f} | {rates[k] / rates[names[1]]:.2f} |" for k in names],
        "",
        f"- segopt / bare: **{ratio:.2f}x** (target ≥ 0.9x). The two loops' masks agree on "
        f"{100 * payload['masks_agree_pixel_fraction']:.3f} % of pixels.",
        f"- Work per image in both loops: decode {payload['image_size'][0]}x{payload['image_size'][1]} from "
        f"{args.folder.name}/ ({payload['images']} images), normalise, edge-pad to 32, network at {payload['precision']}, "
        "argmax at the original size, write the mask PNG (no overlays). segopt: `trainer.predict` with the config's data "
        f"module ({num_workers} loader worker(s)) and `PredictionWriter(overlay=False)`, a new Trainer "
        "per run, timed whole (setup and worker start included); bare: a Python loop with OpenCV and the same "
        "network. Alternating arms, one warm-up round not counted, "
        f"{args.repeats} counted runs each; all runs in the JSON.",
        f"- Hardware: {payload['hardware']}; torch {torch.__version__}, {payload['torch_threads']} torch thread(s); "
        f"1-min load average {load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        "## ONNX Runtime against torch (network only)",
        "",
    ]
    if onnx_rows:
        lines += [
            "| engine | images / s | × torch |",
            "| --- | ---: | ---: |",
            *[f"| {r['engine']} | {r['images_per_s']} | {r.get('vs_torch', 1.0)} |" for r in onnx_rows],
            "",
            f"- The exported graph (`segopt.core.onnx_export.export_onnx`: SegModule's edge-pad + network + crop) and the "
            f"same module in torch: {payload['onnx_note']}.",
        ]
    else:
        lines.append(f"- {payload['onnx_note']}")
    return lines


def throughput(args: argparse.Namespace, cli_args: list[str]) -> dict:
    """Images/s of segopt's predict against a bare loop, and ONNX Runtime against torch."""
    import shutil
    import statistics
    import tempfile

    from segopt.core.precision import cpu_name, resolve_precision
    from segopt.data.files import EXTENSIONS, read_header
    from segopt.data.roots import resolve_data_path

    cli = build_from_config([*cli_args, "--trainer.accelerator=cpu"])
    if args.ckpt_path is not None:
        load_weights(cli.model, args.ckpt_path)
    model = cli.model.eval()
    # What segopt runs for the config's precision on this CPU; the bare loop runs the same.
    precision, _ = resolve_precision(str(cli.trainer.precision), cuda=False)
    paths = sorted(p for p in resolve_data_path(args.folder).iterdir() if p.suffix.lower() in EXTENSIONS)
    paths = paths[: args.images] if args.images else paths
    if not paths:
        sys.exit(f"error: --folder {args.folder} holds no images ({', '.join(EXTENSIONS)}); give a folder of images")
    header = read_header(paths[0])
    image_size = (header.height, header.width)  # as displayed, the size the network sees
    scratch = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    folder = scratch / "in"
    folder.mkdir()
    for p in paths:
        shutil.copy(p, folder / p.name)
    arms = {
        "segopt predict (Trainer, PredictionWriter)": lambda out: _segopt_predict(cli, folder, out, precision),
        "bare loop (OpenCV + network)": lambda out: _bare_predict(
            model.net, sorted(folder.iterdir()), out, cli.datamodule.in_channels, cli.datamodule.normalize, precision
        ),
    }
    load = [os.getloadavg()[0]]
    seconds, agree = _time_arms(arms, scratch, args.repeats, len(paths))
    load.append(os.getloadavg()[0])
    rates = {name: len(paths) / statistics.median(s) for name, s in seconds.items()}
    names = list(arms)
    # ONNX Runtime against torch, network only, on the same normalised images.
    onnx_rows, onnx_note = _onnx_vs_torch(model, scratch, cli.datamodule.in_channels, image_size, len(paths))
    shutil.rmtree(scratch, ignore_errors=True)

    command = "python -m experiments.bench_inference " + " ".join(
        [*cli_args, f"--folder {args.folder}", f"--repeats {args.repeats}"]
        + ([f"--images {args.images}"] if args.images else [])
        + ([f"--ckpt_path {args.ckpt_path}"] if args.ckpt_path else [])
        + [f"--out {args.out}"]
    )
    payload = {
        "script": "experiments/bench_inference.py",
        "command": command,
        "hardware": f"{cpu_name()}, {os.cpu_count()} logical cores, shared with other jobs while measured",
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
        "images": len(paths),
        "image_size": list(image_size),
        "data_num_workers": cli.datamodule.num_workers,
        "load_average_1min": [round(v, 2) for v in load],
        "seconds": {k: [round(v, 3) for v in s] for k, s in seconds.items()},
        "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "segopt_vs_bare": round(rates[names[0]] / rates[names[1]], 3),
        "masks_agree_pixel_fraction": round(agree, 6),
        "target": 0.9,
        "onnx": onnx_rows,
        "onnx_note": onnx_note,
        "torch": torch.__version__,
    }
    lines = _report_lines(args, payload, cli.datamodule.num_workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
