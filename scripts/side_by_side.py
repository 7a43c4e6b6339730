"""segopt's CamVid recipe against what a user would write instead, for the same wall-clock time.

    python scripts/side_by_side.py --arm peer --seeds 0 1 --minutes 60
    python scripts/side_by_side.py --arm segopt --seeds 0 1 --config configs/recipes/camvid.yaml

Two arms, each trained once per seed on the same machine:

- ``peer``: ``segmentation_models_pytorch.Unet("resnet34", encoder_weights=None)``, loss
  0.5 cross-entropy + 0.5 smp Dice (void ignored), Adam 1e-4 without a schedule, albumentations
  flip / rotate ±15 / shear ±10 / colour jitter 0.2 (each p=0.5), ImageNet normalisation, images
  resized to ``--size`` (180x240), batch 16, a plain PyTorch loop under bf16 autocast on a CPU
  with native bf16, float32 on other CPUs (the rule segopt applies to ``16-mixed``), fp16 with a
  GradScaler on a GPU. It trains whole epochs until the next one, plus the final
  validation, would pass ``--minutes`` (estimated from the epochs and validations so far).
  Validation runs the network at ``--size``, resizes the class probabilities bilinearly to the
  label's own resolution (480x360) before the argmax, and scores with torchmetrics'
  ``MulticlassJaccardIndex(average="none")``; mIoU is the mean over classes present (nanmean),
  as segopt's module computes it. It validates after the first epoch, every ``--val-every``
  epochs and at the end, which gives the learning curve.
- ``segopt``: ``python -m segopt.cli fit --config <recipe> --seed_everything <seed>`` in a
  subprocess (the recipe holds its own time budget; ``--segopt-arg`` passes more flags), then
  the final epoch's val mIoU and per-class IoU (not the best epoch's) from its TensorBoard run.

``--data`` follows ``$SEGOPT_DATA_ROOT`` as segopt does, so both arms read the same folder.
Both arms use ``--threads`` torch threads (default: all cores) and one persistent loader worker.
Each (arm, seed) writes ``--out``/<arm>_seed<seed>_<machine>[_<recipe sha256[:8]>].json
atomically when it finishes; a run whose JSON exists is skipped, so the same command resumes
across sessions, while another machine or an edited recipe runs the seed afresh beside it. After every run
the summary ``--out``.md and .json is rewritten from the JSONs found: per machine (seeds run
on different hardware are never pooled) and arm the mean, sample standard deviation and range
over seeds of the final val mIoU, and segopt's lead over the peer, which counts as resolved
when it exceeds both arms' seed range (max − min). A segopt run records its recipe's sha256;
runs of an earlier recipe on the same machine are listed as superseded, not pooled.

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
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import cpu_name  # scripts/ is on sys.path when a script runs

from segopt.data.roots import describe, resolve_data_path
from segopt.precision import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]

CLASS_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]
VOID = 11
ARMS = ("peer", "segopt")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- peer arm
class CamVidFolder(torch.utils.data.Dataset):
    """CamVid in the SegNet layout, each pair decoded from PNG when asked for, as a user writes it."""

    def __init__(self, root: Path, split: str, transform: Any) -> None:
        self.images = sorted((root / split).glob("*.png"))
        if not self.images:
            raise FileNotFoundError(f"no PNG images in {root / split}; --data must name a CamVid folder with {split}/ and {split}annot/")
        self.masks = [root / f"{split}annot" / p.name for p in self.images]
        missing = [str(m) for m in self.masks if not m.is_file()]
        if missing:
            raise FileNotFoundError(f"no mask for {len(missing)} images, e.g. {missing[0]}; each image needs one of the same name")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import cv2

        image = cv2.cvtColor(cv2.imread(str(self.images[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(self.masks[i]), cv2.IMREAD_GRAYSCALE)
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"].long()


class ResizeImageOnly:
    """Validation: the image resized to the training size, the mask left at its own resolution."""

    def __init__(self, size: tuple[int, int]) -> None:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        self.image = A.Compose([A.Resize(*size), A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()])

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        return {"image": self.image(image=image)["image"], "mask": torch.from_numpy(mask)}


def peer_train_transform(size: tuple[int, int]) -> Any:
    """Resize, then flip / rotate / shear / colour jitter (each p=0.5), ImageNet normalisation."""
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    return A.Compose(
        [
            A.Resize(*size),
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=VOID, p=0.5),
            A.Affine(shear=(-10, 10), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=VOID, p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.5),
            A.Normalize(IMAGENET_MEAN, IMAGENET_STD),
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


@torch.no_grad()
def validate(net: torch.nn.Module, loader: Any, device: str, autocast: Any) -> tuple[float, list[float]]:
    """mIoU and per-class IoU, probabilities resized to each label's resolution before the argmax."""
    from torchmetrics.classification import MulticlassJaccardIndex

    # as segopt's module: a class absent from both truth and prediction is NaN and left out of the mean
    metric = MulticlassJaccardIndex(
        num_classes=len(CLASS_NAMES), ignore_index=VOID, average="none", zero_division=float("nan")
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


def run_peer(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train the peer for the budget; return its figures."""
    import segmentation_models_pytorch as smp

    start = time.perf_counter()
    seed_all(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = tuple(args.size)
    train_set = CamVidFolder(args.data, "train", peer_train_transform(size))
    val_set = CamVidFolder(args.data, "val", ResizeImageOnly(size))
    loader_kw = {"num_workers": 1, "persistent_workers": True, "pin_memory": device == "cuda", "worker_init_fn": _worker_init}
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed), **loader_kw
    )
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, **loader_kw)

    net = smp.Unet("resnet34", encoder_weights=None, classes=len(CLASS_NAMES)).to(device)
    ce = torch.nn.CrossEntropyLoss(ignore_index=VOID)
    dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=VOID)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device, enabled=device == "cuda")
    # The same rule as segopt's 16-mixed: bf16 autocast only where the CPU runs it natively.
    mixed = device == "cuda" or cpu_has_native_bf16()

    def autocast() -> Any:
        return torch.autocast(device_type=device, dtype=dtype, enabled=mixed)

    budget = args.minutes * 60.0
    train_times: list[float] = []
    val_times: list[float] = []
    curve: list[dict[str, Any]] = []
    final: tuple[float, list[float]] | None = None
    epoch = 0
    while True:
        if args.max_epochs is not None and epoch >= args.max_epochs:
            break
        if train_times:
            # the next epoch plus the final validation must still fit in the budget
            need = statistics.fmean(train_times) + (max(val_times) if val_times else 0.0)
            if time.perf_counter() - start + need > budget:
                break
        t0 = time.perf_counter()
        for images, masks in train_loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            with autocast():
                logits = net(images)
            logits = logits.float()
            loss = 0.5 * ce(logits, masks) + 0.5 * dice(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        epoch += 1
        train_times.append(time.perf_counter() - t0)
        point: dict[str, Any] = {"epoch": epoch, "elapsed_s": round(time.perf_counter() - start, 1), "train_loss_last": round(loss.item(), 4)}
        if epoch == 1 or epoch % args.val_every == 0:
            t1 = time.perf_counter()
            final = validate(net, val_loader, device, autocast)
            val_times.append(time.perf_counter() - t1)
            point["val_mIoU"] = round(final[0], 4)
            point["elapsed_s"] = round(time.perf_counter() - start, 1)
        else:
            final = None
        curve.append(point)
        print(f"[peer seed {seed}] epoch {epoch} {point}", flush=True)
    if final is None:
        final = validate(net, val_loader, device, autocast)
        curve[-1]["val_mIoU"] = round(final[0], 4)
        curve[-1]["elapsed_s"] = round(time.perf_counter() - start, 1)
    return {
        "epochs": epoch,
        "wall_s": round(time.perf_counter() - start, 1),
        "curve": curve,
        "val_mIoU": final[0],
        "val_iou": {n: None if math.isnan(v) else v for n, v in zip(CLASS_NAMES, final[1], strict=True)},
    }


# ----------------------------------------------------------------------------- segopt arm
def segopt_command(args: argparse.Namespace, seed: int, run_dir: Path) -> list[str]:
    """The ``segopt.cli fit`` command line of one seed, its TensorBoard run going to ``run_dir``."""
    return [
        sys.executable,
        "-m",
        "segopt.cli",
        "fit",
        "--config",
        str(args.config),
        f"--seed_everything={seed}",
        f"--data.source.init_args.root={args.data_given}",
        "--data.num_workers=1",
        "--data.persistent_workers=true",
        f"--trainer.logger.init_args.save_dir={run_dir.parent}",
        f"--trainer.logger.init_args.name={run_dir.name}",
        "--trainer.logger.init_args.version=0",
        *args.segopt_arg,
    ]


def read_tensorboard(log_dir: Path, t0: float) -> dict[str, Any]:
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
    iou = {}
    for name in CLASS_NAMES:
        tag = f"val/iou/{name}"
        iou[name] = acc.Scalars(tag)[-1].value if tag in tags else None
    return {"epochs": curve[-1]["epoch"], "curve": curve, "val_mIoU": events[-1].value, "val_iou": iou}


def run_segopt(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Fit segopt's recipe in a subprocess; read its final epoch from TensorBoard."""
    run_dir = args.out / "runs" / run_stem(args, "segopt", seed)
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again from scratch
    cmd = segopt_command(args, seed, run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("running:", " ".join(cmd), flush=True)
    t0 = time.time()
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - start
    result = read_tensorboard(run_dir / "version_0", t0)
    return {**result, "wall_s": round(wall, 1), "command": cmd[1:]}


# ----------------------------------------------------------------------------- results
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


def run_stem(args: argparse.Namespace, arm: str, seed: int) -> str:
    """The name of one run's JSON (and run folder): arm, seed, machine and, for segopt, the recipe's hash.

    A seed already run on another machine or with an earlier recipe is not a finished run of this
    one: it keeps its file, and the summary pools or leaves it out by what that file records.
    """
    hw = hardware(args)
    machine = re.sub(r"[^a-z0-9]+", "-", (hw["gpu"] or hw["cpu"]).lower()).strip("-")
    stem = f"{arm}_seed{seed}_{machine}-{hw['cores']}c-{hw['torch_threads']}t"
    return f"{stem}_{recipe_sha256(args)[:8]}" if arm == "segopt" else stem


def recipe_sha256(args: argparse.Namespace) -> str:
    """The sha256 of the recipe file the segopt arm trains (``--config``), in hex."""
    return hashlib.sha256(args.config.read_bytes()).hexdigest()


def settings(args: argparse.Namespace, arm: str) -> dict[str, Any]:
    common = {"minutes": args.minutes, "data": str(args.data_given), "max_epochs": args.max_epochs}
    if arm == "segopt":
        return {
            **common,
            "config": str(args.config),
            "config_sha256": recipe_sha256(args),
            "extra_args": list(args.segopt_arg),
        }
    return {
        **common,
        "model": 'smp.Unet("resnet34", encoder_weights=None, classes=11)',
        "loss": "0.5 CrossEntropy + 0.5 smp DiceLoss(multiclass), ignore_index 11",
        "optimizer": f"Adam lr {args.lr}, constant",
        "augmentation": "HorizontalFlip, Rotate ±15, Affine shear ±10, ColorJitter 0.2 (each p=0.5)",
        "size": list(args.size),
        "batch_size": args.batch_size,
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


def _arm_stats(found: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "seeds": [r["seed"] for r in found],
        "val_mIoU": _stats([r["val_mIoU"] for r in found]),
        "per_seed": {str(r["seed"]): r["val_mIoU"] for r in found},
        "epochs": [r["epochs"] for r in found],
        "wall_min": [round(r["wall_s"] / 60, 1) for r in found],
        "val_iou_mean": {
            n: statistics.fmean(v) if (v := [r["val_iou"][n] for r in found if r["val_iou"].get(n) is not None]) else None
            for n in CLASS_NAMES
        },
    }


def summarise(out: Path) -> dict[str, Any]:
    """Per machine and arm, statistics over the finished seeds, and segopt's lead over the peer.

    Seeds are pooled only within one machine (CPU, cores, threads, GPU): the epochs an hour buys
    differ between machines. Within a machine, segopt runs of an earlier recipe (its file's
    sha256 differs from the latest run's) are listed as superseded and left out of the figures.
    """
    machines: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(out.glob("*_seed*.json")):
        data = json.loads(path.read_text())
        machines.setdefault(machine_label(data["hardware"]), {arm: [] for arm in ARMS})[data["arm"]].append(data)
    summary: dict[str, Any] = {"machines": {}}
    for label, runs in machines.items():
        superseded: list[int] = []
        if runs["segopt"]:
            latest = max(runs["segopt"], key=lambda r: r.get("finished", ""))["settings"].get("config_sha256")
            superseded = [r["seed"] for r in runs["segopt"] if r["settings"].get("config_sha256") != latest]
            runs["segopt"] = [r for r in runs["segopt"] if r["settings"].get("config_sha256") == latest]
        arms = {arm: _arm_stats(found) for arm, found in runs.items() if found}
        entry: dict[str, Any] = {"arms": arms, "superseded_segopt_seeds": superseded}
        if len(arms) == 2:
            lead = arms["segopt"]["val_mIoU"]["mean"] - arms["peer"]["val_mIoU"]["mean"]
            spread = max(arms["segopt"]["val_mIoU"]["range"], arms["peer"]["val_mIoU"]["range"])
            enough = min(arms["segopt"]["val_mIoU"]["n"], arms["peer"]["val_mIoU"]["n"]) >= 2
            entry.update(segopt_minus_peer=lead, spread=spread, exceeds_spread=bool(enough and abs(lead) > spread))
        summary["machines"][label] = entry
    return summary


def _f(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(summary: dict[str, Any]) -> list[str]:
    lines = ["# segopt vs. a hand-written smp UNet, same wall-clock time (CamVid val, full-resolution labels)", ""]
    lines.append("Written by `scripts/side_by_side.py`; final-epoch val mIoU, mean ± sample std over seeds (range in brackets).")
    lines.append("Seeds are pooled only within one machine. Learning curves: `side_by_side.png` beside this file.")
    for label, entry in summary["machines"].items():
        lines += ["", f"## {label}", ""]
        lines.append("| arm | seeds | val mIoU | per seed | epochs | wall (min) |")
        lines.append("|---|---|---|---|---|---|")
        for arm, a in entry["arms"].items():
            s = a["val_mIoU"]
            lines.append(
                f"| {arm} | {', '.join(map(str, a['seeds']))} | {_f(s['mean'])} ± {_f(s['std'])} [{_f(s['min'])}–{_f(s['max'])}] | "
                f"{', '.join(_f(v) for v in a['per_seed'].values())} | {', '.join(map(str, a['epochs']))} | "
                f"{', '.join(map(str, a['wall_min']))} |"
            )
        if entry["superseded_segopt_seeds"]:
            seeds = ", ".join(map(str, entry["superseded_segopt_seeds"]))
            lines += ["", f"Left out: segopt seed(s) {seeds}, run with an earlier version of the recipe."]
        if "segopt_minus_peer" in entry:
            lead = f"segopt − peer: {entry['segopt_minus_peer']:+.3f} mIoU; "
            few = [arm for arm, a in entry["arms"].items() if a["val_mIoU"]["n"] < 2]
            if few:
                verdict = f"not resolved yet: {' and '.join(few)} {'has' if len(few) == 1 else 'have'} one seed, and the seed range needs two per arm."
            else:
                verdict = f"this {'exceeds' if entry['exceeds_spread'] else 'does not exceed'} the larger seed range of the two arms ({entry['spread']:.3f})."
            lines += ["", lead + verdict]
        arms = entry["arms"]
        lines += ["", "Per-class IoU (mean over seeds):", "", "| class | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for name in CLASS_NAMES:
            lines.append(f"| {name} | " + " | ".join(_f(a["val_iou_mean"][name]) for a in arms.values()) + " |")
    return lines


def plot_curves(out: Path, path: Path) -> None:
    """Val mIoU against wall-clock minutes for every finished (arm, seed), one chart per machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[dict[str, Any]]] = {}
    for run in sorted(out.glob("*_seed*.json")):
        data = json.loads(run.read_text())
        runs.setdefault(machine_label(data["hardware"]), []).append(data)
    fig, axes = plt.subplots(len(runs) or 1, 1, figsize=(7, 4.2 * max(1, len(runs))), squeeze=False)
    colours = {"segopt": "tab:blue", "peer": "tab:orange"}
    for ax, (label, found) in zip(axes[:, 0], runs.items()):
        for data in found:
            points = [(p["elapsed_s"] / 60, p["val_mIoU"]) for p in data["curve"] if p.get("val_mIoU") is not None]
            if points:
                style = "-" if data["seed"] % 2 == 0 else "--"
                ax.plot(*zip(*points), style, marker=".", color=colours.get(data["arm"]), label=f"{data['arm']} seed {data['seed']}")
        ax.set_xlabel("wall-clock minutes")
        ax.set_ylabel("val mIoU (full-resolution labels)")
        ax.set_title(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("CamVid val mIoU over one budget (scripts/side_by_side.py)")
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", choices=ARMS, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget per run")
    p.add_argument("--data", type=Path, default=Path("data/camvid"), help="CamVid folder: train/ trainannot/ val/ valannot/")
    p.add_argument("--out", type=Path, default=Path("results/side_by_side"), help="per-run JSONs; the summary goes to OUT.md/.json")
    p.add_argument("--config", type=Path, default=Path("configs/recipes/camvid.yaml"), help="segopt arm: the recipe")
    p.add_argument("--segopt-arg", action="append", default=[], help="segopt arm: one more CLI flag, e.g. --segopt-arg=--trainer.max_epochs=3")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of both arms (default: all cores)")
    p.add_argument("--size", type=int, nargs=2, default=[180, 240], metavar=("H", "W"), help="peer: training size")
    p.add_argument("--batch-size", type=int, default=16, help="peer: batch size")
    p.add_argument("--lr", type=float, default=1e-4, help="peer: Adam learning rate")
    p.add_argument("--val-every", type=int, default=5, help="peer: validate every N epochs (and after the first and the last)")
    p.add_argument("--max-epochs", type=int, default=None, help="peer: stop after N epochs even within the budget (tests)")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error(f"--minutes must be positive, got {args.minutes}")
    if args.val_every < 1:
        p.error(f"--val-every must be at least 1, got {args.val_every}")
    # both arms read the same folder; results name the path as given (data/camvid), not where it led
    args.data_given, args.data = args.data, resolve_data_path(args.data)
    if not args.data.is_dir():
        p.error(
            f"--data {args.data_given} is not a folder{describe(args.data_given, args.data)}; "
            "give the CamVid folder (train/ trainannot/ val/ valannot/)"
        )
    if args.arm == "segopt" and not args.config.is_file():
        p.error(f"--config {args.config} does not exist; give segopt's CamVid recipe")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    summary = None
    for seed in args.seeds:
        path = args.out / f"{run_stem(args, args.arm, seed)}.json"
        if path.is_file():
            print(f"{path} exists: skipping {args.arm} seed {seed}")
            continue
        result = run_peer(args, seed) if args.arm == "peer" else run_segopt(args, seed)
        write_json_atomic(
            path,
            {
                "arm": args.arm,
                "seed": seed,
                "settings": settings(args, args.arm),
                "hardware": hardware(args),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **result,
            },
        )
        summary = write_summary(args.out)  # after every run: an interrupted series still has one
    return summary or write_summary(args.out)


if __name__ == "__main__":
    main()
