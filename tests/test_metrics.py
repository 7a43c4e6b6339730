"""Validation metrics: honest mIoU with absent classes, per-class keys, Dice, accuracy, confusion matrix."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassF1Score

from segopt.data.synthetic import SyntheticShapes
from segopt.lightning import SegDataModule
from segopt.lightning.module import SegModule
from segopt.models import UNet
from tests.conftest import quiet_trainer

IGNORE = 255
NAMES = ["sky", "road", "car", "boat"]



# Eight pixels over two validation batches of four. "boat" (3) is never a target and is predicted
# only on ignored pixels, where nothing counts. Per class:
#   sky  TP 2, FN 1 -> IoU 2/3    road TP 2, FP 1 -> IoU 2/3    car TP 1 -> IoU 1    boat NaN
TARGET = [0, 0, 0, 1, 1, 2, IGNORE, IGNORE]
PRED = [0, 0, 1, 1, 1, 2, 3, 0]
IOU = [2 / 3, 2 / 3, 1.0]
CONFUSION = [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


class Echo(nn.Module):
    """A 'backbone' that predicts the class ids carried in its input's first channel."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * F.one_hot(x[:, 0].long(), self.num_classes).permute(0, 3, 1, 2).float()


def _batches(pred: list[int], target: list[int]) -> list[dict[str, torch.Tensor]]:
    """Two batches of one 1-pixel-high image each: the first half of the pixels, then the second."""
    half = len(pred) // 2
    out = []
    for lo, hi in ((0, half), (half, len(pred))):
        image = torch.tensor(pred[lo:hi], dtype=torch.float32).view(1, 1, 1, -1)
        out.append({"image": image, "mask": torch.tensor(target[lo:hi]).view(1, 1, -1), "index": torch.tensor([lo])})
    return out


class ReadConfusion(pl.Callback):
    """What a drawing callback sees: the metric at the end of the epoch, before the module resets it."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: SegModule) -> None:
        self.during = pl_module.val_confmat.compute().tolist()


def _validate(names: list[str], pred: list[int], target: list[int]) -> tuple[dict[str, float], SegModule, list]:
    model = SegModule(backbone=Echo, num_classes=len(names), in_channels=1, class_names=names, scheduler=None)
    reader = ReadConfusion()
    trainer = quiet_trainer(callbacks=[reader])
    (metrics,) = trainer.validate(model, dataloaders=DataLoader(_batches(pred, target), batch_size=None), verbose=False)
    return metrics, model, reader.during


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    metrics, model, _ = _validate(NAMES, PRED, TARGET)
    assert metrics["val/mIoU"] == pytest.approx(sum(IOU) / 3)  # 7/9, not 7/12 with boat as 0
    assert metrics["val/iou/sky"] == pytest.approx(2 / 3)
    assert metrics["val/iou/road"] == pytest.approx(2 / 3)
    assert metrics["val/iou/car"] == pytest.approx(1.0)
    assert math.isnan(metrics["val/iou/boat"])
    assert metrics["val/acc"] == pytest.approx(5 / 6)
    # Dice per class = 2 TP / (2 TP + FP + FN): 4/5, 4/5, 1.
    assert metrics["val/dice"] == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    assert metrics["val/mIoU_best"] == pytest.approx(7 / 9)


def test_a_class_absent_everywhere_does_not_lower_miou() -> None:
    with_boat, _, _ = _validate(NAMES, PRED, TARGET)
    # The same data with the ignored "boat" prediction turned into "sky": three classes only.
    without_boat, _, _ = _validate(NAMES[:3], [p % 3 for p in PRED], TARGET)
    assert with_boat["val/mIoU"] == pytest.approx(without_boat["val/mIoU"])
    assert set(k for k in with_boat if k.startswith("val/iou/")) == {f"val/iou/{n}" for n in NAMES}


def test_confusion_matrix_is_available_to_callbacks() -> None:
    _, model, during = _validate(NAMES, PRED, TARGET)
    assert during == CONFUSION
    # The metric is reset for the next epoch once the module has logged it.
    assert model.val_confmat.update_count == 0


def test_dice_from_iou_equals_torchmetrics_f1_per_class() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (64,), generator=gen)
    pred = torch.randint(0, 4, (64,), generator=gen)
    target[:6] = IGNORE
    metrics, _, _ = _validate(NAMES, pred.tolist(), target.tolist())
    f1 = MulticlassF1Score(4, ignore_index=IGNORE, average="none")(pred, target)
    assert metrics["val/dice"] == pytest.approx(f1.mean().item())
    assert 0.1 < metrics["val/dice"] < 0.5  # a random prediction: neither perfect nor empty


@pytest.mark.slow
def test_best_miou_is_the_maximum_over_epochs(tmp_path) -> None:  # noqa: ANN001
    seen: list[float] = []

    class Record(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if not trainer.sanity_checking:
                seen.append(trainer.callback_metrics["val/mIoU"].item())

    dm = SegDataModule(source=SyntheticShapes(size=32, num_train=8, num_val=4), batch_size=4, num_workers=0)
    model = SegModule(
        backbone=partial(UNet, base_channels=4, depth=1), num_classes=5, class_names=dm.class_names, scheduler=None
    )
    trainer = quiet_trainer(max_epochs=3, callbacks=[Record()], default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert len(seen) == 3
    assert trainer.callback_metrics["val/mIoU_best"].item() == pytest.approx(max(seen))
