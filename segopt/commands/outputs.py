"""Output files of the commands and experiments: nothing that exists is replaced without ``--overwrite``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--overwrite`` flag of every command or experiment that writes files (see :func:`refuse_to_overwrite`)."""
    parser.add_argument("--overwrite", action="store_true", help="replace output files that exist already (without it nothing runs)")


def refuse_to_overwrite(paths: Iterable[Path], overwrite: bool) -> None:
    """Stop, before any work, when an output file exists and ``--overwrite`` was not given.

    Outputs never replace a user's files silently: a results file is often the only record
    of an hour of measurement, and an output path can name an input by mistake.
    """
    if overwrite:
        return
    existing = [str(p) for p in dict.fromkeys(paths) if p.exists()]
    if existing:
        one = len(existing) == 1
        raise SystemExit(
            f"error: {', '.join(existing)} already exist{'s' if one else ''}; nothing was written. "
            f"Pass --overwrite to replace {'it' if one else 'them'}, or give another --out"
        )
