"""Shared fixtures: the embedded digits model's engine, loaded once per session."""

from __future__ import annotations

import os

import pytest
from ditserve_testing import save_tiny_dit, save_tiny_flow_dit

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a model hub


@pytest.fixture(scope="session")
def digits_engine():
    """The shipped digits DiT with its shipped config (DDIM, guidance 4)."""
    from ditserve.engine import Engine

    return Engine.from_config("builtin:digits-dit")


@pytest.fixture(scope="session")
def tiny_dit_dir(tmp_path_factory):
    return save_tiny_dit(tmp_path_factory.mktemp("tiny-dit"))


@pytest.fixture(scope="session")
def tiny_flow_dit_dir(tmp_path_factory):
    return save_tiny_flow_dit(tmp_path_factory.mktemp("tiny-flow-dit"))


@pytest.fixture(scope="module")
def one_thread():
    """torch on one core for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): the machine's
    few cores are shared with other test processes and with rank processes, and tiny models run no faster on more."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_latent_dit_dir(tmp_path_factory):
    return save_tiny_dit(tmp_path_factory.mktemp("tiny-latent-dit"), with_vae=True)
