"""Shared test fixtures: paths to the project, its configs and the real data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Test models are tiny: one thread avoids thread hand-off costs that dominate their steps.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project (CI provides it); skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
