"""What only a CUDA GPU can show: no device sync in the training step, compile on the GPU.

Marked ``gpu`` and skipped without CUDA; ``experiments/gpu_report.py`` runs them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from segopt.commands.cli import main
from segopt.lightning.failsafe import NonFiniteLossGuard
from segopt.lightning.module import SegModule
from tests.conftest import CONFIGS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY = [
    f"--config={CONFIGS / 'amp.yaml'}", "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.max_epochs=1",
    "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=50", "--data.source.init_args.size=64",
    "--data.source.init_args.num_train=32", "--data.source.init_args.num_val=4", "--data.batch_size=8",
]  # fmt: skip


def _erroring_on_sync(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(cls, name, strict)


def test_training_step_never_synchronises_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA's sync debug mode raises at any call that makes the host wait for the device.
    monkeypatch.chdir(tmp_path)
    _erroring_on_sync(monkeypatch, SegModule, "training_step")
    _erroring_on_sync(monkeypatch, NonFiniteLossGuard, "on_train_batch_end")
    cli = main(["fit", *TINY, "--trainer.precision=16-mixed"])
    assert cli.trainer.global_step == 4
    assert cli.datamodule.train_dataloader().pin_memory is True
    assert cli.datamodule.normalizes_on_device()


def test_compiled_fit_on_the_gpu_writes_checkpoints_an_uncompiled_model_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", *TINY, "--trainer.precision=bf16-mixed", "--model.compile=true"])
    assert cli.model.net._compiled_call_impl is not None
    state = torch.load(cli.trainer.checkpoint_callback.last_model_path, map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
