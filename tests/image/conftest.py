"""Shared fixtures for the image tests."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run torch on one thread: small ops on a busy 2-core box run 3-30x slower on torch's pool.

    Opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
