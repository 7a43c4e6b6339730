"""Where data sets live: ``data/<name>`` beside the working directory, or under ``$SEGOPT_DATA_ROOT``.

Shipped configs name their data as ``data/camvid``, ``data/membrane``, ... — the folders
``python -m segopt.fetch`` creates. One environment variable moves all of them at once
(a big disk, a cluster's shared file system) without editing a config: with
``SEGOPT_DATA_ROOT=/datasets``, ``data/camvid`` is read from ``/datasets/camvid``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that stands for the ``data`` folder of relative data paths.
DATA_ROOT_ENV = "SEGOPT_DATA_ROOT"

#: The first component of the paths that variable redirects.
DATA_DIR = "data"


def data_root() -> Path:
    """The folder holding the data sets: ``$SEGOPT_DATA_ROOT`` when set, else ``data``."""
    value = os.environ.get(DATA_ROOT_ENV, "")
    return Path(value) if value else Path(DATA_DIR)


def resolve_data_path(path: str | Path) -> Path:
    """``path`` with a leading ``data/`` replaced by :func:`data_root`; any other path unchanged."""
    path = Path(path)
    if path.is_absolute() or path.parts[:1] != (DATA_DIR,):
        return path
    return data_root().joinpath(*path.parts[1:])


def describe(given: str | Path, resolved: Path) -> str:
    """How ``given`` became ``resolved``, for error messages (empty when nothing was redirected)."""
    if Path(given) == resolved:
        return ""
    return f" ({DATA_DIR}/ read as {DATA_ROOT_ENV}={os.environ.get(DATA_ROOT_ENV)})"
