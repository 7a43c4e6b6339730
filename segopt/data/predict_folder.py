"""A folder of unlabelled images of any size, read for prediction.

Each item carries the normalised image, the original pixels (for overlays), its size on
disk and its path. An image that cannot be read becomes an error item instead of stopping
the run: :func:`collate_predict` sets it aside under ``"failed"`` and the prediction writer
reports it by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from segopt.data.files import EXTENSIONS, read_image
from segopt.data.roots import resolve_data_path


class PredictFolder(Dataset):
    """The images directly inside ``folder`` (sorted by name; other files are ignored).

    Args:
        folder: the folder to read (a leading ``data/`` follows ``$SEGOPT_DATA_ROOT``).
        in_channels: channels the model expects; colour images are converted to grey for
            1 and grey images expanded to RGB for 3.
        transform: the evaluation pipeline, called as ``transform(image=...)``.
    """

    def __init__(self, folder: str | Path, in_channels: int, transform: Callable[..., dict[str, Any]]) -> None:
        self.folder = resolve_data_path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"data.predict_dir: {self.folder} is not a folder (resolved: {self.folder.resolve()}); give a folder of images")
        self.paths = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not self.paths:
            raise FileNotFoundError(
                f"data.predict_dir: {self.folder} holds no images ({', '.join(EXTENSIONS)}); "
                "point it at the folder that contains the image files"
            )
        stems: dict[str, Path] = {}
        for path in self.paths:
            if path.stem in stems:
                raise ValueError(
                    f"data.predict_dir: {stems[path.stem].name} and {path.name} share the name {path.stem!r}; "
                    "masks are named after it, so rename one of them"
                )
            stems[path.stem] = path
        self.in_channels = in_channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            raw = read_image(path, self.in_channels)
            image = self.transform(image=raw)["image"]
        except (ValueError, OSError, cv2.error) as err:
            return {"index": index, "path": str(path), "error": str(err)}
        return {"index": index, "path": str(path), "image": image, "raw": raw, "size": raw.shape[:2]}


def collate_predict(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`PredictFolder` items; images of different sizes are edge-padded to the largest.

    Returns ``image [B,C,H,W]`` (empty when every item failed), per image ``valid`` (its
    size in the batch), ``size`` (on disk), ``raw``, ``path`` and ``index``, and ``failed``:
    ``(path, reason)`` of the items that could not be read.
    """
    ok = [item for item in items if "error" not in item]
    batch: dict[str, Any] = {
        "failed": [(item["path"], item["error"]) for item in items if "error" in item],
        "path": [item["path"] for item in ok],
        "index": [item["index"] for item in ok],
        "size": [tuple(item["size"]) for item in ok],
        "raw": [item["raw"] for item in ok],
        "valid": [tuple(item["image"].shape[-2:]) for item in ok],
    }
    if not ok:
        batch["image"] = torch.empty(0)
        return batch
    height = max(h for h, _ in batch["valid"])
    width = max(w for _, w in batch["valid"])
    images = []
    for item, (h, w) in zip(ok, batch["valid"]):
        image = item["image"]
        if (h, w) != (height, width):
            image = F.pad(image[None], (0, width - w, 0, height - h), mode="replicate")[0]
        images.append(image)
    batch["image"] = torch.stack(images)
    return batch
