"""Export a trained checkpoint to ONNX (dynamic height and width) and check it against PyTorch.

    python -m segopt.export --config configs/amp.yaml --config configs/data/membrane.yaml \
        --ckpt_path runs/amp/version_0/checkpoints/last.ckpt --out exports/membrane.onnx

The model is built from the same config files as training (any other ``--model.*`` /
``--data.*`` flag is passed on), the checkpoint's weights are loaded, and the export is
run in onnxruntime on random inputs of the ``--check_sizes``; the max abs logit
difference is printed and the script exits with status 1 when it exceeds ``--atol``.
An existing ``--out`` file is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segopt.commands.from_config import build_from_config, load_weights
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite
from segopt.core.onnx_export import export_onnx, onnx_parity


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HEIGHTxWIDTH, e.g. 512x512") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


def main(argv: list[str] | None = None) -> float:
    """Export, check parity, print the differences; returns the largest one."""
    parser = argparse.ArgumentParser(prog="python -m segopt.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint (.ckpt) to export")
    parser.add_argument("--out", "--output", dest="out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument(
        "--check_sizes", type=_size, nargs="+", default=[(256, 256), (301, 197)],
        help="HEIGHTxWIDTH inputs for the parity check (default: 256x256 301x197)",
    )
    parser.add_argument("--atol", type=float, default=1e-3, help="largest allowed max abs logit difference")
    add_overwrite_flag(parser)
    args, cli_args = parser.parse_known_args(argv)
    refuse_to_overwrite([args.out], args.overwrite)

    try:
        model = load_weights(build_from_config(cli_args).model, args.ckpt_path).eval()
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    in_channels = int(model.hparams.in_channels)
    export_onnx(model, args.out, in_channels, args.opset)
    diffs = onnx_parity(model, args.out, in_channels, args.check_sizes)
    for (h, w), diff in diffs.items():
        print(f"parity {h}x{w}: max abs logit difference {diff:.3g}")
    worst = max(diffs.values())
    print(f"wrote {args.out} (opset {args.opset}, dynamic batch/height/width); max abs difference {worst:.3g}")
    if worst > args.atol:
        sys.exit(f"error: ONNX and PyTorch logits differ by {worst:.3g} > --atol {args.atol}")
    return worst


if __name__ == "__main__":
    main()
