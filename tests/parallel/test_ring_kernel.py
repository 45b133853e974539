"""The Triton attention-with-LSE kernel (ring attention's block) under the CPU interpreter, in a subprocess
(Triton reads TRITON_INTERPRET at import; it must not leak into this process)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is installed by `make setup` (extra `dev`)")


def test_the_triton_kernel_matches_its_reference_under_the_interpreter():
    seed = secrets.randbelow(2**31)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("ring_kernel_check.py")
    done = subprocess.run(
        [sys.executable, str(script), str(seed)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"seed {seed}:\n{done.stdout}\n{done.stderr[-4000:]}"
    worst = json.loads(done.stdout.strip().splitlines()[-1])
    assert worst["out"] > 0 or worst["lse"] > 0  # it computed something of its own, not the reference
