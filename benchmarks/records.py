"""What benchmark records (benchmarks/results/*.json) keep of paths: nothing of the machine that ran them.

A record's arguments and settings hold paths (the checkpoint measured, a calibration written for the run); a
path inside the repository is kept relative to its root, one in the temporary folder as `<tmp>/<name>`, so the
records read the same from any checkout.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPORARY = Path(tempfile.gettempdir()).resolve()


def portable(value):
    """`value` (dicts, lists, tuples, paths, strings, numbers) as JSON-ready data with its paths made portable."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable(item) for item in value]
    if isinstance(value, Path) or (isinstance(value, str) and value.startswith("/")):
        path = Path(value).resolve()
        if path.is_relative_to(ROOT):
            return str(path.relative_to(ROOT))
        if path.is_relative_to(TEMPORARY):
            return f"<tmp>/{path.name}"
        return str(value)
    return value
