"""A run killed with SIGKILL mid-epoch resumes from last.ckpt and continues the same curves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from tests.conftest import ROOT, tiny_config_file

pytestmark = pytest.mark.slow  # every test here trains

STEPS_PER_EPOCH = 64 // 8
EVERY_N_STEPS = 3


class KillAtStep(pl.Callback):
    """SIGKILLs its own process after ``step`` optimiser steps, events flushed to disk first
    (so the resumed run must cope with steps logged after the last checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            trainer.logger.experiment.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def _config(tmp_path: Path) -> Path:
    """amp.yaml, tiny, with the step checkpoint every EVERY_N_STEPS steps."""
    return tiny_config_file(
        tmp_path, EVERY_N_STEPS, trainer=dict(max_epochs=2), source=dict(num_train=64, num_val=16), backbone=dict(base_channels=8)
    )


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "segopt.commands.cli", "fit", f"--config={_config(tmp_path)}", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )


def test_sigkill_mid_epoch_then_resume_last_gives_each_step_once(tmp_path: Path) -> None:
    kill_step = STEPS_PER_EPOCH + 3  # step 11, in epoch 1, two steps after the checkpoint at step 9
    killed = _run(tmp_path, "--trainer.callbacks+=tests.test_crash_resume.KillAtStep", f"--trainer.callbacks.step={kill_step}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = tmp_path / "runs" / "amp" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 9  # the last multiple of EVERY_N_STEPS before the kill
    assert not list((run / "checkpoints").glob(".*.tmp"))

    resumed = _run(tmp_path, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run.parent / "version_1").exists()

    # The killed run had flushed train/loss for step 9, past its checkpoint (9 steps done),
    # and the resumed run logged it again: the files hold both, TensorBoard shows one.
    raw = [
        e.step
        for f in sorted(run.glob("events.out.tfevents.*"))
        for e in EventFileLoader(str(f)).Load()
        if any(v.tag == "train/loss" for v in e.summary.value)
    ]
    assert sorted(s for s in set(raw) if raw.count(s) > 1) == [9]
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    total = 2 * STEPS_PER_EPOCH
    assert [e.step for e in events.Scalars("train/loss")] == list(range(total))
    assert [e.step for e in events.Scalars("val/mIoU")] == [STEPS_PER_EPOCH - 1, total - 1]
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == total
