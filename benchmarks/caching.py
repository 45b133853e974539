"""Caching strategies on the embedded digits DiT, with their peers, in one run: speed and fidelity.

python benchmarks/caching.py [--per-class 20] [--timing-images 20] [--timing-runs 5] [--only fora,teacache,peers]

Every configuration runs the same requests (50 DDIM steps, guidance 4, fixed seeds, `--per-class`
images of each digit) as the uncached model in the same process, and is reported as: the ratio of
transformer-block evaluations (and of attention-layer evaluations, where PAB and FasterCache
save), the wall speedup (median of `--timing-runs` runs of one
`--timing-images` request, against the uncached median measured in this run), PSNR and SSIM against
the uncached images of the same seeds, the classifier's accuracy and the Fréchet distance of the
classifier's features to the held-out digits. Peers run on the same engine (uncached plan) with their
own code: diffusers' FirstBlockCache and TaylorSeer hooks, cache-dit's DBCache (+TaylorSeer) — the
`peers` extra (`pip install -e .[peers]`). TeaCache, SmoothCache, Block Caching and Learning-to-Cache
are calibrated in the run, on seeds the measurement does not use. Writes benchmarks/results/caching.md
(+ .json) and caching-pareto.png and prints the targets of issue 3 with pass/fail. Each measured row is
merged into the existing JSON by its label (a row measured again replaces the old one), so `--only`
adds or refreshes rows and a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ditserve.config import load_config
from ditserve.engine import Engine
from ditserve.models.digits.data import load_split
from ditserve.quality import load_classifier, mean_finite, psnr, ssim
from ditserve.quality.frechet import frechet_distance
from ditserve.registry import CACHES
from ditserve.request import GenerationRequest

RESULTS = Path(__file__).parent / "results"
STEPS, GUIDANCE, SEED = 50, 4.0, 100_000
"""The measured requests use seeds from SEED up; calibration uses seeds 1000 + k, which do not overlap."""

OURS: list[dict] = [
    {"name": "fora", "interval": 2},
    {"name": "fora", "interval": 3},
    {"name": "fora", "interval": 5},
    {"name": "delta-dit", "interval": 2, "blocks": 3},
    {"name": "delta-dit", "interval": 3, "blocks": 4},
    {"name": "dbcache", "threshold": 0.05, "front": 1, "back": 0},
    {"name": "dbcache", "threshold": 0.12, "front": 1, "back": 1, "max_cached": 4},
    {"name": "dbcache", "threshold": 0.25, "front": 1, "back": 0, "max_cached": 6},
    {"name": "fbcache", "threshold": 0.05},
    {"name": "fbcache", "threshold": 0.1},
    {"name": "fbcache", "threshold": 0.2},
    {"name": "taylorseer", "interval": 3, "order": 1},
    {"name": "taylorseer", "interval": 5, "order": 2},
    {"name": "teacache", "threshold": 0.1},
    {"name": "teacache", "threshold": 0.2},
    {"name": "teacache", "threshold": 0.4},
    {"name": "ab-cache", "interval": 3, "order": 2},
    {"name": "ab-cache", "interval": 4, "order": 1},
    {"name": "ab-cache", "interval": 5, "order": 2},
    {"name": "smoothcache", "alpha": 0.1},
    {"name": "smoothcache", "alpha": 0.25},
    {"name": "smoothcache", "alpha": 0.5},
    {"name": "adacache"},
    {"name": "adacache", "codebook": [[0.03, 6], [0.06, 4], [0.1, 2]]},
    {"name": "adacache", "codebook": [[0.05, 8], [0.1, 6], [0.2, 3]]},
    {"name": "block-caching", "threshold": 0.1},
    {"name": "block-caching", "threshold": 0.2},
    {"name": "block-caching", "threshold": 0.4},
    {"name": "learning-to-cache", "threshold": 0.3},
    {"name": "learning-to-cache", "threshold": 0.5},
    {"name": "learning-to-cache", "threshold": 0.7},
    {"name": "pab", "self_interval": 2},
    {"name": "pab", "self_interval": 3},
    {"name": "pab", "self_interval": 4, "window": [-1, 950]},
    {"name": "fastercache", "interval": 2},
    {"name": "fastercache", "interval": 3},
    {"name": "fastercache", "interval": 3, "window": [-1, 950]},
]
"""Our strategies at 2–3 settings each."""

QUICK: list[dict] = [OURS[i] for i in (1, 2, 3, 6, 9, 11, 14, 16, 20, 22, 26, 29, 31, 34)]
"""`--quick`: one or two settings per strategy, for a shared CPU with little time."""
QUICK_PEERS = (1, 3, 5, 7)

CALIBRATED = {"teacache", "smoothcache", "block-caching", "learning-to-cache"}
PER_SETTING = {"block-caching"}
"""Calibrated for each setting (its alignment is fitted for the threshold); the others once per strategy."""


@dataclass
class Row:
    label: str
    source: str
    """`ditserve`, `diffusers` or `cache-dit`."""
    block_ratio: float
    speedup: float
    seconds: list[float]
    """The timed runs of this configuration."""
    uncached_seconds: list[float]
    """The uncached runs interleaved with them (the speedup is the ratio of the two medians)."""
    psnr: float
    ssim: float
    accuracy: float
    frechet: float
    extra: dict = field(default_factory=dict)
    """`run`: when the invocation that measured the row started."""
    attention_ratio: float | None = None
    """Attention-layer evaluations / uncached (None in rows measured before it was counted)."""


# -- peers: other implementations installed on the uncached engine's transformer ----------------------


class Peer:
    """A peer cache: `install` on the engine's transformer once, `before` every request (their reset)."""

    label = ""
    source = ""

    def install(self, engine: Engine) -> None:
        raise NotImplementedError

    def before(self) -> None:
        raise NotImplementedError


class DiffusersPeer(Peer):
    source = "diffusers"

    def __init__(self, label: str, apply: Callable) -> None:
        self.label, self.apply = label, apply

    def install(self, engine: Engine) -> None:
        from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

        transformer = engine.model.transformer
        self.apply(transformer)
        self.registry = HookRegistry.check_if_exists_or_initialize(transformer)
        transformer.register_forward_pre_hook(lambda module, args: _set_cache_context(module, CacheContext("cond")))

    def before(self) -> None:
        self.registry.reset_stateful_hooks()


def diffusers_fbc(threshold: float) -> Peer:
    def apply(transformer):
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

        apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=threshold))

    return DiffusersPeer(f"diffusers FirstBlockCache threshold={threshold}", apply)


def diffusers_taylorseer(interval: int, order: int) -> Peer:
    def apply(transformer):
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

        config = TaylorSeerCacheConfig(cache_interval=interval, max_order=order, taylor_factors_dtype=torch.float32)
        apply_taylorseer_cache(transformer, config)

    return DiffusersPeer(f"diffusers TaylorSeer interval={interval} order={order}", apply)


class CacheDiTPeer(Peer):
    """cache-dit 1.5.3's DBCache (optionally with its TaylorSeer calibrator), transformer-only.

    Two workarounds for diffusers' DiT, as found on this machine: the block forward-pattern check is
    off (the engine's block counter wraps `forward`, which hides the signature it inspects), and the
    cached-blocks wrapper is given block 0's `norm1`, which DiT reads after the block loop."""

    source = "cache-dit"

    def __init__(self, threshold: float, taylorseer: int = 0, front: int = 1, back: int = 0) -> None:
        self.threshold, self.taylorseer, self.front, self.back = threshold, taylorseer, front, back
        suffix = f" + TaylorSeer order {taylorseer}" if taylorseer else ""
        self.label = f"cache-dit DBCache F{front}B{back} threshold={threshold}{suffix}"

    def install(self, engine: Engine) -> None:
        import cache_dit
        from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern, TaylorSeerCalibratorConfig
        from cache_dit.caching.cache_blocks.pattern_3_4_5 import CachedBlocks_Pattern_3_4_5

        CachedBlocks_Pattern_3_4_5.norm1 = property(lambda self: self.transformer_blocks[0].norm1)
        self.transformer = transformer = engine.model.transformer
        adapter = BlockAdapter(
            transformer=transformer,
            blocks=transformer.transformer_blocks,
            forward_pattern=ForwardPattern.Pattern_3,
            has_separate_cfg=False,
            check_forward_pattern=False,
        )
        config = DBCacheConfig(
            Fn_compute_blocks=self.front,
            Bn_compute_blocks=self.back,
            residual_diff_threshold=self.threshold,
            enable_separate_cfg=False,
            num_inference_steps=STEPS,
        )
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=self.taylorseer) if self.taylorseer else None
        cache_dit.enable_cache(adapter, cache_config=config, calibrator_config=calibrator)

    def before(self) -> None:
        import cache_dit

        cache_dit.refresh_context(self.transformer, num_inference_steps=STEPS)


PEERS: list[Callable[[], Peer]] = [
    lambda: diffusers_fbc(0.05),
    lambda: diffusers_fbc(0.1),
    lambda: diffusers_taylorseer(3, 1),
    lambda: diffusers_taylorseer(5, 2),
    lambda: CacheDiTPeer(0.05),
    lambda: CacheDiTPeer(0.1),
    lambda: CacheDiTPeer(0.2),
    lambda: CacheDiTPeer(0.12, taylorseer=1),
    lambda: CacheDiTPeer(0.25, taylorseer=1),
]


# -- measurement -------------------------------------------------------------------------------------


def requests(per_class: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            class_label=c, num_images=per_class, steps=STEPS, guidance_scale=GUIDANCE, seed=SEED + 1000 * c
        )
        for c in range(10)
    ]


def timing_request(images: int) -> GenerationRequest:
    return GenerationRequest(class_label=7, num_images=images, steps=STEPS, guidance_scale=GUIDANCE, seed=SEED - 1)


def run(engine: Engine, per_class: int, before: Callable[[], None]) -> tuple[torch.Tensor, float, float]:
    """All measured images (class-major) and the ratios of block and of attention-layer evaluations to
    the uncached counts."""
    images, blocks, attention = [], [0, 0], [0, 0]
    for request in requests(per_class):
        before()
        result = engine.generate(request)
        images.append(result.images)
        stats = result.stats
        blocks = [blocks[0] + stats.block_evaluations, blocks[1] + stats.block_evaluations_full]
        attention = [attention[0] + stats.attention_evaluations, attention[1] + stats.attention_evaluations_full]
    return torch.cat(images), blocks[0] / blocks[1], attention[0] / attention[1]


def paired_timings(
    engine: Engine, uncached: Engine, images: int, runs: int, before: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """Seconds of `runs` timed requests on `engine`, each right after one on the uncached engine, so both
    medians come from the same minutes of a shared, noisy CPU."""
    cached_seconds, uncached_seconds = [], []
    before()
    engine.generate(timing_request(2))  # warm-up
    for _ in range(runs):
        started = time.perf_counter()
        uncached.generate(timing_request(images))
        uncached_seconds.append(time.perf_counter() - started)
        before()
        started = time.perf_counter()
        engine.generate(timing_request(images))
        cached_seconds.append(time.perf_counter() - started)
    return cached_seconds, uncached_seconds


class Judge:
    """Fidelity of a set of images against the uncached ones and the held-out digits."""

    def __init__(self, per_class: int) -> None:
        self.classifier = load_classifier()
        self.labels = torch.arange(10).repeat_interleave(per_class)
        with torch.no_grad():
            self.held_out = self.classifier.features(load_split().held_out_images)
        self.reference: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        signed = images * 2 - 1
        with torch.no_grad():
            accuracy = (self.classifier(signed).argmax(dim=1) == self.labels).float().mean().item()
            frechet = frechet_distance(self.classifier.features(signed), self.held_out)
        if self.reference is None:
            self.reference = signed
        return {
            "psnr": mean_finite(psnr(signed, self.reference)),
            "ssim": ssim(signed, self.reference).mean().item(),
            "accuracy": accuracy,
            "frechet": frechet,
        }


def engine_with(config, cache: dict) -> Engine:
    plan = config.plan.model_copy(update={"cache": CACHES.parse(cache, "plan.cache")})
    return Engine(config.model_copy(update={"plan": plan}))


def label_of(cache: dict) -> str:
    settings = " ".join(f"{k}={json.dumps(v).replace(' ', '')}" for k, v in cache.items() if k != "name")
    return f"{cache['name']} {settings}".strip()


# -- report ------------------------------------------------------------------------------------------


def to_markdown(rows: list[Row], base: Row, args, targets: list[str]) -> str:
    lines = [
        "# Caching on the embedded digits DiT",
        "",
        f"`python benchmarks/caching.py --per-class {args.per_class} --timing-images {args.timing_images} "
        f"--timing-runs {args.timing_runs}` — {STEPS} DDIM steps, guidance {GUIDANCE}, {10 * args.per_class} "
        f"samples (fixed seeds) for fidelity; wall time: median of {args.timing_runs} runs of one "
        f"{args.timing_images}-image request, as a ratio to the median of uncached runs interleaved with them "
        f"(same process, same minutes: the CPU is shared). CPU: {torch.get_num_threads()} threads. "
        "PSNR/SSIM against the uncached images of the same seeds (images in [-1, 1]); Fréchet distance of the "
        "digits classifier's features to the held-out digits; accuracy of the classifier on the requested digit. "
        "Block and attention evals: evaluations of transformer blocks and of attention layers as a ratio to "
        "uncached (PAB and FasterCache reuse attention outputs inside blocks that still run, so only the "
        "attention count shows what they skip; on this DiT every block has one attention layer).",
        *runs_note(rows),
        "",
        "| configuration | source | block evals | attention evals | wall speedup | cached s | uncached s | PSNR dB "
        "| SSIM | accuracy | Fréchet |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in [base, *rows]:
        attention = "–" if row.attention_ratio is None else f"{row.attention_ratio:.3f}"
        lines.append(
            f"| {row.label} | {row.source} | {row.block_ratio:.3f} | {attention} | {row.speedup:.2f}× | "
            f"{median(row.seconds)} | "
            f"{median(row.uncached_seconds)} | {row.psnr:.1f} | "
            f"{row.ssim:.4f} | {row.accuracy:.3f} | {row.frechet:.3f} |"
        )
    lines += ["", "## Targets (goals, not CI gates)", "", *[f"- {t}" for t in targets], ""]
    lines += ["![wall speedup vs PSNR](caching-pareto.png)", ""]
    return "\n".join(lines)


def runs_note(rows: list[Row]) -> list[str]:
    """A sentence when the rows come from more than one invocation (merged by `write`)."""
    runs = {row.extra.get("run", "an earlier run") for row in rows}
    if len(runs) < 2:
        return []
    return [
        "",
        f"Rows from {len(runs)} invocations of this command, merged by label: each wall speedup is against the "
        "uncached runs interleaved with that row, so speedups compare across rows and absolute seconds do not; "
        "PSNR, SSIM, accuracy and Fréchet use the same seeds and are deterministic. Rows without an attention "
        "count were measured before it existed.",
    ]


def median(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f}" if seconds else "–"


def check_targets(rows: list[Row], base: Row) -> list[str]:
    ours = [r for r in rows if r.source != "cache-dit" and r.source != "diffusers"]
    # Fréchet within 10% either way: the goal is fidelity to the uncached model, and a distance far below its
    # (heavy caching smooths digits toward the average one) is a changed distribution, not a better one
    good = [
        r
        for r in ours
        if r.speedup >= 3.0
        and base.accuracy - r.accuracy <= 0.01
        and abs(r.frechet - base.frechet) <= 0.1 * base.frechet
    ]
    best = max(good, key=lambda r: r.speedup, default=None)
    first = (
        f"PASS — ≥ 3× wall speedup with accuracy within 1 point and Fréchet within 10% of uncached: {best.label} "
        f"({best.speedup:.2f}×, accuracy {best.accuracy:.3f} vs {base.accuracy:.3f}, Fréchet {best.frechet:.3f} vs "
        f"{base.frechet:.3f}, {best.psnr:.1f} dB)"
        if best
        else "FAIL — no configuration of ours reaches ≥ 3× wall speedup with accuracy within 1 point and Fréchet "
        "within 10% of uncached"
    )
    peers = [r for r in rows if r.source == "cache-dit"]
    if not peers:
        return [first, "NOT MEASURED — cache-dit did not run (install the `peers` extra)"]
    fastest = max(peers, key=lambda r: r.speedup)
    rivals = [r for r in ours if r.psnr >= fastest.psnr]
    if not rivals:
        return [first, f"FAIL — none of ours reaches the PSNR of cache-dit's fastest ({fastest.label}, "
                       f"{fastest.psnr:.1f} dB)"]  # fmt: skip
    rival = max(rivals, key=lambda r: r.speedup)
    ratio = rival.speedup / fastest.speedup
    verdict = "PASS" if ratio >= 1.2 else "FAIL"
    second = (
        f"{verdict} — at equal or better PSNR, our fastest ({rival.label}: {rival.speedup:.2f}×, {rival.psnr:.1f} dB) "
        f"is {ratio:.2f}× as fast as cache-dit's fastest ({fastest.label}: {fastest.speedup:.2f}×, "
        f"{fastest.psnr:.1f} dB); target ≥ 1.2×"
    )
    return [first, second]


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 7))
    styles = {"ditserve": ("o", "tab:blue"), "diffusers": ("s", "tab:green"), "cache-dit": ("^", "tab:red")}
    for source, (marker, color) in styles.items():
        chosen = [r for r in rows if r.source == source]
        ax.scatter([r.speedup for r in chosen], [r.psnr for r in chosen], marker=marker, color=color, label=source)
        for r in chosen:
            ax.annotate(r.label, (r.speedup, r.psnr), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ours = sorted((r for r in rows if r.source == "ditserve"), key=lambda r: -r.speedup)
    frontier, best = [], float("-inf")
    for r in ours:
        if r.psnr > best:
            frontier.append(r)
            best = r.psnr
    ax.plot([r.speedup for r in frontier], [r.psnr for r in frontier], color="tab:blue", alpha=0.4)
    ax.set_xlabel("wall speedup vs uncached (median)")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title(f"Caching on digits-dit: {STEPS} DDIM steps, CFG {GUIDANCE}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)  # written after every row: an open figure each time would pile up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="builtin:digits-dit")
    parser.add_argument("--per-class", type=int, default=20, help="fidelity samples per digit (10 digits)")
    parser.add_argument("--timing-images", type=int, default=20, help="images in each timed request")
    parser.add_argument("--timing-runs", type=int, default=5)
    parser.add_argument("--calibration-samples", type=int, default=10)
    parser.add_argument("--only", help="comma-separated cache names (and 'peers') to run, in that order; default all")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--quick", action="store_true", help="the QUICK subset of settings and peers")
    parser.add_argument("--output", default=str(RESULTS / "caching.md"))
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    config = load_config(args.config)
    nothing = lambda: None  # noqa: E731

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    judge = Judge(args.per_class)
    uncached = engine_with(config, {"name": "none"})
    uncached.generate(timing_request(2))  # warm-up
    images, blocks, attention = run(uncached, args.per_class, nothing)
    base = Row("uncached", "ditserve", blocks, 1.0, [], [], **judge(images), attention_ratio=attention)
    print(f"uncached: accuracy {base.accuracy:.3f}, Fréchet {base.frechet:.3f}")

    calibrations: dict[str, dict] = {}
    directory = tempfile.mkdtemp(prefix="caching-bench-")  # Learning-to-Cache writes its router there

    def calibrated(cache: dict) -> dict:
        """`cache` with the fields its calibration writes, calibrated on first use."""
        if cache["name"] not in CALIBRATED:
            return cache
        key = label_of(cache) if cache["name"] in PER_SETTING else cache["name"]
        if key not in calibrations:
            settings = {k: v for k, v in cache.items() if k != "name"}
            calibrations[key] = CACHES.get(cache["name"]).calibrate(
                uncached, args.calibration_samples, settings, directory
            )
            print(f"calibrated {key}: {json.dumps(calibrations[key])[:200]}")
        return {**cache, **calibrations[key]}

    rows: list[Row] = []

    def measured(label: str, source: str, engine: Engine, before: Callable[[], None]) -> Row:
        seconds, reference = paired_timings(engine, uncached, args.timing_images, args.timing_runs, before)
        images, blocks, attention = run(engine, args.per_class, before)
        speedup = statistics.median(reference) / statistics.median(seconds)
        fidelity = judge(images)
        return Row(label, source, blocks, speedup, seconds, reference, **fidelity, attention_ratio=attention)

    def record(row: Row) -> None:
        row.extra["run"] = stamp
        rows.append(row)
        print(
            f"{row.label}: blocks {row.block_ratio:.3f}, attention {row.attention_ratio:.3f}, {row.speedup:.2f}×, "
            f"{row.psnr:.1f} dB, acc {row.accuracy:.3f}, Fréchet {row.frechet:.2f}",
            flush=True,
        )
        write(rows, base, args)

    jobs: list[dict | Callable[[], Peer]] = list(QUICK if args.quick else OURS)
    if only is not None:
        jobs = [cache for name in only for cache in jobs if cache["name"] == name]  # in the order given
    if not args.no_peers and (only is None or "peers" in only):
        peers = [PEERS[i] for i in QUICK_PEERS] if args.quick else PEERS
        if args.quick:  # interleave, so a run cut short still compares with the peers
            jobs = [job for pair in itertools.zip_longest(jobs, peers) for job in pair if job is not None]
        else:
            jobs += peers
    for job in jobs:
        if isinstance(job, dict):
            try:
                engine = engine_with(config, calibrated(job))
            except Exception as err:  # one strategy's failure must not cost the rest of a long run
                print(f"FAILED {label_of(job)}: {type(err).__name__}: {err}", flush=True)
                continue
            record(measured(label_of(job), "ditserve", engine, nothing))
            continue
        peer = job()
        engine = engine_with(config, {"name": "none"})
        try:
            peer.install(engine)
        except ImportError as err:
            print(f"skipped {peer.label}: {err} (install the `peers` extra)")
            continue
        record(measured(peer.label, peer.source, engine, peer.before))
    for line in check_targets(merged(rows, Path(args.output)), base):
        print(line)


def merged(rows: list[Row], output: Path) -> list[Row]:
    """The rows already in `output`'s JSON (without its uncached row), with `rows` replacing or joining them
    by label, in the JSON's order and new labels at the end."""
    path = output.with_suffix(".json")
    kept = [Row(**data) for data in json.loads(path.read_text())[1:]] if path.is_file() else []
    fresh = {row.label: row for row in rows}
    together = [fresh.pop(row.label, row) for row in kept]
    return together + list(fresh.values())


def write(rows: list[Row], base: Row, args) -> None:
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = merged(rows, output)
    targets = check_targets(rows, base)
    output.write_text(to_markdown(rows, base, args, targets))
    output.with_suffix(".json").write_text(json.dumps([asdict(r) for r in [base, *rows]], indent=1) + "\n")
    plot(rows, output.with_name("caching-pareto.png"))


if __name__ == "__main__":
    main()
