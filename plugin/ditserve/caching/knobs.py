"""The one knob of each cache that trades fidelity for speed, and settings stepped along it.

Two searches walk the caches along these knobs: the caching benchmark (benchmarks/caching.py), which sweeps
every cache from its defaults until PSNR falls under its floor, and `ditserve tune` (ditserve/tune.py), which
looks for the fastest plan that meets a PSNR target. Both start from a cache's documented defaults and step
one knob, so the knob of each cache is named once, here.
"""

from __future__ import annotations

from typing import Any

from ditserve.registry import CACHES

KNOBS: dict[str, str | None] = {
    "fora": "spacing",
    "delta-dit": "interval",
    "dbcache": "threshold",
    "fbcache": "threshold",
    "taylorseer": "spacing",
    "teacache": "threshold",
    "ab-cache": "spacing",
    "smoothcache": "alpha",
    "adacache": "codebook",
    "block-caching": "threshold",
    "learning-to-cache": None,
    "pab": None,
    "fastercache": None,
    "toca": "spacing",
    "duca": "spacing",
}
"""The knob each of our caches is stepped on (larger is harsher for every one of them); None: its defaults only
(attention-only caches stay under 1.3× on these 64-token models, and Learning-to-Cache under 30 dB: neither
reaches a front, and the sweep's time goes to those that can)."""


def knob_value(spec: dict[str, Any], knob: str | None) -> int | float | list | tuple | None:
    """The value `spec` gives (or defaults) `knob` to, or None when the cache has no numeric knob to step."""
    value = getattr(CACHES.get(spec["name"]).Config.model_validate(spec), knob, None) if knob else None
    if isinstance(value, bool) or not isinstance(value, int | float | list | tuple):  # gone, unset or odd
        return None
    return value


def stepped(base: dict[str, Any], knob: str | None, steps: tuple[float, ...]) -> list[dict[str, Any]]:
    """`base` with `knob` stepped to each of `steps`: its value times each (float knobs; an AdaCache codebook's
    thresholds), or plus each (integer knobs, rounded). Settings the cache's config refuses (a step can leave a
    field's bounds) are left out; a cache without a numeric knob gives none."""
    value = knob_value(base, knob)
    if value is None:
        return []

    def at(step: float) -> object:
        if isinstance(value, list | tuple):  # AdaCache's codebook: (rate threshold, cached steps) pairs
            return [[round(t * step, 6), n] for t, n in value]
        if isinstance(value, int):
            return value + round(step)
        return round(value * step, 6)

    return valid([{**base, knob: at(step)} for step in steps])


def valid(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The specs the cache's config accepts."""
    kept = []
    for spec in specs:
        try:
            CACHES.parse(spec, "plan.cache")
        except ValueError:
            continue
        kept.append(spec)
    return kept
