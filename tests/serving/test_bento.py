"""`bentoml build` turns bentos/digits into a Bento (slow: it builds a wheel and locks requirements with uv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_bentoml_build_makes_a_bento_from_bentos_digits(tmp_path):
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", "dist", "."], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert wheel.returncode == 0, wheel.stderr
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentos/digits/bentofile.yaml", ".", "--output", "tag"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**__import__("os").environ,
        "BENTOML_HOME": str(tmp_path / "bentoml")},
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = tmp_path / "bentoml" / "bentos" / name / version
    assert (bento / "src" / "bentos" / "digits" / "model.yaml").is_file()
    assert list((bento / "env" / "python" / "wheels").glob("ditserve-*.whl"))
    assert "torch==2.13.0" in (bento / "env" / "python" / "requirements.lock.txt").read_text()
