"""Measure what test-time augmentation and sliding-window inference change on a validation set.

    python scripts/bench_inference.py --config configs/amp.yaml --config configs/data/membrane.yaml \
        --ckpt_path runs/amp/version_0/checkpoints/last.ckpt --tile 256 --out results/inference_membrane.md

Validates one checkpoint once per inference setting (plain, flips, scales, tiles) with the
config's data and precision, and writes val mIoU, Dice, accuracy and wall time per setting
to a Markdown table (and the same rows as JSON beside it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from segopt.from_config import build_from_config, load_weights
from segopt.inference import TTA, SlidingWindow


def settings(tile: int) -> dict[str, tuple[TTA, SlidingWindow]]:
    """The compared settings, by name."""
    return {
        "plain": (TTA(), SlidingWindow()),
        "hflip": (TTA(hflip=True), SlidingWindow()),
        "hflip+vflip": (TTA(hflip=True, vflip=True), SlidingWindow()),
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
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint (.ckpt) to validate")
    parser.add_argument("--tile", type=int, default=256, help="sliding-window tile side in pixels")
    parser.add_argument("--out", "--output", dest="out", type=Path, required=True, help="Markdown file to write (.json beside it)")
    parser.add_argument("--note", default="", help="how the checkpoint was trained, copied into the report")
    args, cli_args = parser.parse_known_args(argv)

    cli = build_from_config(cli_args)
    try:
        model = load_weights(cli.model, args.ckpt_path)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    precision = cli.trainer.precision
    trainer = pl.Trainer(
        accelerator="auto", devices=1, precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    rows = []
    for name, (tta, window) in settings(args.tile).items():
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
            }
        )
        print(f"{name}: mIoU {metrics['val/mIoU']:.4f} ({seconds:.1f} s)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python scripts/bench_inference.py " + " ".join([*cli_args, f"--ckpt_path {args.ckpt_path}", f"--tile {args.tile}"])
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


if __name__ == "__main__":
    main()
