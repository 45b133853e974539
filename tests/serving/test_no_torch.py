"""The transports load without torch: every module of `ditserve.serving` and the client import in a fresh
interpreter with torch left unloaded (the engine imports it when it loads, on its own thread)."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import ditserve.serving

ROOT = Path(__file__).parents[2]


def test_serving_modules_import_no_torch():
    modules = sorted(f"ditserve.serving.{m.name}" for m in pkgutil.iter_modules(ditserve.serving.__path__))
    assert "ditserve.serving.schemas" in modules and "ditserve.serving.service" in modules
    probe = "; ".join(f"import {m}" for m in [*modules, "ditserve.client"])
    probe += "; import sys; loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))"
    probe += "; print(loaded[:5])"
    env = dict(os.environ, DITSERVE_CONFIG=str(ROOT / "bentos/digits/model.yaml"))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
