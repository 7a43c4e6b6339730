"""Callbacks for the TensorBoard dashboards and for checkpoints that survive a crash."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from segopt.core.palette import legend, overlay
from segopt.data.masks import label_image_dtype
from segopt.lightning.datamodule import SegDataModule
from segopt.models import FinetunableEncoder


def _tensorboards(trainer: pl.Trainer) -> list[Any]:
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


class ValidationOverlays(pl.Callback):
    """Shows a fixed set of validation images as input | ground truth | prediction.

    Runs the model on ``num_images`` validation samples (always the same ones, spread
    evenly over the split) every ``every_n_epochs`` epochs: a handful of forward passes,
    negligible beside an epoch. Truth and prediction are blended over the image in the
    palette that predict uses, with a legend below.

    Args:
        num_images: how many validation samples to show.
        every_n_epochs: draw on epochs 0, N, 2N, ... and on the last epoch.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1) -> None:
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        if trainer.sanity_checking or not (epoch % self.every_n_epochs == 0 or last):
            return
        writers = _tensorboards(trainer)
        if not writers or not isinstance(trainer.datamodule, SegDataModule):
            return
        dataset, decoded = trainer.datamodule.dataset("val"), trainer.datamodule.decoded("val")
        rows = []
        with torch.no_grad():
            count = min(self.num_images, len(dataset))
            # Spread over the split: neighbouring samples are often near-identical video frames.
            for i in np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist():
                image, mask = decoded[i]
                x = dataset[i]["image"].unsqueeze(0).to(pl_module.device)
                pred = pl_module(x).argmax(dim=1)[0].cpu().numpy()
                k = pl_module.num_classes
                if pred.shape != mask.shape:  # evaluated at eval_size: show at the original size
                    pred = cv2.resize(pred.astype(label_image_dtype(k)), mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
                rgb = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
                rows.append(np.concatenate([rgb, overlay(rgb, mask, k), overlay(rgb, pred, k)], axis=1))
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        grid = np.concatenate([*rows, legend(list(pl_module.class_names), width)], axis=0)
        for writer in writers:
            writer.add_image("val/overlays", grid, trainer.global_step, dataformats="HWC")


class ConfusionMatrixFigure(pl.Callback):
    """Draws the validation confusion matrix (rows: truth, normalised) as a figure each epoch.

    Reads :attr:`segopt.lightning.SegModule.val_confmat` (a torchmetrics confusion matrix)
    before the module resets it: Lightning runs callbacks' ``on_validation_epoch_end`` first.
    """

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metric = pl_module.val_confmat
        writers = _tensorboards(trainer)
        if trainer.sanity_checking or not writers or not metric.update_called:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        counts = metric.compute().float().cpu()
        rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
        names = list(pl_module.class_names)
        size = 2 + 0.45 * len(names)
        fig, ax = plt.subplots(figsize=(size + 1, size))
        im = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(names) <= 12:
            for (r, c), v in np.ndenumerate(rates):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.5 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        for writer in writers:
            writer.add_figure("val/confusion_matrix", fig, trainer.global_step, close=False)
        plt.close(fig)


class EncoderFreeze(pl.Callback):
    """Keeps a :class:`~segopt.models.FinetunableEncoder` backbone's encoder frozen during its
    first ``freeze_encoder_epochs`` training epochs, then trains it.

    :class:`segopt.lightning.SegModule` registers it for such a backbone. The state follows
    ``trainer.current_epoch`` alone, so a resumed run freezes or unfreezes correctly. Lightning's
    ``BackboneFinetuning`` is not used: it adds the encoder to the optimiser at unfreeze time,
    and a schedule such as OneCycleLR must see the same parameter groups from start to end.
    """

    def __init__(self) -> None:
        self.frozen = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        if not isinstance(net, FinetunableEncoder):
            return
        freeze = trainer.current_epoch < net.freeze_encoder_epochs
        if freeze and not self.frozen:
            # Lightning only restores the modes it found, so eval mode lasts until unfreezing.
            net.freeze_encoder()
            rank_zero_info(f"segopt: encoder frozen for epochs 0-{net.freeze_encoder_epochs - 1}")
        elif not freeze and self.frozen:
            net.unfreeze_encoder(pl_module.training)
            rank_zero_info(f"segopt: encoder unfrozen at epoch {trainer.current_epoch}")
        self.frozen = freeze


class HParamsBestMetric(pl.Callback):
    """Registers the hyper-parameters with ``val/mIoU_best`` as their metric in TensorBoard's
    HPARAMS tab (use with the logger's ``default_hp_metric: false``)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Read the state, not compute(): after a resume the restored best has no update yet.
        best = float(pl_module.val_miou_best.max_value)
        best = best if best > float("-inf") else 0.0
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.log_hyperparams(pl_module.hparams, {"val/mIoU_best": float(best)})


class PurgeStaleEvents(pl.Callback):
    """On resume, tells TensorBoard to drop events logged after the checkpoint's step.

    A run killed between two checkpoints has logged steps the resumed run will log
    again; TensorBoard discards events at or after a ``SessionLog.START`` marker's step
    (the mechanism behind ``SummaryWriter(purge_step=...)``), so the curves show each
    step once.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only rank 0 holds a real event writer; the others log nowhere.
        if trainer.global_step == 0 or not trainer.is_global_zero:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        for writer in _tensorboards(trainer):
            # SummaryWriter writes raw events only through its file writer (built with it), and the
            # public purge_step is fixed when the logger builds the writer, before the resumed step is known.
            file_writer = writer.file_writer
            file_writer.add_event(Event(step=trainer.global_step, session_log=SessionLog(status=SessionLog.START)))
            file_writer.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place.

    A rename within one directory is atomic, so a kill in the middle of a save leaves
    the previous ``last.ckpt`` intact instead of a truncated file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
