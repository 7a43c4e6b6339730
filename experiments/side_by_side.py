"""segopt's recipes against what a user would write instead, on any data config, for the same wall-clock time.

    python -m experiments.side_by_side --arm peer --seeds 0 1 --minutes 60
    python -m experiments.side_by_side --arm segopt --seeds 0 1 --config configs/recipes/camvid.yaml
    python -m experiments.side_by_side --data-config configs/data/membrane.yaml --out results/side_by_side_membrane \\
        --arm segopt --label amp --config configs/amp.yaml --minutes 10 --seeds 0 1

``--data-config`` (default ``configs/data/camvid.yaml``) names the data: its ``data.source`` is
built by segopt itself (``PairedFolder`` lists the pairs, applies split lists and the held-out
fraction, and decodes index, binary or colour masks with void → ignored), so both arms read
exactly the same pairs, classes and void. Any number of arms, each a ``--label``, train once per
seed on the same machine:

- ``--arm peer``: ``segmentation_models_pytorch.Unet("resnet34", encoder_weights=None)`` with the
  data's channels (1 for grey) and classes, loss 0.5 cross-entropy + 0.5 smp Dice (void ignored),
  Adam 1e-4 without a schedule, albumentations flip / rotate ±15 / shear ±10 / colour jitter 0.2
  (each p=0.5), the data config's ``normalize`` (ImageNet's when it has none), images resized to
  one fixed ``--size``, batch 16, a plain PyTorch loop under bf16 autocast on a CPU with native
  bf16, float32 on other CPUs (the rule segopt applies to ``16-mixed``), fp16 with a GradScaler on
  a GPU. ``--size`` defaults to what a user would pick from the data: the median training image
  scaled down to fit 256 a side (keeping its aspect) and rounded to multiples of 32 (CamVid's
  360x480 gives 192x256); the run records which. It trains whole epochs until the next one, plus
  the final validation, would pass ``--minutes`` (default 60). Validation runs the network at
  ``--size``, resizes the class probabilities bilinearly to the label's own resolution before the
  argmax (batch 1 when validation images differ in size) and scores with torchmetrics'
  ``MulticlassJaccardIndex(average="none")``; mIoU is the mean over classes present (nanmean), as
  segopt's module computes it. It validates after the first epoch, every ``--val-every`` epochs
  and at the end, which gives the learning curve.
- ``--arm segopt``: ``python -m segopt.cli fit --config <recipe> --seed_everything <seed>`` in a
  subprocess. A recipe without data of its own (its ``data.source`` reads no folder, e.g.
  ``configs/amp.yaml``) gets ``--config <data config>`` stacked after it; a recipe with its own
  must name the data config's very source, or that of the first of several data configs, whose
  overlays (e.g. a split by sequence) are then stacked after it. With ``--minutes`` and no ``TimeBudget`` callback in
  the recipe, one is added with that budget (and a large ``max_epochs``), so a fixed-epoch recipe
  runs "with the same time budget added". ``--segopt-arg`` passes more flags. The final epoch's
  val mIoU and per-class IoU (not the best epoch's) come from its TensorBoard run.

Both arms use ``--threads`` torch threads (default: all cores) and one persistent loader worker.
Each (label, seed) writes ``--out``/<label>_seed<seed>_<machine>_<run sha256[:8]>.json atomically
when it finishes; the hash covers what defines the run (the recipe, and the data config, budget
and flags added to it; for the peer its data config and settings), with each config taken by what
it says, not its bytes (comments and a class's module do not count), so a run whose JSON
exists is skipped and the same command resumes across sessions, while another machine or changed
settings run the seed afresh beside it. The JSON records the settings, the data config's path and
sha256, the command that repeats it, and the share of the machine's CPU that other processes took
meanwhile (Linux), and the host's speed (the time of a reference training step, taken before the
run); the summary names the runs where other processes took over 5 %, and says when the runs'
hosts differ in speed by over 10 %: in both cases a time budget bought a different number of epochs. One ``--out`` holds one data set. After every run the
summary ``--out``.md and .json is rewritten from the JSONs found: per machine (seeds run on
different hardware are never pooled) and label the mean, sample standard deviation and range
over seeds of the final val mIoU, and for every pair of labels the lead, which counts as
resolved only when it exceeds both labels' seed range (max − min) with at least two seeds each.
Runs of a label made with earlier settings on the same machine are listed as superseded, not
pooled.

Unlike the other scripts, this one has no ``--overwrite``: the per-run JSONs are its resume
state (a finished one is never replaced) and the summary is rebuilt from them, so running
the same command again resumes the series or refreshes the summary without a flag.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentError

from experiments.common import (
    REFERENCE_STEP_METHOD,
    SHARED_CPU_SHARE,
    cpu_snapshot,
    evaluation_trainer,
    other_cpu_share,
    reference_step_s,
)
from segopt.commands.check import source_from_mapping
from segopt.core.precision import cpu_has_native_bf16, cpu_name
from segopt.data.datasets import SegSource
from segopt.data.files import DataError
from segopt.data.transforms import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]

ARMS = ("peer", "segopt")
DEFAULT_DATA_CONFIG = Path("configs/data/camvid.yaml")
PEER_MINUTES = 60.0  # the peer's budget when --minutes is not given
MAX_SIDE = 256  # the default --size: the median image scaled to fit this many pixels a side ...
MULTIPLE = 32  # ... and rounded to multiples of this (the encoder's stride)
BUDGET_MAX_EPOCHS = 100000  # an upper bound: the added TimeBudget sets the epochs that fit
TIME_BUDGET = "segopt.lightning.TimeBudget"


def fail(message: str) -> NoReturn:
    """Stop with one ``error:`` line, before anything is written."""
    raise SystemExit(f"error: {message}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_identity(texts: list[bytes]) -> str:
    """The sha256 of what config file(s) say, not of how they say it.

    The YAML is parsed (comments, layout and key order drop out) and each ``segopt.`` class path is
    reduced to its class name, so that a comment edit or a class moving to another module keeps
    the runs recorded under the config.
    """
    return sha256_hex(json.dumps([_canonical(yaml.safe_load(text)) for text in texts], sort_keys=True).encode())


def _canonical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _class_name(v) if k == "class_path" and isinstance(v, str) else _canonical(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_canonical(v) for v in node]
    return node


def _class_name(class_path: str) -> str:
    return "segopt:" + class_path.rsplit(".", 1)[-1] if class_path.startswith("segopt.") else class_path


# ----------------------------------------------------------------------------- the data config
@dataclass(frozen=True)
class DataConfig:
    """A data config (``configs/data/<name>.yaml``) and the data source segopt builds from it."""

    paths: tuple[Path, ...]  # one data config, or several stacked as fit stacks them
    sha256: str  # of the files' bytes
    identity: str  # of what they say (config_identity)
    source_mapping: dict[str, Any]
    source: SegSource
    ignore_index: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def path(self) -> Path:
        """The data config (the first of a stack), for names and messages."""
        return self.paths[0]

    @property
    def label(self) -> str:
        return " + ".join(map(str, self.paths))

    @property
    def root(self) -> str:
        """The data folder as the config names it (``data/camvid``), or the source's class."""
        return str(self.source_mapping.get("init_args", {}).get("root") or self.source_mapping.get("class_path"))

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)


def load_data_config(paths: Path | list[Path]) -> DataConfig:
    """Read the data config(s), build ``data.source`` through segopt and check it as ``fit`` would.

    Several configs (e.g. ``membrane.yaml`` and the ``membrane_by_slice.yaml`` overlay) are
    parsed stacked by segopt's own parser, as ``fit`` reads them.
    """
    paths = [paths] if isinstance(paths, Path) else list(paths)
    for path in paths:
        if not path.is_file():
            fail(f"--data-config {path} does not exist; give a data config such as {DEFAULT_DATA_CONFIG}")
    texts = [path.read_bytes() for path in paths]
    data = _parsed_data(paths)
    if not isinstance(data, dict) or not isinstance(data.get("source"), dict):
        fail(f"{paths[0]} has no data.source; give a data config whose data.source names the data set (see {DEFAULT_DATA_CONFIG})")
    try:
        source = source_from_mapping(data["source"])
        source.validate()
    except (DataError, ArgumentError, ValueError, TypeError) as err:
        fail(f"{' + '.join(map(str, paths))}: data.source cannot be used: {err}")
    channels = source.in_channels
    normalize = data.get("normalize") or {}
    mean = tuple(normalize.get("mean", IMAGENET_MEAN))[:channels]
    std = tuple(normalize.get("std", IMAGENET_STD))[:channels]
    return DataConfig(tuple(paths), sha256_hex(b"".join(texts)), config_identity(texts), data["source"], source, int(data.get("ignore_index", 255)), mean, std)


def _parsed_data(paths: list[Path]) -> dict[str, Any] | None:
    """The ``data:`` section: one file as written, several as segopt's parser stacks them."""
    if len(paths) == 1:
        config = yaml.safe_load(paths[0].read_bytes())
        return config.get("data") if isinstance(config, dict) else None
    from segopt.commands.from_config import build_from_config

    try:
        return build_from_config([a for path in paths for a in ("--config", str(path))]).config.data.as_dict()
    except (ValueError, SystemExit) as err:
        fail(f"{' + '.join(map(str, paths))} cannot be parsed stacked: {err}")


def same_pairs(mapping: dict[str, Any], source: SegSource) -> bool:
    """Whether the data source ``mapping`` reads the very pairs of ``source`` in every split."""
    if mapping == getattr(source, "mapping", None):
        return True
    try:
        other = source_from_mapping(mapping)
        other.validate()
    except (DataError, ArgumentError, ValueError, TypeError):
        return False
    splits = ("train", "val")
    return all(
        [str(p) for p, _ in (other.sizes(s) or [])] == [str(p) for p, _ in (source.sizes(s) or [])] for s in splits
    ) and list(other.class_names) == list(source.class_names)


def default_size(source: SegSource) -> tuple[tuple[int, int], str]:
    """The size a user would pick: the median training image scaled to fit ``MAX_SIDE``, in multiples of 32."""
    sizes = source.sizes("train")
    if not sizes:
        fail(f"{type(source).__name__} does not tell the image sizes without decoding; give --size H W")
    widths, heights = zip(*(map(int, s.split("x")) for _, s in sizes), strict=True)
    h, w = statistics.median(heights), statistics.median(widths)
    scale = min(1.0, MAX_SIDE / max(h, w))
    size = tuple(max(MULTIPLE, round(v * scale / MULTIPLE) * MULTIPLE) for v in (h, w))
    rule = f"median training image {h:g}x{w:g} (HxW) scaled to fit {MAX_SIDE} a side, rounded to multiples of {MULTIPLE}"
    return (size[0], size[1]), rule


def sizes_vary(source: SegSource, split: str) -> bool:
    """Whether the images of ``split`` differ in size (unknown counts as yes)."""
    sizes = source.sizes(split)
    return sizes is None or len({s for _, s in sizes}) > 1


# ----------------------------------------------------------------------------- peer arm
class PeerSplit(torch.utils.data.Dataset):
    """One split's pairs as segopt decodes them (void → ignore index), then the peer's own transform."""

    def __init__(self, samples: torch.utils.data.Dataset, transform: Callable[..., dict[str, Any]]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.samples[i]
        out = self.transform(image=image, mask=mask)
        return out["image"], torch.as_tensor(out["mask"]).long()


class ResizeImageOnly:
    """Validation: the image resized to the training size, the mask left at its own resolution."""

    def __init__(self, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        self.image = A.Compose([A.Resize(*size), A.Normalize(mean, std), ToTensorV2()])

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        return {"image": self.image(image=image)["image"], "mask": torch.from_numpy(np.ascontiguousarray(mask))}


def peer_train_transform(size: tuple[int, int], data: DataConfig) -> Any:
    """Resize, then flip / rotate / shear / colour jitter (each p=0.5), the data's normalisation."""
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    void = data.ignore_index
    return A.Compose(
        [
            A.Resize(*size),
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=void, p=0.5),
            A.Affine(shear=(-10, 10), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=void, p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.5),
            A.Normalize(data.mean, data.std),
            ToTensorV2(),
        ]
    )


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def peer_loaders(args: argparse.Namespace, data: DataConfig, seed: int, device: str) -> tuple[Any, Any]:
    """Training batches of ``--batch-size``; validation in batches of 1 when its images differ in size."""
    size = tuple(args.size)
    train_set = PeerSplit(data.source.split("train", data.ignore_index), peer_train_transform(size, data))
    val_set = PeerSplit(data.source.split("val", data.ignore_index), ResizeImageOnly(size, data.mean, data.std))
    kw = {"num_workers": 1, "persistent_workers": True, "pin_memory": device == "cuda", "worker_init_fn": _worker_init}
    train = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, drop_last=len(train_set) >= args.batch_size,
        generator=torch.Generator().manual_seed(seed), **kw,
    )  # fmt: skip
    val = torch.utils.data.DataLoader(val_set, batch_size=val_batch_size(args, data), **kw)
    return train, val


def val_batch_size(args: argparse.Namespace, data: DataConfig) -> int:
    return 1 if sizes_vary(data.source, "val") else args.batch_size


@torch.no_grad()
def validate(net: torch.nn.Module, loader: Any, device: str, autocast: Any, num_classes: int, ignore_index: int) -> tuple[float, list[float]]:
    """mIoU and per-class IoU, probabilities resized to each label's resolution before the argmax."""
    from torchmetrics.classification import MulticlassJaccardIndex

    # as segopt's module: a class absent from both truth and prediction is NaN and left out of the mean
    metric = MulticlassJaccardIndex(
        num_classes=num_classes, ignore_index=ignore_index, average="none", zero_division=float("nan")
    ).to(device)
    net.eval()
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        with autocast():
            logits = net(images)
        probs = torch.nn.functional.interpolate(logits.float().softmax(1), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        metric.update(probs.argmax(1), masks)
    net.train()
    iou = metric.compute()
    return float(iou.nanmean()), [float(v) for v in iou]


@dataclass
class PeerLoop:
    """What the peer's loop needs: the network, its loss and optimiser, and the precision rule."""

    net: torch.nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Callable[[], Any]
    device: str

    def train_epoch(self, loader: Any) -> float:
        """One pass over ``loader``; the last batch's loss."""
        loss = torch.zeros(())
        for images, masks in loader:
            images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
            with self.autocast():
                logits = self.net(images)
            loss = self.loss(logits.float(), masks)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.item()


def build_peer(args: argparse.Namespace, data: DataConfig, device: str) -> PeerLoop:
    """smp Unet on ResNet34 (no weights), 0.5 CE + 0.5 Dice with void ignored, Adam at ``--lr``."""
    import segmentation_models_pytorch as smp

    k, void = len(data.class_names), data.ignore_index
    net = smp.Unet("resnet34", encoder_weights=None, in_channels=data.source.in_channels, classes=k).to(device)
    ce = torch.nn.CrossEntropyLoss(ignore_index=void)
    dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=void)
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    # The same rule as segopt's 16-mixed: bf16 autocast only where the CPU runs it natively.
    mixed = device == "cuda" or cpu_has_native_bf16()
    return PeerLoop(
        net=net,
        loss=lambda logits, masks: 0.5 * ce(logits, masks) + 0.5 * dice(logits, masks),
        optimizer=torch.optim.Adam(net.parameters(), lr=args.lr),
        scaler=torch.amp.GradScaler(device, enabled=device == "cuda"),
        autocast=lambda: torch.autocast(device_type=device, dtype=dtype, enabled=mixed),
        device=device,
    )


def run_peer(args: argparse.Namespace, data: DataConfig, seed: int) -> dict[str, Any]:
    """Train the peer for the budget; return its figures."""
    start = time.perf_counter()
    seed_all(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_loader, val_loader = peer_loaders(args, data, seed, device)
    loop = build_peer(args, data, device)

    def score() -> tuple[float, list[float]]:
        return validate(loop.net, val_loader, device, loop.autocast, len(data.class_names), data.ignore_index)

    budget = peer_minutes(args) * 60.0
    train_times: list[float] = []
    val_times: list[float] = []
    curve: list[dict[str, Any]] = []
    final: tuple[float, list[float]] | None = None
    epoch = 0
    while args.max_epochs is None or epoch < args.max_epochs:
        # the next epoch plus the final validation must still fit in the budget
        need = statistics.fmean(train_times) + max(val_times, default=0.0) if train_times else 0.0
        if train_times and time.perf_counter() - start + need > budget:
            break
        t0 = time.perf_counter()
        last_loss = loop.train_epoch(train_loader)
        epoch += 1
        train_times.append(time.perf_counter() - t0)
        point: dict[str, Any] = {"epoch": epoch, "elapsed_s": round(time.perf_counter() - start, 1), "train_loss_last": round(last_loss, 4)}
        final = None
        if epoch == 1 or epoch % args.val_every == 0:
            t1 = time.perf_counter()
            final = score()
            val_times.append(time.perf_counter() - t1)
            point.update(val_mIoU=round(final[0], 4), elapsed_s=round(time.perf_counter() - start, 1))
        curve.append(point)
        print(f"[{args.label} seed {seed}] epoch {epoch} {point}", flush=True)
    if final is None:
        final = score()
        curve[-1].update(val_mIoU=round(final[0], 4), elapsed_s=round(time.perf_counter() - start, 1))
    return {
        "epochs": epoch,
        "wall_s": round(time.perf_counter() - start, 1),
        "curve": curve,
        "val_mIoU": final[0],
        "val_iou": {n: None if math.isnan(v) else v for n, v in zip(data.class_names, final[1], strict=True)},
    }


def peer_minutes(args: argparse.Namespace) -> float:
    return PEER_MINUTES if args.minutes is None else args.minutes


# ----------------------------------------------------------------------------- segopt arm
@dataclass(frozen=True)
class Recipe:
    """The segopt arm's recipe and what this script adds to it."""

    path: Path
    sha256: str  # of the recipe file's bytes
    identity: str  # of what it says (config_identity)
    own_minutes: float | None  # the recipe's own TimeBudget
    data_config: tuple[Path, ...] | None  # stacked after the recipe when it has no data of its own
    budget_minutes: float | None  # the TimeBudget added when the recipe has none


def _recipe_yaml(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_bytes())
    return config if isinstance(config, dict) else {}


def time_budget_minutes(config: dict[str, Any]) -> float | None:
    """The minutes of the recipe's ``TimeBudget`` callback (under ``trainer.callbacks`` or ``callbacks+``), else None."""
    trainer = config.get("trainer") or {}
    for entry in [*(trainer.get("callbacks") or []), *(trainer.get("callbacks+") or [])]:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).split(".")[-1] == TIME_BUDGET.split(".")[-1]:
            return float((entry.get("init_args") or {}).get("minutes", math.nan))
    return None


def own_data_source(config: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's ``data.source`` when it reads a folder (has a ``root``), else None (e.g. synthetic shapes)."""
    source = (config.get("data") or {}).get("source")
    if isinstance(source, dict) and (source.get("init_args") or {}).get("root") is not None:
        return source
    return None


def plan_recipe(args: argparse.Namespace, data: DataConfig) -> Recipe:
    """What runs for the segopt arm: the recipe, the data config stacked or not, a budget added or not."""
    config = _recipe_yaml(args.config)
    own = own_data_source(config)
    stacked: tuple[Path, ...] | None = None if own is not None else data.paths
    if own is not None and own != data.source_mapping and not same_pairs(own, data.source):
        if len(data.paths) > 1 and same_pairs(own, load_data_config(data.paths[0]).source):
            # The recipe reads the base data config's pairs: its overlays (a split by group) stack on it.
            stacked = data.paths[1:]
        else:
            fail(
                f"{args.config} trains on its own data.source (root {own['init_args']['root']}), not the pairs of "
                f"--data-config {data.label} (root {data.root}); give the data config the recipe was written for "
                "(then any overlays), or a recipe without data of its own (e.g. configs/amp.yaml)"
            )
    budget, own_minutes = None, time_budget_minutes(config)
    if args.minutes is not None:
        if own_minutes is not None:
            print(f"note: {args.config} has its own TimeBudget; --minutes {args.minutes:g} is not added", flush=True)
        else:
            budget = args.minutes
    text = args.config.read_bytes()
    return Recipe(args.config, sha256_hex(text), config_identity([text]), own_minutes, stacked, budget)


def added_args(recipe: Recipe) -> list[str]:
    """The flags that add the time budget: a ``TimeBudget`` callback and a ``max_epochs`` it can plan within."""
    if recipe.budget_minutes is None:
        return []
    callback = {"class_path": TIME_BUDGET, "init_args": {"minutes": recipe.budget_minutes}}
    return [f"--trainer.max_epochs={BUDGET_MAX_EPOCHS}", f"--trainer.callbacks+={json.dumps(callback)}"]


def segopt_command(args: argparse.Namespace, recipe: Recipe, seed: int, run_dir: Path) -> list[str]:
    """The ``segopt.commands.cli fit`` command line of one seed, its TensorBoard run going to ``run_dir``."""
    stacked = [a for path in recipe.data_config or () for a in ("--config", str(path))]
    return [
        sys.executable,
        "-m",
        "segopt.commands.cli",
        "fit",
        "--config",
        str(recipe.path),
        *stacked,
        f"--seed_everything={seed}",
        "--data.num_workers=1",
        "--data.persistent_workers=true",
        f"--trainer.logger.init_args.save_dir={run_dir.parent}",
        f"--trainer.logger.init_args.name={run_dir.name}",
        "--trainer.logger.init_args.version=0",
        *added_args(recipe),
        *args.segopt_arg,
    ]


def read_tensorboard(log_dir: Path, t0: float, class_names: list[str]) -> dict[str, Any]:
    """Final-epoch val mIoU and per-class IoU, and the val learning curve, from a TensorBoard run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    if "val/mIoU" not in tags:
        raise RuntimeError(f"{log_dir} has no val/mIoU scalar (tags: {sorted(tags)}); did the run validate?")
    epoch_at = {e.step: int(e.value) for e in acc.Scalars("epoch")} if "epoch" in tags else {}
    events = acc.Scalars("val/mIoU")
    curve = [
        {"epoch": epoch_at.get(e.step, i) + 1, "elapsed_s": round(e.wall_time - t0, 1), "val_mIoU": round(e.value, 4)}
        for i, e in enumerate(events)
    ]
    iou = {name: acc.Scalars(f"val/iou/{name}")[-1].value if f"val/iou/{name}" in tags else None for name in class_names}
    return {"epochs": curve[-1]["epoch"], "curve": curve, "val_mIoU": events[-1].value, "val_iou": iou}


def run_segopt(args: argparse.Namespace, data: DataConfig, recipe: Recipe, seed: int) -> dict[str, Any]:
    """Fit segopt's recipe in a subprocess; read its final epoch from TensorBoard."""
    run_dir = args.out / "runs" / run_stem(args, seed, run_sha256(args, data, recipe))
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again from scratch
    cmd = segopt_command(args, recipe, seed, run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("running:", shlex.join(cmd), flush=True)
    t0 = time.time()
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - start
    result = read_tensorboard(run_dir / "version_0", t0, data.class_names)
    return {**result, **score_as_recipe_infers(args, recipe, run_dir, result), "wall_s": round(wall, 1), "command": cmd[1:]}


def score_as_recipe_infers(args: argparse.Namespace, recipe: Recipe, run_dir: Path, fit: dict[str, Any]) -> dict[str, Any]:
    """The final checkpoint scored as the recipe's ``validate`` and ``predict`` infer, where that
    differs from the one plain pass inside ``fit`` (its ``model.tta``); then ``val_mIoU`` and
    ``val_iou`` are that score and ``val_mIoU_fit``, ``val_iou_fit`` keep the in-fit one."""
    from segopt.commands.from_config import build_from_config, load_weights, parse_config
    from segopt.core.inference import TTA

    stacked = [a for path in recipe.data_config or () for a in ("--config", str(path))]
    cli_args = ["--config", str(recipe.path), *stacked, "--data.num_workers=1", *args.segopt_arg]
    parsed = parse_config(cli_args).model.tta  # read before building the model and data for nothing
    if parsed is None or not TTA(**parsed.as_dict()).enabled:
        return {}
    cli = build_from_config(cli_args)
    tta = cli.model.tta
    model = load_weights(cli.model, run_dir / "version_0" / "checkpoints" / "last.ckpt")
    trainer = evaluation_trainer(cli.trainer.precision)
    start = time.perf_counter()
    metrics = trainer.validate(model, datamodule=cli.datamodule, verbose=False)[0]
    iou = {name: metrics.get(f"val/iou/{name}") for name in fit["val_iou"]}
    return {
        "val_mIoU": metrics["val/mIoU"],
        "val_iou": {name: None if v is None or math.isnan(v) else v for name, v in iou.items()},
        "val_mIoU_fit": fit["val_mIoU"],
        "val_iou_fit": fit["val_iou"],
        "inference": {"hflip": tta.hflip, "vflip": tta.vflip, "scales": list(tta.scales), "seconds": round(time.perf_counter() - start, 1)},
    }


# ----------------------------------------------------------------------------- one run's record
def hardware(args: argparse.Namespace) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": args.threads,
        "loader_workers": 1,
        "gpu": gpu,
        "torch": torch.__version__,
    }


def run_sha256(args: argparse.Namespace, data: DataConfig, recipe: Recipe | None) -> str:
    """What defines a run, hashed: the recipe (plus what is added to it), or the peer's settings.

    Configs enter by what they say (``config_identity``), not by their bytes.
    """
    if recipe is None:
        peer = {"data_config": data.identity, "size": list(args.size), "batch_size": args.batch_size,
                "lr": args.lr, "minutes": peer_minutes(args), "val_every": args.val_every, "max_epochs": args.max_epochs}  # fmt: skip
        return sha256_hex(json.dumps(peer, sort_keys=True).encode())
    run = {"recipe": recipe.identity, "data_config": data.identity if recipe.data_config else None,
           "minutes": recipe.budget_minutes, "extra_args": args.segopt_arg}  # fmt: skip
    return sha256_hex(json.dumps(run, sort_keys=True).encode())


def machine_name(args: argparse.Namespace) -> str:
    hw = hardware(args)
    machine = re.sub(r"[^a-z0-9]+", "-", (hw["gpu"] or hw["cpu"]).lower()).strip("-")
    return f"{machine}-{hw['cores']}c-{hw['torch_threads']}t"


def run_stem(args: argparse.Namespace, seed: int, sha: str) -> str:
    """The name of one run's JSON (and run folder): label, seed, machine and the run's hash.

    A seed already run on another machine or with other settings is not a finished run of this
    one: it keeps its file, and the summary pools or leaves it out by what that file records.
    """
    return f"{args.label}_seed{seed}_{machine_name(args)}_{sha[:8]}"


def repeat_command(args: argparse.Namespace, seed: int) -> str:
    """The command line that runs this (label, seed) again."""
    cmd = ["python", "-m", "experiments.side_by_side", "--arm", args.arm, "--label", args.label, "--seeds", str(seed),
           "--data-config", *map(str, args.data_config), "--out", str(args.out), "--threads", str(args.threads)]  # fmt: skip
    if args.minutes is not None:
        cmd += ["--minutes", f"{args.minutes:g}"]
    if args.max_epochs is not None:
        cmd += ["--max-epochs", str(args.max_epochs)]
    if args.arm == "segopt":
        cmd += ["--config", str(args.config), *(f"--segopt-arg={a}" for a in args.segopt_arg)]
    else:
        cmd += ["--size", *map(str, args.size), "--batch-size", str(args.batch_size), "--lr", f"{args.lr:g}", "--val-every", str(args.val_every)]
    return shlex.join(cmd)


def settings(args: argparse.Namespace, data: DataConfig, recipe: Recipe | None, seed: int) -> dict[str, Any]:
    """Everything that defines the run and repeats it."""
    common = {
        "label": args.label,
        "data": data.root,
        "data_config": data.label,
        "data_config_sha256": data.sha256,
        "class_names": data.class_names,
        "ignore_index": data.ignore_index,
        "max_epochs": args.max_epochs,
        "run_sha256": run_sha256(args, data, recipe),
        "repeat": repeat_command(args, seed),
    }
    if recipe is not None:
        return {
            **common,
            "minutes": recipe.own_minutes if recipe.budget_minutes is None else recipe.budget_minutes,
            "config": str(recipe.path),
            "config_sha256": recipe.sha256,
            "data_config_stacked": recipe.data_config is not None,
            "time_budget_added": recipe.budget_minutes is not None,
            "extra_args": list(args.segopt_arg),
        }
    return {**common, **peer_settings(args, data)}


def peer_settings(args: argparse.Namespace, data: DataConfig) -> dict[str, Any]:
    k, channels = len(data.class_names), data.source.in_channels
    return {
        "minutes": peer_minutes(args),
        "model": f'smp.Unet("resnet34", encoder_weights=None, in_channels={channels}, classes={k})',
        "loss": f"0.5 CrossEntropy + 0.5 smp DiceLoss(multiclass), ignore_index {data.ignore_index}",
        "optimizer": f"Adam lr {args.lr}, constant",
        "augmentation": "HorizontalFlip, Rotate ±15, Affine shear ±10, ColorJitter 0.2 (each p=0.5)",
        "normalize": {"mean": list(data.mean), "std": list(data.std)},
        "size": list(args.size),
        "size_rule": args.size_rule,
        "batch_size": args.batch_size,
        "val_batch_size": val_batch_size(args, data),
        "precision": "fp16 autocast" if torch.cuda.is_available() else (
            "bf16 autocast" if cpu_has_native_bf16() else "float32 (this CPU has no native bf16)"
        ),
        "val_every": args.val_every,
        "evaluation": "probabilities resized bilinearly to the label's resolution before the argmax",
    }


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- summary
def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "range": max(values) - min(values),
    }


def machine_label(hw: dict[str, Any]) -> str:
    """The hardware a run was measured on, in words: runs are compared only with runs on the same."""
    where = hw["gpu"] or f"{hw['cpu']}, {hw['cores']} cores"
    return f"{where}, {hw['torch_threads']} torch threads, {hw['loader_workers']} loader worker"


def run_label(run: dict[str, Any]) -> str:
    """A run's label; runs from before labels were recorded are labelled by their arm."""
    return run["settings"].get("label") or run["arm"]


def run_key(run: dict[str, Any]) -> str | None:
    """What defines a run: runs of one label are pooled only when this agrees."""
    return run["settings"].get("run_sha256")


def _class_names(found: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(name for r in found for name in r["val_iou"]))


def reached_epoch_cap(run: dict[str, Any]) -> bool:
    """Whether a run stopped at the epochs it was capped at (``--trainer.max_epochs``), not at its
    time budget: then other processes on the machine cost it time, not epochs."""
    caps = [a.split("=", 1)[1] for a in run["settings"].get("extra_args") or [] if a.startswith("--trainer.max_epochs=")]
    return bool(caps) and caps[-1].isdigit() and run["epochs"] >= int(caps[-1])


def _arm_stats(found: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "arm": found[0]["arm"],
        "seeds": [r["seed"] for r in found],
        "val_mIoU": _stats([r["val_mIoU"] for r in found]),
        **({"inference": found[0]["inference"], "inference_s": ", ".join(str(r["inference"]["seconds"]) for r in found),
            "val_mIoU_fit": _stats([r["val_mIoU_fit"] for r in found])} if all(r.get("inference") for r in found) else {}),
        "per_seed": {str(r["seed"]): r["val_mIoU"] for r in found},
        "epochs": [r["epochs"] for r in found],
        "wall_min": [round(r["wall_s"] / 60, 1) for r in found],
        "other_cpu_share": {str(r["seed"]): r.get("other_cpu_share") for r in found},
        "reached_epoch_cap": [str(r["seed"]) for r in found if reached_epoch_cap(r)],
        "reference_step_s": {str(r["seed"]): r.get("reference_step_s") for r in found
                             if r.get("reference_step_method") == REFERENCE_STEP_METHOD},
        "val_iou_mean": {
            n: statistics.fmean(v) if (v := [r["val_iou"][n] for r in found if r["val_iou"].get(n) is not None]) else None
            for n in _class_names(found)
        },
    }


def latest_only(found: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """The runs made with the latest-finished run's settings, and the seeds of the others."""
    latest = run_key(max(found, key=lambda r: r.get("finished", "")))
    return [r for r in found if run_key(r) == latest], [r["seed"] for r in found if run_key(r) != latest]


#: Runs whose reference step times differ by more than this ratio ran on hosts of different speed.
HOST_SPEED_RATIO = 1.10

#: The label of the planned recipe's arm; rule ablations run against a version of it.
PLANNED = "planned"


def earlier_recipe_arms(kept: dict[str, list[dict[str, Any]]], runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """The planned recipe's earlier versions, as arms named ``planned, recipe <sha>``: the one the
    current plan replaced, and those that rule ablations ran against; and each arm's version of
    the planned recipe (by run hash).

    An ablation is the planned recipe with a key set otherwise; once the recipe is re-planned it
    pairs with the version it modified, not with the new ``planned``. Runs go one at a time, so an
    ablation ran against the latest version whose first run had finished before its own first run.
    """
    if PLANNED not in kept:
        return {}, {}
    path = kept[PLANNED][0]["settings"].get("config")
    by_version: dict[str, list[dict[str, Any]]] = {}
    for r in runs[PLANNED]:
        by_version.setdefault(run_key(r) or "", []).append(r)
    first = sorted((min(r.get("finished", "") for r in found), key) for key, found in by_version.items())

    def version_of(found: list[dict[str, Any]]) -> str:
        done = min(r.get("finished", "") for r in found)
        return next((key for t, key in reversed(first) if t <= done), first[0][1])

    version = {PLANNED: run_key(kept[PLANNED][0]) or ""}
    for name, found in kept.items():
        if name != PLANNED and found[0]["arm"] == "segopt" and found[0]["settings"].get("config") == path:
            version[name] = version_of(found)
    replaced = [key for _, key in first if key != version[PLANNED]][-1:]
    earlier: dict[str, list[dict[str, Any]]] = {}
    for key in sorted((set(version.values()) | set(replaced)) - {version[PLANNED]}):
        found = by_version[key]
        name = f"{PLANNED}, recipe {(found[0]['settings'].get('config_sha256') or key)[:8]}"
        earlier[name], version[name] = found, key
    return earlier, version


def _paired(a: str, b: str, version: dict[str, str], plans: set[str]) -> bool:
    """An ablation pairs only with its own version of the planned recipe; plan versions pair with each other."""
    return version.get(a, version.get(b)) == version.get(b, version.get(a)) or {a, b} <= plans


def compare(a: str, b: str, arms: dict[str, Any]) -> dict[str, Any]:
    """``a``'s lead over ``b``; resolved only when it exceeds both seed ranges with two seeds or more each."""
    sa, sb = arms[a]["val_mIoU"], arms[b]["val_mIoU"]
    lead = sa["mean"] - sb["mean"]
    spread = max(sa["range"], sb["range"])
    few = [label for label, s in ((b, sb), (a, sa)) if s["n"] < 2]
    return {"a": a, "b": b, "lead": lead, "spread": spread, "few_seeds": few, "resolved": not few and abs(lead) > spread}


def arm_order(label: str, found: list[dict[str, Any]]) -> tuple[bool, str]:
    return found[0]["arm"] != "peer", label  # the peer first, then segopt's labels by name


def summarise(out: Path) -> dict[str, Any]:
    """Per machine and label, statistics over the finished seeds, and every pair's lead.

    Seeds are pooled only within one machine (CPU, cores, threads, GPU): the epochs an hour buys
    differ between machines. Within a machine, a label's runs made with earlier settings (their
    run hash differs from the latest run's) are listed as superseded and left out of the figures.
    """
    machines: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(out.glob("*_seed*.json")):
        data = json.loads(path.read_text())
        machines.setdefault(machine_label(data["hardware"]), {}).setdefault(run_label(data), []).append(data)
    summary: dict[str, Any] = {"data": sorted({r["settings"].get("data_config") or r["settings"]["data"]
                                               for runs in machines.values() for found in runs.values() for r in found})}  # fmt: skip
    summary["machines"] = {}
    for label, runs in machines.items():
        superseded: dict[str, list[int]] = {}
        kept: dict[str, list[dict[str, Any]]] = {}
        for name, found in sorted(runs.items(), key=lambda item: arm_order(*item)):
            kept[name], left_out = latest_only(found)
            if left_out:
                superseded[name] = left_out
        earlier, version = earlier_recipe_arms(kept, runs)
        if earlier:
            shown = [r for found in earlier.values() for r in found]
            superseded[PLANNED] = [r["seed"] for r in runs[PLANNED] if r not in kept[PLANNED] and r not in shown]
            superseded = {k: v for k, v in superseded.items() if v}
            kept.update(earlier)
        stale = [n for n, v in version.items() if v != version[PLANNED] and n not in earlier]
        arms = {name: _arm_stats(found) for name, found in kept.items()}
        names = list(arms)
        plans = {PLANNED, *earlier}
        pairs = [compare(names[j], names[i], arms) for i in range(len(names)) for j in range(i + 1, len(names))
                 if _paired(names[i], names[j], version, plans)]  # fmt: skip
        summary["machines"][label] = {"arms": arms, "superseded": superseded, "pairs": pairs, "earlier_recipe": stale}
    return summary


def _f(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def spread_cell(stats: dict[str, Any]) -> str:
    """An arm's figure as tables show it: mean ± sample std [min–max] over seeds."""
    return f"{_f(stats['mean'])} ± {_f(stats['std'])} [{_f(stats['min'])}–{_f(stats['max'])}]"


def verdict(pair: dict[str, Any]) -> str:
    """One line: the lead in mIoU and whether it is resolved."""
    lead = f"{pair['a']} − {pair['b']}: {pair['lead']:+.3f} mIoU; "
    few = pair["few_seeds"]
    if few:
        return lead + f"not resolved yet: {' and '.join(few)} {'has' if len(few) == 1 else 'have'} one seed, and the seed range needs two per arm."
    if pair["resolved"]:
        return lead + f"resolved: this exceeds the larger seed range of the two arms ({pair['spread']:.3f})."
    return lead + f"not resolved yet: this does not exceed the larger seed range of the two arms ({pair['spread']:.3f})."


def _machine_lines(entry: dict[str, Any]) -> list[str]:
    lines = ["| arm | seeds | val mIoU | per seed | epochs | wall (min) |", "|---|---|---|---|---|---|"]
    inferred = {name: a for name, a in entry["arms"].items() if a.get("inference")}
    for name, a in entry["arms"].items():
        s = a["val_mIoU"]
        lines.append(
            f"| {name} | {', '.join(map(str, a['seeds']))} | {spread_cell(s)} | "
            f"{', '.join(_f(v) for v in a['per_seed'].values())} | {', '.join(map(str, a['epochs']))} | "
            f"{', '.join(map(str, a['wall_min']))} |"
        )
    for name, a in inferred.items():
        views = [k for k in ("hflip", "vflip") if a["inference"].get(k)]
        lines += ["", f"{name} is scored as its recipe's `validate` and `predict` infer: averaging {' and '.join(views)} views "
                  f"({a['inference_s']} s per scoring). Its one plain pass inside fit scored {spread_cell(a['val_mIoU_fit'])}."]
    shared = [f"{name} seed {seed} ({share:.0%})" for name, a in entry["arms"].items()
              for seed, share in a.get("other_cpu_share", {}).items()
              if share is not None and share > SHARED_CPU_SHARE and seed not in a.get("reached_epoch_cap", [])]  # fmt: skip
    if shared:
        lines += ["", f"On a shared machine: other processes took more than {SHARED_CPU_SHARE:.0%} of the CPU during "
                  f"{', '.join(shared)}. A time budget then buys fewer epochs, and those figures are suspect."]  # fmt: skip
    speeds = {f"{name} seed {seed}": v for name, a in entry["arms"].items() for seed, v in a.get("reference_step_s", {}).items() if v}
    if speeds and max(speeds.values()) > HOST_SPEED_RATIO * min(speeds.values()):
        listing = ", ".join(f"{k} {v:.3f}" for k, v in speeds.items())
        lines += ["", f"Host speed varies: a reference training step (`experiments/common.py`) took {min(speeds.values()):.3f}–"
                  f"{max(speeds.values()):.3f} s across these runs ({listing}). A time budget buys more epochs on a faster host: "
                  "compare the arms' epochs too, or cap an ablation at the planned arm's epochs (`--trainer.max_epochs`)."]  # fmt: skip
    for name, seeds in entry["superseded"].items():
        earlier = "an earlier version of the recipe" if entry["arms"].get(name, {}).get("arm") == "segopt" else "earlier settings"
        lines += ["", f"Left out: {name} seed(s) {', '.join(map(str, sorted(set(seeds))))}, run with {earlier}."]
    if entry.get("earlier_recipe"):
        lines += ["", f"Run against an earlier version of the {PLANNED} recipe, and so compared with that version's runs "
                  f"(`{PLANNED}, recipe <sha>`), not with `{PLANNED}`: {', '.join(entry['earlier_recipe'])}."]
    for pair in entry["pairs"]:
        lines += ["", verdict(pair)]
    arms = entry["arms"]
    names = list(dict.fromkeys(n for a in arms.values() for n in a["val_iou_mean"]))
    lines += ["", "Per-class IoU (mean over seeds):", "", "| class | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_f(a["val_iou_mean"].get(name)) for a in arms.values()) + " |")
    return lines


def markdown(summary: dict[str, Any]) -> list[str]:
    data = ", ".join(f"`{d}`" for d in summary["data"])
    lines = [f"# segopt vs. a hand-written smp UNet, same wall-clock time ({data}, val, full-resolution labels)", ""]
    lines.append("Written by `experiments/side_by_side.py`; the final checkpoint's val mIoU, scored as each recipe infers "
                 "(test-time flips where it sets them), mean ± sample std over seeds (range in brackets).")  # fmt: skip
    lines.append("Seeds are pooled only within one machine; a lead is resolved only when it exceeds both arms' seed range (max − min), with two seeds or more each.")
    lines.append("Each run's settings, and the command that repeats it, are in its JSON. Learning curves: the PNG beside this file.")
    for label, entry in summary["machines"].items():
        lines += ["", f"## {label}", "", *_machine_lines(entry)]
    return lines


def plot_curves(out: Path, path: Path) -> None:
    """Val mIoU against wall-clock minutes for every finished (label, seed), one chart per machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[dict[str, Any]]] = {}
    for run in sorted(out.glob("*_seed*.json")):
        data = json.loads(run.read_text())
        runs.setdefault(machine_label(data["hardware"]), []).append(data)
    labels = sorted({run_label(d) for found in runs.values() for d in found})
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    fig, axes = plt.subplots(len(runs) or 1, 1, figsize=(7, 4.2 * max(1, len(runs))), squeeze=False)
    for ax, (label, found) in zip(axes[:, 0], runs.items()):
        for data in found:
            points = [(p["elapsed_s"] / 60, p["val_mIoU"]) for p in data["curve"] if p.get("val_mIoU") is not None]
            if points:
                style = "-" if data["seed"] % 2 == 0 else "--"
                name = run_label(data)
                ax.plot(*zip(*points), style, marker=".", color=colours[name], label=f"{name} seed {data['seed']}")
        ax.set_xlabel("wall-clock minutes")
        ax.set_ylabel("val mIoU (full-resolution labels)")
        ax.set_title(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("val mIoU over one budget (experiments/side_by_side.py)")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_summary(out: Path) -> Path:
    summary = summarise(out)
    stem = out.parent / out.name
    write_json_atomic(stem.with_suffix(".json"), summary)
    plot_curves(out, stem.with_suffix(".png"))
    tmp = stem.with_name(stem.name + ".md.tmp")
    tmp.write_text("\n".join(markdown(summary)) + "\n")
    os.replace(tmp, stem.with_suffix(".md"))
    print("\n".join(markdown(summary)))
    return stem.with_suffix(".md")


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", choices=ARMS, required=True)
    p.add_argument("--label", default=None, help="the arm's name in files and tables (default: the arm)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--minutes", type=float, default=None,
                   help=f"wall-clock budget per run: the peer's (default {PEER_MINUTES:g}); for segopt, added as a TimeBudget when the recipe has none")  # fmt: skip
    p.add_argument("--data-config", type=Path, nargs="+", default=[DEFAULT_DATA_CONFIG],
                   help="the data both arms train and score on; several stack as in fit (e.g. a by-group overlay)")
    p.add_argument("--out", type=Path, default=Path("results/side_by_side"), help="per-run JSONs; the summary goes to OUT.md/.json")
    p.add_argument("--config", type=Path, default=Path("configs/recipes/camvid.yaml"), help="segopt arm: the recipe")
    p.add_argument("--segopt-arg", action="append", default=[], help="segopt arm: one more CLI flag, e.g. --segopt-arg=--trainer.max_epochs=3")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of both arms (default: all cores)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help=f"peer: training size (default: the median training image scaled to fit {MAX_SIDE} a side, multiples of {MULTIPLE})")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16, help="peer: batch size")
    p.add_argument("--lr", type=float, default=1e-4, help="peer: Adam learning rate")
    p.add_argument("--val-every", type=int, default=5, help="peer: validate every N epochs (and after the first and the last)")
    p.add_argument("--max-epochs", type=int, default=None, help="peer: stop after N epochs even within the budget (tests)")
    args = p.parse_args(argv)
    args.label = args.label or args.arm
    if args.minutes is not None and args.minutes <= 0:
        fail(f"--minutes must be positive, got {args.minutes:g}; give the budget in minutes, e.g. --minutes 10")
    if args.val_every < 1:
        fail(f"--val-every must be at least 1, got {args.val_every}")
    if not re.fullmatch(r"[A-Za-z0-9.-]+", args.label):
        fail(f"--label {args.label!r} must be letters, digits, '.' or '-' (it names files), e.g. --label amp-10min")
    if args.size is not None and min(args.size) < MULTIPLE:
        fail(f"--size {args.size[0]} {args.size[1]} is below {MULTIPLE} pixels a side; ResNet34 needs at least {MULTIPLE}")
    if args.arm == "segopt" and not args.config.is_file():
        fail(f"--config {args.config} does not exist; give a segopt recipe such as configs/recipes/camvid.yaml")
    return args


def check_out_folder(args: argparse.Namespace, data: DataConfig) -> None:
    """One ``--out`` holds one data set, and a label names one arm."""
    for path in sorted(args.out.glob("*_seed*.json")):
        run = json.loads(path.read_text())
        if run["settings"].get("data", data.root) != data.root:
            fail(
                f"--out {args.out} holds runs on {run['settings']['data']} (e.g. {path.name}), not on {data.root}; "
                f"give another --out for this data set, e.g. --out {args.out}_{data.path.stem}"
            )
        if run_label(run) == args.label and run["arm"] != args.arm:
            fail(f"--label {args.label} already names the {run['arm']} arm in {args.out} ({path.name}); give this arm another --label")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    data = load_data_config(args.data_config)
    args.size_rule = "given by --size"
    if args.arm == "peer" and args.size is None:
        args.size, args.size_rule = default_size(data.source)
    recipe = plan_recipe(args, data) if args.arm == "segopt" else None
    check_out_folder(args, data)
    torch.set_num_threads(args.threads)
    summary = None
    for seed in args.seeds:
        path = args.out / f"{run_stem(args, seed, run_sha256(args, data, recipe))}.json"
        if path.is_file():
            print(f"{path} exists: skipping {args.label} seed {seed}")
            continue
        host_speed = reference_step_s()
        before = cpu_snapshot()
        result = run_peer(args, data, seed) if recipe is None else run_segopt(args, data, recipe, seed)
        result["other_cpu_share"] = other_cpu_share(before, cpu_snapshot(), os.cpu_count() or 1)
        result["reference_step_s"] = host_speed
        result["reference_step_method"] = REFERENCE_STEP_METHOD
        record = {"arm": args.arm, "seed": seed, "settings": settings(args, data, recipe, seed), "hardware": hardware(args),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}  # fmt: skip
        write_json_atomic(path, record)
        summary = write_summary(args.out)  # after every run: an interrupted series still has one
    return summary or write_summary(args.out)


if __name__ == "__main__":
    main()
