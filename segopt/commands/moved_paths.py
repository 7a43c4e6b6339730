"""Module paths of earlier segopt versions that configs, saved run configs and checkpoints may name.

When the package took its layered layout (plain PyTorch, ``segopt.lightning``, ``segopt.commands``),
the modules below moved. A ``class_path`` written with an old module (``segopt.time_budget.TimeBudget``,
``segopt.schedules.OneCycle``) still loads: :func:`keep_old_paths` registers each old name as the
moved module itself, so a class is the same object under both names. :func:`old_paths_in` finds
them in a config's text, for the note that names the new path.
"""

from __future__ import annotations

import importlib
import re
import sys

#: old module -> the module it is now (a config names the Lightning classes by ``segopt.lightning``).
MOVED_MODULES = {
    "segopt.callbacks": "segopt.lightning.callbacks",
    "segopt.failsafe": "segopt.lightning.failsafe",
    "segopt.module": "segopt.lightning.module",
    "segopt.predict": "segopt.lightning.prediction_writer",
    "segopt.time_budget": "segopt.lightning.time_budget",
    "segopt.data.datamodule": "segopt.lightning.datamodule",
    "segopt.schedules": "segopt.core.schedules",
    "segopt.class_weights": "segopt.data.class_weights",
}

#: old ``python -m`` command -> the command it is now. The old module stays as an entry point
#: that prints the new name and runs the command (it lies in a lower layer's folder, and is
#: imported by nothing).
MOVED_COMMANDS = {"segopt.data.fetch": "segopt.fetch"}

_OLD_CLASS_PATH = re.compile(r"\b(" + "|".join(map(re.escape, MOVED_MODULES)) + r")\.([A-Z]\w*)")


def keep_old_paths() -> None:
    """Make every old module name import the module it moved to."""
    for old, new in MOVED_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)


def new_class_path(old_module: str, name: str) -> str:
    """The path a config should now give a class of ``old_module``."""
    new = MOVED_MODULES[old_module]
    return f"segopt.lightning.{name}" if new.startswith("segopt.lightning.") else f"{new}.{name}"


def old_paths_in(text: str) -> dict[str, str]:
    """Each old class path in ``text``, with the path to write instead."""
    return {m.group(0): new_class_path(m.group(1), m.group(2)) for m in _OLD_CLASS_PATH.finditer(text)}
