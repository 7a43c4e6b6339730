"""``python -m segopt.plan`` (or ``segopt plan``): a data set, this machine and a time budget in,
the recipe that should reach the most mIoU out.

    python -m segopt.plan --config configs/data/membrane.yaml --minutes 10 --out configs/recipes/membrane.yaml
    python -m segopt.cli fit --config configs/recipes/membrane.yaml
    python -m segopt.plan --config path/to/folder --minutes 30 --out configs/recipes/mine.yaml

It measures the data (:mod:`segopt.commands.planning.fingerprint`, through the data check: bad data
stops it with the check's message), times a few training steps of each candidate network on
this machine (:mod:`segopt.commands.planning.probe`), applies the rules (:mod:`segopt.commands.planning.rules`)
and writes the recipe, each planned key commented with the figure that decided it, with
``<name>.plan.json`` and ``<name>.plan.md`` beside it. It never replaces a file unless given
``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from segopt.commands.planning.fingerprint import Fingerprint, PlanError, fingerprint
from segopt.commands.planning.folder_config import folder_data_config
from segopt.commands.planning.probe import BACKBONES, Probe, probe_machine
from segopt.commands.planning.recipe import plan_paths, write_plan
from segopt.commands.planning.rules import geometries, plan, run_batch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segopt plan", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, type=Path, action="append",
                   help="the data config fit takes (several stack as in fit), or a data set's folder (images/ + masks/, ...)")
    p.add_argument("--minutes", required=True, type=float, help="the wall-clock budget of the fit")
    p.add_argument("--out", required=True, type=Path, help="the recipe to write, e.g. configs/recipes/NAME.yaml")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--probe-from", type=Path, metavar="PLAN_JSON",
                   help="plan on the machine probe a .plan.json recorded, instead of timing this machine again "
                        "(to re-plan after a change of data, budget or rules with every timing as it was)")  # fmt: skip
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not args.minutes > 0:
        raise PlanError(f"--minutes is {args.minutes:g}; give the fit's budget in minutes, e.g. --minutes 30")
    folder = len(args.config) == 1 and args.config[0].is_dir()
    for config in [] if folder else args.config:
        if not config.is_file():
            raise PlanError(
                f"--config {config} is not a file; give the data config fit takes (e.g. configs/data/membrane.yaml) "
                "or a data set's folder"
            )
    if args.out.suffix not in (".yaml", ".yml"):
        raise PlanError(f"--out {args.out} is not a .yaml file; name the recipe to write, e.g. configs/recipes/mydata.yaml")
    existing = [str(p) for p in plan_paths(args.out) if p.exists()]
    if existing and not args.overwrite:
        raise PlanError(f"{', '.join(existing)} exist(s); choose another --out, or pass --overwrite to replace them")
    if any(args.out.resolve() == config.resolve() for config in args.config):
        raise PlanError(f"--out {args.out} is a config being read; choose another --out")


def _changed(given: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``given`` whose values differ from ``default`` (nested)."""
    out = {}
    for key, value in given.items():
        base = default.get(key)
        if isinstance(value, dict) and isinstance(base, dict):
            if nested := _changed(value, base):
                out[key] = nested
        elif key not in default or value != base:
            out[key] = value
    return out


def _data_section(configs: list[Path]) -> tuple[dict[str, Any], Any]:
    """The ``data:`` section the stacked configs give fit (only what differs from the defaults),
    and the data module fit builds from it."""
    from segopt.commands.from_config import build_from_config
    from segopt.data.transforms import Augment

    args = [a for config in configs for a in ("--config", str(config))]
    try:
        cli = build_from_config(args)
        defaults = build_from_config([]).config.data.as_dict()
    except SystemExit as err:  # jsonargparse has printed its own error line
        raise PlanError(f"{' '.join(map(str, configs))} refused by fit's parser (see the line above); fix that key") from err
    except ValueError as err:  # the data module's and the source's own checks, as fit reports them
        raise PlanError(f"{' '.join(map(str, configs))}: {err}") from None
    data = cli.config.data.as_dict()
    if data.get("source") is None or data["source"].get("class_path") == "segopt.data.SyntheticShapes" and not any(
        "source" in ((yaml.safe_load(c.read_text()) or {}).get("data") or {}) for c in configs
    ):
        raise PlanError(f"{' '.join(map(str, configs))} has no data.source; give a data config such as configs/data/membrane.yaml")
    defaults["augment"] = asdict(Augment())
    section = _changed(data, defaults)
    section["source"] = _without_none(data["source"])
    return section, cli.datamodule


def _without_none(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in tree.items() if v is not None}


def probe_for(fp: Fingerprint) -> Probe:
    """The probe of every candidate network at the smallest and largest candidate size, each timed
    at the batch a run trains it at (on a CUDA GPU, from the largest batch that fits): the time per
    image changes with the batch, on a CPU by a factor that differs per network and size
    (``results/plan_speed.md``), so a probe at another batch misranks the networks and mispredicts
    the epochs."""
    sizes = sorted({g[1] for g in geometries(fp)} | {tuple(fp.median_size)}, key=lambda s: s[0] * s[1])
    sizes = [sizes[0], sizes[-1]] if len(sizes) > 1 else sizes
    return probe_machine(sizes, fp.channels, fp.num_classes, BACKBONES, partial(run_batch, fp))


def recorded_probe(path: Path) -> Probe:
    """The probe a ``.plan.json`` recorded; it must have timed every network the rules weigh."""
    try:
        probe = Probe.from_dict(json.loads(path.read_text())["probe"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PlanError(f"--probe-from {path} holds no recorded probe ({type(err).__name__}: {err}); give a .plan.json that segopt plan wrote") from None
    missing = sorted({b.name for b in BACKBONES} - {t.backbone for t in probe.timings})
    if missing:
        raise PlanError(f"--probe-from {path} timed no step of {', '.join(missing)}; plan without --probe-from to time this machine again")
    return probe


def run(args: argparse.Namespace, command: str) -> list[Path]:
    """Fingerprint, probe, plan and write; return the files written."""
    _check_args(args)
    with tempfile.TemporaryDirectory() as scratch:
        configs = args.config
        if len(configs) == 1 and configs[0].is_dir():  # a bare folder: a data config made for it
            configs = [Path(scratch) / "data.yaml"]
            configs[0].write_text(yaml.safe_dump({"data": folder_data_config(args.config[0])}))
        data, datamodule = _data_section(configs)
    fp: Fingerprint = fingerprint(datamodule.source, datamodule.ignore_index)
    print(f"segopt plan: fingerprint of {sum(fp.images.values())} images in {fp.seconds:.1f} s", flush=True)
    if args.probe_from:
        probe = recorded_probe(args.probe_from)
        print(f"segopt plan: read the probe of {len(probe.timings)} network/size pairs on {probe.machine.name} from {args.probe_from}", flush=True)
    else:
        probe = probe_for(fp)
        print(f"segopt plan: probed {len(probe.timings)} network/size pairs on {probe.machine.name} in {probe.seconds:.1f} s", flush=True)
    result = plan(fp, probe, args.minutes)
    written = write_plan(args.out, fp, probe, result, data, command)
    c = result.chosen
    print(
        f"segopt plan: {c.backbone}, {c.mode} {c.size[0]}x{c.size[1]}, batch {c.batch}: ~{c.epochs} epochs ({c.steps} steps) "
        f"in {args.minutes:g} min on this machine; wrote {', '.join(map(str, written))}\n"
        f"train it: python -m segopt.cli fit --config {args.out}"
    )
    return written


def main(argv: list[str] | None = None) -> int:
    """Run the planner; a problem ends as one ``error:`` line, exit status 1, nothing written."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    # Building fit's objects to read the data config logs Lightning's start-up lines: not the planner's news.
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    start = time.perf_counter()
    try:
        run(args, "python -m segopt.plan " + shlex.join(argv))
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        lightning_log.setLevel(level)
    print(f"segopt plan: done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
