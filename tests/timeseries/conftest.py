"""Shared fixtures for the time-series tests: the shipped model and its data, one torch thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small ops on a busy 2-core box run much faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shipped():
    """The shipped ``seasonal-tsdiff`` model (trained on gluonts' artificial seasonal series)."""
    from fewstep.timeseries import load_tsdiff

    return load_tsdiff("seasonal-tsdiff")


@pytest.fixture(scope="session")
def seasonal():
    """The data the shipped model was trained on; its test windows were held out."""
    from fewstep.timeseries import artificial

    return artificial("seasonal", prediction_length=24, windows=2)
