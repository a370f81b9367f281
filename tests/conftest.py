"""Shared fixtures."""

import pytest
import torch
from ddp_support import ReleaseProcessGroup


@pytest.fixture
def release_process_group():
    return ReleaseProcessGroup()


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """One intra-op thread for a test module: on a shared 2-core machine more threads stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
