"""The Lightning and TensorBoard internals segopt still relies on, each checked so that a release that
changes one fails here, with a message naming what segopt does with it, instead of deep in a run."""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from torch.utils.tensorboard import SummaryWriter

from segopt.data import SegDataModule
from segopt.data.resumable import loader_state
from segopt.data.synthetic import SyntheticShapes
from segopt.models import UNet
from segopt.module import SegModule


def test_lightning_cli_still_runs_a_subcommand_through_run_subcommand() -> None:
    method = getattr(LightningCLI, "_run_subcommand", None)
    assert method is not None and list(inspect.signature(method).parameters) == ["self", "subcommand"], (
        "LightningCLI._run_subcommand(self, subcommand) changed: segopt.cli.SegCLI overrides it to take back "
        "the folders a failed run wrote (RunFolderGuard); move that guard to the new place"
    )


def test_summary_writer_still_exposes_its_file_writer(tmp_path: Path) -> None:
    writer = SummaryWriter(tmp_path)
    try:
        assert callable(getattr(getattr(writer, "file_writer", None), "add_event", None)), (
            "SummaryWriter.file_writer.add_event is gone: segopt.callbacks.PurgeStaleEvents writes the "
            "SessionLog.START event that purges a resumed run's repeated steps through it"
        )
    finally:
        writer.close()


def test_a_fit_checkpoint_still_keeps_the_training_loader_state_where_segopt_reads_it(tmp_path: Path) -> None:
    data = SegDataModule(SyntheticShapes(size=16, num_train=4, num_val=2), batch_size=2, num_workers=0)
    model = SegModule(backbone=partial(UNet, base_channels=2, depth=1), num_classes=5, scheduler=None)
    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    progress = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    assert progress == 1, (
        "trainer.fit_loop.epoch_loop.batch_progress.current.processed no longer counts the epoch's trained "
        "batches: segopt.data.resumable.ResumableLoader saves it as the batches to skip on resume"
    )
    path = tmp_path / "one.ckpt"
    trainer.save_checkpoint(path)
    state = loader_state(torch.load(path, map_location="cpu", weights_only=True))
    assert state is not None and state["batches"] == 1, (
        "a fit checkpoint no longer holds the training loader's state at loops.fit_loop.state_dict.combined_loader: "
        "segopt.data.resumable.loader_state reads it there to resume exactly"
    )
    trainer.fit_loop.max_epochs = 7
    assert trainer.max_epochs == 7, (
        "setting trainer.fit_loop.max_epochs no longer sets trainer.max_epochs: segopt.time_budget.TimeBudget "
        "plans a run's epochs through it"
    )
