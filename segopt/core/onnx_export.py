"""ONNX export of a segmentation model with dynamic batch, height and width, and its parity check.

The exported graph is what segopt runs for one whole-image pass: :class:`segopt.lightning.SegModule`'s
forward (edge-pad to the backbone's ``size_multiple``, the network, crop back). It maps
``image [N,C,H,W]`` (normalised as in evaluation) to ``logits [N,K,H,W]``; sliding
window and TTA are left to the caller. Needs the ``onnx`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segopt.models.contracts import size_multiple


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs onnx and onnxruntime ({err}); install them with pip install -e '.[onnx]'"
        ) from None


def export_onnx(model: nn.Module, path: str | Path, in_channels: int, opset: int = 17) -> Path:
    """Write ``model`` (logits ``[N,K,H,W]`` for any H, W: a SegModule) to ``path`` as ONNX with dynamic N, H and W."""
    _require_onnx()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # Padding and cropping are branch-free shape arithmetic, so a trace at one size holds for all.
    multiple = size_multiple(model)
    example = torch.zeros(1, in_channels, 2 * multiple, 2 * multiple)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes},
                opset_version=opset,
                dynamo=False,
            )
    onnx.checker.check_model(str(path))
    return path


def onnx_parity(
    model: nn.Module,
    path: str | Path,
    in_channels: int,
    sizes: Sequence[tuple[int, int]],
    batch: int = 2,
    seed: int = 0,
) -> dict[tuple[int, int], float]:
    """Max abs logit difference between onnxruntime and PyTorch, per ``(height, width)``."""
    _require_onnx()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for h, w in sizes:
        x = torch.randn(batch, in_channels, h, w, generator=generator)
        with torch.no_grad():
            expected = model(x).float().numpy()
        (got,) = session.run(["logits"], {"image": x.numpy()})
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX logits have shape {got.shape} for input {h}x{w}, PyTorch {expected.shape}")
        diffs[(h, w)] = float(np.abs(got - expected).max())
    return diffs
