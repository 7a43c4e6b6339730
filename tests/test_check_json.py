"""``python -m segopt.check --json FILE`` never replaces a file it should not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from segopt.commands.check import main as check_main
from tests.test_data_loading import _config, _write_pairs


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A tiny PairedFolder data set and its config; runs from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["check"])
    root = tmp_path / "data"
    _write_pairs(root, "train", 2)
    _write_pairs(root, "val", 1)
    return root, _config(tmp_path, root)


def _refused(config: Path, *flags: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        check_main(["--config", str(config), *flags])
    return str(exit_info.value.code)


def test_json_is_written_and_an_existing_file_needs_overwrite(data: tuple[Path, Path], capsys) -> None:
    _, config = data
    assert check_main(["--config", str(config), "--json", "report.json"]) == 0
    assert json.loads(Path("report.json").read_text())["splits"]["train"]["pairs"] == 2
    Path("report.json").write_text("earlier")
    capsys.readouterr()
    assert _refused(config, "--json", "report.json") == (
        "error: --json report.json already exists; nothing was written. Pass --overwrite to replace it, "
        "or give another --json path"
    )
    assert Path("report.json").read_text() == "earlier"
    assert capsys.readouterr().out == ""  # refused before the check ran
    assert check_main(["--config", str(config), "--json", "report.json", "--overwrite"]) == 0
    assert json.loads(Path("report.json").read_text())["splits"]["val"]["pairs"] == 1


def test_json_over_a_config_being_read_is_refused_even_with_overwrite(data: tuple[Path, Path]) -> None:
    _, config = data
    before = config.read_text()
    assert _refused(config, "--json", str(config), "--overwrite") == (
        f"error: --json {config} is the config {config} that this check reads; nothing was written. "
        f"Give the report a path of its own, e.g. --json {config.with_name('data_check.json')}"
    )
    assert config.read_text() == before


@pytest.mark.parametrize("inside", ["trainannot/0.png", "new.json", "val/sub/new.json"])
def test_json_inside_the_data_set_is_refused_even_with_overwrite(data: tuple[Path, Path], inside: str) -> None:
    root, config = data
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert _refused(config, "--json", str(root / inside), "--overwrite") == (
        f"error: --json {root / inside} is inside the data set's folder {root}; nothing was written. "
        "Write the report outside the data set, e.g. --json data_check.json"
    )
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_json_in_a_missing_folder_is_refused_before_the_check(data: tuple[Path, Path], capsys) -> None:
    _, config = data
    assert _refused(config, "--json", "reports/check.json") == (
        "error: --json reports/check.json: its folder reports does not exist; nothing was written. Create it, "
        "or give a path in an existing folder"
    )
    assert capsys.readouterr().out == ""
