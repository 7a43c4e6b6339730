"""A run SIGKILLed mid-epoch or at an epoch end and resumed with --ckpt_path last is the uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from segopt.commands.cli import main
from segopt.data.resumable import ResumableSampler
from segopt.data.synthetic import SyntheticShapes
from segopt.lightning import SegDataModule
from tests.conftest import ROOT, tiny_config_file

STEPS_PER_EPOCH = 32 // 8


class DrawPerRank(pl.Callback):
    """After every batch, draws from Python's, NumPy's and torch's global generators, ``rank + 1``
    times (as dropout or a custom augmentation might): a resume that restored no random states,
    restored them at the wrong point, or gave a process another's would end with other states."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        for _ in range(trainer.global_rank + 1):
            random.random()
            np.random.random()
            torch.rand(())


def random_states(run: Path) -> list[dict]:
    """The random states of each training process, as last.ckpt's training loader saved them."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["SegDataModule"]["train_loader"]["random_states"]


def assert_same_random_states(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for rank, (a, b) in enumerate(zip(got, expected)):
        assert a["python"] == b["python"], rank
        assert torch.equal(a["numpy"][1], b["numpy"][1]) and a["numpy"][2:] == b["numpy"][2:], rank
        assert torch.equal(a["torch"], b["torch"]), rank


class KillAtEpochStart(pl.Callback):
    """Every process SIGKILLs itself as epoch ``epoch`` starts, after the previous epoch's checkpoints.

    The barrier first (a no-op in one process): no process of a DDP run dies while another is
    still writing or gathering for those checkpoints (a dead peer would turn the kill into a gloo error).
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.strategy.barrier("kill")
            os.kill(os.getpid(), signal.SIGKILL)


def _config(tmp_path: Path) -> Path:
    """amp.yaml, tiny, 32-bit, a step checkpoint every 3 steps (mid-epoch with 4 steps per epoch),
    global random numbers drawn every batch, rare images oversampled."""
    return tiny_config_file(
        tmp_path,
        3,
        trainer=dict(max_epochs=3, precision="32-true", accelerator="cpu", num_sanity_val_steps=0),
        # Rare-image oversampling on (every shape class is under half the pixels): its draws must resume exactly too.
        data=dict(rare_image_share=0.5, augment={"rare_class_below": 0.5}),
        source=dict(num_train=32, num_val=8),
        backbone=dict(base_channels=4),
        callbacks=[{"class_path": "tests.test_exact_resume.DrawPerRank"}],
    )


def _killed(tmp_path: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "segopt.commands.cli", "fit", f"--config={_config(tmp_path)}", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def _fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Path:
    monkeypatch.chdir(tmp_path)
    main(["fit", f"--config={_config(tmp_path)}", *args])
    return tmp_path / "runs" / "amp" / "version_0"


def _curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, list]:
    root = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as mp:
        run = _fit(root, mp)
    return weights_of(run), _curves(run), random_states(run)


@pytest.mark.slow  # trains
@pytest.mark.parametrize(
    ("kill", "saved_step"),
    [
        # killed as the last batch of epoch 0 ends (before epoch 0's checkpoints): the newest
        # checkpoint is the step-3 one, one batch before the epoch's end
        (["--trainer.callbacks+=tests.test_crash_resume.KillAtStep", "--trainer.callbacks.step=4"], 3),
        # killed as epoch 1 starts: the newest checkpoint is epoch 0's end
        (["--trainer.callbacks+=tests.test_exact_resume.KillAtEpochStart", "--trainer.callbacks.epoch=1"], 4),
    ],
    ids=["mid-epoch", "epoch-end"],
)
def test_killed_and_resumed_run_ends_bit_identical(
    uninterrupted: tuple[dict, dict, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: list[str],
    saved_step: int, recwarn,  # noqa: ANN001
) -> None:
    _killed(tmp_path, *kill)
    newest = tmp_path / "runs" / "amp" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(newest, map_location="cpu", weights_only=False)["global_step"] == saved_step
    run = _fit(tmp_path, monkeypatch, "--ckpt_path=last")
    assert not any("not resumable" in str(w.message) for w in recwarn.list)
    weights, curves, states = uninterrupted
    resumed = weights_of(run)
    assert resumed.keys() == weights.keys()
    assert all(torch.equal(resumed[k], weights[k]) for k in weights), [k for k in weights if not torch.equal(resumed[k], weights[k])][:3]
    got = _curves(run)
    for tag in ("train/loss", "val/mIoU", "val/loss", "lr-AdamW"):
        # TensorBoard keeps the last event per step; the killed run's steps past its checkpoint were purged.
        assert dict(got[tag]) == dict(curves[tag]), tag
    assert_same_random_states(random_states(run), states)


def test_augmentation_does_not_depend_on_the_number_of_workers() -> None:
    data = SegDataModule(SyntheticShapes(size=32, num_train=12, num_val=4), batch_size=4)
    torch.manual_seed(7)
    dataset = data.dataset("train")
    sampler = ResumableSampler(dataset, seed=7, batch_size=4)
    sampler.set_epoch(2)
    batches = {w: list(DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=w)) for w in (0, 2)}
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) for a, b in zip(*batches.values()))
    sampler.skip = 2
    assert torch.equal(next(iter(DataLoader(dataset, batch_size=4, sampler=sampler)))["image"], batches[0][2]["image"])
