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

from segopt.data.synthetic import SyntheticShapes
from segopt.lightning import SegDataModule
from segopt.lightning.module import SegModule
from segopt.models import UNet


def test_lightning_cli_still_runs_a_subcommand_through_run_subcommand() -> None:
    method = getattr(LightningCLI, "_run_subcommand", None)
    assert method is not None and list(inspect.signature(method).parameters) == ["self", "subcommand"], (
        "LightningCLI._run_subcommand(self, subcommand) changed: segopt.commands.cli.SegCLI overrides it to take back "
        "the folders a failed run wrote (RunFolderGuard); move that guard to the new place"
    )


def test_summary_writer_still_exposes_its_file_writer(tmp_path: Path) -> None:
    writer = SummaryWriter(tmp_path)
    try:
        assert callable(getattr(getattr(writer, "file_writer", None), "add_event", None)), (
            "SummaryWriter.file_writer.add_event is gone: segopt.lightning.PurgeStaleEvents writes the "
            "SessionLog.START event that purges a resumed run's repeated steps through it"
        )
    finally:
        writer.close()


class _RecordsOrder(SegDataModule):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def load_state_dict(self, state_dict) -> None:
        self.calls.append("load_state_dict")
        super().load_state_dict(state_dict)

    def train_dataloader(self):
        self.calls.append("train_dataloader")
        return super().train_dataloader()


def test_a_resumed_fit_hands_the_datamodule_its_state_before_it_builds_the_training_loader(tmp_path: Path) -> None:
    def parts() -> tuple[_RecordsOrder, SegModule, pl.Trainer]:
        data = _RecordsOrder(SyntheticShapes(size=16, num_train=4, num_val=2), batch_size=2, num_workers=0)
        model = SegModule(backbone=partial(UNet, base_channels=2, depth=1), num_classes=5)  # OneCycle: sized to the run
        trainer = pl.Trainer(
            max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, accelerator="cpu",
        )  # fmt: skip
        return data, model, trainer

    data, model, trainer = parts()
    trainer.fit(model, datamodule=data)
    progress = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    assert progress == 2, (
        "trainer.fit_loop.epoch_loop.batch_progress.current.processed no longer counts the epoch's trained "
        "batches: segopt.data.resumable.ResumableLoader saves it as the batches to skip on resume"
    )
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, map_location="cpu", weights_only=True)["_RecordsOrder"]["train_loader"]["batches"] == 2, (
        "a checkpoint no longer keeps the datamodule's state_dict under its class name: "
        "segopt.lightning.SegDataModule keeps the training loader's place there"
    )
    data, model, trainer = parts()
    trainer.fit(model, datamodule=data, ckpt_path=path)
    assert data.calls[:2] == ["load_state_dict", "train_dataloader"], (
        f"a resumed fit called the datamodule's {data.calls[:2]} in this order: Lightning no longer restores the "
        "datamodule before the optimisers are configured, and segopt.lightning.SegDataModule would build the "
        "training loader (for the schedule's length) before it knows where the checkpoint stopped"
    )
    trainer.fit_loop.max_epochs = 7
    assert trainer.max_epochs == 7, (
        "setting trainer.fit_loop.max_epochs no longer sets trainer.max_epochs: segopt.lightning.TimeBudget "
        "plans a run's epochs through it"
    )
