"""Learning-to-Cache: accelerating diffusion transformer via layer caching (Ma et al., NeurIPS 2024,
arXiv 2406.01733).

What is cached: every block's residual from the previous step. When it is refreshed: a learned,
per-step, per-block router β ∈ (0, 1) decides; a block whose router value at a step is below
`threshold` reuses its residual there, the others compute. Inference loads the router from a JSON
file (`schedule`: {"progress": [...], "router": [[...], ...]}, one row per step, one value per block;
a call uses the row nearest its denoising progress). `ditserve calibrate --cache learning-to-cache`
learns one with the model frozen: it records uncached runs, then for every step k ≥ 1 trains
β_k so that the output with each block's result mixed as β·block(x) + (1 − β)·(x + cached residual
of step k − 1) stays close to the uncached output, with a penalty `sparsity`·mean(β) that pushes
blocks towards reuse (the paper's objective; it trains against a fully computed previous step).
At inference a block reuses a residual at most `max_reuse` steps old (default 1), then computes: that is
the situation the router was trained for, and chains of reuses it never saw drift far (on digits-dit the
unbounded router lost 10–15 dB). Step counts: a call reads the router row nearest its progress, so one
router, learned at the plan's step count, serves others; a one-step-old residual covers more of the
trajectory at fewer steps, which the one-step bound keeps within the fidelity target at 20 steps.
`threshold: 0` computes every block (bit-identical to no caching). Decisions are per batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache
from ditserve.caching.calibration import with_shipped_calibration
from ditserve.errors import PlanError
from ditserve.registry import CACHES


class LearningToCacheConfig(CacheConfig):
    name: Literal["learning-to-cache"] = "learning-to-cache"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """A block whose learned router value at a step is below this reuses its residual there."""
    max_reuse: int = Field(1, ge=1, le=1000)
    """A block reuses a residual at most this many steps old, then computes whatever the router says: the
    router was trained on residuals one step old, and chains of reuses it never saw drift."""
    schedule: str | None = None
    """Path of the learned router (JSON); written by `ditserve calibrate --cache learning-to-cache`."""
    sparsity: float = Field(0.0005, ge=0.0, le=10.0)
    """Learning only: weight of the penalty that favours reuse (higher: more blocks skipped). It is weighed
    against a relative squared error per step, which is small: on digits-dit (4 calibration samples,
    threshold 0.5, 20 test images) 0.02 skipped 96% of the blocks (8.3 dB), 0.002 skipped 89% (10.3 dB),
    0.0005 skips 58% (24.5 dB against uncached)."""
    epochs: int = Field(30, ge=1, le=10_000)
    """Learning only: passes over the recorded steps."""


def load_router(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = json.loads(Path(path).read_text())
        return np.asarray(data["progress"], dtype=float), np.asarray(data["router"], dtype=float)
    except (OSError, ValueError, KeyError) as err:
        raise PlanError(
            f"cache 'learning-to-cache' cannot read its schedule {path!r} ({err}): rerun "
            "`ditserve calibrate --cache learning-to-cache --config <model.yaml>`"
        ) from None


@CACHES.register("learning-to-cache")
class LearningToCache(BlockCache):
    """Learning-to-Cache: a learned per-step, per-block router decides which blocks reuse their residual."""

    Config = LearningToCacheConfig
    needs_calibration = True

    def apply(self, model) -> None:
        self.config = with_shipped_calibration(self.config, model)
        self.require_calibration("schedule")
        self.progress_grid, self.router = load_router(self.config.schedule)
        super().apply(model)
        if self.router.shape[1] != len(self.blocks):
            raise PlanError(
                f"cache 'learning-to-cache': the schedule has {self.router.shape[1]} blocks per step, the model "
                f"{len(self.blocks)}: rerun `ditserve calibrate --cache learning-to-cache` for this model"
            )

    def begin_call(self) -> None:
        row = int(np.abs(self.progress_grid - self.progress).argmin())
        fresh = np.array(
            [self.call - self.computed_at.get(i, self.call) <= self.config.max_reuse for i in range(len(self.blocks))]
        )
        self.skip = (
            (self.router[row] < self.config.threshold) & fresh if self.call > 0 else np.zeros(len(self.blocks), bool)
        )

    def compute(self, index, block, args, kwargs) -> bool:
        return not self.skip[index]

    @classmethod
    def calibrate(cls, engine, samples: int, settings: dict | None = None, directory=None) -> dict[str, Any]:
        """Learn the router on `samples` uncached requests (model frozen) and write it beside the YAML."""
        learning = LearningToCacheConfig(**{k: v for k, v in (settings or {}).items() if k in ("sparsity", "epochs")})
        progress, router = learn_router(engine, samples, learning.sparsity, learning.epochs)
        path = Path(directory or ".") / f"{engine.config.model.name}-learning-to-cache.json"
        path.write_text(json.dumps({"progress": progress, "router": router}))
        return {"schedule": str(path.resolve())}


def learn_router(engine, samples: int, sparsity: float, epochs: int = 30) -> tuple[list[float], list[list[float]]]:
    """Record uncached runs, then fit one router row per step by gradient descent, the model frozen."""
    from ditserve.caching.blockcaching import ResidualRecorder
    from ditserve.caching.calibration import per_request

    model = engine.model
    transformer = model.transformer
    calls: list[tuple[tuple, dict, torch.Tensor]] = []

    def keep_inputs(module, args, kwargs):
        calls.append((args, kwargs, None))

    def keep_output(module, args, kwargs, output):
        args, kwargs, _ = calls[-1]
        calls[-1] = (args, kwargs, output[0] if isinstance(output, tuple) else output)

    recorder = ResidualRecorder(None)
    hooks = [
        transformer.register_forward_pre_hook(keep_inputs, with_kwargs=True),
        transformer.register_forward_hook(keep_output, with_kwargs=True),
    ]

    def collect() -> tuple:
        run = (list(calls), recorder.log, recorder.progress_log)
        calls.clear()
        return run

    try:
        runs = per_request(engine, recorder, samples, collect)
    finally:
        for hook in hooks:
            hook.remove()

    blocks = recorder.blocks
    steps = len(runs[0][2])
    logits = torch.full((steps, len(blocks)), 2.0, requires_grad=True)
    state: dict[str, Any] = {}

    def mix(index):
        def hook(module, args, kwargs, output):
            position = recorder._streams[index].return_hidden_states_index  # only the image stream is mixed
            hidden = output if isinstance(output, torch.Tensor) else output[position]
            inputs = recorder._inputs(index, module, args, kwargs)["hidden_states"]
            beta = torch.sigmoid(logits[state["step"], index])
            mixed = beta * hidden + (1 - beta) * (inputs + state["cached"][index])
            if isinstance(output, torch.Tensor):
                return mixed
            output = list(output)
            output[position] = mixed
            return tuple(output)

        return hook

    handles = [block.register_forward_hook(mix(i), with_kwargs=True) for i, block in enumerate(blocks)]
    optimizer = torch.optim.Adam([logits], lr=0.1)
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                for run_calls, log, _ in runs:
                    for step in range(1, len(run_calls)):
                        args, kwargs, target = run_calls[step]
                        state["step"], state["cached"] = step, [r.clone() for r in log[step - 1]]
                        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
                        kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                        out = transformer(*args, **kwargs)
                        out = out[0] if isinstance(out, tuple) else out
                        target = target.clone()
                        error = (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
                        loss = error + sparsity * torch.sigmoid(logits[step]).mean()
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    router = torch.sigmoid(logits.detach())
    router[0] = 1.0  # the first step has nothing to reuse
    return [round(p, 6) for p in runs[0][2]], [[round(float(v), 4) for v in row] for row in router]
