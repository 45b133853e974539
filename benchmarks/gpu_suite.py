"""The GPU suite: full-size architectures and the embedded model on one GPU, in one run, written to gpu.md.

Everything runs through the engine as a user's server would (same adapters, plans, strategies), beside the
family's own diffusers pipeline loop. The full-size models are the published transformer configs with random
weights (`fullsize:<name>`, ditserve/models/fullsize.py), bf16, on the GPU; their text encoders and VAEs are
one-layer stand-ins with the published widths and token counts, so the numbers are the transformer loop's:
seconds per denoising step, not end-to-end seconds per image. Random weights give real timings and no images;
fidelity is PSNR of the final latents against the bf16 run from the same seed (not image quality).

Sections, in priority order (`--sections`); each is skipped (and said so) when the time budget would be
exceeded, and a failing one is reported without stopping the others:
1. `flux`: FLUX.1-dev at 1024² (4096 image + 512 text tokens, guidance-distilled: one pass a step): diffusers'
   `FluxPipeline.__call__` loop vs the engine (`compile: none`), alternating; a cache (FORA interval 5, the
   README's setting) per request, wall ratio beside block ratio. `fp8`: fp8 W8A8 (`torch._scaled_mm`), with
   PSNR. `compiled`: the engine with `compile: regional`, alone and with the cache. Peak memory per plan.
2. `digits`: digits-dit (the embedded model, 20 DDIM steps, guidance 4, one image): per step eager vs
   `regional`, `full` and `graphs` (CUDA graphs).
3. `fp8c`: fp8 with `compile: regional` beside bf16 compiled.
4. `tokens`: FLUX.1-dev per step at 512², 1024², 2048² (and batch 2 at 1024²), eager and compiled.
5. `others`: the other architectures at 1024² (Wan2.1 at 480×832, one frame, which is what the engine's Wan
   adapter makes): diffusers loop vs engine, compiled, and for PixArt-Σ the `sage` attention paths.

Per-step times are the median of the step-to-step intervals (the device synchronised at each step end) after
the first interval; a cache's wall ratio uses the whole denoising time, over the same steps as its block count.

    PYTHONPATH=plugin:kernels python benchmarks/gpu_suite.py --out DIR [--budget 390]
    PYTHONPATH=plugin:kernels python benchmarks/gpu_suite.py --tiny --out /tmp/x   # the same code, CPU, tiny
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import json
import math
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

PROMPT = "a photo of a red fox standing in fresh snow, morning light"
FLUX = "flux-dev"
STEPS = 8
"""Steps per timed run (the first interval is dropped: 6 intervals timed)."""
CACHE = {"name": "fora", "interval": 5}
CACHE_STEPS = 15
DIGITS_TODAY_MS = 10.0
"""benchmarks/results/serving-cuda.md: ~200 ms for one 20-step image, about 10 ms a step (eager, H200)."""
GOALS = {
    "engine none vs diffusers loop (per step)": "≥ 0.97×",
    "compiled vs eager, Flux": "≥ 1.2×",
    "cache wall speedup / block-ratio prediction, Flux": "≥ 85%",
    "fp8 vs bf16 per step, Flux": "≥ 1.3×",
    "digits per step, compiled/graphed vs today's eager (10 ms)": "≥ 10×",
}


class Setting:
    """Where the suite runs: the GPU at full size, or (`--tiny`, to check the script) the CPU at tiny width."""

    tiny = False
    device = "cuda"
    dtype = "bfloat16"


def arch(name: str) -> str:
    return f"{name}@tiny" if Setting.tiny else name


def side(pixels: int) -> int:
    """An image side: as given, or for `--tiny` 1/16 of it (a multiple of 16, at least 32)."""
    return max(32, pixels // 256 * 16) if Setting.tiny else pixels


def build(name: str):
    """The architecture's diffusers pipeline, as the suite runs it (no engine, no hooks)."""
    from ditserve.models.fullsize import build_pipeline

    return build_pipeline(arch(name), getattr(torch, Setting.dtype), torch.device(Setting.device))


class Budget:
    """Seconds left in the run; a section runs only if its estimate fits."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def used(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, estimate: float) -> bool:
        return self.used() + estimate <= self.seconds


def sync() -> None:
    if Setting.device == "cuda":
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if Setting.device == "cuda":
        torch.cuda.empty_cache()


def memory_allocated() -> int:
    return torch.cuda.memory_allocated() if Setting.device == "cuda" else 0


def peak_allocated() -> int:
    return torch.cuda.max_memory_allocated() if Setting.device == "cuda" else 0


def engine_for(name: str, family: str, guidance: float, **plan):
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    model = {
        "name": "bench",
        "path": f"fullsize:{arch(name)}",
        "family": family,
        "dtype": Setting.dtype,
        "device": Setting.device,
        "guidance_scale": guidance,
    }
    plan = {"sampler": {"name": "none", "steps": STEPS}} | plan
    limits = {"max_side": 2048, "max_steps": 200, "max_batch": 16}
    return Engine(parse_config({"model": model, "plan": plan, "limits": limits}))


def weight_gb(module: torch.nn.Module) -> float:
    seen, total = set(), 0
    for tensor in module.state_dict(keep_vars=True).values():
        if tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total / 2**30


def intervals(stamps: list[float]) -> dict:
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][1:]  # the first interval warms
    return {"s_per_step": statistics.median(gaps), "spread": [min(gaps), max(gaps)]}


def run_engine(engine, steps: int, height: int, width: int, *, cache=None, images: int = 1, seed: int = 0) -> dict:
    """One request, the device synchronised at every step end; per-step intervals, totals, counts, memory."""
    from ditserve.request import GenerationRequest

    stamps, last = [], {}

    def on_progress(event) -> None:
        sync()
        stamps.append(time.perf_counter())
        last["latents"] = event.latents

    request = GenerationRequest(
        prompt=PROMPT, height=height, width=width, steps=steps, seed=seed, num_images=images, cache=cache
    )
    free()
    before = memory_allocated()
    if Setting.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stats = engine.generate(request, on_progress=on_progress).stats
    row = intervals(stamps)
    row |= {
        "mean_s_per_step": stats.seconds["denoise"] / steps,  # every step alike, cached or computed
        "denoise_s": stats.seconds["denoise"],  # the whole loop, every step (the last one synchronised)
        "denoise_steps": "all",
        "block_ratio": stats.block_evaluations / max(stats.block_evaluations_full, 1),
        "peak_gb": weight_gb(engine.model.transformer) + (peak_allocated() - before) / 2**30,
    }
    return row | {"latents": last["latents"].float().cpu()}


def run_pipeline(pipe, steps: int, height: int, width: int, guidance: float, **extra) -> dict:
    """The pipeline's own `__call__` loop, synchronised at every step end through its step callback."""
    stamps = []

    def on_step_end(*args):  # new-style (pipe, step, t, kwargs) → kwargs, or PixArt's (step, t, latents)
        sync()
        stamps.append(time.perf_counter())
        return args[-1] if len(args) == 4 else None

    if "callback_on_step_end" in inspect.signature(type(pipe).__call__).parameters:
        extra = extra | {"callback_on_step_end": on_step_end}
    else:
        extra = extra | {"callback": on_step_end, "callback_steps": 1}
    generator = torch.Generator(Setting.device).manual_seed(0)
    with torch.inference_mode():
        pipe(
            PROMPT,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="latent",
            **extra,
        )
    return intervals(stamps) | {"block_ratio": 1.0, "peak_gb": 0.0, "denoise_s": 0.0, "mean_s_per_step": 0.0}


def psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    mse = (reference - other).pow(2).mean().item()
    peak = (reference.max() - reference.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def alternate(runs: dict, rounds: int) -> dict:
    """Each callable `rounds` times, in turn; each key → its rows. The first row of each is a warm-up."""
    rows = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            rows[name].append(run())
    return rows


def side_by_side(first, second, size: int) -> tuple[dict, dict]:
    """Two engines' `STEPS`-step runs at `size`², alternating for 3 rounds: each one's median row."""
    rows = alternate(
        {
            "first": functools.partial(run_engine, first, STEPS, size, size),
            "second": functools.partial(run_engine, second, STEPS, size, size),
        },
        rounds=3,
    )
    return median_row(rows["first"]), median_row(rows["second"])


def median_row(rows: list[dict]) -> dict:
    rows = rows[1:] if len(rows) > 1 else rows  # drop the warm-up round
    keys = ("s_per_step", "mean_s_per_step", "block_ratio", "peak_gb")
    out = {key: statistics.median(r[key] for r in rows) for key in keys}
    out["denoise_s"] = statistics.median(r["denoise_s"] for r in rows)
    out["spread"] = [min(r["s_per_step"] for r in rows), max(r["s_per_step"] for r in rows)]
    out["latents"] = rows[-1].get("latents")
    return out


# -- sections -------------------------------------------------------------------------------------------


def section_flux(results: dict, budget: Budget) -> None:
    """diffusers' loop vs the engine, alternating; a cache per request beside the uncached engine."""
    size = side(1024)
    pipe = build(FLUX)
    eager = engine_for(FLUX, "flux", 3.5)
    results["_engines"] = {"eager": eager}
    rows = alternate(
        {
            "diffusers": functools.partial(run_pipeline, pipe, STEPS, size, size, 3.5),
            "none": functools.partial(run_engine, eager, STEPS, size, size),
        },
        rounds=3,
    )
    del pipe
    free()
    flux = results.setdefault("flux", {})
    flux["diffusers loop"] = median_row(rows["diffusers"])
    flux["engine none"] = median_row(rows["none"])
    cached = alternate(
        {
            "none": functools.partial(run_engine, eager, CACHE_STEPS, size, size),
            "fora": functools.partial(run_engine, eager, CACHE_STEPS, size, size, cache=CACHE),
        },
        rounds=3,
    )
    flux["engine none, 15 steps"] = median_row(cached["none"])
    flux["fora interval 5, 15 steps"] = median_row(cached["fora"])


def section_fp8(results: dict, budget: Budget) -> None:
    """fp8 W8A8 eager, PSNR against the bf16 engine's latents."""
    flux = results["flux"]
    fp8 = engine_for(FLUX, "flux", 3.5, quant={"name": "fp8"})
    flux["fp8"] = median_row([run_engine(fp8, STEPS, side(1024), side(1024)) for _ in range(3)])
    flux["fp8"]["psnr_db"] = psnr(flux["engine none"]["latents"], flux["fp8"]["latents"])
    flux["fp8"]["path"] = fp8.describe().get("runs", {}).get("quant")


def section_compiled(results: dict, budget: Budget) -> None:
    """`compile: regional` beside the eager engine, alternating; then with the cache."""
    flux, size = results["flux"], side(1024)
    if not budget.allows(150):
        results["skipped"].append("Flux compiled (budget)")
        return
    started = time.perf_counter()
    compiled = engine_for(FLUX, "flux", 3.5, compile="regional")
    flux["compile_load_s"] = time.perf_counter() - started
    results["_engines"]["compiled"] = compiled
    pair = side_by_side(results["_engines"]["eager"], compiled, size)
    flux["engine none (beside compiled)"], flux["compile regional"] = pair
    flux["compile regional"]["psnr_db"] = psnr(flux["engine none"]["latents"], flux["compile regional"]["latents"])
    flux["compile regional + fora"] = median_row(
        [run_engine(compiled, CACHE_STEPS, size, size, cache=CACHE) for _ in range(2)]
    )


def section_fp8_compiled(results: dict, budget: Budget) -> None:
    """fp8 with `compile: regional` (the activation quantization fused), against the compiled bf16 engine."""
    flux = results.setdefault("flux", {})
    if "compile regional" not in flux or not budget.allows(150):
        results["skipped"].append("Flux fp8 + compiled (budget, or no compiled bf16 row to compare with)")
        return
    size = side(1024)
    started = time.perf_counter()
    fp8c = engine_for(FLUX, "flux", 3.5, quant={"name": "fp8"}, compile="regional")
    flux["fp8 compile_load_s"] = time.perf_counter() - started
    pair = side_by_side(results["_engines"]["compiled"], fp8c, size)
    flux["compile regional (beside fp8)"], flux["fp8 + compile regional"] = pair
    reference = flux["engine none"]["latents"]
    flux["fp8 + compile regional"]["psnr_db"] = psnr(reference, flux["fp8 + compile regional"]["latents"])


def section_digits(results: dict, budget: Budget) -> None:
    from ditserve.config import load_config
    from ditserve.engine import Engine
    from ditserve.request import GenerationRequest

    base = load_config("builtin:digits-dit")
    digits = results.setdefault("digits", {})
    engines = {}
    for mode in ("none", "regional", "full", "graphs"):
        if mode != "none" and not budget.allows(60):
            results["skipped"].append(f"digits {mode} (budget)")
            continue
        config = base.model_copy(
            update={
                "model": base.model.model_copy(update={"device": Setting.device}),
                "plan": base.plan.model_copy(update={"compile": mode}),
            }
        )
        started = time.perf_counter()
        try:
            engines[mode] = Engine(config)
        except Exception as err:  # one mode failing must not lose the others
            results["errors"].append(f"digits {mode}: {type(err).__name__}: {err}")
            traceback.print_exc()
            continue
        digits[mode] = {"load_s": time.perf_counter() - started}
    request = GenerationRequest(class_label=3, steps=20, seed=0)
    times = {mode: [] for mode in engines}
    for _ in range(12):
        for mode, engine in engines.items():
            sync()
            started = time.perf_counter()
            engine.generate(request)
            times[mode].append(time.perf_counter() - started)
    for mode, values in times.items():
        per_step = [v / 20 for v in values[2:]]
        digits[mode] |= {
            "ms_per_step": 1000 * statistics.median(per_step),
            "spread_ms": [1000 * min(per_step), 1000 * max(per_step)],
        }


def section_tokens(results: dict, budget: Budget) -> None:
    engines = results.get("_engines") or {"eager": engine_for(FLUX, "flux", 3.5)}
    tokens = results.setdefault("tokens", [])
    for size, images in ((512, 1), (1024, 1), (1024, 2), (2048, 1)):
        for name, engine in engines.items():
            estimate = 40 if size == 2048 else 15
            if name == "compiled":
                estimate += 60  # a new shape compiles once more
            if not budget.allows(estimate):
                results["skipped"].append(f"tokens {name} {size}² x{images} (budget)")
                continue
            steps = 4 if size == 2048 else 6
            row = run_engine(engine, steps, side(size), side(size), images=images)
            tokens.append(
                {
                    "plan": name,
                    "side": size,
                    "images": images,
                    "tokens": images * (side(size) // 16) ** 2,
                    "s_per_step": row["s_per_step"],
                    "peak_gb": row["peak_gb"],
                }
            )
    results.pop("_engines", None)  # the Flux engines go: 48 GB


def section_others(results: dict, budget: Budget) -> None:

    cases = [  # name, family, guidance, height, width, pipeline call extras, extra plans
        (
            "pixart-sigma",
            "pixart",
            4.5,
            1024,
            1024,
            {"use_resolution_binning": False},
            {
                "sage (auto)": {"quant": {"name": "sage"}},
                "sage (ours)": {"quant": {"name": "sage", "path": "ours"}},
                "sage (sageattention)": {"quant": {"name": "sage", "path": "sageattention"}},
            },
        ),
        ("sd35-medium", "sd3", 4.5, 1024, 1024, {}, {}),
        ("wan21-1.3b", "wan", 5.0, 480, 832, {"num_frames": 1}, {}),
    ]
    others = results.setdefault("others", {})
    for name, family, guidance, height, width, extra, plans in cases:
        if not budget.allows(90):
            results["skipped"].append(f"{name} (budget)")
            continue
        rows = others.setdefault(name, {})
        try:
            height, width = side(height), side(width)
            pipe = build(name)
            eager = engine_for(name, family, guidance)
            both = alternate(
                {
                    "diffusers loop": functools.partial(run_pipeline, pipe, STEPS, height, width, guidance, **extra),
                    "engine none": functools.partial(run_engine, eager, STEPS, height, width),
                },
                rounds=3,
            )
            del pipe
            rows["diffusers loop"] = median_row(both["diffusers loop"])
            rows["engine none"] = median_row(both["engine none"])
            reference = rows["engine none"]["latents"]
            for label, plan in plans.items():
                try:
                    engine = engine_for(name, family, guidance, **plan)
                    rows[label] = median_row([run_engine(engine, STEPS, height, width) for _ in range(3)])
                    rows[label]["psnr_db"] = psnr(reference, rows[label]["latents"])
                    rows[label]["path"] = engine.describe().get("runs", {}).get("quant")
                    del engine
                except Exception as err:  # one plan failing must not lose the architecture's other rows
                    rows[label] = {"error": f"{type(err).__name__}: {err}"}
            if budget.allows(120):
                compiled = engine_for(name, family, guidance, compile="regional")
                rows["compile regional"] = median_row([run_engine(compiled, STEPS, height, width) for _ in range(3)])
                rows["compile regional"]["psnr_db"] = psnr(reference, rows["compile regional"]["latents"])
                del compiled
            del eager
        except Exception as err:
            rows["error"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        free()


# -- report ---------------------------------------------------------------------------------------------


def gb(value: float) -> str:
    return f"{value:.1f}" if value else "–"  # not measured (diffusers' own loop)


def ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def report(results: dict) -> tuple[str, str]:
    """The markdown file and the short table printed last."""
    env = results["environment"]
    lines = [
        "# GPU suite",
        "",
        f"Card: {env['card']}; torch {env['torch']}, triton {env['triton']}, diffusers {env['diffusers']}, "
        f"CUDA {env['cuda']}. Produced by `python benchmarks/gpu_suite.py` in one run of {env['seconds']:.0f} s.",
        "",
        "Full-size models: the published transformer configs with random weights, bf16, on the GPU; text encoders "
        "and VAEs are one-layer stand-ins with the published widths and token counts, so every time here is the "
        "transformer loop's (seconds per denoising step), not seconds per image. Per step: median of the "
        f"step-to-step intervals of a {STEPS}-step run after its first interval, the device synchronised at each "
        "step end, median over alternating rounds after a warm-up round (spread: min–max over rounds). PSNR: final "
        "latents against the bf16 eager run from the same seed. Rows with a cache (and their uncached "
        "reference) give the mean over all steps instead, cached and computed alike.",
        "",
    ]
    flux = results.get("flux", {})
    if flux:
        base = flux.get("engine none", {}).get("s_per_step")
        lines += [
            "## FLUX.1-dev at 1024² (4096 image + 512 text tokens; guidance-distilled, one pass a step)",
            "",
            "| plan | s/step | spread | vs engine none | peak GB | block ratio | PSNR dB | path |",
            "|---|---:|---|---:|---:|---:|---:|---|",
        ]
        for name, row in flux.items():
            if not isinstance(row, dict) or "s_per_step" not in row:
                continue
            key, reference = "s_per_step", base
            if "fora" in name or name.endswith("15 steps"):
                key = "mean_s_per_step"
                reference = flux.get("engine none, 15 steps", {}).get(key)
            elif name == "compile regional":
                reference = flux.get("engine none (beside compiled)", {}).get(key, base)
            elif name == "fp8 + compile regional":
                reference = flux.get("compile regional (beside fp8)", {}).get(key)
            psnr_text = f"{row['psnr_db']:.1f}" if "psnr_db" in row else ""
            spread = f"{row['spread'][0]:.4f}–{row['spread'][1]:.4f}" if key == "s_per_step" else "(mean)"
            lines.append(
                f"| {name} | {row[key]:.4f} | {spread} | {ratio(reference, row[key])} | {gb(row['peak_gb'])} | "
                f"{row['block_ratio']:.2f} | {psnr_text} | {row.get('path') or ''} |"
            )
        for key in ("compile_load_s", "fp8 compile_load_s"):
            if key in flux:
                lines.append(f"\n{key.replace('_', ' ')}: {flux[key]:.0f} s (build + compile + warm-up request)")
        if "fora interval 5, 15 steps" in flux:
            none15, fora = flux["engine none, 15 steps"], flux["fora interval 5, 15 steps"]
            wall, ratio_ = none15["denoise_s"] / fora["denoise_s"], fora["block_ratio"]
            if fora.get("denoise_steps") == "all":
                predicted, window = 1 / ratio_, f"all {CACHE_STEPS} steps"
            else:  # an earlier version timed steps 2..n; the first step computes every block under any cache
                predicted = (CACHE_STEPS - 1) / (ratio_ * CACHE_STEPS - 1)
                window = f"steps 2–{CACHE_STEPS} (the first step computes every block in both runs)"
            lines.append(
                f"\nFORA interval 5, {CACHE_STEPS} steps: wall speedup {wall:.2f}× over {window}, against the "
                f"{predicted:.2f}× that the blocks computed there predict (block ratio {ratio_:.2f} over the whole "
                f"request): {100 * wall / predicted:.0f}% of the prediction."
            )
            results["cache_efficiency"] = wall / predicted
        lines.append("")
    digits = results.get("digits", {})
    if digits:
        lines += [
            "## digits-dit (embedded, 64 tokens, 20 DDIM steps, guidance 4, one image, fp32)",
            "",
            "| compile | ms/step (whole request / 20) | spread | vs eager | vs today's eager (10 ms) | load s |",
            "|---|---:|---|---:|---:|---:|",
        ]
        eager = digits.get("none", {}).get("ms_per_step")
        for mode, row in digits.items():
            if "ms_per_step" in row:
                lines.append(
                    f"| {mode} | {row['ms_per_step']:.2f} | {row['spread_ms'][0]:.2f}–{row['spread_ms'][1]:.2f}"
                    f" | {ratio(eager, row['ms_per_step'])} | {ratio(DIGITS_TODAY_MS, row['ms_per_step'])} | "
                    f"{row['load_s']:.0f} |"
                )
        lines.append("")
    tokens = results.get("tokens", [])
    if tokens:
        lines += [
            "## FLUX.1-dev: cost against tokens",
            "",
            "| plan | side | images | image tokens | s/step | s/step per 1k tokens | peak GB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in tokens:
            lines.append(
                f"| {row['plan']} | {row['side']} | {row['images']} | {row['tokens']} | {row['s_per_step']:.4f} | "
                f"{1000 * row['s_per_step'] / row['tokens']:.5f} | {row['peak_gb']:.1f} |"
            )
        lines += ["", "Plot: gpu-tokens.png", ""]
    for name, rows in results.get("others", {}).items():
        lines += [f"## {name}", ""]
        if "error" in rows:
            lines += [f"error: {rows['error']}", ""]
        base = rows.get("engine none", {}).get("s_per_step")
        lines += [
            "| plan | s/step | spread | vs engine none | peak GB | PSNR dB | path |",
            "|---|---:|---|---:|---:|---:|---|",
        ]
        for label, row in rows.items():
            if isinstance(row, dict) and "error" in row:
                lines.append(f"| {label} | error: {row['error'][:150]} | | | | | |")
            elif isinstance(row, dict) and "s_per_step" in row:
                psnr_text = f"{row['psnr_db']:.1f}" if "psnr_db" in row else ""
                lines.append(
                    f"| {label} | {row['s_per_step']:.4f} | {row['spread'][0]:.4f}–{row['spread'][1]:.4f} | "
                    f"{ratio(base, row['s_per_step'])} | {gb(row['peak_gb'])} | {psnr_text} | "
                    f"{row.get('path') or ''} |"
                )
        lines.append("")
    goals = goal_rows(results)
    lines += ["## Goals (floors)", "", "| goal | floor | measured | result |", "|---|---|---|---|"]
    lines += [f"| {g} | {GOALS[g]} | {m} | {r} |" for g, m, r in goals]
    if results.get("runs"):
        lines += [
            "",
            "Sections by run (a later run's section replaces an earlier one's): " + "; ".join(results["runs"]),
        ]
    if results["skipped"]:
        lines += ["", "Skipped for time: " + "; ".join(results["skipped"])]
    if results["errors"]:
        lines += ["", "Errors: " + "; ".join(results["errors"])]
    short = ["goal | measured | result"] + [f"{g} | {m} | {r}" for g, m, r in goals]
    return "\n".join(lines) + "\n", "\n".join(short)


def goal_rows(results: dict) -> list[tuple[str, str, str]]:
    flux, digits, rows = results.get("flux", {}), results.get("digits", {}), []

    def add(goal: str, value: float | None, floor: float, unit: str = "×") -> None:
        if value is None:
            rows.append((goal, "not measured", "–"))
        else:
            shown = f"{100 * value:.0f}%" if unit == "%" else f"{value:.2f}×"
            rows.append((goal, shown, "PASS" if value >= floor else "MISS"))

    def per_step(name: str) -> float | None:
        return flux.get(name, {}).get("s_per_step")

    diffusers, none = per_step("diffusers loop"), per_step("engine none")
    add("engine none vs diffusers loop (per step)", diffusers / none if diffusers and none else None, 0.97)
    eager, compiled = per_step("engine none (beside compiled)"), per_step("compile regional")
    add("compiled vs eager, Flux", eager / compiled if eager and compiled else None, 1.2)
    add("cache wall speedup / block-ratio prediction, Flux", results.get("cache_efficiency"), 0.85, "%")
    fp8 = per_step("fp8 + compile regional") or per_step("fp8")
    fp8_base = per_step("compile regional (beside fp8)") if per_step("fp8 + compile regional") else none
    add("fp8 vs bf16 per step, Flux", fp8_base / fp8 if fp8 and fp8_base else None, 1.3)
    fastest = min(
        (row["ms_per_step"] for mode, row in digits.items() if mode != "none" and "ms_per_step" in row), default=None
    )
    add(
        "digits per step, compiled/graphed vs today's eager (10 ms)", DIGITS_TODAY_MS / fastest if fastest else None, 10
    )
    return rows


def plot_tokens(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for plan in sorted({row["plan"] for row in results["tokens"]}):
        rows = sorted((r for r in results["tokens"] if r["plan"] == plan), key=lambda r: r["tokens"])
        ax.plot([r["tokens"] for r in rows], [r["s_per_step"] for r in rows], "o-", label=plan)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="image tokens (batch × tokens per image)",
        ylabel="s per step",
        title="FLUX.1-dev per step, H200",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plain(value):
    """`value` without tensors (the kept latents), for JSON; an engine object becomes its repr."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not isinstance(v, torch.Tensor) and not k.startswith("_")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def write(results: dict, budget: Budget, out: Path) -> tuple[str, str]:
    """gpu.md, gpu.json (and the token plot) as they stand, and the markdown and the short table. Called after every
    section, so a run cut short by its time limit still leaves what it measured."""
    import diffusers
    import triton

    results["environment"] = {
        "card": torch.cuda.get_device_name() if Setting.device == "cuda" else "CPU (--tiny: checks the script)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "seconds": budget.used(),
    }
    out.mkdir(parents=True, exist_ok=True)
    markdown, short = report(results)
    (out / "gpu.md").write_text(markdown)
    (out / "gpu.json").write_text(json.dumps(plain(results), indent=1))
    if results.get("tokens"):
        plot_tokens(results, out / "gpu-tokens.png")
    return markdown, short


def render(files: list[Path], out: Path) -> None:
    """gpu.md from the results of several runs of this script: each top-level section (flux, digits, tokens,
    others) from the last file that has it; the report names the run each came from."""
    results: dict = {"skipped": [], "errors": [], "runs": []}
    for index, file in enumerate(files, 1):
        run = json.loads(file.read_text())
        sections = [key for key in ("flux", "digits", "tokens", "others") if run.get(key)]
        results |= {key: run[key] for key in sections}
        results["environment"] = run["environment"]
        results["runs"].append(f"run {index} ({file.name}, {run['environment']['seconds']:.0f} s): "
                               f"{', '.join(sections)}")  # fmt: skip
    for index, file in enumerate(files, 1):  # what the last run of each section skipped or failed
        run = json.loads(file.read_text())
        results["skipped"] += [f"run {index}: {item}" for item in run.get("skipped", [])]
        results["errors"] += [f"run {index}: {item}" for item in run.get("errors", [])]
    markdown, short = report(results)
    (out / "gpu.md").write_text(markdown)
    print(short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--budget", type=float, default=390.0, help="seconds; later sections are skipped past it")
    parser.add_argument("--sections", default="flux,fp8,compiled,digits,fp8c,tokens,others")
    parser.add_argument("--tiny", action="store_true", help="the tiny architectures on the CPU: checks the script")
    parser.add_argument("--render", type=Path, nargs="+", help="write gpu.md from earlier runs' gpu.json files "
                        "(no measurement); a later file's sections replace an earlier one's")  # fmt: skip
    args = parser.parse_args()
    if args.render:
        render(args.render, args.out)
        return
    if args.tiny:
        Setting.tiny, Setting.device, Setting.dtype = True, "cpu", "float32"
    budget = Budget(args.budget)
    results: dict = {"skipped": [], "errors": []}
    sections = {
        "flux": section_flux,
        "fp8": section_fp8,
        "compiled": section_compiled,
        "digits": section_digits,
        "fp8c": section_fp8_compiled,
        "tokens": section_tokens,
        "others": section_others,
    }
    for name in args.sections.split(","):
        print(f"[{budget.used():.0f}s] section {name}", flush=True)
        try:
            sections[name](results, budget)
        except Exception as err:
            results["errors"].append(f"{name}: {type(err).__name__}: {err}")
            traceback.print_exc()
        free()
        markdown, short = write(results, budget, args.out)
    print(markdown)
    print(short)


if __name__ == "__main__":
    main()
