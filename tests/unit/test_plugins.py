"""Third-party strategies: a throwaway package installed with pip registers through entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_MODULE = '''
"""A throwaway ditserve plugin: one cache registered by its entry point, one sampler by import."""
from typing import Literal

from ditserve.caching.base import CacheConfig, CacheStrategy
from ditserve.registry import SAMPLERS
from ditserve.sampling.ddim import DDIM, DDIMConfig


class ToyCacheConfig(CacheConfig):
    name: Literal["toy-cache"] = "toy-cache"
    strength: int = 1


class ToyCache(CacheStrategy):
    """A cache that caches nothing, from a plugin."""

    Config = ToyCacheConfig


class ToySamplerConfig(DDIMConfig):
    name: Literal["toy-sampler"] = "toy-sampler"


@SAMPLERS.register("toy-sampler")
class ToySampler(DDIM):
    """DDIM under another name, from a plugin."""

    Config = ToySamplerConfig
'''

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "ditserve-toy-plugin"
version = "0.0.1"

[project.entry-points."ditserve.caching"]
toy-cache = "ditserve_toy_plugin:ToyCache"

[project.entry-points."ditserve.sampling"]
toy-samplers = "ditserve_toy_plugin"
"""

CHECK = """
import json
from ditserve.config import parse_config
from ditserve.registry import CACHES, SAMPLERS
config = parse_config({"model": {"name": "m", "path": "x"},
                       "plan": {"cache": {"name": "toy-cache", "strength": 3}, "sampler": {"name": "toy-sampler"}}})
print(json.dumps({"caches": CACHES.names(), "samplers": SAMPLERS.names(), "origin": CACHES.origin("toy-cache"),
                  "strength": config.plan.cache.strength, "sampler": type(config.plan.sampler).__name__}))
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("plugin-src")
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "ditserve_toy_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, timeout=300,
    )  # fmt: skip
    return target


def run_with(site: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_installed_plugin_registers_through_entry_points(installed_plugin):
    seen = run_with(installed_plugin)
    assert "toy-cache" in seen["caches"] and "none" in seen["caches"]
    assert "toy-sampler" in seen["samplers"] and "ddim" in seen["samplers"]
    assert seen["origin"] == "entry point ditserve_toy_plugin:ToyCache"
    assert seen["strength"] == 3 and seen["sampler"] == "ToySamplerConfig"


def test_without_the_plugin_the_names_are_unknown(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "from ditserve.registry import CACHES; print('toy-cache' in CACHES)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
