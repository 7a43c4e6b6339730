"""The planning rules: a fingerprint, a probe and a budget in, decisions with their reasons out.

Each rule is one function, written once, reading only the :class:`Fingerprint`, the
:class:`Probe` and the minutes; none times or reads anything itself, so a test can hand in
any data set and any machine (a described GPU included). Every constant names where it
comes from; ``results/plan.md`` holds the measurements that back or revise them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from segopt.commands.planning.fingerprint import ClassFingerprint, Fingerprint, PlanError
from segopt.commands.planning.probe import BACKBONES, Backbone, Probe
from segopt.data.class_weights import SATURATION_SHARE

#: The thinnest class should stay this many pixels wide at the training scale. The CamVid
#: recipe trains at 240x320 (2/3 of the labels' size), where Pole, 3 px wide at full
#: resolution, keeps 2 px; it scored above the 180x240 version that left Pole 1.5 px.
MIN_THIN_PX = 2.0
#: Training images a run needs to see to converge (epochs x training images, whatever the
#: batch); below it a smaller network or size is planned. The CamVid recipe's seed 1 peaked
#: at epoch 45 of 61: about 16,000 images (1000 steps of 16).
MIN_IMAGES = 16000
#: Pixels per training batch on a CPU: the CamVid recipe's 16 images of 240x320.
CPU_BATCH_PIXELS = 16 * 240 * 320
#: Batch bounds: BatchNorm needs two images; larger batches than 16 (CPU) or 32 (GPU) buy no
#: accuracy at these budgets, only fewer steps.
MIN_BATCH, MAX_BATCH_CPU, MAX_BATCH_GPU = 2, 16, 32
#: At least this many optimiser steps per epoch (small data sets get smaller batches).
MIN_STEPS_PER_EPOCH = 4
#: Random crops are this many pixels a side, and see structures up to a quarter of it whole.
CROP_SIDE, CROP_CONTEXT = 256, 4
#: Whole images (resized) are trained on up to this many pixels; larger ones are cropped.
MAX_WHOLE_PIXELS = 512 * 512
#: The smallest side the networks take (their size multiple, 32): smaller images are refused.
MIN_INPUT_SIDE = 32
#: Validation may take at most this share of the budget.
MAX_VAL_SHARE = 0.10
#: Cross-entropy is weighted by the effective number of samples when the most common class holds
#: this many times the pixels of the rarest: on the magnetic tiles it beat inverse-sqrt frequency
#: (itself ahead of no weights and median frequency on CamVid, results/side_by_side.md) at 10 and
#: 30 minutes, and on CamVid by sequence it is level (results/plan.md); membranes (3.4x) train
#: unweighted, where inverse-sqrt weights were level with none.
WEIGHTING_IMBALANCE = 10.0
#: A class in fewer than this share of the training images gets a third of the draws given to
#: the images that hold it, and in crop mode a third of the crops centred on it (nnU-Net
#: oversamples foreground in a third of its patches).
RARE_PRESENCE, RARE_IMAGE_SHARE, RARE_CROP_SHARE = 0.25, 0.33, 0.33
#: Data with rare classes trains on crops at full resolution of this share of the median
#: image's short side (at most ``CROP_SIDE``): each step costs about a quarter of a whole image,
#: thin classes keep their full width, and a share of the crops is centred on the rare classes.
#: Magnetic tiles: 128 px crops beat the 2/3-scale resize by +0.012 at 10 min and +0.004 at
#: 30 min, both resolved (results/plan.md); no other development set has a class this rare.
#: Larger crops at 30 min (256 px, 11-14 epochs instead of 43-46) were level at best and spread
#: six times as far between seeds, so the side does not grow with the budget.
RARE_CROP_SIDE = 0.5
#: Scale jitter is not planned: at short budgets it cost accuracy on both development sets that
#: measured it, at both ends of the fingerprint's scale spread (median over classes of the
#: interquartile ratio of per-image median widths). The membranes (one magnification, 1.26):
#: 0.778 without against 0.758 with it at 10 min; CamVid (cars near and far, 3.0), by sequence,
#: 60 min at 37 epochs: 0.402 without against 0.382; both resolved (results/plan.md).
NO_JITTER = [1.0, 1.0]
#: Inference (validate, test, predict) averages the flipped views along each axis the labels do
#: not prefer: where the classes' pixels split between the two halves of the images no more
#: unevenly than this (the fingerprint's pixel-weighted ``vertical_bias`` / ``horizontal_bias``;
#: 0.25 is 62.5/37.5). The validation inside ``fit`` stays one plain pass, so training and its
#: epochs do not change; each flip doubles the passes of inference. The development sets'
#: planned checkpoints, rescored (results/plan.md): both flips on the tiles (biases 0.01 and
#: 0.00) +0.031 at 30 min and +0.011 at 10, on the membranes (0.00, 0.03) +0.003, resolved;
#: on CamVid by sequence (top/bottom 0.84, left/right 0.18) the left/right flip +0.003,
#: resolved, while both flips score -0.010 against one plain pass. Between 0.18 and 0.84 nothing is
#: measured yet: the threshold is a guess there.
MIRROR_BIAS = 0.25
#: The decoded training set is cached in RAM when it takes at most this share of the memory.
CACHE_MEMORY_SHARE = 0.25
#: Seconds of a fit outside its epochs (model build, sanity check, decoding the cache), and of
#: each epoch outside its steps (loader start, checkpoint).
STARTUP_S, EPOCH_OVERHEAD_S = 20.0, 1.0


@dataclass
class Decision:
    """One planned config key, its value, and the figure that decided it."""

    key: str
    value: Any
    reason: str


@dataclass
class Candidate:
    """One (network, geometry) the budget could buy, with what the probe predicts for it."""

    backbone: str
    mode: str  # "resize" (whole images scaled to size) or "crop" (random crops at full resolution)
    size: tuple[int, int]
    scale: float
    batch: int
    steps_per_epoch: int
    epoch_s: float  # training plus a 1/val_every share of validation
    val_s: float  # one validation pass
    val_every: int
    epochs: int
    steps: int
    images_seen: int
    why_size: str  # why this geometry: the thinnest class's width at its scale, or the crops' context


class Geometry(NamedTuple):
    """A training geometry to weigh: resize or crop, its size and scale, and why."""

    mode: str
    size: tuple[int, int]
    scale: float
    reason: str


@dataclass
class Plan:
    """The decisions, the chosen candidate, every candidate weighed, and notes for the user."""

    minutes: float
    decisions: list[Decision] = field(default_factory=list)
    chosen: Candidate | None = None
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def value(self, key: str) -> Any:
        return next(d.value for d in self.decisions if d.key == key)

    def add(self, key: str, value: Any, reason: str) -> None:
        self.decisions.append(Decision(key, value, reason))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _round_to(value: float, multiple: int = 16) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def learnable_classes(fp: Fingerprint) -> list[int]:
    """Ids of the classes that appear in the training masks."""
    return [i for i, c in enumerate(fp.classes) if c.images > 0]


def thinnest(fp: Fingerprint) -> tuple[str, float]:
    """The name and full-resolution width (px) of the thinnest class present in training."""
    present = [fp.classes[i] for i in learnable_classes(fp) if fp.classes[i].width_px is not None]
    c = min(present, key=lambda c: c.width_px)
    return c.name, float(c.width_px)


def context_width(fp: Fingerprint) -> float:
    """The pixel-share-weighted median structure width: the scale most pixels' context lives at."""
    present = sorted((fp.classes[i] for i in learnable_classes(fp)), key=lambda c: c.width_px or 0.0)
    half, total = 0.5 * sum(c.pixel_share for c in present), 0.0
    for c in present:
        total += c.pixel_share
        if total >= half:
            return float(c.width_px or 0.0)
    return float(present[-1].width_px or 0.0)


def keep_scale(fp: Fingerprint) -> tuple[float, str]:
    """The smallest training scale that keeps the thinnest class ``MIN_THIN_PX`` wide."""
    name, width = thinnest(fp)
    scale = min(1.0, MIN_THIN_PX / width)
    small = min(fp.median_size)
    scale = max(scale, min(1.0, 2 * MIN_INPUT_SIDE / small))
    return scale, f"{name} is {width:g} px wide at median (full resolution)"


def geometries(fp: Fingerprint) -> list[Geometry]:
    """Each training geometry to weigh, most resolution first."""
    scale, why = keep_scale(fp)
    h, w = fp.median_size
    context = context_width(fp)
    if context * CROP_CONTEXT <= CROP_SIDE and min(h, w) > CROP_SIDE:
        return [Geometry("crop", (CROP_SIDE, CROP_SIDE), 1.0, f"{why}; most pixels' structures are {context:g} px wide, "
                 f"within a quarter of a {CROP_SIDE}px crop, so crops at full resolution keep their context")]
    rare, side = rare_classes(fp), min(CROP_SIDE, _round_to(min(h, w) * RARE_CROP_SIDE, 32))
    if rare and 2 * MIN_INPUT_SIDE <= side < min(h, w):
        return [Geometry("crop", (side, side), 1.0, f"{why}; {_presence(rare)} in under {RARE_PRESENCE:.0%} of the training "
                 f"images: crops of {side} px at full resolution ({RARE_CROP_SIDE:g} of the median {h}x{w}'s short side), "
                 f"a share of them centred on those classes")]
    found = []
    for s in sorted({1.0, round((1.0 + scale) / 2, 3), round(scale, 3)}, reverse=True):
        size = (h, w) if s == 1.0 else (_round_to(h * s), _round_to(w * s))  # the network pads to its multiple
        if size[0] * size[1] > MAX_WHOLE_PIXELS:
            continue
        found.append(Geometry("resize", size, s, f"{why}: {s:.2f} of the median {h}x{w} keeps it {s * thinnest(fp)[1]:.1f} px"))
    if not found:  # too large to train whole even at the smallest scale that keeps the thin classes
        found.append(Geometry("crop", (CROP_SIDE, CROP_SIDE), 1.0, f"{why}; the median image ({h}x{w}) is too large to train "
                      f"whole at a scale that keeps it, so crops at full resolution"))
    return found


def most_batch(fp: Fingerprint) -> int:
    """The largest batch that still leaves ``MIN_STEPS_PER_EPOCH`` steps in an epoch."""
    return max(MIN_BATCH, fp.images["train"] // MIN_STEPS_PER_EPOCH)


def cpu_batch(fp: Fingerprint, size: tuple[int, int]) -> int:
    """Images per training batch on a CPU at ``size``: ``CPU_BATCH_PIXELS``, within the bounds."""
    return max(MIN_BATCH, min(MAX_BATCH_CPU, round(CPU_BATCH_PIXELS / (size[0] * size[1])), most_batch(fp)))


def gpu_batch(fp: Fingerprint, fits: int) -> int:
    """Images per training batch on a CUDA GPU where ``fits`` fit in memory, within the bounds."""
    return max(MIN_BATCH, min(fits, MAX_BATCH_GPU, most_batch(fp)))


def run_batch(fp: Fingerprint, size: tuple[int, int], fits: int | None) -> int:
    """The batch a run trains at ``size``: on a CUDA GPU (``fits`` measured) :func:`gpu_batch`,
    on a CPU (``fits`` None) :func:`cpu_batch`. The probe times each size at it too."""
    return cpu_batch(fp, size) if fits is None else gpu_batch(fp, fits)


def batch_size(fp: Fingerprint, probe: Probe, backbone: str, size: tuple[int, int]) -> tuple[int, str]:
    """Images per training batch for this machine, network and size."""
    train = fp.images["train"]
    fits = (probe.timing(backbone, size).max_batch or MIN_BATCH) if probe.machine.device == "cuda" else None
    batch = run_batch(fp, size, fits)
    if fits is not None:
        return batch, f"{fits} fit in {probe.machine.gpu_memory_gb:g} GB at {size[0]}x{size[1]}; at most {MAX_BATCH_GPU}, and {MIN_STEPS_PER_EPOCH}+ steps per epoch of {train} images"
    return batch, f"{CPU_BATCH_PIXELS / 1e6:.2f} M pixels per batch on a CPU at {size[0]}x{size[1]}, {MIN_STEPS_PER_EPOCH}+ steps per epoch of {train} images"


def weigh(fp: Fingerprint, probe: Probe, minutes: float, backbone: Backbone, geometry: Geometry) -> Candidate:
    """What the probe predicts ``backbone`` at ``geometry`` buys in ``minutes``."""
    mode, size, scale, why_size = geometry
    batch, _ = batch_size(fp, probe, backbone.name, size)
    timing = probe.timing(backbone.name, size)
    eval_size = size if mode == "resize" else fp.median_size
    train_s = fp.images["train"] * timing.train_s_per_image
    val_s = fp.images["val"] * probe.timing(backbone.name, eval_size).eval_s_per_image
    val_every = max(1, math.ceil(val_s / (MAX_VAL_SHARE * train_s)))
    epoch_s = train_s + val_s / val_every + EPOCH_OVERHEAD_S
    usable = minutes * 60.0 * 0.99 - STARTUP_S
    epochs = max(0, math.floor((usable - val_s) / epoch_s))  # the last epoch always validates
    steps_per_epoch = max(1, fp.images["train"] // batch)
    return Candidate(
        backbone.name, mode, size, scale, batch, steps_per_epoch, round(epoch_s, 2), round(val_s, 2), val_every, epochs,
        epochs * steps_per_epoch, epochs * fp.images["train"], why_size,
    )


def choose(fp: Fingerprint, probe: Probe, minutes: float, backbones: tuple[Backbone, ...] = BACKBONES) -> tuple[Candidate, list[Candidate], str]:
    """The strongest network at the most resolution that converges (``MIN_IMAGES``) in the budget.

    Networks are tried strongest first, and for each the geometries from the most resolution
    down; the first to see ``MIN_IMAGES`` wins. When none does, the candidate that sees the most
    is taken (the stronger network on a tie), and the reason says so: the choice then moves
    one way as the machine slows, never back to a network a faster machine gave up.
    """
    geoms = geometries(fp)
    weighed = [weigh(fp, probe, minutes, b, g) for b in backbones for g in geoms]
    fitting = [c for c in weighed if _fits(probe, c)]
    if not fitting:
        gpu = probe.machine
        raise PlanError(
            f"no candidate network and size fits {MIN_BATCH} training images in the memory of {gpu.name} "
            f"({gpu.gpu_memory_gb:g} GB); free the GPU's memory, or plan and train on the CPU (CUDA_VISIBLE_DEVICES=)"
        )
    for c in fitting:
        if c.images_seen >= MIN_IMAGES:
            return c, weighed, f"sees {c.images_seen} training images (>= {MIN_IMAGES}) in {minutes:g} min at {c.size[0]}x{c.size[1]}"
    if max(c.epochs for c in fitting) < 1:
        cheapest = min(fitting, key=lambda c: c.epoch_s)
        need = math.ceil((cheapest.epoch_s + cheapest.val_s + STARTUP_S) / 60 / 0.99)
        raise PlanError(
            f"--minutes {minutes:g} buys no full epoch on this machine: the cheapest plan ({cheapest.backbone} at "
            f"{cheapest.size[0]}x{cheapest.size[1]}) takes {cheapest.epoch_s:.0f} s an epoch with validation; give --minutes {need} or more"
        )
    best = max(fitting, key=lambda c: c.images_seen)  # max keeps the first of equals: the stronger, finer one
    return best, weighed, (
        f"no candidate sees {MIN_IMAGES} training images in {minutes:g} min; {best.backbone} at "
        f"{best.size[0]}x{best.size[1]} sees the most, {best.images_seen}"
    )


def _fits(probe: Probe, candidate: Candidate) -> bool:
    """On a CUDA GPU, whether ``MIN_BATCH`` images of the candidate fit in memory; a CPU fits any."""
    if probe.machine.device != "cuda":
        return True
    return (probe.timing(candidate.backbone, candidate.size).max_batch or 0) >= MIN_BATCH


def class_weighting(fp: Fingerprint) -> tuple[str | None, str]:
    shares = [fp.classes[i].pixel_share for i in learnable_classes(fp)]
    ratio = max(shares) / max(min(shares), 1e-12)
    if ratio >= WEIGHTING_IMBALANCE:
        return "effective_number", (
            f"the commonest class has {ratio:.0f}x the pixels of the rarest (>= {WEIGHTING_IMBALANCE:g}); "
            f"counts saturate at 1/{1 / SATURATION_SHARE:g} of the training pixels"
        )
    return None, f"the commonest class has {ratio:.1f}x the pixels of the rarest (< {WEIGHTING_IMBALANCE:g}): unweighted"


class RareSampling(NamedTuple):
    """How training favours the classes found in few images, and why."""

    image_share: float  # data.rare_image_share
    crop_share: float  # data.augment.rare_crop_share
    below: float | None  # data.augment.rare_class_below: catches those classes' pixel shares
    reason: str


def rare_classes(fp: Fingerprint) -> list[ClassFingerprint]:
    """The classes present in training but in under ``RARE_PRESENCE`` of its images."""
    return [fp.classes[i] for i in learnable_classes(fp) if fp.classes[i].image_share < RARE_PRESENCE]


def _presence(classes: list[ClassFingerprint]) -> str:
    return ", ".join(f"{c.name} ({c.image_share:.0%})" for c in classes)


def rare_sampling(fp: Fingerprint, mode: str) -> RareSampling:
    """Rare-image oversampling, and rare-class crops in crop mode, for classes in under ``RARE_PRESENCE`` of the images."""
    rare = rare_classes(fp)
    if not rare:
        return RareSampling(0.0, 0.0, None, f"every class is in {RARE_PRESENCE:.0%}+ of the training images")
    names = _presence(rare)
    below = round(max(c.pixel_share for c in rare) * 1.5, 6)
    crops = RARE_CROP_SHARE if mode == "crop" else 0.0
    why = f"{names} in under {RARE_PRESENCE:.0%} of the training images"
    return RareSampling(RARE_IMAGE_SHARE, crops, below, why if mode == "crop" else f"{why}; whole images are trained, not crops")


def scale_jitter(fp: Fingerprint) -> tuple[list[float], str]:
    """No jitter (``NO_JITTER``), whatever the scale spread: see the constant for the evidence."""
    spread = "unmeasured" if fp.scale_spread is None else f"{fp.scale_spread:g}x"
    return list(NO_JITTER), (f"widths vary {spread} between images; no jitter: it lost at both spreads measured "
                             "(the membranes 1.26x, CamVid 3.0x)")


def ema_decay(chosen: Candidate) -> tuple[float, str]:
    horizon = min(100.0, max(10.0, chosen.steps / 10.0))
    return round(1.0 - 1.0 / horizon, 4), f"averages the last ~{horizon:.0f} of {chosen.steps} planned steps (the CamVid recipe: 0.99 over ~1300)"


def inference_flips(fp: Fingerprint) -> tuple[dict[str, bool], str]:
    """Test-time flips along each axis the labels do not prefer (``MIRROR_BIAS``)."""
    flips, why = {}, []
    for key, axis, bias in (("hflip", "left/right", fp.horizontal_bias), ("vflip", "top/bottom", fp.vertical_bias)):
        flips[key] = bias is not None and bias <= MIRROR_BIAS
        if bias is None:
            why.append(f"{axis} bias unmeasured: not flipped")
        else:
            why.append(f"{axis} bias {bias:.2f} ({'<=' if flips[key] else '>'} {MIRROR_BIAS:g}: {'flipped view averaged in' if flips[key] else 'not flipped'})")
    views = 2 ** sum(flips.values())
    return flips, "; ".join(why) + (f"; inference runs {views} passes per image" if views > 1 else "; one plain pass")


def cache_and_workers(fp: Fingerprint, probe: Probe) -> tuple[bool, int, str]:
    h, w = fp.median_size
    total = sum(fp.images.values()) * h * w * (fp.channels + 1) / 2**30
    cache = total <= CACHE_MEMORY_SHARE * probe.machine.memory_gb
    workers = max(1, min(8, probe.machine.cores - 1))
    where = "fits" if cache else "does not fit"
    return cache, workers, f"decoded data ~{total:.2f} GB {where} in {CACHE_MEMORY_SHARE:.0%} of {probe.machine.memory_gb:g} GB; {probe.machine.cores} cores"


def plan(fp: Fingerprint, probe: Probe, minutes: float) -> Plan:
    """Every decision of the recipe for ``fp`` on ``probe``'s machine in ``minutes``."""
    if min(fp.min_size) < MIN_INPUT_SIDE:
        raise PlanError(
            f"the smallest training image is {fp.min_size[1]}x{fp.min_size[0]}, below the {MIN_INPUT_SIDE} px the networks "
            f"take; remove or upscale images under {MIN_INPUT_SIDE} px a side"
        )
    result = Plan(minutes)
    absent = [c.name for c in fp.classes if c.images == 0]
    if absent:
        result.notes.append(f"class(es) {', '.join(absent)} never appear in the training masks: planned without them (they cannot be learned)")
    chosen, result.candidates, why = choose(fp, probe, minutes)
    result.chosen = chosen
    backbone = next(b for b in BACKBONES if b.name == chosen.backbone)
    reason = chosen.why_size
    result.add("model.backbone", {"class_path": backbone.class_path, "init_args": backbone.init_args}, f"{backbone.name}: {why}")
    result.add("data.resize_mode", chosen.mode, reason)
    result.add("data.train_size", list(chosen.size), f"{chosen.mode} at {chosen.size[0]}x{chosen.size[1]}: {reason}")
    full_res = chosen.mode == "resize" and tuple(chosen.size) != tuple(fp.median_size)
    result.add("data.eval_size", list(chosen.size) if chosen.mode == "resize" else None,
               "the network sees the scale it trained at" if chosen.mode == "resize" else "whole images at full resolution")
    result.add("data.full_res_masks", full_res, "scored at the labels' own resolution, never at the reduced size" if full_res else "the network already runs at the labels' resolution")
    batch, why_batch = batch_size(fp, probe, chosen.backbone, chosen.size)
    result.add("data.batch_size", batch, why_batch)
    vary = fp.sizes_vary and (full_res or chosen.mode == "crop")
    result.add("data.eval_batch_size", 1 if vary else None, "validation images differ in size" if vary else "validation images share one size")
    weighting, why_w = class_weighting(fp)
    result.add("model.loss.init_args.class_weights", weighting, why_w)
    rare = rare_sampling(fp, chosen.mode)
    result.add("data.rare_image_share", rare.image_share, rare.reason)
    result.add("data.augment.rare_crop_share", rare.crop_share, rare.reason)
    if rare.below is not None:
        result.add("data.augment.rare_class_below", rare.below, "catches the rare classes' pixel shares")
    jitter, why_j = scale_jitter(fp)
    result.add("data.augment.random_scale", jitter, why_j)
    decay, why_e = ema_decay(chosen)
    result.add("ema.decay", decay, why_e)
    flips, why_f = inference_flips(fp)
    result.add("model.tta", flips, why_f)
    result.add("model.loss.init_args.ce", 0.5, "Dice+CE 1:1: CE, Focal+CE and Dice+CE tie on CamVid (results/ablation_camvid.md)")
    result.add("model.loss.init_args.dice", 0.5, "Dice+CE 1:1")
    result.add("trainer.check_val_every_n_epoch", chosen.val_every, f"validation ~{chosen.epoch_s:.0f} s epochs: at most {MAX_VAL_SHARE:.0%} of the budget")
    cache, workers, why_c = cache_and_workers(fp, probe)
    result.add("data.cache", cache, why_c)
    result.add("data.num_workers", workers, f"{probe.machine.cores} cores: one for the main process")
    result.add("trainer.precision", "16-mixed", f"runs as {probe.machine.precision} on {probe.machine.name}")
    result.add("model.scheduler.init_args.max_lr", backbone.max_lr, f"{backbone.name}'s measured peak rate (AdamW + OneCycle)")
    result.add("time_budget.minutes", minutes, f"TimeBudget plans ~{chosen.epochs} epochs of {chosen.epoch_s:.0f} s ({chosen.steps} steps) on this machine")
    result.add("data.normalize", {"mean": fp.mean, "std": fp.std}, "the training images' own channel statistics")
    return result
