"""`ditserve calibrate --cache NAME --config X`: measure what a cache needs on a model, write it to the YAML.

The model runs uncached (its plan's sampler and guidance, fixed seeds) while the strategy's
`calibrate` observes it; the fields it returns go into the YAML's `plan.cache`, which then names that
strategy (its other fields kept when it already did). The rest of the file is rewritten as parsed
(comments are lost).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.config import BUILTIN_PREFIX, load_config
from ditserve.registry import CACHES


def config_file(config: str) -> Path:
    """The YAML file behind a config argument (`builtin:<name>` is the shipped file in the package)."""
    if config.startswith(BUILTIN_PREFIX):
        return Path(__file__).parent.parent / "configs" / f"{config[len(BUILTIN_PREFIX) :]}.yaml"
    return Path(config)


def calibrate(config: str, cache: str, samples: int) -> dict[str, Any]:
    """Calibrate cache `cache` on the model of `config`, write the result into that YAML, return it."""
    from ditserve.engine import Engine

    strategy = CACHES.get(cache)
    loaded = load_config(config)
    plan = loaded.plan.model_copy(update={"cache": CACHES.parse({"name": "none"}, "plan.cache")})
    engine = Engine(loaded.model_copy(update={"plan": plan}))
    path = config_file(config)
    data = yaml.safe_load(path.read_text())
    section = data.setdefault("plan", {}).get("cache") or {}
    if isinstance(section, str):
        section = {"name": section}
    settings = {k: v for k, v in section.items() if k != "name"} if section.get("name") == cache else {}
    fields = strategy.calibrate(engine, samples, settings, path.resolve().parent)
    section = {**section, **fields} if section.get("name") == cache else {"name": cache, **fields}
    CACHES.parse(section, "plan.cache")  # what is written must load
    data["plan"]["cache"] = section
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return fields


def calibration_requests(engine, samples: int):
    """`samples` requests with fixed seeds: every class in turn for class models, stock prompts otherwise."""
    from ditserve.request import GenerationRequest

    prompts = ["a photo of a cat", "a mountain lake at dawn", "a red bicycle", "an old city street"]
    labels = sorted(engine.model.id2label) or list(range(10))
    for k in range(samples):
        if engine.adapter.conditioning == "class":
            yield GenerationRequest(class_label=labels[k % len(labels)], seed=1000 + k)
        else:
            yield GenerationRequest(prompt=prompts[k % len(prompts)], seed=1000 + k)


class ChangeRecorder(BlockCache):
    """Computes every block and records how much each block's residual changed since the previous call."""

    def reset(self) -> None:
        super().reset()
        self.previous: dict[int, object] = {}
        self.changes: dict[int, list[float]] = {}

    def after_block(self, index, inputs, outputs) -> None:
        residual = self.residuals[index]["hidden_states"]
        if index in self.previous:
            self.changes.setdefault(self.call, [0.0] * len(self.blocks))[index] = relative_l1(
                residual, self.previous[index]
            )
        self.previous[index] = residual


def block_change_curves(engine, samples: int) -> np.ndarray:
    """Mean relative L1 change of every block's residual between adjacent steps, over `samples` uncached
    requests: shape (steps − 1, blocks), row k − 1 for the change from step k − 1 to step k."""
    recorder = ChangeRecorder(None)
    recorder.apply(engine.model)
    runs = []
    try:
        for request in calibration_requests(engine, samples):
            recorder.reset()
            engine.generate(request)
            runs.append([recorder.changes[call] for call in sorted(recorder.changes)])
    finally:
        recorder.remove()
    return np.asarray(runs, dtype=float).mean(axis=0)


def predicted_change(curve: list[float], previous: float, now: float) -> float:
    """The change a calibrated per-step curve predicts between denoising progress `previous` and `now`.

    The curve was measured at S steps, entry k − 1 for step k at progress ≈ k/S; it is read as a rate per
    unit of progress, so a request with other steps than the calibration still gets a fitting estimate."""
    steps = len(curve) + 1
    grid = np.arange(1, steps) / steps
    return float(np.interp(now, grid, np.asarray(curve, dtype=float)) * steps * max(now - previous, 0.0))
