"""Dependencies point one way: plain-torch core → Lightning layer → entry points.

The core (models, losses, inference, schedules, class weights, palette, data sources, mask
decoding and file reading) is usable without Lightning; the Lightning layer (data module,
module, callbacks) never imports an entry point (CLI, data check, export, scripts).
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "segopt"

LIGHTNING_LAYER = {
    "segopt.module",
    "segopt.callbacks",
    "segopt.failsafe",
    "segopt.predict",
    "segopt.time_budget",
    "segopt.data.datamodule",
}
ENTRY_POINTS = {
    "segopt.cli",
    "segopt.data.check",
    "segopt.data.fetch",
    "segopt.export",
    "segopt.from_config",
    # the plan command and its parts: it reads data through the data check and builds fit's config
    "segopt.plan",
    "segopt.planning",
    "segopt.planning.fingerprint",
    "segopt.planning.probe",
    "segopt.planning.rules",
    "segopt.planning.recipe",
    "segopt.planning.folder_config",
}
# segopt.data re-exports SegDataModule by name, loaded on first access (PEP 562), so
# `segopt.data.SegDataModule` stays a config class path without the core importing Lightning.
LAZY_REEXPORTS = {("segopt.data", "segopt.data.datamodule")}


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
CORE = sorted(set(MODULES) - LIGHTNING_LAYER - ENTRY_POINTS)


def _layer(name: str) -> int:
    if name in ENTRY_POINTS:
        return 2
    if name in LIGHTNING_LAYER:
        return 1
    return 0


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


def test_every_module_is_in_exactly_one_layer() -> None:
    assert LIGHTNING_LAYER <= set(MODULES) and ENTRY_POINTS <= set(MODULES)
    assert "segopt.models.unet" in CORE and "segopt.data.masks" in CORE


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_higher_layer(name: str) -> None:
    upward = []
    for imported in _imports(MODULES[name]):
        target = imported if imported in MODULES else imported.rsplit(".", 1)[0]
        if target in MODULES and _layer(target) > _layer(name) and (name, target) not in LAZY_REEXPORTS:
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
