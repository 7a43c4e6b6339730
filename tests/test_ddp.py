"""configs/ddp.yaml with two processes on CPU (DDP over gloo): metrics over all the data, files once,
exact resume.

One real two-process ``fit`` runs in a subprocess (as a user would launch it); its
validation mIoU must equal what a single process computes for the same checkpoint on the
same data, and its run folder must hold one run, one event file and each checkpoint
written once, by rank 0. A two-process fit killed (every process) after its first epoch's
checkpoints and resumed with ``--ckpt_path last`` on two processes must end with the
weights, curves and each process's random states of one that never stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassJaccardIndex

from segopt.commands.cli import main
from segopt.lightning.callbacks import AtomicCheckpointIO
from tests.conftest import CONFIGS, ROOT
from tests.test_exact_resume import assert_same_random_states, random_states, weights_of

pytestmark = pytest.mark.slow  # every test here trains

# 8 validation images over 2 processes in batches of 4: one full batch each, so the
# distributed sampler pads nothing and every image is counted exactly once.
DATA = [
    "--trainer.accelerator=cpu",
    "--trainer.precision=32-true",
    "--trainer.max_epochs=1",
    "--trainer.log_every_n_steps=1",
    "--data.source.init_args.size=32",
    "--data.source.init_args.num_train=16",
    "--data.source.init_args.num_val=8",
    "--data.batch_size=4",
    "--data.num_workers=0",
    "--model.backbone.init_args.base_channels=8",
    "--model.backbone.init_args.depth=2",
]
CLASSES = ["background", "disk", "rectangle", "triangle", "ring"]
SAVES = "checkpoint_saves.txt"


class RecordingCheckpointIO(AtomicCheckpointIO):
    """AtomicCheckpointIO that also notes which process wrote which file (in the working directory)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else "single"
        with open(SAVES, "a") as f:
            f.write(f"rank {rank} {Path(path).name}\n")


def _ddp(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``segopt.commands.cli fit`` of amp.yaml + ddp.yaml on DATA with two processes, run in ``root``."""
    command = [
        sys.executable, "-m", "segopt.commands.cli", "fit",
        f"--config={CONFIGS / 'amp.yaml'}", f"--config={CONFIGS / 'ddp.yaml'}",
        *DATA,
        "--trainer.devices=2",
        "--trainer.sync_batchnorm=false",  # SyncBatchNorm needs CUDA
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    assert "distributed_backend=gloo" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of one two-process fit (tests only read what it wrote)."""
    root = tmp_path_factory.mktemp("ddp")
    _ok(_ddp(root, "--trainer.plugins=[{class_path: tests.test_ddp.RecordingCheckpointIO}]"))
    return root


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_two_processes_write_one_run_one_event_file_and_each_checkpoint_once(ddp_fit: Path) -> None:
    runs = ddp_fit / "runs" / "amp"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    run = runs / "version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / "config.yaml").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(ckpts) == 2 and ckpts[1] == "last.ckpt" and ckpts[0].startswith("epoch000-miou"), ckpts
    saves = sorted((ddp_fit / SAVES).read_text().splitlines())
    assert saves == [f"rank 0 {ckpts[0]}", "rank 0 last.ckpt"]
    scalars = _scalars(run)
    # Each rank trains on half of the 16 images: 2 steps of 4, each logged once.
    assert [step for step, _ in scalars["train/loss"]] == [0, 1]
    assert [step for step, _ in scalars["val/mIoU"]] == [1]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


def test_two_process_val_miou_equals_one_process_on_the_same_checkpoint(
    ddp_fit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = ddp_fit / "runs" / "amp" / "version_0"
    logged = {tag: values[-1][1] for tag, values in _scalars(run).items()}
    monkeypatch.chdir(tmp_path)
    cli = main(
        ["validate", f"--config={CONFIGS / 'amp.yaml'}", *DATA, "--trainer.devices=1", "--trainer.logger=false",
         f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    )
    single = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for tag in ["val/mIoU", "val/acc", *(f"val/iou/{c}" for c in CLASSES)]:
        assert logged[tag] == pytest.approx(single[tag], abs=1e-6, nan_ok=True), tag

    # The comparison has teeth: one process's half of the images alone gives another mIoU.
    model, dataset = cli.model.eval(), cli.datamodule.dataset("val")
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    masks = torch.stack([dataset[i]["mask"] for i in range(len(dataset))])
    with torch.no_grad():
        preds = model(images).argmax(dim=1)

    def miou(index: slice) -> float:
        metric = MulticlassJaccardIndex(len(CLASSES), average="none", ignore_index=255, zero_division=float("nan"))
        return float(metric(preds[index], masks[index]).nanmean())

    assert miou(slice(None)) == pytest.approx(logged["val/mIoU"], abs=1e-6)
    # The sampler interleaves: rank 0 sees images 0, 2, 4, 6 and rank 1 the others.
    assert abs(miou(slice(0, None, 2)) - logged["val/mIoU"]) > 1e-4
    assert abs(miou(slice(1, None, 2)) - logged["val/mIoU"]) > 1e-4


def test_two_processes_killed_after_an_epoch_and_resumed_on_two_end_bit_identical(tmp_path: Path) -> None:
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    whole.mkdir()
    crashed.mkdir()
    # Rare-image oversampling on: the ranks must split one resampled order, before and after the kill.
    fit = ["--trainer.max_epochs=2", "--trainer.callbacks+=tests.test_exact_resume.DrawPerRank",
           "--data.rare_image_share=0.5", "--data.augment.rare_class_below=0.5"]
    _ok(_ddp(whole, *fit))
    killed = _ddp(crashed, *fit, "--trainer.callbacks+=tests.test_exact_resume.KillAtEpochStart", "--trainer.callbacks.epoch=1")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-4000:]
    run = crashed / "runs" / "amp" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2  # epoch 0's end
    resumed = _ddp(crashed, *fit, "--ckpt_path=last")
    _ok(resumed)
    assert "not resumable" not in resumed.stdout + resumed.stderr
    assert not (run.parent / "version_1").exists()
    expected, got = weights_of(whole / "runs" / "amp" / "version_0"), weights_of(run)
    assert got.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(got[k], expected[k])] == []
    curves, resumed_curves = _scalars(whole / "runs" / "amp" / "version_0"), _scalars(run)
    assert [step for step, _ in curves["val/mIoU"]] == [1, 3]
    for tag in ("train/loss", "val/mIoU", "val/loss", "lr-AdamW"):
        assert dict(resumed_curves[tag]) == dict(curves[tag]), tag

    # Each process ends with its own random states of the run that never stopped (they differ).
    states = random_states(whole / "runs" / "amp" / "version_0")
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    assert_same_random_states(random_states(run), states)
