"""Shared test fixtures: paths to the project, its configs and the real data sets; tiny runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

# Test models are tiny: one thread avoids thread hand-off costs that dominate their steps.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"

# The shipped configs read data/<name>; in tests that folder is ../shared/data (.ci/run says the
# same). Set unconditionally so a developer's own SEGOPT_DATA_ROOT cannot change what tests see.
os.environ["SEGOPT_DATA_ROOT"] = str(SHARED_DATA)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project (CI provides it); skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def tiny_cli_args(
    *, epochs: int = 2, size: int = 32, num_train: int = 32, num_val: int = 16, batch_size: int = 8, base_channels: int = 8
) -> list[str]:
    """Flags that shrink ``configs/amp.yaml`` to a run of seconds on a CPU: synthetic shapes of
    ``size`` px, a two-level UNet, no loader workers, a log line every step."""
    return [
        f"--trainer.max_epochs={epochs}",
        "--trainer.log_every_n_steps=1",
        f"--data.source.init_args.size={size}",
        f"--data.source.init_args.num_train={num_train}",
        f"--data.source.init_args.num_val={num_val}",
        f"--data.batch_size={batch_size}",
        "--data.num_workers=0",
        f"--model.backbone.init_args.base_channels={base_channels}",
        "--model.backbone.init_args.depth=2",
    ]


def quiet_trainer(**overrides: Any) -> pl.Trainer:
    """A CPU Trainer that writes nothing (no logger, checkpoints, progress bar or summary) unless told."""
    settings: dict[str, Any] = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return pl.Trainer(**{**settings, **overrides})
