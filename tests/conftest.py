"""Test-wide settings: seeded randomness and a thread count that suits small tensors."""

from __future__ import annotations

import pytest
import torch

# The tests use small tensors, where more threads only add synchronisation; CI has 2 cores.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)
