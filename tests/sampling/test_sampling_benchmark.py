"""The sampling benchmark runs every model's goal cells (and the parallel samplers' frontier) before any model's
other cells, so a run whose budget runs out in its last model still decides every goal."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("sampling_benchmark", ROOT / "benchmarks" / "sampling.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_every_models_goal_cells_run_before_any_models_other_cells(monkeypatch):
    benchmark = load_benchmark()
    done: list[tuple] = []

    class Model:
        def __init__(self, name: str) -> None:
            self.name, self.engine = name, None
            self.plan = [(0, 0, 5, False), (1, 0, 10, True), (2, 1, 50, False)]  # (priority, guidance, nfe, fd)

        def measure(self, cells, args, rows, budget) -> None:
            done.extend((self.name, cell[0]) for cell in cells)

    monkeypatch.setattr(benchmark, "frontier", lambda engine, model, *rest: done.append((model, "frontier")))
    monkeypatch.setattr(benchmark, "write", lambda *args: None)
    benchmark.measure([Model("dit"), Model("flow")], SimpleNamespace(guidance=[4.0]), [], benchmark.Budget(None))
    assert done == [("dit", 0), ("dit", 1), ("dit", "frontier"), ("flow", 0), ("flow", 1), ("flow", "frontier"),
                    ("dit", 2), ("flow", 2)]  # fmt: skip
