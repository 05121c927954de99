"""Shared fixtures for the discrete tests: one torch thread, a small corpus and tokenizer."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_corpus():
    """Python's docs and stdlib sources, each document cut to 4000 characters (fast to tokenize)."""
    from fewstep.discrete import python_corpus

    return python_corpus(max_chars=4000)


@pytest.fixture(scope="session")
def small_tokenizer(small_corpus):
    from fewstep.discrete import train_tokenizer

    return train_tokenizer([d.text for d in small_corpus.train], vocab_size=400)
