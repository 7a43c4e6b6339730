"""Scoring at the labels' full resolution, and weight averaging (EMA) through fit, checkpoint and resume."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torchmetrics.classification import MulticlassJaccardIndex

from segopt.data.synthetic import SyntheticShapes
from segopt.data.transforms import eval_transform
from segopt.lightning import SegDataModule
from segopt.lightning.module import SegModule
from segopt.models import UNet


def _data(**kwargs) -> SegDataModule:  # noqa: ANN003
    return SegDataModule(source=SyntheticShapes(size=32, num_train=16, num_val=6), batch_size=4, num_workers=0, **kwargs)


def _model(dm: SegDataModule) -> SegModule:
    torch.manual_seed(0)
    return SegModule(num_classes=dm.num_classes, backbone=partial(UNet, base_channels=4, depth=2), scheduler=None)


def _trainer(root: Path, epochs: int, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks or [],
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks or []),
    )


def test_full_res_masks_resize_the_image_only() -> None:
    image = torch.randint(0, 255, (32, 48, 3), dtype=torch.uint8).numpy()
    mask = torch.randint(0, 5, (32, 48), dtype=torch.uint8).numpy()
    out = eval_transform((16, 24), full_res_masks=True)(image=image, mask=mask)
    assert tuple(out["image"].shape) == (3, 16, 24)
    assert tuple(out["mask"].shape) == (32, 48)
    assert (torch.as_tensor(out["mask"]).numpy() == mask).all()
    resized = eval_transform((16, 24))(image=image, mask=mask)
    assert tuple(resized["mask"].shape) == (16, 24)


def test_validation_scores_upsampled_probabilities_at_the_labels_resolution(tmp_path: Path) -> None:
    dm = _data(eval_size=(16, 16), full_res_masks=True)
    model = _model(dm)
    trainer = _trainer(tmp_path, 1)
    trainer.fit(model, dm)
    logged = float(trainer.callback_metrics["val/mIoU"])

    metric = MulticlassJaccardIndex(dm.num_classes, ignore_index=255, average="none", zero_division=float("nan"))
    model.eval()
    with torch.no_grad():
        for item in dm.dataset("val"):
            assert tuple(item["image"].shape[-2:]) == (16, 16) and tuple(item["mask"].shape) == (32, 32)
            probs = model(item["image"][None]).float().softmax(dim=1)
            probs = F.interpolate(probs, size=(32, 32), mode="bilinear", align_corners=False)
            metric.update(probs.argmax(dim=1), item["mask"][None])
    assert logged == pytest.approx(float(metric.compute().nanmean()), abs=1e-6)


class RecordWeights(pl.Callback):
    """The training weights after every optimiser step (runs before the EMA callback updates)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # noqa: ANN001, ANN002
        self.weights.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})


def test_ema_is_the_hand_computed_average_in_the_model_and_its_checkpoint(tmp_path: Path) -> None:
    decay = 0.5
    record = RecordWeights()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    dm = _data()
    model = _model(dm)
    trainer = _trainer(tmp_path, 2, [record, EMAWeightAveraging(decay=decay), checkpoint])
    trainer.fit(model, dm)

    name = next(k for k, v in record.weights[0].items() if k.endswith(".weight") and v.is_floating_point())
    expected = record.weights[0][name].clone()  # the first update copies the weights
    for step in record.weights[1:]:
        expected = decay * expected + (1 - decay) * step[name]
    assert len(record.weights) == 8
    # After fit the model holds the average (validation and export see it) ...
    assert torch.allclose(model.net.state_dict()[name], expected, atol=1e-6)
    assert not torch.allclose(record.weights[-1][name], expected, atol=1e-6)
    # ... and so does the checkpoint's state_dict; the raw training weights are kept beside it.
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert torch.allclose(saved["state_dict"][f"net.{name}"], expected, atol=1e-6)
    assert torch.equal(saved["current_model_state"][f"net.{name}"], record.weights[-1][name])


class StopAtTrainStart(pl.Callback):
    class Stop(Exception):
        pass

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        raise self.Stop


def test_resume_restores_both_the_average_and_the_training_weights(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    dm = _data()
    _trainer(tmp_path, 2, [EMAWeightAveraging(decay=0.5), checkpoint]).fit(_model(dm), dm)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)

    ema = EMAWeightAveraging(decay=0.5)
    model = _model(_data())
    with pytest.raises(StopAtTrainStart.Stop):
        _trainer(tmp_path, 4, [ema, StopAtTrainStart()]).fit(model, _data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    averaged = ema._average_model.module.state_dict()  # the callback's own copy; no public accessor
    for key, value in saved["state_dict"].items():
        if key.startswith("net."):
            assert torch.equal(averaged[key], value)
            assert torch.equal(model.state_dict()[key], saved["current_model_state"][key])
