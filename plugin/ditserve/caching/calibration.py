"""What the caches' calibrations share, and the calibrations a checkpoint ships.

`ditserve calibrate --cache NAME --config X` (ditserve/calibrate.py, the one calibration path) runs a
cache's `calibrate` on the model uncached and writes the fields it returns into the YAML; the recording
caches and the per-request loop they run under are here.

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.config import load_config
from ditserve.registry import CACHES

if TYPE_CHECKING:
    from ditserve.caching.base import CacheConfig
    from ditserve.models.base import LoadedModel

SHIPPED_FOLDER = "calibration"
"""The folder of a checkpoint that holds its shipped cache calibrations, one `<cache name>.json` each."""


def per_request(engine, recorder: BlockCache, samples: int, collect, steps: Sequence[int] = ()) -> list:
    """Run the calibration requests (`ditserve.calibrate.calibration_requests`) one at a time with the
    recording cache `recorder` applied and reset before each; return `collect()` after each request.
    `steps`, when given, are the step counts the requests take in turn (else the plan's)."""
    from ditserve.calibrate import calibration_requests

    recorder.apply(engine.model)
    runs = []
    try:
        for k, request in enumerate(calibration_requests(engine, samples)):
            recorder.reset()
            engine.generate(request.model_copy(update={"steps": steps[k % len(steps)]}) if steps else request)
            runs.append(collect())
    finally:
        recorder.remove()
    return runs


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
    runs = per_request(engine, recorder, samples, lambda: [recorder.changes[call] for call in sorted(recorder.changes)])
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
    from ditserve.calibrate import calibration_engine
    from ditserve.engine import resolve_model_path

    loaded = load_config(config)
    engine = calibration_engine(loaded, "cache")
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
