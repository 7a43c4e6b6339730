"""SegModule: the LightningModule that trains a backbone with a segmentation loss.

The Trainer owns precision, devices, accumulation, clipping, checkpointing and logging;
this module owns what is specific to segmentation: the loss over logits and int64 masks,
the metrics (torchmetrics), and the optimiser with a per-step learning-rate schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

from segopt.core.checkpoints import warm_start
from segopt.core.compiling import CompileMode, compile_backbone
from segopt.core.inference import TTA, SlidingWindow, masks_at_size, predict_probs
from segopt.core.schedules import OneCycle
from segopt.data.class_weights import DataWeighted, class_weights_from_counts, pixel_totals
from segopt.lightning.callbacks import EncoderFreeze
from segopt.lightning.time_budget import TimeBudget
from segopt.losses import CombinedLoss
from segopt.models import FinetunableEncoder, UNet
from segopt.models.blocks import pad_to_multiple
from segopt.models.contracts import lr_scale
from segopt.models.contracts import size_multiple as backbone_size_multiple

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
        compile: run the backbone through ``torch.compile`` (off by default) in ``fit``,
            ``validate``, ``test`` and ``predict``; the first steps then take longer while
            it compiles. Where this platform cannot compile, one line says why and the run
            continues uncompiled. Checkpoints are the same either way.
        compile_mode: the ``torch.compile`` mode (:data:`segopt.core.compiling.CompileMode`).
        tta: test-time augmentation for ``validate``, ``test`` and ``predict`` (off by default).
        sliding_window: tiling for ``validate``, ``test`` and ``predict``; the validation
            inside ``fit`` makes one whole-image pass.
        init_weights: warm start: a checkpoint (or ``last``/``best`` of this experiment)
            whose network tensors initialise a new fit, matched by name and shape; the
            optimiser, schedule and step count start afresh. Tensors that do not match
            (e.g. a head for another class count) keep their initialisation and are listed.
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
        compile: bool = False,
        compile_mode: CompileMode = "default",
        tta: TTA | None = None,
        sliding_window: SlidingWindow | None = None,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        # How to infer is chosen per command, not stored: a checkpoint's hyperparameters
        # override the command line when LightningCLI loads it.
        self.save_hyperparameters(
            ignore=["backbone", "loss", "optimizer", "scheduler", "tta", "sliding_window", "init_weights"]
        )
        if num_classes < 2:
            raise ValueError(
                f"num_classes is {num_classes} (class names: {list(class_names or [])}), but segmentation needs at "
                "least 2 classes; for one kind of object against the rest name both, background first, e.g. "
                "data.source.init_args.class_names: [background, cell] (with segopt.data.BinaryMask for 0/255 masks)"
            )
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
        # Not ``self.compile``: that would hide nn.Module.compile.
        self.compile_net = compile
        self.compile_mode = compile_mode
        self._compile_done = False
        # The optimiser steps the schedule of the checkpoint a fit resumes from was planned for.
        self._resumed_schedule_steps: int | None = None
        self.criterion = loss(num_classes, ignore_index)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.aux_weights = list(aux_weights) if aux_weights else None
        self.tta = tta or TTA()
        self.sliding_window = sliding_window or SlidingWindow()
        self.init_weights = init_weights

        per_class = dict(num_classes=num_classes, ignore_index=ignore_index, average="none", zero_division=float("nan"))
        # IoU and the confusion matrix share one count (a torchmetrics compute group).
        self.val_metrics = MetricCollection(
            {
                "iou": MulticlassJaccardIndex(**per_class),
                "acc": MulticlassAccuracy(num_classes, ignore_index=ignore_index, average="micro"),
                "confmat": MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index),
            }
        )
        self.test_metrics = self.val_metrics.clone()
        self.val_miou_best = MaxMetric()
        # Kept in checkpoints so that a resumed run still knows its best epoch.
        self.val_miou_best.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B,K,H,W]`` of images of any size (the main head when the backbone is deeply
        supervised): edge-padded to the backbone's ``size_multiple`` and cropped back."""
        out = self._backbone(x)
        return out[-1] if isinstance(out, (list, tuple)) else out

    def _backbone(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        # The one place segopt pads: training, evaluation, prediction and export all pass here.
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.size_multiple)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        if isinstance(out, (list, tuple)):
            return [o[..., :h, :w] for o in out]
        return out[..., :h, :w]

    @property
    def size_multiple(self) -> int:
        """What the backbone needs its input sides to be a multiple of (:func:`segopt.models.contracts.size_multiple`)."""
        return backbone_size_multiple(self.net)

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

    @property
    def val_confmat(self) -> MulticlassConfusionMatrix:
        """The validation confusion-matrix metric (rows: target, columns: prediction),
        accumulating during the epoch; callbacks read it in ``on_validation_epoch_end``."""
        return self.val_metrics["confmat"]  # type: ignore[return-value]

    def _attached_trainer(self) -> pl.Trainer | None:
        """The Trainer running this module, or None (``self.trainer`` raises when none is attached)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def configure_model(self) -> None:
        """Compile the backbone in place when ``compile`` is on (once; Lightning calls this per run)."""
        if not self.compile_net or self._compile_done:
            return
        trainer = self._attached_trainer()
        device = trainer.strategy.root_device if trainer is not None else self.device
        problem = compile_backbone(self.net, self.compile_mode, device)
        self._compile_done = True  # or skipped: either way, said once
        if problem is not None:
            rank_zero_info(
                f"segopt: model.compile skipped, running uncompiled: torch.compile fails on {device.type} here ({problem})"
            )

    def setup(self, stage: str) -> None:
        """Before fitting: warm start from ``init_weights``; make sure a loss that asked for class
        weights by mode (e.g. "median_frequency") got them (:meth:`set_class_pixels`)."""
        if stage == "fit" and self.init_weights and not self.trainer.ckpt_path:
            loaded, skipped = warm_start(self.net, self.init_weights)
            note = f"; skipped (initialised afresh): {', '.join(skipped)}" if skipped else ""
            rank_zero_info(f"segopt: warm start from {self.init_weights}: {len(loaded)} tensors loaded{note}")
        if stage == "fit" and isinstance(self.criterion, DataWeighted) and self.criterion.class_weight_mode is not None:
            raise ValueError(
                f"loss class weights {self.criterion.class_weight_mode!r} are counted from the training masks by a "
                "SegDataModule, but this fit's datamodule handed no counts; pass a SegDataModule or give one weight per class"
            )

    def set_class_pixels(self, per_image: np.ndarray) -> None:
        """Give a :class:`~segopt.data.class_weights.DataWeighted` loss the weights of its mode from the
        training masks' class pixels ``[N, K]`` (the datamodule hands them as fitting starts)."""
        if not isinstance(self.criterion, DataWeighted) or self.criterion.class_weight_mode is None:
            return
        mode = self.criterion.class_weight_mode
        pixels, present = pixel_totals(per_image)
        weights = class_weights_from_counts(mode, pixels, present, self.criterion.class_weight_beta)
        self.criterion.set_class_weights(weights)
        shown = ", ".join(f"{n}={w:.3g}" for n, w in zip(self.class_names, weights.tolist()))
        rank_zero_info(f"segopt: class weights ({mode}) from {len(per_image)} training masks: {shown}")

    def on_train_start(self) -> None:
        # The sanity check ran validation; its numbers must not count as an epoch. The best
        # mIoU is left alone: the sanity check never updates it, and on resume it is restored.
        self.val_metrics.reset()

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``[B,K,H,W]`` with this module's TTA and sliding window."""
        return predict_probs(self, images, self.sliding_window, self.tta)

    def _eval_step(self, batch: dict[str, Any], stage: str, metrics: MetricCollection) -> None:
        mask = batch["mask"]
        if self.trainer.state.fn == TrainerFn.FITTING:
            # One plain pass inside fit: checkpoint choice and epoch time must not depend on TTA.
            logits = self(batch["image"])
            if logits.shape[-2:] != mask.shape[-2:]:
                logits = self._at_label_size(logits.float().softmax(dim=1), mask)
        else:
            logits = self._at_label_size(self.infer(batch["image"]), mask)
        loss = self.criterion(logits, mask)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=batch["image"].shape[0], sync_dist=True)
        metrics.update(logits.argmax(dim=1), mask)

    @staticmethod
    def _at_label_size(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Probabilities resized (bilinear) to the mask's size, as log-probabilities.

        Log-probabilities serve as logits for the loss: softmax(log p) = p. Resizing
        probabilities before the argmax scores a reduced-size network at the labels' own
        resolution (``data.full_res_masks``) without ever interpolating class ids.
        """
        if probs.shape[-2:] != mask.shape[-2:]:
            probs = F.interpolate(probs, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
        return probs.clamp_min(1e-12).log()

    def _log_epoch(self, stage: str, metrics: MetricCollection) -> torch.Tensor:
        values = metrics.compute()
        iou = values["iou"]
        # A class absent from both target and prediction has IoU NaN and stays out of the
        # mean: counting it as 0 would punish the model for a class the data never showed.
        miou = iou.nanmean()
        self._log_global(f"{stage}/mIoU", miou, prog_bar=True)
        # Per class over the whole set, Dice = 2J / (1 + J): no second confusion count needed.
        self._log_global(f"{stage}/dice", (2 * iou / (1 + iou)).nanmean())
        self._log_global(f"{stage}/acc", values["acc"])
        # Absent classes are logged as NaN so that every epoch has the same keys.
        for name, value in zip(self.class_names, iou):
            self._log_global(f"{stage}/iou/{name}", value)
        metrics.reset()
        return miou

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        miou = self._log_epoch("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            self.val_miou_best.update(miou)
            self._log_global("val/mIoU_best", self.val_miou_best.compute())

    def _log_global(self, name: str, value: torch.Tensor, prog_bar: bool = False) -> None:
        """Log a value torchmetrics has already reduced over all processes.

        Every process holds the same number; reducing it again with ``max`` leaves it
        exactly as it is (a mean over 3 processes could round) and tells Lightning it is
        synchronised, so multi-process runs do not warn about ``sync_dist``.
        """
        self.log(name, value, prog_bar=prog_bar, sync_dist=True, reduce_fx="max")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Per image, the class-index mask ``[H,W]`` at its original size, with the sample indices.

        A batch from a prediction folder gives each image's size in the batch (``valid``)
        and on disk (``size``); a batch from a data split is used as it is.
        """
        if len(batch["index"]) == 0:  # every image of this batch was unreadable
            return {"mask": [], "index": []}
        probs = self.infer(batch["image"])
        valid = batch.get("valid", [tuple(probs.shape[-2:])] * len(probs))
        return {"mask": masks_at_size(probs, valid, batch.get("size", valid)), "index": batch["index"]}

    def configure_callbacks(self) -> list[pl.Callback]:
        """:class:`~segopt.lightning.EncoderFreeze` for a backbone whose encoder starts frozen."""
        freezes = isinstance(self.net, FinetunableEncoder) and self.net.freeze_encoder_epochs > 0
        return [EncoderFreeze()] if freezes else []

    def _param_groups(self) -> Any:
        if not isinstance(self.net, FinetunableEncoder):
            return self.parameters()
        groups = self.net.param_groups()
        covered = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.parameters() if id(p) not in covered]
        return groups + [{"params": rest}] if rest else groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self._param_groups())
        # A backbone's group may ask for a fraction of the learning rate (e.g. a pretrained encoder).
        for group in optimizer.param_groups:
            group["lr"] *= lr_scale(group)
        if self.scheduler_factory is None:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if math.isinf(total_steps):
            raise ValueError(
                "the learning-rate schedule is sized to the run, but the run has no end "
                "(trainer.max_epochs -1 and no max_steps); set trainer.max_epochs or trainer.max_steps, "
                "or set model.scheduler to null"
            )
        self._check_resumed_schedule(int(total_steps))
        scheduler = self.build_scheduler(optimizer, int(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def build_scheduler(self, optimizer: Optimizer, total_steps: int) -> LRScheduler | None:
        """This module's schedule for ``total_steps`` optimiser steps (None: constant rate).

        Called by ``configure_optimizers`` and by :class:`segopt.lightning.TimeBudget`
        when it re-plans the run's length.
        """
        return None if self.scheduler_factory is None else self.scheduler_factory(optimizer, total_steps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When resuming a fit, note the length the checkpoint's schedule was planned for.

        (The training loader's place is the datamodule's: see :mod:`segopt.data.resumable`.)
        """
        trainer = self._attached_trainer()  # none: a checkpoint loaded outside a fit, nothing to check
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        planned = [s["total_steps"] for s in checkpoint.get("lr_schedulers", []) if "total_steps" in s]
        self._resumed_schedule_steps = planned[0] if planned else None

    def _check_resumed_schedule(self, now: int) -> None:
        """Refuse to resume a schedule whose planned length changed.

        A schedule sized to the whole run (OneCycle, Cosine, Poly) restores the length it
        was planned with; resumed into a longer run it would end early (OneCycle raises
        "Tried to step N times" at the first step past its end). Stretching it would bend the
        curve already followed, so the run stops here, before any step, and says what to do.
        """
        planned, self._resumed_schedule_steps = self._resumed_schedule_steps, None
        trainer = self.trainer
        if planned is None or planned == now or any(isinstance(cb, TimeBudget) for cb in trainer.callbacks):
            return  # a time budget restores the length it planned (and the schedule its state)
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        hint = ""
        if per_epoch and planned % per_epoch == 0:
            hint = f" (max_epochs {planned // per_epoch} at {per_epoch} optimiser steps per epoch)"
        raise ValueError(
            f"cannot resume: the checkpoint's learning-rate schedule was planned for {planned} optimiser "
            f"steps{hint}, but this run's trainer settings give {now} (max_epochs {trainer.max_epochs}, "
            f"max_steps {trainer.max_steps}, accumulate_grad_batches {trainer.accumulate_grad_batches}, "
            f"{trainer.num_training_batches} training batches per epoch). To finish the planned run, resume "
            "with the settings it was started with. To train longer, start a new fit without --ckpt_path: "
            "a schedule stretched mid-run would no longer be the curve it has followed so far."
        )
