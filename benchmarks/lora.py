"""What a LoRA adapter costs at serving time, written to benchmarks/results/lora.md.

On the embedded digits DiT with its shipped "bold" adapter (`ditserve.models.digits.train_lora`), guided
(conditional and unconditional rows in one call), in this process:

1. Switching: `LoraAdapters.activate` to the adapter and back to none (the engine does both around every batch
   whose adapter differs from the last one), median and p90 over `--switches` round trips, in ms.
2. One transformer call of `--images` images, over `--repeats` rounds that each call every mode once, in turn:
   the base model loaded without adapters; with the adapter loaded but off (what every plain request pays
   once a model directory has adapters); with it active (unmerged: the engine's way, so it can switch per
   batch); and merged into the weights of a copy (`fuse_lora`: no per-layer extra work, but one adapter for the
   whole model until it is unfused). Best and median per mode; the ratio is of the best (on a machine shared
   with other jobs the best round is the least disturbed one), the median's ratio beside it.

    python benchmarks/lora.py [--images 8] [--repeats 60] [--switches 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch

from ditserve.config import load_config
from ditserve.engine import Engine
from ditserve.models.digits.train import DEFAULT_OUT

RESULTS = Path(__file__).parent / "results" / "lora.md"


def switch_ms(engine: Engine, n: int) -> list[float]:
    """Milliseconds per round trip: the adapter on, then all off."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        engine.loras.activate(("bold", 1.0))
        engine.loras.activate(None)
        times.append((time.perf_counter() - started) * 1000)
    return times


def call_ms(transformer, inputs: dict) -> float:
    """Milliseconds for one transformer call."""
    started = time.perf_counter()
    transformer(**inputs)
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import DiTTransformer2DModel

    engine = Engine(load_config("builtin:digits-dit"))
    lora = engine.model.transformer
    base = DiTTransformer2DModel.from_pretrained(DEFAULT_OUT, subfolder="transformer").eval()
    rows = 2 * args.images  # guided: conditional and unconditional rows
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(rows, 1, 16, 16, generator=generator),
        "timestep": torch.full((rows,), 500),
        "class_labels": torch.arange(rows) % 11,
        "return_dict": False,
    }

    switches = sorted(switch_ms(engine, args.switches))
    merged = copy.deepcopy(lora)
    merged.set_adapters("bold", 1.0)
    merged.fuse_lora(adapter_names=["bold"])
    modes = {
        "base model, no adapters loaded": (base, None),
        "adapter loaded, off": (lora, None),
        "adapter active (unmerged)": (lora, ("bold", 1.0)),
        "adapter merged (fuse_lora)": (merged, None),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, (model, adapter) in modes.items():
                engine.loras.activate(adapter)
                times[name].append(call_ms(model, inputs))
    engine.loras.activate(None)

    base_best = min(times["base model, no adapters loaded"])
    base_median = statistics.median(times["base model, no adapters loaded"])
    lines = [
        "# LoRA serving cost (benchmarks/lora.py)",
        "",
        f'digits-dit with its "bold" adapter (rank 8 on q/k/v/out and the feed-forward layers of 6 blocks), '
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); the "
        "machine was shared with other jobs, so the spread matters more than the last digit.",
        "",
        f"Switching the adapter on and off again: median {statistics.median(switches):.2f} ms, "
        f"p90 {switches[int(0.9 * len(switches))]:.2f} ms per round trip ({args.switches} round trips).",
        "",
        f"One transformer call of {args.images} guided images ({rows} rows), {args.repeats} rounds of one call per "
        "mode in turn:",
        "",
        "| mode | best ms | median ms | best / base | median / base |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        lines.append(f"| {name} | {best:.2f} | {median:.2f} | {best / base_best:.2f}× | {median / base_median:.2f}× |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
