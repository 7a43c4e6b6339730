"""ONNX export: dynamic sizes and logits that match PyTorch, from a module or a checkpoint."""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import pytest
import torch

from segopt.core.onnx_export import export_onnx, onnx_parity
from segopt.lightning.module import SegModule
from segopt.models import UNet
from tests.conftest import CONFIGS

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnx", reason="the onnx extra is not installed")



TINY = [
    f"--config={CONFIGS / 'amp.yaml'}",
    "--model.backbone.init_args.base_channels=4",
    "--model.backbone.init_args.depth=2",
]


def _model(in_channels: int = 3, base_channels: int = 4) -> SegModule:
    torch.manual_seed(0)
    model = SegModule(partial(UNet, base_channels=base_channels, depth=2), num_classes=5, in_channels=in_channels)
    # Non-trivial BatchNorm statistics, so that an export that ignored them would show.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _script():
    return importlib.import_module("segopt.commands.export")


@pytest.mark.parametrize("in_channels", [1, 3])
def test_export_has_dynamic_sizes_and_matches_pytorch(tmp_path: Path, in_channels: int) -> None:
    model = _model(in_channels)
    path = export_onnx(model, tmp_path / "model.onnx", in_channels)
    batch, channels, height, width = ort.InferenceSession(str(path)).get_inputs()[0].shape
    assert channels == in_channels
    assert all(isinstance(d, str) for d in (batch, height, width))  # symbolic, not fixed
    sizes = [(64, 64), (301, 197), (45, 67), (5, 7)]
    diffs = onnx_parity(model, path, in_channels, sizes)
    assert set(diffs) == set(sizes)
    assert max(diffs.values()) < 1e-3
    # The graph is segopt's whole-image pass; where no padding is needed that is the bare network.
    x = torch.randn(1, in_channels, 64, 96)
    (got,) = ort.InferenceSession(str(path)).run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-4)


def test_script_exports_a_checkpoint_built_from_the_training_config(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": _model().state_dict()}, ckpt)
    out = tmp_path / "exports" / "tiny.onnx"
    worst = _script().main([*TINY, f"--ckpt_path={ckpt}", f"--out={out}", "--check_sizes", "64x64", "67x45"])
    printed = capsys.readouterr().out
    assert out.is_file()
    assert worst < 1e-3
    assert "parity 64x64: max abs logit difference" in printed
    assert "parity 67x45: max abs logit difference" in printed


def test_script_replaces_an_existing_file_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    missing = tmp_path / "missing.ckpt"  # never read: the refusal comes first
    with pytest.raises(SystemExit) as err:
        _script().main([*TINY, f"--ckpt_path={missing}", f"--out={out}"])
    assert str(err.value) == (
        f"error: {out} already exists; nothing was written. Pass --overwrite to replace it, or give another --out"
    )
    assert out.read_bytes() == b"an earlier export" and sorted(tmp_path.iterdir()) == [out]

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": _model().state_dict()}, ckpt)
    assert _script().main([*TINY, f"--ckpt_path={ckpt}", f"--out={out}", "--check_sizes", "32x32", "--overwrite"]) < 1e-3
    assert ort.InferenceSession(str(out)).get_inputs()[0].name == "image"


def test_script_refuses_a_checkpoint_that_does_not_fit_the_config(tmp_path: Path) -> None:
    ckpt = tmp_path / "wide.ckpt"
    torch.save({"state_dict": _model(base_channels=8).state_dict()}, ckpt)
    with pytest.raises(SystemExit, match="does not fit the model built from the config"):
        _script().main([*TINY, f"--ckpt_path={ckpt}", f"--out={tmp_path / 'x.onnx'}"])


def test_script_names_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--ckpt_path .*missing\.ckpt is not a file"):
        _script().main([*TINY, f"--ckpt_path={tmp_path / 'missing.ckpt'}", f"--out={tmp_path / 'x.onnx'}"])
