"""Which checkpoint a command uses, and whether it can: ``last``/``best`` resolved, bad files named.

``--ckpt_path`` takes a ``.ckpt`` file or one of three words, for every subcommand:
``last`` (the newest ``checkpoints/last.ckpt`` of this experiment), ``best`` (the best
checkpoint recorded by that same run) and ``untrained`` (evaluate or predict with freshly
initialised weights, on purpose). ``validate``, ``test`` and ``predict`` without
``--ckpt_path`` stop: they never score or label with weights that were not loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

LAST, BEST, UNTRAINED = "last", "best", "untrained"

#: Checkpoint key under which segopt's fit records the backbone's ``class_path`` and ``init_args``.
BACKBONE_KEY = "backbone"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, what was found and the fix."""


def experiment_root(config: Any, defaults: Path | None = None) -> Path | None:
    """``save_dir/name`` of the run's TensorBoardLogger, where its versions live (None without one).

    With the logger switched off (``configs/predict.yaml``), the logger of the defaults and
    ``--config`` files, merged in order, names the experiment (the training config's).
    """
    logger = config.trainer.get("logger")
    if hasattr(logger, "get") and str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        args = logger.get("init_args") or {}
        return Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
    files = ([defaults] if defaults else []) + [Path(str(getattr(p, "absolute", p))) for p in config.get("config") or []]
    kind, args = None, {}
    for path in files:
        found = ((yaml.safe_load(path.read_text()) or {}).get("trainer") or {}).get("logger")
        if not isinstance(found, dict):
            continue  # false/null turns logging off for this command, not the experiment's name
        if found.get("class_path") and found["class_path"] != kind:
            kind, args = found["class_path"], {}
        args.update(found.get("init_args") or {})
    if kind is None or not str(kind).endswith("TensorBoardLogger"):
        return None
    return Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")


def newest_last(root: Path) -> Path | None:
    """The newest ``<version>/checkpoints/last.ckpt`` under ``root``."""
    candidates = sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def best_of(last: Path, checkpoint: dict[str, Any]) -> Path | None:
    """The best checkpoint the run of ``last`` recorded (its monitoring ModelCheckpoint's state)."""
    for key, state in checkpoint.get("callbacks", {}).items():
        if not str(key).startswith("ModelCheckpoint") or not state.get("monitor") or not state.get("best_model_path"):
            continue
        recorded = Path(state["best_model_path"])
        # The run folder may have moved since: look beside last.ckpt too.
        for path in (recorded, last.parent / recorded.name):
            if path.is_file():
                return path
    return None


def read_checkpoint(path: str | Path, key: str = "--ckpt_path") -> dict[str, Any]:
    """Load a segopt training checkpoint on the CPU; a missing, empty, corrupt or foreign file is named."""
    path = Path(path)
    fix = "pass a .ckpt written by segopt's fit (e.g. runs/<name>/version_N/checkpoints/last.ckpt), or --ckpt_path last"
    if not path.exists():
        raise CheckpointError(f"{key} {path}: no such file; {fix}")
    if not path.is_file():
        raise CheckpointError(f"{key} {path} is a folder, not a checkpoint file; {fix}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{key} {path} is empty (0 bytes), e.g. from a copy or save that was cut off; {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch raises many types for a bad file: EOFError, zip, pickle)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{key} {path} ({size} bytes) cannot be read as a checkpoint: truncated, corrupt or not a "
            f"PyTorch file ({type(error).__name__}: {detail[:200]}); {fix}"
        ) from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("net.") for k in state):
        found = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{key} {path} is not a segopt training checkpoint (no network weights under state_dict 'net.*'; "
            f"found {found}); {fix}"
        )
    return checkpoint


def check_classes(
    checkpoint: dict[str, Any], path: str | Path, num_classes: int, class_names: Sequence[str], in_channels: int
) -> None:
    """Refuse a checkpoint trained for other classes or channels, said in those terms."""
    hparams = checkpoint.get("hyper_parameters", {})
    trained_k = hparams.get("num_classes")
    trained_names = list(hparams.get("class_names") or [])
    names = list(class_names)
    warm = "or to fine-tune on these classes start a new fit with --model.init_weights set to that file"
    if trained_k is not None and trained_k != num_classes:
        raise CheckpointError(
            f"--ckpt_path {path} was trained for {trained_k} classes {trained_names}, but the data has "
            f"{num_classes} {names}; pass the data config it was trained with, {warm}"
        )
    if trained_names and trained_names != names:
        diff = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(trained_names, names)) if a != b]
        raise CheckpointError(
            f"--ckpt_path {path} was trained for the classes {trained_names}, but the data names "
            f"{names} (class id: checkpoint -> data: {', '.join(diff)}); pass the data config it was trained "
            f"with, or set data.source.init_args.class_names to the checkpoint's names if only the names differ, {warm}"
        )
    trained_c = hparams.get("in_channels")
    if trained_c is not None and trained_c != in_channels:
        raise CheckpointError(
            f"--ckpt_path {path} was trained on {trained_c}-channel images, but the data gives {in_channels} "
            f"(data.source.init_args.in_channels); set it to {trained_c}"
        )


def check_network(checkpoint: dict[str, Any], path: str | Path, net: torch.nn.Module, backbone: Any, subcommand: str) -> None:
    """Refuse a checkpoint whose network tensors do not fit ``net`` (another backbone, widths or depth).

    Both networks are named: the checkpoint's from the backbone settings it recorded, the
    config's from ``backbone`` (its ``model.backbone`` namespace), with a tensor that differs.
    """
    theirs = _net_tensors(checkpoint)
    own = net.state_dict()
    differ = [f"{k} is {tuple(theirs[k].shape)} there, {tuple(v.shape)} here" for k, v in own.items()
              if k in theirs and theirs[k].shape != v.shape]
    differ += [f"{k} is only in the config's network" for k in own if k not in theirs]
    differ += [f"{k} is only in the checkpoint" for k in theirs if k not in own]
    if not differ:
        return
    built = _as_dict(backbone)
    saved = checkpoint.get(BACKBONE_KEY)
    if isinstance(saved, dict) and saved.get("class_path") == built.get("class_path"):
        mine, other = built.get("init_args") or {}, saved.get("init_args") or {}
        keys = [k for k in dict.fromkeys([*other, *mine]) if other.get(k) != mine.get(k)]
        holds = f"{saved['class_path']} with " + ", ".join(f"{k}={other.get(k)}" for k in keys)
        builds = f"it with {', '.join(f'{k}={mine.get(k)}' for k in keys)}"
        flags = " ".join(f"--model.backbone.init_args.{k} {other.get(k)}" for k in keys)
    else:
        holds = _describe(saved) if isinstance(saved, dict) else "a network whose settings it does not record"
        builds = _describe(built)
        flags = "the model.backbone it was trained with (its run's config.yaml)"
    fix = f"pass {flags}"
    if subcommand == "fit":
        fix += f", or to train this network from the tensors that fit start a new fit with --model.init_weights {path}"
    raise CheckpointError(
        f"--ckpt_path {path} holds {holds}, but the config builds {builds} ({differ[0]}"
        f"{f' and {len(differ) - 1} more tensors differ' if len(differ) > 1 else ''}); {fix}"
    )


def _as_dict(backbone: Any) -> dict[str, Any]:
    return backbone.as_dict() if hasattr(backbone, "as_dict") else {"class_path": getattr(backbone, "__name__", str(backbone))}


def _describe(backbone: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in (backbone.get("init_args") or {}).items())
    return f"{backbone.get('class_path')}({args})"


def _net_tensors(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's tensors in a segopt checkpoint, named as in the network (without ``net.``)."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def resolve_init_weights(config: Any, defaults: Path | None = None) -> Path:
    """``model.init_weights`` as a readable checkpoint file (``last``/``best``: of this experiment)."""
    given = config.model.init_weights
    path = Path(given)
    if given in (LAST, BEST):
        root = experiment_root(config, defaults)
        last = newest_last(root) if root is not None else None
        if last is None:
            raise CheckpointError(
                f"model.init_weights {given} found no checkpoints/last.ckpt under {root}/; pass a .ckpt file"
            )
        path = last if given == LAST else best_of(last, read_checkpoint(last, "model.init_weights"))
        if path is None:
            raise CheckpointError(f"model.init_weights best: {last.parent.parent} recorded no best checkpoint; use last")
    read_checkpoint(path, "model.init_weights")
    return path


def resolve(config: Any, subcommand: str, defaults: Path | None = None) -> Path | None:
    """Turn ``config.ckpt_path`` into a file (or None for ``untrained``/a fresh fit), or stop.

    Resuming a fit from ``last`` points the logger at the version that wrote it, so the
    curves continue in one run.
    """
    given = config.get("ckpt_path")
    if given is None:
        if subcommand == "fit":
            return None
        raise CheckpointError(
            f"{subcommand} needs trained weights but no --ckpt_path was given; pass --ckpt_path last (the "
            f"newest run of this experiment), best, or a .ckpt file. To {subcommand} the untrained model on "
            "purpose, pass --ckpt_path untrained"
        )
    if given == UNTRAINED:
        config.ckpt_path = None
        return None
    if given not in (LAST, BEST):
        return Path(given)
    root = experiment_root(config, defaults)
    if root is None:
        raise CheckpointError(
            f"--ckpt_path {given} looks for this experiment's runs, but trainer.logger is not a "
            "TensorBoardLogger; pass the path of a .ckpt file"
        )
    last = newest_last(root)
    if last is None:
        raise CheckpointError(
            f"--ckpt_path {given} found no checkpoints/last.ckpt under {root}/. "
            "Train without --ckpt_path first, or pass the path of a .ckpt file."
        )
    path = last
    if given == BEST:
        if subcommand == "fit":
            raise CheckpointError(
                "--ckpt_path best cannot resume a fit (a resumed run continues from its newest state): use "
                "--ckpt_path last, or start a new fit from the best weights with --model.init_weights best"
            )
        path = best_of(last, read_checkpoint(last))
        if path is None:
            raise CheckpointError(
                f"--ckpt_path best: the newest run, {last.parent.parent}, recorded no best checkpoint that still "
                "exists (a ModelCheckpoint with a monitor); pass --ckpt_path last or a .ckpt file"
            )
    if subcommand == "fit":
        config.trainer.logger.init_args.version = last.parent.parent.name
    config.ckpt_path = str(path)
    return path


def warm_start(net: torch.nn.Module, path: str | Path, key: str = "model.init_weights") -> tuple[list[str], list[str]]:
    """Load the checkpoint's network tensors that match ``net`` by name and shape; the rest keep their init.

    Returns the names loaded and a description of each tensor skipped (absent from the
    checkpoint, or of another shape, e.g. a head trained for another number of classes).
    """
    theirs = _net_tensors(read_checkpoint(path, key))
    own = net.state_dict()
    loaded, skipped = [], []
    for name, tensor in own.items():
        other = theirs.get(name)
        if other is None:
            skipped.append(f"{name} (not in the checkpoint)")
        elif other.shape != tensor.shape:
            skipped.append(f"{name} (checkpoint {tuple(other.shape)}, model {tuple(tensor.shape)})")
        else:
            loaded.append(name)
    net.load_state_dict({name: theirs[name] for name in loaded}, strict=False)
    return loaded, skipped
