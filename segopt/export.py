"""ONNX export of a segmentation model with dynamic batch, height and width, and its parity check.

The exported graph is what segopt runs for one whole-image pass: edge-pad to the stride
multiple, the network, crop back (:func:`segopt.inference.padded_logits`). It maps
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

from segopt.inference import padded_logits


class PaddedModel(nn.Module):
    """``padded_logits(model, x, multiple)`` as a module, so it can be traced."""

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_logits(self.model, x, self.multiple)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs onnx and onnxruntime ({err}); install them with pip install -e '.[onnx]'"
        ) from None


def export_onnx(model: nn.Module, path: str | Path, in_channels: int, multiple: int = 32, opset: int = 17) -> Path:
    """Write ``model`` (logits ``[N,K,H,W]``) to ``path`` as ONNX with dynamic N, H and W."""
    _require_onnx()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = PaddedModel(model, multiple).eval()
    # Traced at a size that is already a multiple, the backbone's own "pad if needed"
    # branch is recorded as "no padding", which holds for every input once the wrapper
    # has padded it; the tracer's warning about that branch is therefore expected.
    example = torch.zeros(1, in_channels, 2 * multiple, 2 * multiple)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
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
    multiple: int = 32,
    batch: int = 2,
    seed: int = 0,
) -> dict[tuple[int, int], float]:
    """Max abs logit difference between onnxruntime and PyTorch, per ``(height, width)``."""
    _require_onnx()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = PaddedModel(model, multiple).eval()
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for h, w in sizes:
        x = torch.randn(batch, in_channels, h, w, generator=generator)
        with torch.no_grad():
            expected = wrapper(x).float().numpy()
        (got,) = session.run(["logits"], {"image": x.numpy()})
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX logits have shape {got.shape} for input {h}x{w}, PyTorch {expected.shape}")
        diffs[(h, w)] = float(np.abs(got - expected).max())
    return diffs
