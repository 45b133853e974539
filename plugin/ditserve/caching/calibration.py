"""`ditserve calibrate --cache NAME --config X`: measure what a cache needs on a model, write it to the YAML.

The model runs uncached (its plan's sampler and guidance, fixed seeds) while the strategy's
`calibrate` observes it; the fields it returns go into the YAML's `plan.cache`, which then names that
strategy (its other fields kept when it already did). The rest of the file is rewritten as parsed
(comments are lost).

A checkpoint can also ship its calibrations, so that any cache works on it without a calibration run
(the embedded digits models do): `python -m ditserve.caching.calibration --config X --cache NAME`
runs the same calibration and writes `calibration/<NAME>.json` into the checkpoint's folder instead of
the YAML. The file is a JSON object of the fields `calibrate` returns (e.g. `{"coefficients": [...]}`
for TeaCache); a string naming a file of that folder (Learning-to-Cache's `schedule`) is stored as the
bare file name. A cache needing calibration fills the calibrated fields its config leaves unset from
that file (`with_shipped_calibration`); where the checkpoint ships none, it refuses to load, naming
`ditserve calibrate`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.config import BUILTIN_PREFIX, load_config
from ditserve.registry import CACHES

if TYPE_CHECKING:
    from ditserve.caching.base import CacheConfig
    from ditserve.models.base import LoadedModel

SHIPPED_FOLDER = "calibration"
"""The folder of a checkpoint that holds its shipped cache calibrations, one `<cache name>.json` each."""


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


EXAMPLE_PROMPTS_FILE = "example_prompts.json"
"""A checkpoint's own prompts (a JSON list), in the order calibration cycles through them."""
STOCK_PROMPTS = ("a photo of a cat", "a mountain lake at dawn", "a red bicycle", "an old city street")


def calibration_requests(engine, samples: int) -> list:
    """`samples` requests with fixed seeds, for every calibration of a cache or a sampler: every class
    in turn for class models; for text models the prompts the checkpoint ships in `example_prompts.json`
    (digits-flow: its training prompts, every digit in turn), else stock prompts. Statistics of a model on
    prompts it never saw do not describe how it samples: DPM-Solver-v3 calibrated on the stock prompts
    reached 16 dB on digits-flow at 5 steps, on its own prompts 26.5 dB (sampling/dpm_solver_v3.py)."""
    from ditserve.request import GenerationRequest

    if engine.adapter.conditioning == "class":
        labels = sorted(engine.model.id2label) or list(range(10))
        return [GenerationRequest(class_label=labels[k % len(labels)], seed=1000 + k) for k in range(samples)]
    path = engine.model.path / EXAMPLE_PROMPTS_FILE
    prompts = json.loads(path.read_text()) if path.is_file() else STOCK_PROMPTS
    return [GenerationRequest(prompt=prompts[k % len(prompts)], seed=1000 + k) for k in range(samples)]


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


def shipped_file(model_path: Path, cache: str) -> Path:
    """Where a checkpoint ships the calibration of cache `cache`."""
    return model_path / SHIPPED_FOLDER / f"{cache}.json"


def with_shipped_calibration(config: CacheConfig, model: LoadedModel) -> CacheConfig:
    """`config` with the calibrated fields taken from what the checkpoint ships for it, when it ships some and
    the config sets none of them (a config that brings any calibrated field keeps its own calibration)."""
    path = shipped_file(model.path, config.name)
    if not path.is_file():
        return config
    folder = path.parent
    shipped = {
        field: str(folder / value) if isinstance(value, str) and (folder / value).is_file() else value
        for field, value in json.loads(path.read_text()).items()
    }
    if any(getattr(config, field, None) is not None for field in shipped):
        return config
    return CACHES.parse({**config.model_dump(), **shipped}, "plan.cache")


def ship(config: str, cache: str, samples: int, settings: dict[str, Any] | None = None) -> Path:
    """Calibrate cache `cache` on the model of `config` (uncached, the plan's sampler and guidance; `settings`:
    the strategy's fields the calibration reads, e.g. Learning-to-Cache's `sparsity`) and write the result
    into the checkpoint's `calibration/<cache>.json`; return that path."""
    from ditserve.engine import Engine, resolve_model_path

    loaded = load_config(config)
    plan = loaded.plan.model_copy(update={"cache": CACHES.parse({"name": "none"}, "plan.cache")})
    engine = Engine(loaded.model_copy(update={"plan": plan}))
    path = shipped_file(resolve_model_path(loaded.resolved_path()), cache)
    path.parent.mkdir(exist_ok=True)
    fields = CACHES.get(cache).calibrate(engine, samples, settings or {}, path.parent)
    fields = {
        field: Path(value).name if isinstance(value, str) and Path(value).parent == path.parent else value
        for field, value in fields.items()
    }
    path.write_text(json.dumps(fields) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Calibrate a cache and ship the result with the checkpoint.")
    parser.add_argument("--config", required=True, help="model config YAML or builtin:<name>")
    parser.add_argument("--cache", required=True, help="cache strategy name (e.g. teacache)")
    parser.add_argument("--samples", type=int, default=8, help="calibration requests (fixed seeds)")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="FIELD=JSON", help="a field the calibration reads"
    )
    args = parser.parse_args(argv)
    settings = {field: json.loads(value) for field, _, value in (s.partition("=") for s in args.setting)}
    print(f"ditserve: wrote {ship(args.config, args.cache, args.samples, settings)}")


if __name__ == "__main__":
    main()
