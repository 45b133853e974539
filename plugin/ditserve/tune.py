"""`ditserve tune`: per step count, the fastest sampler and cache that keep a PSNR target, as tuned plans.

Every cache and sampler is a knob, and a setting chosen at one step count misses at another (issue 13 measured
5–12 dB lost between 50 and 20 steps at fixed intervals). The tuner measures instead: for each step count N it
looks for the plan that gives, fastest, images within `target_psnr` dB (mean) of the reference — the model's
plan unaccelerated: its sampler at N steps, no cache, its quantizer — and writes them as a tuned-plans file
(ditserve/tuned.py) that a model config names in `plan.tuned`.

The search, for each N, on the checkpoint's calibration prompts (`calibration_requests`: every class, or the
example prompts, in turn; fixed seeds):

1. Samplers, uncached: the plan's sampler and the ODE solvers that need no calibration (`FAST_SAMPLERS`), each
   at `STEP_FRACTIONS` of N, fewest steps first, until two settings beat the target by `CACHE_ROOM_DB` (more
   steps would only cost more). A sampler skips steps where a cache skips blocks inside a step, and the two
   savings multiply; each sampler setting that meets the target is a candidate, and those with the room, fewest
   steps first (at most `MAX_BASES`), are bases for the caches, besides the plan's sampler at N (the setting a
   hand-set cache runs at).
2. Caches on each base, cheapest base first: every cache of the knob table (ditserve/caching/knobs.py) from its
   documented defaults, its knob stepped harsher (`HARSHER`) until PSNR falls under the target; one gentler
   step when the defaults already miss it. Pruned by count ratio (transformer blocks evaluated, against the
   reference): on the later bases only the caches whose cheapest setting meeting the target on the first came
   within `COUNT_SLACK` of the cheapest one's are climbed. A cache the model cannot run (refused at load) is
   noted and skipped.
3. Prune and confirm: of the candidates that met the target, those no other beats on both PSNR and count
   ratio are the frontier.
   They are checked on held-back seeds the search never saw, cheapest count first: mean PSNR at every
   guidance of the band, and for the embedded digits models the classifier's accuracy (at most
   `ACCURACY_DROP` under the reference's) and the Fréchet distance to the held-out digits (at most
   `FRECHET_RATIO` times the reference's). Confirmation stops at `CONFIRM` passing candidates, or once the
   count ratio is `COUNT_SLACK` times the cheapest passing one's (more work is not faster here).
4. Timing: each passing candidate and the reference run the held-back workload in alternating order
   (`pairs` pairs, reference first in even pairs); the wall ratio is the median of the pairs' ratios. The
   fastest by wall ratio is the tuned plan, its count ratio beside it (out of time: the cheapest count only).

`budget_minutes` bounds the whole search: it is shared out over the step counts left, and a step count stops
searching at `SEARCH_SHARE` of its share to leave time to confirm and time. The file records what the search
cost (candidates run, seconds). The quantizer is not searched: it changes the loaded weights, so one server
cannot switch it per request the way a tuned plan switches sampler and cache.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ditserve.caching.knobs import KNOBS, knob_value, stepped, valid
from ditserve.calibrate import FIRST_SEED, calibration_engine, calibration_requests
from ditserve.config import BUILTIN_PREFIX, ModelConfig
from ditserve.engine import Engine
from ditserve.errors import PlanError, RequestError
from ditserve.registry import CACHES
from ditserve.request import GenerationRequest, GenerationStats
from ditserve.tuned import TunedPlan, TunedPlans

FAST_SAMPLERS = ("dpm-solver++", "unipc")
"""Higher-order ODE solvers that need no calibration, so they run on any model as it ships."""
STEP_FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.8)
"""Sampler steps tried, as fractions of the request's steps."""
CACHE_ROOM_DB = 1.0
"""A sampler is a base for the caches only if it beats the target by this much: a cache costs PSNR too."""
MAX_BASES = 3
"""Cheaper samplers the caches run on (fewest steps first), besides the plan's sampler at full steps."""
HARSHER, HARSHER_OFFSETS = (1.5, 2.0, 3.0, 4.0), (1, 2, 3)
"""Knob steps above a cache's defaults: times each (float knobs), plus each (integer knobs)."""
GENTLER, GENTLER_OFFSETS = (0.5,), (-1,)
"""The knob step below the defaults, tried when the defaults already miss the target."""
SEARCH_IMAGES = 8
"""Images per candidate in the search (the calibration prompts, seeds 1000 + k)."""
HELD_BACK_IMAGES = 20
"""Images per candidate in the confirmation: the same prompts in turn, seeds the search never used."""
HELD_BACK_SEED = FIRST_SEED + 500_000
"""The first held-back seed: far from the search's (FIRST_SEED + k), so no image of the search is seen again."""
CONFIRM = 3
"""Candidates confirmed on held-back seeds before timing picks the fastest."""
COUNT_SLACK = 1.3
"""Confirmation stops at this count ratio over the cheapest confirmed candidate's."""
ACCURACY_DROP = 0.05
"""Most the classifier's accuracy may fall under the reference's on the held-back images (digits models)."""
FRECHET_RATIO = 1.10
"""Most the Fréchet distance to the held-out digits may grow over the reference's (issue 13's bound: within 10 %)."""
SEARCH_SHARE = 0.6
"""Share of a step count's budget for the search; the rest confirms and times the frontier."""


@dataclass
class Candidate:
    """A sampler and a cache for requests of `steps` steps, and what they measured."""

    steps: int
    sampler: dict[str, Any]
    cache: dict[str, Any]
    psnr: float = float("nan")
    count_ratio: float = float("nan")
    held_back: dict[str, float] = field(default_factory=dict)
    """Confirmation figures: PSNR (the worst guidance's), accuracy, Fréchet and the reference's."""

    @property
    def label(self) -> str:
        def show(spec: dict) -> str:
            return " ".join([spec["name"]] + [f"{k}={v}" for k, v in spec.items() if k != "name"])

        return f"{show(self.sampler)} + {show(self.cache)}"


@dataclass
class Workload:
    """Requests of one step count at one guidance, with the reference's images and work."""

    requests: list[GenerationRequest]
    labels: torch.Tensor | None
    """The digit each image should show (embedded digits models), else None: then PSNR alone judges."""
    images: torch.Tensor
    stats: GenerationStats


class Tuner:
    """The search of one model config within a time budget; `tune` runs it per step count."""

    def __init__(self, config: ModelConfig, target_psnr: float, budget_minutes: float, pairs: int = 3) -> None:
        limits = config.limits.model_copy(
            update={"allow_overrides": True, "overrides": {"sampler": ("*",), "cache": ("*",)}}
        )
        plan = config.plan.model_copy(update={"tuned": None})
        self.engine: Engine = calibration_engine(config.model_copy(update={"limits": limits, "plan": plan}), "cache")
        self.config, self.target, self.pairs = config, target_psnr, pairs
        self.deadline = time.monotonic() + 60 * budget_minutes
        self.started = time.monotonic()
        self.tried = 0
        self.refused: list[str] = []
        self.confirmations: list[dict[str, Any]] = []
        """Every held-back check: the candidate, its figures and whether it passed (reported with the plans)."""
        self.judge = DigitsJudge.for_model(config)

    # -- running ----------------------------------------------------------------------------------

    def workload(self, steps: int, images: int, first_seed: int, guidance: float | None) -> Workload:
        requests = [
            r.model_copy(update={"guidance_scale": guidance})
            for r in calibration_requests(self.engine, images, steps, first_seed)
        ]
        reference, stats = self.run(requests, None, None)
        labels = None if self.judge is None else self.judge.labels(requests)
        return Workload(requests, labels, reference, stats)

    def run(self, requests, sampler: dict | None, cache: dict | None) -> tuple[torch.Tensor, GenerationStats]:
        """Images in [-1, 1] and stats of `requests` as one batch, under `sampler` and `cache` (None: the plan's)."""
        steps = None if sampler is None else sampler["steps"]
        update = {"sampler": sampler, "cache": cache}
        changed = [r.model_copy(update=update | {"steps": steps or r.steps}) for r in requests]
        results = self.engine.generate_batch(changed)
        return torch.cat([r.images for r in results]) * 2 - 1, results[0].stats

    def measure(self, candidate: Candidate, work: Workload) -> bool:
        """Run `candidate` on the search workload; False when the model cannot run it (noted in `refused`)."""
        from ditserve.quality import mean_finite, psnr

        self.tried += 1
        try:
            images, stats = self.run(work.requests, candidate.sampler, candidate.cache)
        except (PlanError, RequestError) as err:
            self.refused.append(f"{candidate.steps} steps, {candidate.label}: {err}")
            return False
        candidate.psnr = mean_finite(psnr(images, work.images))
        candidate.count_ratio = stats.block_evaluations / work.stats.block_evaluations
        return True

    def left(self, until: float) -> bool:
        return time.monotonic() < until

    # -- the search -------------------------------------------------------------------------------

    def search(self, steps: int, until: float) -> list[Candidate]:
        """Every candidate measured on the search workload of `steps` (stage 1 and 2 of the module's docstring)."""
        work = self.workload(steps, SEARCH_IMAGES, FIRST_SEED, None)
        plan_sampler = self.engine.sampler.config.model_dump(exclude_defaults=True) | {"name": self.engine.sampler.name}
        found = []
        for name in (plan_sampler["name"], *FAST_SAMPLERS):
            roomy = 0
            for fraction in STEP_FRACTIONS:  # fewest steps first: past two roomy settings, more steps only cost
                k = max(1, round(steps * fraction))
                spec = {**plan_sampler, "steps": k} if name == plan_sampler["name"] else {"name": name, "steps": k}
                candidate = Candidate(steps, spec, {"name": "none"})
                if roomy == 2 or not self.left(until) or not self.measure(candidate, work):
                    break
                found.append(candidate)
                roomy += candidate.psnr >= self.target + CACHE_ROOM_DB
        roomy_bases = sorted(
            (c for c in found if c.psnr >= self.target + CACHE_ROOM_DB), key=lambda c: (c.count_ratio, -c.psnr)
        )
        bases = [c.sampler for c in roomy_bases[:MAX_BASES]] + [{**plan_sampler, "steps": steps}]
        families = [(name, knob) for name, knob in KNOBS.items() if name in CACHES]
        for k, base in enumerate(bases):
            climbs = {name: self.climb(steps, base, name, knob, work, until) for name, knob in families}
            found += [c for measured in climbs.values() for c in measured]
            if k == 0:
                families = [f for f in families if f[0] in promising(climbs, self.target)]
        return [c for c in found if c.psnr >= self.target]

    def climb(self, steps, sampler, name, knob, work, until) -> list[Candidate]:
        """Cache `name` on `sampler` from its defaults, harsher until it misses the target (gentler once if the
        defaults already miss)."""
        defaults = {"name": name}
        integer = isinstance(knob_value(defaults, knob), int)
        measured = []
        for spec in valid([defaults]) + stepped(defaults, knob, HARSHER_OFFSETS if integer else HARSHER):
            candidate = Candidate(steps, sampler, spec)
            if not self.left(until) or not self.measure(candidate, work):
                break
            measured.append(candidate)
            if candidate.psnr < self.target:
                break
        if len(measured) == 1 and measured[0].psnr < self.target:
            for spec in stepped(defaults, knob, GENTLER_OFFSETS if integer else GENTLER):
                candidate = Candidate(steps, sampler, spec)
                if self.left(until) and self.measure(candidate, work):
                    measured.append(candidate)
        return measured

    # -- confirmation and timing ------------------------------------------------------------------

    def confirm(self, frontier: list[Candidate], guidances: list[float], until: float) -> list[Candidate]:
        """The frontier's candidates that keep the target (and the digits' bounds) on held-back seeds."""
        from ditserve.quality import mean_finite, psnr

        steps = frontier[0].steps
        works = {g: self.workload(steps, HELD_BACK_IMAGES, HELD_BACK_SEED, g) for g in guidances}
        passed: list[Candidate] = []
        for candidate in frontier:
            if len(passed) >= CONFIRM or (passed and not self.left(until)):
                break
            if passed and candidate.count_ratio > COUNT_SLACK * passed[0].count_ratio:
                break
            figures, ok = {}, True
            for g, work in works.items():
                images, _ = self.run(work.requests, candidate.sampler, candidate.cache)
                value = mean_finite(psnr(images, work.images))
                figures["psnr"] = min(figures.get("psnr", value), value)
                ok = ok and value >= self.target
                if self.judge is not None and g == guidances[len(guidances) // 2]:
                    mine, theirs = self.judge(images, work.labels), self.judge(work.images, work.labels)
                    figures |= mine | {f"reference_{k}": v for k, v in theirs.items()}
                    ok = ok and mine["accuracy"] >= theirs["accuracy"] - ACCURACY_DROP
                    ok = ok and mine["frechet"] <= FRECHET_RATIO * theirs["frechet"]
            candidate.held_back = figures
            self.confirmations.append({"candidate": candidate.label, "count_ratio": round(candidate.count_ratio, 3)})
            self.confirmations[-1] |= {"search_psnr": round(candidate.psnr, 2), "passed": ok}
            self.confirmations[-1] |= {k: round(v, 3) for k, v in figures.items()}
            if ok:
                passed.append(candidate)
        return passed

    def time(self, candidates: list[Candidate], work: Workload) -> dict[int, float]:
        """Median wall ratio (reference seconds / candidate seconds) of each candidate over alternating pairs."""
        ratios: dict[int, list[float]] = {id(c): [] for c in candidates}
        for pair in range(self.pairs):
            for candidate in candidates:
                order = [None, candidate] if pair % 2 == 0 else [candidate, None]
                seconds = {}
                for who in order:
                    started = time.perf_counter()
                    self.run(work.requests, None if who is None else who.sampler, None if who is None else who.cache)
                    seconds[who is None] = time.perf_counter() - started
                ratios[id(candidate)].append(seconds[True] / seconds[False])
        return {key: statistics.median(values) for key, values in ratios.items()}

    def tune_steps(self, steps: int, guidances: list[float], band: tuple[float, float], until: float):
        """The tuned plan for `steps` (None when no candidate kept the target on held-back seeds) and a summary."""
        search_until = time.monotonic() + SEARCH_SHARE * (until - time.monotonic())
        tried_before, started = self.tried, time.monotonic()
        met = self.search(steps, search_until)
        frontier = sorted(pareto(met), key=lambda c: c.count_ratio)
        passed = self.confirm(frontier, guidances, until) if frontier else []
        summary = {"steps": steps, "candidates": self.tried - tried_before, "met_in_search": len(met)}
        summary |= {"frontier": len(frontier), "confirmed": len(passed)}
        if not passed:
            summary["seconds"] = round(time.monotonic() - started, 1)
            return None, summary
        work = self.workload(steps, HELD_BACK_IMAGES, HELD_BACK_SEED, None)
        walls = self.time(passed if self.left(until) else passed[:1], work)  # out of time: the cheapest count only
        passed = [c for c in passed if id(c) in walls]
        best = max(passed, key=lambda c: walls[id(c)])
        measured = {"psnr": best.held_back["psnr"], "search_psnr": best.psnr, "wall_ratio": walls[id(best)]}
        measured |= {"count_ratio": best.count_ratio}
        measured |= {k: v for k, v in best.held_back.items() if k != "psnr"}
        summary |= {"timed": {c.label: round(walls[id(c)], 3) for c in passed}}
        summary["seconds"] = round(time.monotonic() - started, 1)
        plan = TunedPlan(steps=steps, guidance=band, sampler=best.sampler, cache=best.cache, measured=measured)
        return plan, summary


def promising(climbs: dict[str, list[Candidate]], target: float) -> set[str]:
    """The cache families worth climbing on the other bases: those whose cheapest setting that met the target on
    the first base came within `COUNT_SLACK` of the cheapest of all (every family when none met it)."""
    best = {name: min((c.count_ratio for c in met if c.psnr >= target), default=None) for name, met in climbs.items()}
    reached = [ratio for ratio in best.values() if ratio is not None]
    if not reached:
        return set(climbs)
    return {name for name, ratio in best.items() if ratio is not None and ratio <= COUNT_SLACK * min(reached)}


def pareto(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both count ratio (lower) and PSNR (higher), one of each tie: settings that
    differ only where they make no difference (two spacings that round to one schedule at few steps) measure the
    same, and confirming both would spend a confirmation on one plan."""

    def beats(o: Candidate, c: Candidate) -> bool:
        at_least = o.count_ratio <= c.count_ratio and o.psnr >= c.psnr
        return at_least and (o.count_ratio, o.psnr) != (c.count_ratio, c.psnr)

    front: list[Candidate] = []
    for c in candidates:
        tie = any((o.count_ratio, o.psnr) == (c.count_ratio, c.psnr) for o in front)
        if not tie and not any(beats(o, c) for o in candidates):
            front.append(c)
    return front


class DigitsJudge:
    """Accuracy of the digits classifier and Fréchet distance of its features to the held-out digits: the bounds
    beside PSNR on the embedded digits models (other models have no classifier, and PSNR judges alone)."""

    def __init__(self) -> None:
        from ditserve.models.digits.data import load_split
        from ditserve.quality import load_classifier

        self.classifier = load_classifier()
        with torch.no_grad():
            self.held_out = self.classifier.features(load_split().held_out_images)

    @classmethod
    def for_model(cls, config: ModelConfig) -> DigitsJudge | None:
        builtin = config.model.path.startswith(f"{BUILTIN_PREFIX}digits-")
        return cls() if builtin else None

    @staticmethod
    def labels(requests: list[GenerationRequest]) -> torch.Tensor:
        """The digit each request asks for: its class, or the digit its prompt names (the model's prompts)."""
        from ditserve.models.digits.prompts import TEMPLATES, all_prompts

        index = {prompt: k // len(TEMPLATES) for k, prompt in enumerate(all_prompts())}
        return torch.tensor([r.class_label if r.prompt is None else index[r.prompt] for r in requests])

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        from ditserve.quality import frechet_distance

        with torch.no_grad():
            accuracy = (self.classifier(images).argmax(dim=1) == labels).float().mean().item()
            frechet = frechet_distance(self.classifier.features(images), self.held_out)
        return {"accuracy": accuracy, "frechet": frechet}


def tune(
    config: ModelConfig,
    target_psnr: float,
    steps: list[int],
    budget_minutes: float,
    band: tuple[float, float] | None = None,
    pairs: int = 3,
) -> TunedPlans:
    """Tune `config`'s model for requests of each of `steps` (the module's docstring says how). `band`: the
    guidance scales the plans serve, confirmed at both ends and the model's default (default: the default)."""
    tuner = Tuner(config, target_psnr, budget_minutes, pairs)
    default = config.model.guidance_scale
    band = band or (default, default)
    guidances = sorted({band[0], default, band[1]})
    plans, summaries = [], []
    for k, n in enumerate(steps):
        until = time.monotonic() + (tuner.deadline - time.monotonic()) / (len(steps) - k)
        plan, summary = tuner.tune_steps(n, guidances, band, until)
        summaries.append(summary)
        if plan is not None:
            plans.append(plan)
    if not plans:
        raise PlanError(
            f"no sampler and cache kept {target_psnr} dB on held-back seeds at any of {steps} steps within the "
            "budget: lower --target-psnr or raise --budget-minutes"
        )
    search = {"candidates": tuner.tried, "seconds": round(time.monotonic() - tuner.started, 1)}
    search |= {"search_images": SEARCH_IMAGES, "held_back_images": HELD_BACK_IMAGES, "timing_pairs": pairs}
    search |= {"per_steps": summaries, "confirmations": tuner.confirmations, "refused": tuner.refused}
    return TunedPlans(model=config.model.name, target_psnr=target_psnr, plans=tuple(plans), search=search)
