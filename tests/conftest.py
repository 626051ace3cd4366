"""Shared test settings."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models gain nothing from a second thread, and a shared 2-core machine loses a lot to it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
