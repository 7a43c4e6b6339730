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

from segopt.core.palette import overlay
from segopt.data.masks import label_image_dtype
from segopt.data.predict_folder import PredictFolder

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
            trainer's ``default_root_dir``. The segopt CLI saves the run's ``config.yaml``
            in the same folder either way.
        overlay: also write the colour overlays.
        alpha: opacity of the class colours in the overlays.
        overwrite: replace files already in the output folder; without it a run that
            would replace any stops before writing (an output folder that is, or holds,
            the input folder is refused either way, and so are two images whose outputs
            would share a name).
    """

    def __init__(
        self, output_dir: str | None = None, overlay: bool = True, alpha: float = 0.5, overwrite: bool = False
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0 <= alpha <= 1:
            raise ValueError(f"PredictionWriter alpha is {alpha}; it must be in [0, 1], e.g. 0.5")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        #: Where this run writes: ``output_dir`` or the trainer's ``default_root_dir``.
        self.directory = self.output_dir or Path()
        self.overlay = overlay
        self.alpha = alpha
        self.overwrite = overwrite
        self.written: list[Path] = []
        self.overlays: list[Path] = []
        self.skipped: list[tuple[str, str]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before anything is written, refuse an output folder that is a file, is or holds the input
        folder, or holds files this run would write; and images whose output names would collide.

        The names are those of the data module's predict loader (a folder or a data split); a
        run given plain dataloaders instead of a data module is not checked.
        """
        if stage != "predict":
            return
        directory = (self.output_dir or Path(trainer.default_root_dir)).resolve()
        key = "trainer.callbacks.output_dir" if self.output_dir else "trainer.default_root_dir"
        blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ValueError(
                f"{key} {directory}: {blocker} is a file, not a folder; nothing was written. Give a folder path, "
                f"e.g. --{key} {blocker.with_name(blocker.name + '_predictions')}"
            )
        if trainer.datamodule is None:
            return
        dataset = trainer.datamodule.predict_dataloader().dataset
        if isinstance(dataset, PredictFolder):
            source = dataset.folder.resolve()
            if directory == source or directory in source.parents:
                raise ValueError(
                    f"{key} {directory} is or holds the input folder data.predict_dir {source}; masks named after the "
                    "images would land beside or over them. Write to a folder of its own, e.g. "
                    f"--{key} {source.parent / (source.name + '_masks')}"
                )
        names = self._output_names(dataset)
        if self.overwrite or not directory.is_dir():
            return
        if trainer.log_dir and Path(trainer.log_dir).resolve() == directory:
            names.append("config.yaml")  # LightningCLI saves the run's config there
        existing = [name for name in names if (directory / name).exists()]
        if existing:
            shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
            raise ValueError(
                f"{key} {directory} already holds {len(existing)} of the files this run would write ({shown}); "
                "nothing was written. Pick an empty folder, or pass --trainer.callbacks.overwrite true "
                "(PredictionWriter's overwrite) to replace them"
            )

    def _output_names(self, dataset: Any) -> list[str]:
        """The file names this run writes for ``dataset``; two images whose outputs share a name are refused.

        Names are compared ignoring case: on Windows and macOS such names are one file.
        """
        folder = isinstance(dataset, PredictFolder)
        inputs = [(path.name, output_stem(path, i)) for i, path in enumerate(dataset.paths)] if folder else [
            (f"sample {i}", output_stem(None, i)) for i in range(len(dataset))
        ]
        outputs = [(f"{stem}.png", f"the mask of {label}") for label, stem in inputs]
        if folder and self.overlay:  # a data split carries no original pixels to draw over
            outputs += [(f"{stem}_overlay.png", f"the overlay of {label}") for label, stem in inputs]
        planned: dict[str, str] = {}
        for name, what in outputs:
            earlier = planned.setdefault(name.casefold(), what)
            if earlier != what:
                raise ValueError(
                    f"data.predict_dir {dataset.folder}: {earlier} and {what} would both be written as {name}; "
                    "nothing was written. Rename one of the images, or pass --trainer.callbacks.overlay false"
                )
        return [name for name, _ in outputs]

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
            stem = output_stem(paths[i] if paths else None, int(prediction["index"][i]))
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


def output_stem(path: str | Path | None, index: int) -> str:
    """The name of an image's outputs: its file's stem, or its index in the data split (``00007``)."""
    return Path(path).stem if path is not None else f"{index:05d}"


def _write(path: Path, array: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}; check that {path.parent} is writable")
    return path
