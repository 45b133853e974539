"""The cross-request cache (ditserve/nirvana.py) on a replayed prompt stream → the "Nirvana" section of
benchmarks/results/smart.md (and nirvana.json).

python benchmarks/nirvana.py [--requests 300] [--zipf 1.0] [--steps 50] [--seed 0]   # ~5 min on one core

The stream: `--requests` text-to-image requests for digits-flow, each prompt drawn from the model's 120 prompt
variants (10 digits × 12 phrasings, `models/digits/prompts.py`) with Zipf-like popularity (variant of rank r drawn
with weight 1 / r^zipf, ranks in a seeded random order), so the stream holds exact repeats and near-repeats (another
phrasing of a digit already asked for); request i has seed `seed + i`. The same stream runs on the shipped plan
(flow Euler, guidance 4) through two engines, without the cache and with it, one request at a time as a server
would see them, each request on both engines in turn (alternating which goes first, so a load change on the
machine falls on both). Reported:
model evaluations saved, hits per starting step, wall time, and fidelity of each stream — the digits classifier's
accuracy (the prompt's digit as label) and the Fréchet distance of its features to the held-out digits — with the
goals of issue 19 (≥ 25 % fewer evaluations, accuracy within 1 point, Fréchet within 10 %), and the PSNR of each
hit's image against the same request served without the cache.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from ditserve.config import load_config
from ditserve.engine import Engine
from ditserve.models.digits.data import load_split
from ditserve.models.digits.prompts import TEMPLATES, all_prompts
from ditserve.quality.classifier import load_classifier
from ditserve.quality.frechet import frechet_distance
from ditserve.quality.metrics import psnr
from ditserve.request import GenerationRequest

RESULTS = Path(__file__).parent / "results"
SECTION = "## Nirvana"


def stream(requests: int, zipf: float, seed: int) -> list[tuple[str, int]]:
    """(prompt, digit) per request: prompt variants drawn with Zipf-like popularity over a seeded rank order."""
    generator = torch.Generator().manual_seed(seed)
    prompts = all_prompts()  # digit-major: variant k asks for digit k // len(TEMPLATES)
    order = torch.randperm(len(prompts), generator=generator)
    weights = 1.0 / torch.arange(1, len(prompts) + 1, dtype=torch.float64) ** zipf
    ranks = torch.multinomial(weights, requests, replacement=True, generator=generator)
    return [(prompts[int(order[r])], int(order[r]) // len(TEMPLATES)) for r in ranks]


def cached_engine() -> Engine:
    config = load_config("builtin:digits-flow")
    cache = config.plan.approx_cache.model_copy(update={"enabled": True})
    return Engine(config.model_copy(update={"plan": config.plan.model_copy(update={"approx_cache": cache})}))


def fidelity(images: torch.Tensor, labels: torch.Tensor, classifier, held_out: torch.Tensor) -> dict:
    with torch.no_grad():
        signed = images * 2 - 1
        accuracy = (classifier(signed).argmax(dim=1) == labels).float().mean().item()
        return {"accuracy": accuracy, "frechet": frechet_distance(classifier.features(signed), held_out)}


def run(args) -> dict:
    torch.set_num_threads(1)  # the machine's cores are shared: one thread wastes none spinning, and times are steadier
    items = stream(args.requests, args.zipf, args.seed)
    requests = [GenerationRequest(prompt=p, seed=args.seed + i, steps=args.steps) for i, (p, _) in enumerate(items)]
    labels = torch.tensor([digit for _, digit in items])

    plain, engine = Engine.from_config("builtin:digits-flow"), cached_engine()
    reference, cached, seconds = [], [], {"without": 0.0, "with": 0.0}
    for k, request in enumerate(requests):
        runs = [(plain, reference, "without"), (engine, cached, "with")]
        for runner, results, name in runs if k % 2 == 0 else runs[::-1]:
            started = time.perf_counter()
            results.append(runner.generate(request))
            seconds[name] += time.perf_counter() - started

    classifier, split = load_classifier(), load_split()
    with torch.no_grad():
        held_out = classifier.features(split.held_out_images)
    plain_images = torch.cat([r.images for r in reference])
    cached_images = torch.cat([r.images for r in cached])
    evaluations = sum(r.stats.model_evaluations for r in cached)
    hits = [k for k, r in enumerate(cached) if r.stats.resumed_from]
    hit_psnr = [psnr(cached_images[k : k + 1] * 2 - 1, plain_images[k : k + 1] * 2 - 1).item() for k in hits]
    distinct = len({p for p, _ in items})
    return {
        "requests": len(requests),
        "distinct_prompts": distinct,
        "zipf": args.zipf,
        "steps": args.steps,
        "seed": args.seed,
        "levels": [level.model_dump() for level in engine.nirvana.levels],
        "max_reuse": engine.nirvana.config.max_reuse,
        "evaluations_without": args.steps * len(requests),
        "evaluations_with": evaluations,
        "saved": 1 - evaluations / (args.steps * len(requests)),
        "hits": len(hits),
        "hits_by_step": dict(sorted(Counter(cached[k].stats.resumed_from for k in hits).items())),
        "entries_kept": len(engine.nirvana.entries),
        "bytes_kept": engine.nirvana.nbytes,
        "seconds_without": seconds["without"],
        "seconds_with": seconds["with"],
        "without": fidelity(plain_images, labels, classifier, held_out),
        "with": fidelity(cached_images, labels, classifier, held_out),
        "hit_psnr_median": float(torch.tensor(hit_psnr).median()) if hit_psnr else None,
        "hit_psnr_min": min(hit_psnr) if hit_psnr else None,
    }


def markdown(r: dict) -> str:
    saved_ok = r["saved"] >= 0.25
    accuracy_gap = r["with"]["accuracy"] - r["without"]["accuracy"]
    accuracy_ok = abs(accuracy_gap) <= 0.01
    frechet_ratio = r["with"]["frechet"] / r["without"]["frechet"]
    frechet_ok = frechet_ratio <= 1.10
    ladder = ", ".join(f"≥ {lv['similarity']} → skip {lv['skip']:.0%}" for lv in r["levels"])
    hits = ", ".join(f"{n} from step {k}" for k, n in r["hits_by_step"].items())
    verdict = "PASS" if saved_ok and accuracy_ok and frechet_ok else "FAIL"
    lines = [
        SECTION,
        "",
        f"Approximate caching across requests (`plan.approx_cache`, ditserve/nirvana.py) on digits-flow, flow Euler "
        f"{r['steps']} steps, guidance 4: a replayed stream of {r['requests']} requests over the model's 120 prompt "
        f"variants with Zipf-like popularity (exponent {r['zipf']}, seed {r['seed']}; {r['distinct_prompts']} distinct "
        f"prompts), request i with seed {r['seed']} + i. Ladder: {ladder} (cosine of the pooled text embeddings); a "
        f"kept run starts at most {r['max_reuse']} requests. "
        "`python benchmarks/nirvana.py` writes this section.",
        "",
        "| stream | model evaluations | classifier accuracy | Fréchet to held-out | wall (one CPU thread) |",
        "|---|---|---|---|---|",
        f"| without the cache | {r['evaluations_without']} | {r['without']['accuracy']:.3f} | "
        f"{r['without']['frechet']:.1f} | {r['seconds_without']:.1f} s |",
        f"| with the cache | {r['evaluations_with']} | {r['with']['accuracy']:.3f} | {r['with']['frechet']:.1f} | "
        f"{r['seconds_with']:.1f} s ({r['seconds_without'] / r['seconds_with']:.2f}× faster) |",
        "",
        f"- Hits: {r['hits']} of {r['requests']} ({hits}); {r['entries_kept']} runs kept, "
        f"{r['bytes_kept'] / 1024:.0f} KiB.",
        f"- Each hit's image against the same request without the cache (it starts from another request's run, so it "
        f"is a different image of the same digit): PSNR median {r['hit_psnr_median']:.1f} dB, "
        f"min {r['hit_psnr_min']:.1f} dB.",
        f"- Goals: model evaluations saved {r['saved']:.1%} (≥ 25 %: {'PASS' if saved_ok else 'FAIL'}); accuracy "
        f"{accuracy_gap * 100:+.1f} points (within 1: {'PASS' if accuracy_ok else 'FAIL'}); Fréchet "
        f"×{frechet_ratio:.3f} (within 10 %: {'PASS' if frechet_ok else 'FAIL'}). Overall: {verdict}.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Put `section` in place of the section with its heading (its first line, up to the next `## ` heading), or
    append it: each benchmark of smart.md rewrites its own section only."""
    heading = section.split("\n", 1)[0]
    text = path.read_text() if path.exists() else "# Smarter requests\n\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if end < 0 else text[end + 1 :])
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nirvana.json").write_text(json.dumps(result, indent=1) + "\n")
    section = markdown(result)
    write_section(RESULTS / "smart.md", section)
    print(section)


if __name__ == "__main__":
    main()
