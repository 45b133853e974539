"""Write benchmarks/results/quality-baseline.md and a sample grid (one row per digit) for the embedded model.

python benchmarks/quality_baseline.py [--per-class 50]
python benchmarks/quality_baseline.py --config builtin:digits-flow   # → quality-baseline-flow.md
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ditserve.engine import Engine
from ditserve.images import grid
from ditserve.quality.report import measure, to_markdown

RESULTS = Path(__file__).parent / "results"
GRID_COLUMNS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="builtin:digits-dit")
    parser.add_argument("--per-class", type=int, default=50)
    args = parser.parse_args()
    engine = Engine.from_config(args.config)
    report, images, _ = measure(engine, per_class=args.per_class)
    RESULTS.mkdir(exist_ok=True)
    rows = [images[c * args.per_class : c * args.per_class + GRID_COLUMNS] for c in range(10)]
    model = engine.config.model.name
    grid_path = RESULTS / f"{model}-samples.png"
    grid(torch.cat(rows), rows=10, upscale=4).save(grid_path)
    markdown = to_markdown(report) + f"\n![samples, one row per digit]({grid_path.name})\n"
    stem = "quality-baseline" if model == "digits-dit" else f"quality-baseline-{model.removeprefix('digits-')}"
    (RESULTS / f"{stem}.md").write_text(markdown)
    (RESULTS / f"{stem}.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
