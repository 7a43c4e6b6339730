"""PredictionWriter: writes each predicted mask, and a colour overlay, as PNG files.

Used as a Trainer callback with ``predict``; see ``configs/predict.yaml``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from segopt.data.masks import label_image_dtype
from segopt.palette import overlay

log = logging.getLogger(__name__)


class PredictionWriter(BasePredictionWriter):
    """Per image, ``<stem>.png`` (class ids, original size) and ``<stem>_overlay.png``.

    Masks are uint8, or uint16 when there are more than 256 classes. Overlays use the
    palette of the TensorBoard images. Images without a file name (a data split rather
    than a folder) are named by their index, and get no overlay unless the batch carries
    their original pixels. Images the loader could not read are logged by name and
    skipped; after the run, ``written``, ``overlays`` and ``skipped`` list what happened.

    Args:
        output_dir: folder the PNG files go to (created if missing); None uses the
            trainer's ``default_root_dir``, where LightningCLI also saves the run's
            ``config.yaml``, so one flag places both.
        overlay: also write the colour overlays.
        alpha: opacity of the class colours in the overlays.
    """

    def __init__(self, output_dir: str | None = None, overlay: bool = True, alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        if not 0 <= alpha <= 1:
            raise ValueError(f"PredictionWriter alpha is {alpha}; it must be in [0, 1], e.g. 0.5")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        #: Where this run writes: ``output_dir`` or the trainer's ``default_root_dir``.
        self.directory = self.output_dir or Path()
        self.overlay = overlay
        self.alpha = alpha
        self.written: list[Path] = []
        self.overlays: list[Path] = []
        self.skipped: list[tuple[str, str]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.directory = self.output_dir or Path(trainer.default_root_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.written, self.overlays, self.skipped = [], [], []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for path, reason in batch.get("failed", []):
            log.warning("segopt: skipped %s: %s", path, reason)
            self.skipped.append((path, reason))
        num_classes = int(pl_module.num_classes)
        dtype = label_image_dtype(num_classes)
        paths = batch.get("path")
        raws = batch.get("raw")
        for i, mask in enumerate(prediction["mask"]):
            stem = Path(paths[i]).stem if paths else f"{int(prediction['index'][i]):05d}"
            ids = mask.cpu().numpy()
            self.written.append(_write(self.directory / f"{stem}.png", ids.astype(dtype)))
            if self.overlay and raws:
                colour = overlay(raws[i], ids, num_classes, self.alpha)
                path = _write(self.directory / f"{stem}_overlay.png", cv2.cvtColor(colour, cv2.COLOR_RGB2BGR))
                self.overlays.append(path)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        note = f"; skipped {len(self.skipped)} unreadable: " + ", ".join(Path(p).name for p, _ in self.skipped)
        rank_zero_info(
            f"segopt: wrote {len(self.written)} masks and {len(self.overlays)} overlays to {self.directory}/"
            + (note if self.skipped else "")
        )


def _write(path: Path, array: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}; check that {path.parent} is writable")
    return path
