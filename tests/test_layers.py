"""Dependencies point one way: plain PyTorch → Lightning layer → entry points, read from the folders.

``segopt/lightning/`` is the Lightning layer; ``segopt/commands/`` and the one-line command modules
at the top of ``segopt/`` (``python -m segopt.cli``, ``segopt.plan``, ...) are the entry points;
everything else (``models/``, ``losses/``, ``data/``, ``core/``, ``public_data/``) is plain
PyTorch, usable without Lightning.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from segopt.commands.moved_paths import MOVED_COMMANDS
from tests.conftest import ROOT

PACKAGE = ROOT / "segopt"
LAYER_NAMES = ("plain PyTorch", "Lightning", "entry point")


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(name: str) -> int:
    """0 plain PyTorch, 1 Lightning, 2 entry point: from where the module lies (or an old command's name)."""
    parts = name.split(".")
    if name in MOVED_COMMANDS:
        return 2
    if parts[1:2] == ["lightning"]:
        return 1
    if parts[1:2] == ["commands"] or (len(parts) == 2 and MODULES[name].name != "__init__.py"):
        return 2
    return 0


CORE = sorted(name for name in MODULES if _layer(name) == 0)


def _imports(path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_folders_are_the_layers() -> None:
    layers = {name: LAYER_NAMES[_layer(name)] for name in MODULES}
    assert {n: layers[n] for n in ("segopt", "segopt.models.unet", "segopt.data.masks", "segopt.core.schedules",
                                   "segopt.public_data.download", "segopt.lightning.module", "segopt.lightning",
                                   "segopt.commands.planning.rules", "segopt.cli", "segopt.fetch")} == {
        "segopt": "plain PyTorch", "segopt.models.unet": "plain PyTorch", "segopt.data.masks": "plain PyTorch",
        "segopt.core.schedules": "plain PyTorch", "segopt.public_data.download": "plain PyTorch",
        "segopt.lightning.module": "Lightning", "segopt.lightning": "Lightning",
        "segopt.commands.planning.rules": "entry point", "segopt.cli": "entry point", "segopt.fetch": "entry point",
    }  # fmt: skip
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "check.py", "cli.py", "export.py", "fetch.py", "plan.py"]  # only the command modules


def test_old_command_names_are_entry_points_nothing_imports() -> None:
    assert set(MOVED_COMMANDS) | set(MOVED_COMMANDS.values()) <= set(MODULES)  # the old name and the new one both run
    importers = {name for name, path in MODULES.items() if _imports(path) & set(MOVED_COMMANDS)}
    assert importers == set()


def test_the_module_does_not_know_the_datamodule() -> None:
    """SegModule works with any datamodule: what it needs from one is a protocol of the data layer."""
    assert not [m for m in _imports(MODULES["segopt.lightning.module"]) if m.startswith("segopt.lightning.datamodule")]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_higher_layer(name: str) -> None:
    upward = []
    for imported in _imports(MODULES[name]):
        target = imported if imported in MODULES else imported.rsplit(".", 1)[0]
        if target in MODULES and _layer(target) > _layer(name):
            upward.append(target)
        if _layer(name) == 0 and imported.split(".")[0] in ("lightning", "pytorch_lightning"):
            upward.append(imported)
    assert upward == [], f"{name} (layer {_layer(name)}) imports {sorted(set(upward))}"


@pytest.mark.slow
def test_core_imports_without_lightning_installed() -> None:
    block = "import sys; sys.modules.update(dict.fromkeys(['lightning', 'pytorch_lightning']))\n"
    code = block + "".join(f"import {name}\n" for name in CORE)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
