from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest and subprocesses run side by side.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
