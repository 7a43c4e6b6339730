"""model.compile: the same numbers as without it, interchangeable checkpoints, a clear skip."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from segopt.commands.cli import main
from segopt.commands.from_config import load_weights
from segopt.lightning.module import SegModule
from segopt.losses import CombinedLoss
from segopt.models import UNet
from tests.conftest import CONFIGS, LogLines


def _module(compile: bool) -> SegModule:
    torch.manual_seed(0)
    return SegModule(lambda c, k: UNet(c, k, base_channels=4, depth=1), num_classes=3, compile=compile)


@pytest.mark.slow
def test_compiled_backbone_gives_the_same_logits_loss_and_gradients() -> None:
    plain, compiled = _module(False), _module(True)
    compiled.configure_model()
    assert compiled.net._compiled_call_impl is not None  # compiled in place ...
    assert list(compiled.state_dict()) == list(plain.state_dict())  # ... so no "_orig_mod." in the keys
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(2))
    loss = CombinedLoss(3)
    grads = []
    for model in (plain, compiled):
        model.train()
        loss(model(x), y).backward()
        grads.append([p.grad for p in model.net.parameters()])
    for g_plain, g_compiled in zip(*grads):
        torch.testing.assert_close(g_compiled, g_plain, atol=1e-5, rtol=1e-4)
    plain.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), atol=1e-5, rtol=1e-4)


def test_a_platform_that_cannot_compile_runs_uncompiled_and_says_so_once(monkeypatch) -> None:
    def no_dynamo(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on Python 3.99+\nmore detail")

    monkeypatch.setattr(torch, "compile", no_dynamo)
    model = _module(True)
    handler = LogLines()
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        model.configure_model()
        model.configure_model()  # Lightning calls it per run: said once
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    lines = [line for line in handler.lines if "model.compile" in line]
    assert lines == [
        "segopt: model.compile skipped, running uncompiled: torch.compile fails on cpu here "
        "(RuntimeError: Dynamo is not supported on Python 3.99+)"
    ]
    assert model.net._compiled_call_impl is None
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_compile_off_by_default_and_an_unknown_mode_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    assert SegModule().hparams.compile is False
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", f"--config={CONFIGS / 'amp.yaml'}", "--model.compile_mode=fastest", "--print_config"])
    assert 'Parser key "model.compile_mode"' in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoint_of_a_compiled_fit_loads_into_an_uncompiled_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    tiny = [
        f"--config={CONFIGS / 'amp.yaml'}", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
        "--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=0", "--data.source.init_args.size=16",
        "--data.source.init_args.num_train=4", "--data.source.init_args.num_val=2", "--data.batch_size=2",
        "--data.num_workers=0", "--model.backbone.init_args.base_channels=4", "--model.backbone.init_args.depth=1",
    ]  # fmt: skip
    cli = main(["fit", *tiny, "--model.compile=true"])
    assert cli.model.net._compiled_call_impl is not None
    # The first ModelCheckpoint keeps the best epoch (no last_model_path); last.ckpt is the defaults' second.
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    # Export and prediction build the model uncompiled and load the weights strictly.
    plain = SegModule(lambda c, k: UNet(c, k, base_channels=4, depth=1), num_classes=5)
    load_weights(plain, ckpt)
    x = torch.randn(1, 3, 16, 16)
    cli.model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), cli.model(x), atol=1e-5, rtol=1e-4)
