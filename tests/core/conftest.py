import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls run far faster on one thread than on two contended ones (opt in per module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
