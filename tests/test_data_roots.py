"""Data roots: shipped paths name data/<name>, SEGOPT_DATA_ROOT moves them, nothing names the dev data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segopt.data import DataError, PairedFolder
from segopt.data.roots import DATA_ROOT_ENV, data_root, resolve_data_path
from tests.conftest import CONFIGS, ROOT


def test_data_paths_follow_the_environment_variable(monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, "/datasets")
    assert data_root() == Path("/datasets")
    assert resolve_data_path("data/camvid") == Path("/datasets/camvid")
    assert resolve_data_path("data/membrane/test") == Path("/datasets/membrane/test")
    assert resolve_data_path("data") == Path("/datasets")
    # Only a leading data/ is redirected.
    assert resolve_data_path("mydata/camvid") == Path("mydata/camvid")
    assert resolve_data_path("runs/data/x") == Path("runs/data/x")
    assert resolve_data_path("/abs/data/camvid") == Path("/abs/data/camvid")


def test_without_the_variable_data_paths_are_used_as_written(monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert data_root() == Path("data")
    assert resolve_data_path("data/camvid") == Path("data/camvid")
    monkeypatch.setenv(DATA_ROOT_ENV, "")
    assert resolve_data_path("data/camvid") == Path("data/camvid")


def test_missing_redirected_root_names_the_variable(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    source = PairedFolder("data/camvid", ["a", "b"])
    assert source.root == tmp_path / "camvid"
    with pytest.raises(DataError) as err:
        source.validate()
    assert f"data root {tmp_path / 'camvid'} does not exist (resolved: {tmp_path / 'camvid'}) " in str(err.value)
    assert f"(data/ read as {DATA_ROOT_ENV}={tmp_path}); set data.source.init_args.root" in str(err.value)


@pytest.mark.parametrize("config", sorted(p.name for p in (CONFIGS / "data").glob("*.yaml")))
def test_shipped_data_configs_name_data_slash_their_name(config: str):
    init_args = yaml.safe_load((CONFIGS / "data" / config).read_text())["data"]["source"]["init_args"]
    if "val_groups" in init_args and "root" not in init_args:
        return  # a by-group overlay (camvid_by_sequence): the config beneath it names the root
    assert init_args["root"] == f"data/{Path(config).stem}"


def test_nothing_shipped_names_the_development_data_folder():
    shipped = [ROOT / "README.md", *ROOT.glob("configs/**/*.yaml"), *ROOT.glob("experiments/*.py"), *ROOT.glob("experiments/*.sh"),
               *ROOT.glob("segopt/**/*.py"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("results/*.md")]
    offenders = [str(p.relative_to(ROOT)) for p in shipped if "../shared" in p.read_text() or "shared/data" in p.read_text()]
    assert offenders == []


@pytest.mark.slow  # trains
@pytest.mark.parametrize("name", ["camvid", "membrane"])
def test_fit_runs_on_the_real_data_through_the_shipped_config(name: str, shared_data: Path, tmp_path: Path, monkeypatch):
    from segopt.commands.cli import main

    monkeypatch.chdir(tmp_path)  # data/<name> is found only through SEGOPT_DATA_ROOT (set by conftest)
    cli = main([
        "fit", f"--config={CONFIGS / 'amp.yaml'}", f"--config={CONFIGS / 'data' / f'{name}.yaml'}",
        "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.precision=32-true", "--trainer.accelerator=cpu", "--data.batch_size=2", "--data.num_workers=0",
        "--data.train_size=[32,32]", "--data.eval_size=[32,32]",
        "--model.backbone.init_args.base_channels=4", "--model.backbone.init_args.depth=2",
    ])
    assert cli.trainer.global_step == 1
    assert cli.datamodule.source.root == shared_data / name
