"""Caching II (issue 16): MagCache, T-GATE and ICC on the embedded models at 20, 28 and 50 steps.

Per cache (its defaults, as a plan would name it), per model, per step count, against the uncached run of the
same requests (caching.py's workload: every class, or the checkpoint's prompts, fixed seeds):
- count ratio: what the cache saves evaluations of (blocks for MagCache, attention layers for T-GATE; for ICC,
  which runs every block, the multiply-adds of the linear layers it corrects, counted from their shapes);
- wall ratio: uncached over cached seconds, pairs run in alternating order (ABBA), median and range;
- fidelity: PSNR/SSIM against the uncached images; for class models the classifier's accuracy (the Judge of
  fidelity_judge.py), for digits-scenes the accuracy of each place's digit.

    python benchmarks/caching_ii.py [--models digits-dit digits-flow digits-scenes] [--steps 20 28 50] [--pairs 4]

Writes benchmarks/results/caching-ii.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from caching import SEED, engine_with, run, workload
from fidelity_judge import Judge

from ditserve.config import load_config
from ditserve.errors import PlanError
from ditserve.quality import load_classifier, mean_finite, psnr, ssim
from ditserve.request import GenerationRequest

RESULTS = Path(__file__).parent / "results"
CACHES = ("magcache", "tgate", "icc")
UNIT = {"magcache": "block", "tgate": "attention", "icc": "linear MACs"}
SCENES = "digits-scenes"


def scene_workload(count: int) -> tuple[list[GenerationRequest], torch.Tensor]:
    """digits-scenes: `count` grid prompts in which every digit is in every place equally often; labels (count, 4)."""
    from ditserve.models.digits.scene_prompts import example_labels, prompt_for

    labels = example_labels(count)
    requests = [GenerationRequest(prompt=prompt_for(s, "grid"), seed=SEED + k) for k, s in enumerate(labels)]
    return requests, torch.tensor(labels)


class SceneJudge:
    """PSNR/SSIM against the uncached scenes and the classifier's accuracy on each place's crop."""

    def __init__(self, reference: torch.Tensor, labels: torch.Tensor) -> None:
        self.classifier = load_classifier()
        self.reference, self.labels = reference, labels

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        from ditserve.models.digits.scenes import crops

        tiles = crops(images)
        with torch.no_grad():
            guess = self.classifier(tiles.flatten(0, 1)).argmax(dim=1).view(self.labels.shape)
        return {
            "psnr": mean_finite(psnr(images, self.reference)),
            "ssim": ssim(images, self.reference).mean().item(),
            "accuracy": (guess == self.labels).float().mean().item(),
        }


def linear_mac_ratio(cache, calls: int) -> float:
    """ICC: the multiply-adds of its corrected linear layers in its last request (`calls` transformer calls) over
    computing them at every call."""
    full = sum(h.a.shape[1] * h.b.shape[0] for h in cache.hooks)
    low = sum(h.a.shape[0] * (h.a.shape[1] + h.b.shape[0]) for h in cache.hooks)
    corrected = cache.increments / len(cache.hooks)  # calls per layer served by the correction
    return ((calls - corrected) * full + corrected * low) / (calls * full)


def measure(config, spec: dict, steps: int, asked, judge, reference_engine, pairs: int) -> dict:
    engine = engine_with(config, spec)
    images, stats, _ = run(engine, asked, lambda: None)
    row = {"cache": spec["name"], "settings": spec, "steps": steps, **judge(images)}
    if spec["name"] == "icc":
        row["count_ratio"] = linear_mac_ratio(engine.cache, stats.model_evaluations)
    else:
        unit = UNIT[spec["name"]]
        row["count_ratio"] = getattr(stats, f"{unit}_evaluations") / getattr(stats, f"{unit}_evaluations_full")
    ratios = []
    for k in range(pairs):  # ABBA: the uncached run goes first in even pairs, second in odd ones
        order = (reference_engine, engine) if k % 2 == 0 else (engine, reference_engine)
        seconds = {}
        for which in order:
            started = time.perf_counter()
            which.generate_batch(asked)
            seconds[which] = time.perf_counter() - started
        ratios.append(seconds[reference_engine] / seconds[engine])
    if ratios:
        row |= {"wall": statistics.median(ratios), "wall_low": min(ratios), "wall_high": max(ratios), "pairs": pairs}
    return row


def bench(models: list[str], steps_list: list[int], caches: list[str], pairs: int, per_class: int) -> list[dict]:
    rows = []
    for model in models:
        config = load_config(f"builtin:{model}")
        reference_engine = engine_with(config, {"name": "none"})
        for steps in steps_list:
            if model == SCENES:
                requests, labels = scene_workload(10 * per_class)
                asked = [r.model_copy(update={"steps": steps}) for r in requests]
            else:
                asked, labels = workload(reference_engine, steps, per_class)
            reference, _, _ = run(reference_engine, asked, lambda: None)
            judge = (SceneJudge if model == SCENES else Judge)(reference, labels)
            base = judge(reference)
            rows.append({"model": model, "cache": "none", "steps": steps, **base, "count_ratio": 1.0, "wall": 1.0})
            for name in caches:
                spec = json.loads(name) if name.startswith("{") else {"name": name}
                try:
                    row = measure(config, spec, steps, asked, judge, reference_engine, pairs)
                except PlanError as err:
                    rows.append({"model": model, "cache": spec["name"], "steps": steps, "refused": str(err)})
                    continue
                rows.append({"model": model, **row})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(rows: list[dict], commands: list[str], per_class: int) -> str:
    lines = [
        "# Caching II: MagCache, T-GATE, ICC (defaults) at 20/28/50 steps",
        "",
        " and ".join(f"`{command}`" for command in commands),
        f"({per_class} images per class, or {10 * per_class} scenes; CPU, fp32). Count ratio: cached over "
        "uncached evaluations of what the cache saves (blocks: magcache; attention layers: tgate; linear-layer "
        "multiply-adds: icc). Wall: uncached ÷ cached seconds, median of the ABBA pairs [range].",
        "",
        "| model | steps | cache | count ratio | wall × [range] | PSNR dB | SSIM | accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['steps']} | {r['cache']} | refused at load: {r['refused']} | | | | |")
            continue
        wall = "1" if r["cache"] == "none" else "not timed"
        if r["cache"] != "none" and "wall_low" in r:
            wall = f"{r['wall']:.2f} [{r['wall_low']:.2f}–{r['wall_high']:.2f}]"
        psnr_text = "—" if r["cache"] == "none" else f"{r['psnr']:.1f}"
        ssim_text = "—" if r["cache"] == "none" else f"{r['ssim']:.3f}"
        extra = {k: v for k, v in r.get("settings", {}).items() if k != "name"}
        label = r["cache"] + (" " + json.dumps(extra) if extra else "")
        lines.append(
            f"| {r['model']} | {r['steps']} | {label} | {r['count_ratio']:.3f} | {wall} | {psnr_text} | "
            f"{ssim_text} | {r['accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits-dit", "digits-flow", SCENES])
    parser.add_argument("--steps", nargs="+", type=int, default=[20, 28, 50])
    parser.add_argument("--caches", nargs="+", default=list(CACHES), help="names (defaults) or JSON plan sections")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "caching-ii.md"))
    parser.add_argument("--merge", nargs="+", default=[], help="write --out from these runs' .json files instead")
    args = parser.parse_args()
    out = Path(args.out)
    if args.merge:  # runs made side by side (one per model), reported as one table
        runs = [json.loads(Path(path).read_text()) for path in args.merge]
        rows = [row for run in runs for row in run["rows"]]
        commands = [run["command"] for run in runs]
    else:
        torch.manual_seed(0)
        rows = bench(args.models, args.steps, args.caches, args.pairs, args.per_class)
        commands = ["python benchmarks/caching_ii.py " + " ".join(sys.argv[1:])]
    out.write_text(to_markdown(rows, commands, args.per_class))
    out.with_suffix(".json").write_text(json.dumps({"command": commands[0], "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
