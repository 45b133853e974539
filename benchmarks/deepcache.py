"""DeepCache on digits-unet at 28 and 50 steps, against no cache and the `deepcache` package: speed and fidelity.

    pip install -e .[peers]               # the peer, deepcache 0.1.1 (without it the file says so instead of its rows)
    python benchmarks/deepcache.py        # about 10 minutes on 2 shared cores

For each step count (guidance 4, the served DDIM plan) one fidelity workload — `--per-class` images of every
digit, fixed seeds — runs uncached and with each DeepCache setting (`SETTINGS`: intervals 2–6 on the cheapest
branch, and deeper branches). Each row gives the stage-evaluation (block) count as a ratio to uncached, PSNR
and SSIM against the uncached images of the same seeds, the digits classifier's accuracy and the Fréchet
distance of its features to the held-out digits. Timing runs a smaller workload (`--timing-images`) in
alternating order against the uncached engine in the same process (`--repeats` pairs, uncached first in
even pairs): the wall speedup is the median of the pairs' ratios, with their range.

The peer, DeepCache's own `DeepCacheSDHelper`, patches `pipe.unet`'s stages and reads the step from
`pipe.scheduler.timesteps` using the timestep the pipeline passes positionally. It targets Stable
Diffusion pipelines, and diffusers has no class-conditional U-Net pipeline, so it runs in a sampling loop
written here the way diffusers' pipelines call a U-Net (`unet(x, t, class_labels=...)`, DDIM with the
engine's settings, [cond; uncond] batch), on its own copy of the weights; its reference is the same loop
uncached (whose images are checked against the engine's). Its branch ids count layers assuming SD's three per
level (`PEER_SETTINGS` maps them to ours).

Writes benchmarks/results/deepcache.md (+ .json) and prints the goal (DeepCache ≥ 2× wall at ≥ 30 dB).
torch runs on one thread (on a shared 2-core machine two threads per process collapse under load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from fidelity_judge import Judge

from ditserve.engine import Engine
from ditserve.request import GenerationRequest

RESULTS = Path(__file__).parent / "results"
SEED = 0
GUIDANCE = 4.0
GOAL_WALL, GOAL_DB = 2.0, 30.0
SETTINGS = [
    {"interval": 2},
    {"interval": 3},
    {"interval": 4},
    {"interval": 5},
    {"interval": 6},
    {"interval": 3, "branch": 1},
    {"interval": 5, "branch": 1},
]
"""Our settings (branch 0 unless given); the defaults are interval 3, branch 0."""
PEER_SETTINGS = [{"cache_interval": n, "cache_branch_id": b} for n, b in ((3, 0), (5, 0), (3, 1), (5, 1))]
"""The peer's settings (its README's example: interval 3, branch 0). Its branch ids assume SD's three layers per
level (id = 3·level + layer); on digits-unet (two per level: a ResNet, a downsampler) its ids 0, 1 and 3 cut at
our branches 0, 1 and 2, so each of its rows has a twin among ours."""
TWINS = {0: 0, 1: 1, 3: 2}
"""The peer's branch id → our branch that cuts at the same skip connection on digits-unet."""


def requests(steps: int, per_class: int, cache: dict | None = None) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            class_label=c, num_images=per_class, steps=steps, seed=SEED + 1000 * c, guidance_scale=GUIDANCE, cache=cache
        )
        for c in range(10)
    ]


def generate(engine: Engine, asks: list[GenerationRequest]) -> tuple[torch.Tensor, object, float]:
    """(images in [-1, 1], the batch's stats, wall seconds) of the requests as one batch."""
    started = time.perf_counter()
    results = engine.generate_batch(asks)
    return torch.cat([r.images for r in results]) * 2 - 1, results[0].stats, time.perf_counter() - started


def alternate(uncached, cached, repeats: int) -> dict:
    """Wall ratios uncached / cached over `repeats` pairs in alternating order (after one warm-up of the cached run:
    the uncached one is warm from the setting's reference)."""
    cached()
    ratios = []
    for k in range(repeats):
        seconds = {}
        for which in ("u", "c") if k % 2 == 0 else ("c", "u"):
            started = time.perf_counter()
            (uncached if which == "u" else cached)()
            seconds[which] = time.perf_counter() - started
        ratios.append(seconds["u"] / seconds["c"])
    return {"wall": statistics.median(ratios), "wall_min": min(ratios), "wall_max": max(ratios), "ratios": ratios}


# -- the peer -----------------------------------------------------------------------------------------------


class PipelineLoop:
    """The engine's DDIM sampling with guidance, written as diffusers' pipelines call a U-Net, so the `deepcache`
    package (which reads `pipe.unet`, `pipe.scheduler.timesteps` and the positional timestep) runs on it."""

    def __init__(self, engine: Engine) -> None:
        from diffusers import DDIMScheduler, UNet2DModel

        self.unet = UNet2DModel.from_pretrained(engine.model.path, subfolder="unet").eval().requires_grad_(False)
        self.scheduler = DDIMScheduler.from_config(engine.model.scheduler_config)
        self.null = self.unet.config.num_class_embeds - 1

    def __call__(self, steps: int, per_class: int) -> torch.Tensor:
        """Images in [-1, 1] with the engine's seeds (one generator per image, seed + k), every digit in one batch
        as the engine runs the workload."""
        self.scheduler.set_timesteps(steps)
        seeds = [SEED + 1000 * c + k for c in range(10) for k in range(per_class)]
        x = torch.stack([torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(s)) for s in seeds])
        labels = torch.arange(10).repeat_interleave(per_class)
        labels = torch.cat([labels, torch.full_like(labels, self.null)])
        with torch.inference_mode():
            for t in self.scheduler.timesteps:
                cond, uncond = self.unet(torch.cat([x, x]), t, class_labels=labels).sample.chunk(2)
                eps = uncond + GUIDANCE * (cond - uncond)
                x = self.scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        return x.clamp(-1, 1)


def peer_rows(engine: Engine, steps: int, args, reference: torch.Tensor, ours: dict) -> tuple[list[dict], str]:
    """The `deepcache` package's rows at `steps`, and a note (why it did not run, or how its loop matched ours).
    `ours`: our images per setting, to compare each peer row with its twin."""
    try:
        from DeepCache import DeepCacheSDHelper
    except ImportError:
        return [], "the `deepcache` package is not installed (`pip install -e .[peers]`)"
    loop = PipelineLoop(engine)
    plain = loop(steps, args.per_class)
    difference = (plain - reference.clamp(-1, 1)).abs().max().item()
    judge = Judge(plain, torch.arange(10).repeat_interleave(args.per_class))
    timing_per_class = max(1, args.timing_images // 10)
    rows = []
    for setting in PEER_SETTINGS:
        helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=loop.unet, scheduler=loop.scheduler))
        helper.set_params(**setting)
        helper.enable()
        try:
            images = loop(steps, args.per_class)
            timing = alternate(
                lambda helper=helper: (helper.disable(), loop(steps, timing_per_class), helper.enable()),
                lambda: loop(steps, timing_per_class),
                args.repeats,
            )
        finally:
            helper.disable()
        twin = {"interval": setting["cache_interval"], "branch": TWINS[setting["cache_branch_id"]]}
        twin_key = json.dumps(twin, sort_keys=True)
        versus = (images - ours[twin_key].clamp(-1, 1)).abs().max().item() if twin_key in ours else None
        rows.append({"source": "deepcache 0.1.1", "setting": setting, "blocks": None, **judge(images), **timing})
        rows[-1]["max_difference_to_ours"] = versus
        print(f"  peer {setting}: {rows[-1]['psnr']:.1f} dB, {timing['wall']:.2f}x, vs ours {versus}", flush=True)
    note = (
        f"its loop uncached vs the engine uncached: max |difference| {difference:.1e} (images in [-1, 1]); each "
        "peer row vs our twin setting (same interval, the branch that cuts at the same skip): max |difference| "
        + ", ".join(f"{r['max_difference_to_ours']:.1e}" for r in rows if r["max_difference_to_ours"] is not None)
    )
    return rows, note


# -- ours ---------------------------------------------------------------------------------------------------


def our_rows(engine: Engine, steps: int, args, judge: Judge) -> tuple[list[dict], dict]:
    """Our rows at `steps`, and our images per setting (the peer's twins are compared with them)."""
    rows, images_of = [], {}
    timing_per_class = max(1, args.timing_images // 10)
    for setting in SETTINGS:
        cache = {"name": "deepcache", **setting}
        images, stats, _ = generate(engine, requests(steps, args.per_class, cache))
        timing = alternate(
            lambda: generate(engine, requests(steps, timing_per_class)),
            lambda cache=cache: generate(engine, requests(steps, timing_per_class, cache)),
            args.repeats,
        )
        images_of[json.dumps({"branch": 0, **setting}, sort_keys=True)] = images
        blocks = stats.block_evaluations / stats.block_evaluations_full
        rows.append({"source": "ours", "setting": setting, "blocks": blocks, **judge(images), **timing})
        print(f"  {setting}: blocks {blocks:.3f}, {rows[-1]['psnr']:.1f} dB, {timing['wall']:.2f}x", flush=True)
    return rows, images_of


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| source | setting | blocks | wall × (range) | PSNR dB | SSIM | accuracy | Fréchet |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        setting = ", ".join(f"{k} {v}" for k, v in r["setting"].items())
        blocks = "—" if r["blocks"] is None else f"{r['blocks']:.3f}"
        wall = f"{r['wall']:.2f} ({r['wall_min']:.2f}–{r['wall_max']:.2f})"
        lines.append(
            f"| {r['source']} | {setting} | {blocks} | {wall} | {r['psnr']:.1f} | {r['ssim']:.4f} | "
            f"{r['accuracy']:.3f} | {r['frechet']:.1f} |"
        )
    return lines


def goal_line(steps: int, rows: list[dict]) -> str:
    """PASS when our fastest setting that holds `GOAL_DB` is at least `GOAL_WALL` times faster than uncached."""
    passing = [r for r in rows if r["source"] == "ours" and r["psnr"] >= GOAL_DB]
    fastest = max(passing, key=lambda r: r["wall"], default=None)
    verdict = "PASS" if fastest is not None and fastest["wall"] >= GOAL_WALL else "FAIL"
    where = (
        "no setting held it"
        if fastest is None
        else f"{fastest['setting']} {fastest['wall']:.2f}x at {fastest['psnr']:.1f} dB"
    )
    return f"Goal at {steps} steps: DeepCache >= {GOAL_WALL:.0f}x wall at >= {GOAL_DB:.0f} dB: {verdict} ({where})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[28, 50])
    parser.add_argument("--per-class", type=int, default=10, help="fidelity images per digit")
    parser.add_argument("--timing-images", type=int, default=20, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timing pairs per row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    engine = Engine.from_config("builtin:digits-unet")
    lines = [
        "# DeepCache on digits-unet",
        "",
        f"`python benchmarks/deepcache.py` ({args.per_class} images per digit for fidelity, {args.timing_images} per "
        f"timed run, {args.repeats} alternating pairs per row; DDIM, guidance {GUIDANCE}; one torch thread; "
        f"load average {os.getloadavg()[1]:.1f} at the start). `blocks`: U-Net stages computed (3 down, middle, "
        "3 up) / uncached; wall: uncached / cached seconds, the median of the pairs (their range).",
        "",
    ]
    report, goals = {}, []
    for steps in args.steps:
        print(f"{steps} steps", flush=True)
        reference, _, _ = generate(engine, requests(steps, args.per_class))
        judge = Judge(reference, torch.arange(10).repeat_interleave(args.per_class))
        uncached = {"source": "uncached", "setting": {}, "blocks": 1.0, **judge(reference)}
        uncached.update(wall=1.0, wall_min=1.0, wall_max=1.0, ratios=[])
        ours, images_of = our_rows(engine, steps, args, judge)
        rows = [uncached, *ours]
        peers, note = peer_rows(engine, steps, args, reference, images_of)
        report[steps] = {"rows": rows + peers, "peer_note": note}
        goals.append(goal_line(steps, rows))
        lines += [f"## {steps} steps", "", *table(rows + peers), "", f"Peer: {note}.", ""]
    cpu = time.process_time()
    lines += [*goals, "", f"Run time {time.perf_counter() - started:.0f} s ({cpu:.0f} s of CPU on one thread)."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deepcache.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "deepcache.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(goals))


if __name__ == "__main__":
    main()
