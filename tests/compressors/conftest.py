"""Shared fixtures for the compressor tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The 2-core machines running the suite are shared: one torch thread keeps each test's
    run time steady and its float reductions in one order."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
