from __future__ import annotations

import os
from collections.abc import Iterator

# Generation compiles its blocks by default where a C++ compiler exists (sampling.compile: auto); a compile
# costs seconds per shape, so the suite runs eagerly (subprocesses inherit this) and the tests of the compiled
# path switch it back on (the ``compiles`` fixture).
os.environ["TORCH_COMPILE_DISABLE"] = "1"
# Under pytest-xdist (``make test`` runs one worker per core) each worker and the subprocesses it starts get
# one thread, so that workers side by side do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
import torch._dynamo

# Two cores: keep torch from oversubscribing when pytest and subprocesses run side by side.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


torch._dynamo.config.disable = True  # (in case torch was imported before the variable was set)


@pytest.fixture
def compiles() -> Iterator[None]:
    """torch.compile switched on for this test (the suite runs with it off)."""
    with torch._dynamo.config.patch(disable=False):
        yield


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
