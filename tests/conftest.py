"""Shared fixtures."""

import pytest
from ddp_support import ReleaseProcessGroup


@pytest.fixture
def release_process_group():
    return ReleaseProcessGroup()
