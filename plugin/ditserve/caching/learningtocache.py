"""Learning-to-Cache: accelerating diffusion transformer via layer caching (Ma et al., NeurIPS 2024,
arXiv 2406.01733).

What is cached: every block's residual from the previous step. When it is refreshed: a learned,
per-step, per-block router β ∈ (0, 1) decides; a block whose router value at a step is below
`threshold` reuses its residual there, the others compute. Inference loads the router from a JSON
file (`schedule`: {"progress": [...], "router": [[...], ...]}, one row per step, one value per block;
a call uses the row nearest its denoising progress). `ditserve calibrate --cache learning-to-cache`
learns one with the model frozen: it records uncached runs, then trains every row β_k (k ≥ 1) at once,
one full-batch pass over all recorded steps per epoch, so that the output with each block's result mixed as
β·block(x) + (1 − β)·(x + cached residual of step k − 1) stays close to the uncached output, with a penalty
`sparsity`·mean(β) that pushes blocks towards reuse (the paper's objective; it trains against a fully
computed previous step). That objective's optimum is soft: the error a block adds grows with (1 − β)², so β
settles where the penalty balances it, near 1 for every block whose reuse costs anything, and a fixed
cut at 0.5 reused almost nothing on digits-flow (router values 0.56–0.99). What β does carry is a ranking of
where reuse is cheap, so, as the paper picks its threshold for a target speed-up, calibration picks the cut
at which the router reuses the fraction `reuse` of the blocks and stores the router shifted (in logits) so
that this cut is 0.5: `threshold` above 0.5 reuses more, below less.
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
from typing import Any, Literal, NamedTuple

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
    """Learning only: weight of the penalty that favours reuse. The objective's optimum is soft (a block's β
    settles where the penalty balances the error it adds, so β ranks blocks by how much reusing them costs),
    and `reuse` sets the cut; the penalty only has to keep that ranking readable (not every β at 0 or 1)."""
    reuse: float = Field(0.47, gt=0.0, lt=1.0)
    """Learning only: the fraction of block evaluations the router reuses at threshold 0.5, at the calibration's
    step count and under `max_reuse` (the learned router is shifted so that its cut for this fraction is 0.5)."""
    epochs: int = Field(100, ge=1, le=10_000)
    """Learning only: most full-batch passes over the recorded steps (it stops once the router settles)."""


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
        self.require_family(model)
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
        learned = ("sparsity", "reuse", "epochs", "max_reuse")
        learning = LearningToCacheConfig(**{k: v for k, v in (settings or {}).items() if k in learned})
        progress, router = learn_router(
            engine, samples, learning.sparsity, learning.epochs, learning.reuse, learning.max_reuse
        )
        path = Path(directory or ".") / f"{engine.config.model.name}-learning-to-cache.json"
        path.write_text(json.dumps({"progress": progress, "router": router}))
        return {"schedule": str(path.resolve())}


def learn_router(
    engine, samples: int, sparsity: float, epochs: int, reuse: float, max_reuse: int
) -> tuple[list[float], list[list[float]]]:
    """Record uncached runs, fit the router to them (model frozen), then centre it on the threshold 0.5 at which
    it reuses the fraction `reuse` of the blocks (as `max_reuse` lets it)."""
    progress, batch, recorder = record_calls(engine, samples)
    learned = fit_router(engine.model.transformer, recorder, batch, len(progress), sparsity, epochs)
    cut = cut_for_reuse(learned, reuse, max_reuse)
    router = torch.sigmoid(torch.logit(learned.clamp(1e-6, 1 - 1e-6)) - torch.logit(torch.tensor(cut)))
    router[0] = 1.0  # the first step has nothing to reuse
    return [round(p, 6) for p in progress], [[round(float(v), 6) for v in row] for row in router]


class RecordedCalls(NamedTuple):
    """Every transformer call k ≥ 1 of the calibration requests, concatenated along the batch dimension."""

    args: tuple
    kwargs: dict
    targets: torch.Tensor
    """The uncached transformer outputs."""
    cached: list[torch.Tensor]
    """Per block, its image-stream residual at the same request's call k − 1."""
    step: torch.Tensor
    """Per batch element, its call index k (the router row it trains)."""
    call: torch.Tensor
    """Per batch element, which recorded call it belongs to (for a relative error per call)."""


def record_calls(engine, samples: int) -> tuple[list[float], RecordedCalls, Any]:
    """Run `samples` uncached calibration requests and keep every transformer call's inputs, output and the
    blocks' residuals, as one batch over all calls k ≥ 1 (so that one forward pass trains every router row);
    also return the progress of each call and the recorder (it knows the blocks and their streams)."""
    from ditserve.caching.blockcaching import ResidualRecorder
    from ditserve.caching.calibration import per_request

    transformer = engine.model.transformer
    calls: list[list] = []
    hooks = [
        transformer.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append([args, kwargs]), with_kwargs=True
        ),
        transformer.register_forward_hook(
            lambda module, args, kwargs, output: calls[-1].append(output[0] if isinstance(output, tuple) else output),
            with_kwargs=True,
        ),
    ]
    recorder = ResidualRecorder(None)

    def collect() -> tuple:
        run = (list(calls), recorder.log, recorder.progress_log)
        calls.clear()
        return run

    try:
        runs = per_request(engine, recorder, samples, collect)
    finally:
        for hook in hooks:
            hook.remove()
    chosen = [(run_calls[k], log[k - 1], k) for run_calls, log, _ in runs for k in range(1, len(run_calls))]
    sizes = [len(target) for (_, _, target), _, _ in chosen]

    def joined(values: list) -> Any:
        return torch.cat(values) if isinstance(values[0], torch.Tensor) else values[0]

    args = tuple(joined([c[0][0][i] for c in chosen]) for i in range(len(chosen[0][0][0])))
    kwargs = {key: joined([c[0][1][key] for c in chosen]) for key in chosen[0][0][1]}
    return (
        runs[0][2],
        RecordedCalls(
            args=args,
            kwargs=kwargs,
            targets=torch.cat([target for (_, _, target), _, _ in chosen]).float(),
            cached=[torch.cat([residuals[i] for _, residuals, _ in chosen]) for i in range(len(recorder.blocks))],
            step=torch.tensor([k for (_, _, k), n in zip(chosen, sizes, strict=True) for _ in range(n)]),
            call=torch.repeat_interleave(torch.arange(len(chosen)), torch.tensor(sizes)),
        ),
        recorder,
    )


def fit_router(transformer, recorder, batch: RecordedCalls, steps: int, sparsity: float, epochs: int) -> torch.Tensor:
    """The paper's objective by full-batch gradient descent: every block's image-stream output is mixed as
    β·block(x) + (1 − β)·(x + its residual of the previous call), β = sigmoid(logit) of the element's step;
    the loss is the mean relative squared error of the transformer output per call plus `sparsity`·mean(β).
    Stops after `epochs` passes, or once no router value moved by more than 1e-3 in a pass."""
    blocks = recorder.blocks
    logits = torch.full((steps, len(blocks)), 2.0, requires_grad=True)

    def mix(index):
        def hook(module, args, kwargs, output):
            position = recorder._streams[index].return_hidden_states_index  # only the image stream is mixed
            hidden = output if isinstance(output, torch.Tensor) else output[position]
            inputs = recorder._inputs(index, module, args, kwargs)["hidden_states"]
            beta = torch.sigmoid(logits[batch.step, index]).view(-1, *[1] * (hidden.dim() - 1))
            mixed = beta * hidden + (1 - beta) * (inputs + batch.cached[index])
            if isinstance(output, torch.Tensor):
                return mixed
            return tuple(mixed if k == position else value for k, value in enumerate(output))

        return hook

    handles = [block.register_forward_hook(mix(i), with_kwargs=True) for i, block in enumerate(blocks)]
    optimizer = torch.optim.Adam([logits], lr=0.1)
    calls = int(batch.call.max()) + 1
    energy = torch.zeros(calls).index_add_(0, batch.call, batch.targets.pow(2).flatten(1).mean(1)).clamp_min(1e-12)
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                before = torch.sigmoid(logits.detach())
                out = transformer(*batch.args, **batch.kwargs)
                out = out[0] if isinstance(out, tuple) else out
                squared = (out.float() - batch.targets).pow(2).flatten(1).mean(1)
                error = (torch.zeros(calls).index_add(0, batch.call, squared) / energy).mean()
                loss = error + sparsity * torch.sigmoid(logits[1:]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if (torch.sigmoid(logits.detach()) - before).abs().max() < 1e-3:
                    break
    finally:
        for handle in handles:
            handle.remove()
    return torch.sigmoid(logits.detach())


def planned_skips(router: np.ndarray, threshold: float, max_reuse: int) -> np.ndarray:
    """Which (call, block) a request whose calls follow the router's rows one by one skips: the rule of
    `LearningToCache.begin_call` (below the threshold, residual at most `max_reuse` calls old, never call 0)."""
    skips = np.zeros(router.shape, bool)
    computed_at = np.zeros(router.shape[1], int)
    for call in range(1, len(router)):
        skips[call] = (router[call] < threshold) & (call - computed_at <= max_reuse)
        computed_at[~skips[call]] = call
    return skips


def cut_for_reuse(router: torch.Tensor, reuse: float, max_reuse: int) -> float:
    """The threshold on the learned router at which a request at the calibration's step count reuses the
    fraction `reuse` of its block evaluations (the nearest reachable one)."""
    values = np.unique(router[1:].numpy())
    cuts = np.concatenate([[values[0] / 2], (values[1:] + values[:-1]) / 2, [(values[-1] + 1) / 2]])
    reused = np.array([planned_skips(router.numpy(), cut, max_reuse).mean() for cut in cuts])
    return float(cuts[int(np.abs(reused - reuse).argmin())])
