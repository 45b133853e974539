"""Shared fixtures: the embedded digits model's engine, loaded once per session."""

from __future__ import annotations

import os

import pytest
from ditserve_testing import save_tiny_dit

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
def tiny_latent_dit_dir(tmp_path_factory):
    return save_tiny_dit(tmp_path_factory.mktemp("tiny-latent-dit"), with_vae=True)
