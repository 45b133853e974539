"""Pareto fronts of speed against fidelity, and speed read off a front at a given PSNR.

A caching strategy is a family of settings, each a point (speedup, PSNR). Comparing two
implementations by their single fastest rows compares different fidelities; comparing their fronts
asks the question a user has: at the PSNR I need, how fast does each one go? `speed_at` answers it
for one front, interpolating linearly in PSNR between the two front points that bracket the asked
PSNR. The uncached run (speedup 1, PSNR +inf) belongs to every front, so every front answers at
every PSNR, with 1.0 where none of its settings is that faithful.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

Point = tuple[float, float]
"""(speedup, PSNR dB)."""

UNCACHED: Point = (1.0, math.inf)


def front(points: Iterable[Point]) -> list[Point]:
    """The points no other point beats in both speed and PSNR, most faithful first (the uncached anchor
    included)."""
    ordered = sorted([*points, UNCACHED], key=lambda p: (-p[1], -p[0]))
    kept: list[Point] = []
    for speed, psnr in ordered:
        if not kept or speed > kept[-1][0]:
            kept.append((speed, psnr))
    return kept


def speed_at(points: Iterable[Point], psnr: float) -> float:
    """The front's speedup at `psnr`: linear in PSNR between the front points just above and just below it;
    the fastest point when every point is at least that faithful."""
    line = front(points)
    above = [p for p in line if p[1] >= psnr]  # slower, more faithful; never empty (uncached)
    below = [p for p in line if p[1] < psnr]
    slow, fast = above[-1], (below[0] if below else None)
    if fast is None or math.isinf(slow[1]):
        return slow[0]
    share = (slow[1] - psnr) / (slow[1] - fast[1])
    return slow[0] + share * (fast[0] - slow[0])


def ratios(ours: Iterable[Point], theirs: Iterable[Point], grid: Iterable[float]) -> list[tuple[float, float, float]]:
    """(PSNR, our speed, their speed) at each PSNR of `grid`."""
    ours, theirs = list(ours), list(theirs)
    return [(p, speed_at(ours, p), speed_at(theirs, p)) for p in grid]
