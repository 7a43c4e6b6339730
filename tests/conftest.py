"""Shared test fixtures: paths to the project, its configs and the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

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
