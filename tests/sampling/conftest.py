"""Fixtures of the sampler tests, and the parametrization of the wrapped samplers' comparison with diffusers."""

from __future__ import annotations

import pytest

from .own import plus_plus_statistics


@pytest.fixture(scope="session")
def digits_statistics(digits_engine, tmp_path_factory) -> str:
    """DPM-Solver-v3 statistics that make it DPM-Solver++, for the digits model (1 × 16 × 16 pixels)."""
    path = tmp_path_factory.mktemp("v3-digits") / "ems.safetensors"
    return plus_plus_statistics(digits_engine.model.scheduler_config, (1, 16, 16), path)


@pytest.fixture(scope="session")
def tiny_statistics(tiny_dit_dir, tmp_path_factory) -> str:
    """The same for the tiny DiT (1 × 8 × 8)."""
    import json

    scheduler_config = json.loads((tiny_dit_dir / "scheduler" / "scheduler_config.json").read_text())
    return plus_plus_statistics(scheduler_config, (1, 8, 8), tmp_path_factory.mktemp("v3-tiny") / "ems.safetensors")


def pytest_generate_tests(metafunc):
    cls = metafunc.cls
    if cls is None or "wrapped_case" not in metafunc.fixturenames:
        return
    cases = {f"epsilon-{k}": ("epsilon", case) for k, case in cls.cases.items()}
    cases |= {f"flow-{k}": ("flow", case) for k, case in cls.flow_cases.items()}
    assert cases, f"{cls.__name__}: a wrapped sampler is compared with the scheduler it wraps (cases)"
    metafunc.parametrize("wrapped_case", list(cases.values()), ids=list(cases))
