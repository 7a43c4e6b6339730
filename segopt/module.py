"""SegModule: the LightningModule that trains a backbone with a segmentation loss.

The Trainer owns precision, devices, accumulation, clipping, checkpointing and logging;
this module owns what is specific to segmentation: the loss over logits and int64 masks,
the metrics (torchmetrics), and the optimiser with a per-step learning-rate schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from segopt.losses import CombinedLoss
from segopt.models import UNet
from segopt.schedules import OneCycle

BackboneFactory = Callable[[int, int], nn.Module]
LossFactory = Callable[[int, int], nn.Module]
SchedulerFactory = Callable[[Optimizer, int], LRScheduler]


class SegModule(pl.LightningModule):
    """Semantic segmentation with a swappable backbone, loss, optimiser and schedule.

    Args:
        backbone: builds the network as ``backbone(in_channels, num_classes)``.
        num_classes: number of classes (linked from the datamodule by the CLI).
        in_channels: image channels (linked from the datamodule).
        ignore_index: mask value excluded from loss and metrics (linked).
        class_names: names used for per-class metric keys (linked).
        loss: builds the loss as ``loss(num_classes, ignore_index)``.
        optimizer: builds the optimiser from the parameters.
        scheduler: builds the schedule as ``scheduler(optimizer, total_steps)``; stepped
            every optimiser step. None keeps the learning rate constant.
        aux_weights: weights of the outputs when the backbone returns several (deep
            supervision); None weighs them equally.
        channels_last: run the backbone in channels-last memory format (weights and inputs),
            which convolution kernels on recent GPUs and CPUs often run faster.
    """

    def __init__(
        self,
        backbone: BackboneFactory = UNet,
        num_classes: int = 2,
        in_channels: int = 3,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        loss: LossFactory = CombinedLoss,
        optimizer: OptimizerCallable = AdamW,
        scheduler: SchedulerFactory | None = OneCycle,
        aux_weights: Sequence[float] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "loss", "optimizer", "scheduler"])
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes is {num_classes}; "
                "give one name per class"
            )
        self.net = backbone(in_channels, num_classes)
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.criterion = loss(num_classes, ignore_index)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.aux_weights = list(aux_weights) if aux_weights else None

        per_class = dict(num_classes=num_classes, ignore_index=ignore_index, average="none", zero_division=float("nan"))
        self.val_metrics = MetricCollection(
            {
                "iou": MulticlassJaccardIndex(**per_class),
                "acc": MulticlassAccuracy(num_classes, ignore_index=ignore_index, average="micro"),
            }
        )
        self.test_metrics = self.val_metrics.clone()
        self.val_miou_best = MaxMetric()
        # Kept in checkpoints so that a resumed run still knows its best epoch.
        self.val_miou_best.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B,K,H,W]`` (the main head when the backbone is deeply supervised)."""
        out = self._backbone(x)
        return out[-1] if isinstance(out, (list, tuple)) else out

    def _backbone(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, out: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, (list, tuple)):
            return self.criterion(out, mask)
        weights = self.aux_weights or [1.0 / len(out)] * len(out)
        if len(weights) != len(out):
            raise ValueError(f"aux_weights has {len(weights)} values but the backbone returned {len(out)} outputs")
        return sum(w * self.criterion(o, mask) for w, o in zip(weights, out))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(self._backbone(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_train_start(self) -> None:
        # The sanity check ran validation; its numbers must not count as an epoch.
        self.val_metrics.reset()
        self.val_miou_best.reset()

    def _eval_step(self, batch: dict[str, Any], stage: str, metrics: MetricCollection) -> None:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=batch["image"].shape[0], sync_dist=True)
        metrics.update(logits.argmax(dim=1), batch["mask"])

    def _log_epoch(self, stage: str, metrics: MetricCollection) -> torch.Tensor:
        values = metrics.compute()
        iou = values["iou"]
        # A class absent from both target and prediction has IoU NaN and stays out of the
        # mean: counting it as 0 would punish the model for a class the data never showed.
        miou = iou.nanmean()
        self.log(f"{stage}/mIoU", miou, prog_bar=True)
        # Per class over the whole set, Dice = 2J / (1 + J): no second confusion count needed.
        self.log(f"{stage}/dice", (2 * iou / (1 + iou)).nanmean())
        self.log(f"{stage}/acc", values["acc"])
        for name, value in zip(self.class_names, iou):
            if not torch.isnan(value):
                self.log(f"{stage}/iou/{name}", value)
        metrics.reset()
        return miou

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        miou = self._log_epoch("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            self.val_miou_best.update(miou)
            self.log("val/mIoU_best", self.val_miou_best.compute())

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Class-index masks ``[B,H,W]`` for the batch, with the sample indices."""
        return {"mask": self(batch["image"]).argmax(dim=1), "index": batch["index"]}

    def configure_callbacks(self) -> list[pl.Callback]:
        """Callbacks the backbone asks for (e.g. encoder freezing), via its ``callbacks()`` hook."""
        hook = getattr(self.net, "callbacks", None)
        return list(hook()) if callable(hook) else []

    def _param_groups(self) -> Any:
        hook = getattr(self.net, "param_groups", None)
        if not callable(hook):
            return self.parameters()
        groups = list(hook())
        covered = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.parameters() if id(p) not in covered]
        return groups + [{"params": rest}] if rest else groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self._param_groups())
        # A backbone's group may ask for a fraction of the learning rate (e.g. a pretrained encoder).
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
