"""Which implementation a strategy runs on this device: the fastest of its candidates, timed at load.

A low-precision kernel is only worth running where it beats the full-precision op it replaces, and that
depends on the card: on an H200 our Triton 8-bit attention runs at 0.8x torch's SDPA and the W4A4 GEMM at
0.2x cuBLAS bf16 (benchmarks/results/kernels-gpu.md). So a strategy with a choice lists its candidates,
each a zero-argument call on the model's own shapes, and `fastest` times them on the GPU (CUDA events,
median of repeats after a warm-up) and returns the winner with every candidate's time, which the strategy
logs and reports in `describe()`. Timing at load costs a fraction of a second and needs no table of cards.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def time_ms(call: Callable[[], object], repeats: int = 10) -> float:
    """Median milliseconds of `call()` on the current CUDA device, after two warm-up calls."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def fastest(strategy: str, candidates: dict[str, Callable[[], object]]) -> tuple[str, dict[str, float]]:
    """The name of the fastest candidate and each one's milliseconds; logs the choice. A candidate that raises
    (e.g. a shape its kernel does not take) is left out, with the reason logged."""
    times: dict[str, float] = {}
    for name, call in candidates.items():
        try:
            times[name] = time_ms(call)
        except Exception as err:  # a kernel refusing this shape or device is a reason to not pick it
            log.info("%s: path %s unavailable here: %s", strategy, name, err)
    best = min(times, key=times.__getitem__)
    shown = ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items())
    log.info("%s: runs %s (the fastest measured here: %s)", strategy, best, shown)
    return best, times


def default_tokens(model, batch: int = 2) -> int:
    """Image tokens of `batch` images at the model's default size (2: one image with classifier-free guidance),
    the row count a linear layer or an attention call sees there: latent positions over the patch area."""
    shape = model.adapter.latent_shape(model, *model.adapter.default_size(model))
    patch = model.transformer.config.get("patch_size", 1) or 1
    patch_area = math.prod(patch[-2:]) if isinstance(patch, (tuple, list)) else patch * patch
    if model.adapter.family == "flux":  # Flux packs 2x2 latents into a token itself (patch_size 1)
        patch_area = 4
    return batch * math.prod(shape[1:]) // patch_area


def describe(best: str, times: dict[str, float], baseline: str) -> str:
    """`best`, with each candidate's speed against `baseline`, for `describe()` and logs."""
    if not times:
        return best
    ratios = ", ".join(f"{name} {times[baseline] / ms:.2f}x" for name, ms in times.items() if baseline in times)
    return f"{best} (measured at load vs {baseline}: {ratios})"
