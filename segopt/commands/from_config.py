"""Parse a training config, or build its objects and load a checkpoint into them, for scripts.

Scripts that work on a trained model (export, benchmarks) take the same ``--config`` files
and flags as ``python -m segopt.cli`` and a ``--ckpt_path``, so the network is rebuilt
exactly as it was trained.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from jsonargparse import Namespace

from segopt.commands.cli import SegCLI
from segopt.lightning.datamodule import SegDataModule
from segopt.lightning.module import SegModule


class ConfigOnlyCLI(SegCLI):
    """SegCLI that parses its config and builds nothing (no model, data module or Trainer)."""

    def instantiate_classes(self) -> None:
        pass


def build_from_config(cli_args: list[str]) -> SegCLI:
    """The CLI objects (``.model``, ``.datamodule``, ``.trainer``, ``.config``) for ``cli_args``."""
    return _script_cli(SegCLI, cli_args)


def parse_config(cli_args: list[str]) -> Namespace:
    """The parsed config of ``cli_args`` (as :func:`build_from_config` takes them), nothing built."""
    return _script_cli(ConfigOnlyCLI, cli_args).config


def _script_cli(cli_class: type[SegCLI], cli_args: list[str]) -> SegCLI:
    # run=False: the CLI parses (and instantiates), then returns without running a subcommand.
    with warnings.catch_warnings():
        # The calling script has its own command line; cli_args is the part meant for the CLI.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return cli_class(SegModule, SegDataModule, run=False, args=cli_args, save_config_callback=None)


def load_weights(model: SegModule, ckpt_path: str | Path) -> SegModule:
    """Load the weights of a Lightning checkpoint into ``model``; errors say what to change."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path} is not a file; give the .ckpt written by training")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{ckpt_path} does not fit the model built from the config ({str(err).splitlines()[0]} ...); "
            "pass the same --config files (and overrides) the checkpoint was trained with"
        ) from None
    return model
