"""Shared fixtures."""

import os

# Ray on Linux rewrites 127.0.0.1 to the machine's address unless its single-machine mode
# is on. The Ray tests run a cluster on loopback only, and the switch must be set before
# any test module imports Ray, so it is set here, before collection.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of small batched tensors: with two OpenMP threads
    on a busy 2-core machine such ops slow down ~30x (see bench/README.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
