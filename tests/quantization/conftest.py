"""The tiny DiT every quantizer test runs (width 32: quantization groups of 32 fit), and its unquantized output."""

from __future__ import annotations

import pytest
from ditserve_testing import engine_for, save_tiny_dit

from .battery import images


@pytest.fixture(scope="session")
def quant_dit_dir(tmp_path_factory):
    return save_tiny_dit(tmp_path_factory.mktemp("quant-dit"), head_dim=16, sample_size=16)


@pytest.fixture(scope="session")
def baseline(quant_dit_dir):
    return images(engine_for(quant_dit_dir))
