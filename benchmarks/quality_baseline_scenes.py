"""Write benchmarks/results/quality-baseline-scenes.md (+ .json) and a samples PNG for digits-scenes.

python benchmarks/quality_baseline_scenes.py [--scenes 20] [--per-prompt 5] [--guidance-scale 4]

Each of `--scenes` example scenes (every digit in every place equally often) is asked for in both prompt
formats, `--per-prompt` images each, at the served plan (the config's sampler and steps); the report gives
per-place digit accuracy (the shipped classifier on each 16×16 place) and the Fréchet distance of the
crops to the held-out digits (quality/scenes.py).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ditserve.engine import Engine
from ditserve.images import grid
from ditserve.models.digits.scene_prompts import FORMATS, example_labels, prompt_for
from ditserve.quality.scenes import ScenesReport, measure

RESULTS = Path(__file__).parent / "results"
GRID_ROWS = 10
"""Scenes shown in the PNG, one per row: its images in the grid format, then in the words format."""


def to_markdown(report: ScenesReport, args: argparse.Namespace, grid_name: str) -> str:
    places = " | ".join(f"{p}: {a:.3f}" for p, a in report.per_place_accuracy.items())
    formats = ", ".join(f"{f} {a:.3f}" for f, a in report.per_format_accuracy.items())
    examples = "; ".join(f'"{prompt_for(example_labels(1)[0], f)}"' for f in FORMATS)
    return "\n".join(
        [
            f"# Quality baseline: {report.model}",
            "",
            f"{report.scenes} scenes ({args.scenes} example scenes × {len(FORMATS)} prompt formats × {args.per_prompt} "
            f"seeds), sampler `{report.sampler}`, {report.steps} steps, guidance {report.guidance_scale}, fixed "
            f"seeds. Prompts such as {examples}. Produced by `python benchmarks/quality_baseline_scenes.py`.",
            "",
            "| metric | value |",
            "| --- | --- |",
            f"| per-place digit accuracy (mean of 4 places) | {report.accuracy:.3f} |",
            f"| scenes with all four places right | {report.scene_accuracy:.3f} |",
            f"| Fréchet distance, crops vs held-out digits | {report.frechet_to_held_out:.2f} |",
            f"| Fréchet distance floor, real train split vs held-out | {report.frechet_floor_train_vs_held_out:.2f} |",
            f"| generation wall time (this machine) | {report.seconds:.1f} s |",
            "",
            f"Per place: {places}. Per prompt format: {formats}.",
            "",
            f"![samples: one scene per row, {args.per_prompt} seeds per format]({grid_name})",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="builtin:digits-scenes")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--per-prompt", type=int, default=5)
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the config's")
    args = parser.parse_args()
    engine = Engine.from_config(args.config)
    report, images, _ = measure(engine, args.scenes, args.per_prompt, guidance=args.guidance_scale)
    RESULTS.mkdir(exist_ok=True)
    per_scene = len(FORMATS) * args.per_prompt
    grid_name = f"{report.model}-samples.png"
    grid(images[: GRID_ROWS * per_scene], rows=GRID_ROWS, upscale=3).save(RESULTS / grid_name)
    markdown = to_markdown(report, args, grid_name)
    (RESULTS / "quality-baseline-scenes.md").write_text(markdown)
    (RESULTS / "quality-baseline-scenes.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
