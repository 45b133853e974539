"""The Triton kernels themselves, under the CPU interpreter, against their torch references.

Each kernel runs in its own subprocess with `TRITON_INTERPRET=1` (Triton reads it at import; setting
it here would change every other test in this process). The seed is fresh each run and printed, so
a failure can be replayed: `TRITON_INTERPRET=1 python tests/kernels/interpreter_checks.py KERNEL SEED`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("interpreter_checks.py")
KERNELS = ("w8a8_gemm", "w4a4_gemm", "adaln_layernorm", "sage_attention", "sparse_attention", "vq_gemm")

pytest.importorskip("triton", reason="triton is installed by `make setup` (extra `dev`)")


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_reference_under_interpreter(kernel):
    seed = secrets.randbelow(2**31)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(CHECKS), kernel, str(seed)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{kernel} (seed {seed}) failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kernel"] == kernel and report["errors"], report
    print(report)
