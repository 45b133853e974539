"""Write benchmarks/results/quality-baseline-video.md (+ .json) and a samples PNG strip for digits-video.

python benchmarks/quality_baseline_video.py [--clips 40] [--per-prompt 2] [--steps 28] [--guidance-scale 4]

Each of `--clips` example (digit, motion) pairs (every digit meets every motion about equally often) is asked
for with its example prompt, `--per-prompt` videos each, through diffusers' own `WanPipeline` on the checkpoint
(the reference run; fixed initial noise per video), and judged by quality/video.py: per-frame digit accuracy,
motion accuracy, smoothness and the frames' Fréchet distance; the same measures on real clips of held-out
digits are the ceiling. `--frames` longer than the trained clip runs the model past its length as-is (no
video technique), the reference that FIFO-Diffusion and Video-Infinity improve on.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from records import portable

from ditserve.images import grid
from ditserve.models.digits.moving import CANVAS, FRAMES, MOTIONS, clips, native_digits
from ditserve.models.digits.video_prompts import example_clips, example_prompts
from ditserve.models.text import load_pipeline
from ditserve.models.wan import WanAdapter
from ditserve.quality.video import VideoQuality, frames_of, judge

RESULTS = Path(__file__).parent / "results"
MODEL_DIR = Path(__file__).parents[1] / "plugin/ditserve/models/digits/digits-video"
GRID_ROWS = 8


@torch.no_grad()
def generate(pipe, prompts: list[str], per_prompt: int, frames: int, steps: int, guidance: float, seed: int):
    """`per_prompt` videos per prompt (prompt k's initial noise from seed + k), (N, 1, frames, H, W) in [-1, 1]."""
    videos = []
    for k, prompt in enumerate(prompts):
        noise = torch.randn(per_prompt, 1, frames, CANVAS, CANVAS, generator=torch.Generator().manual_seed(seed + k))
        out = pipe(
            prompt=[prompt] * per_prompt,
            negative_prompt="",
            height=CANVAS,
            width=CANVAS,
            num_frames=frames,
            latents=noise,
            num_inference_steps=steps,
            guidance_scale=guidance,
            max_sequence_length=pipe.call_defaults["max_sequence_length"],
            output_type="latent",
        )
        videos.append(out.frames.float().clamp(-1, 1))
    return torch.cat(videos)


def ceiling(held_digits, held_labels, n: int, frames: int) -> VideoQuality:
    """The measures on real clips of the first `n` held-out digits, motions and starts in turn."""
    index = torch.arange(n) % held_digits.shape[0]
    motions = torch.arange(n) % len(MOTIONS)
    starts = torch.stack([index % CANVAS, (3 * index) % CANVAS], dim=1)
    return judge(clips(held_digits[index], motions, starts, frames), held_labels[index], motions, held_digits)


def row(name: str, q: VideoQuality) -> str:
    return (
        f"| {name} | {q.clips} × {q.frames} | {q.frame_accuracy:.3f} | {q.clip_accuracy:.3f} | "
        f"{q.motion_accuracy:.3f} | {q.smoothness_db:.1f} | {q.frechet_to_held_out:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--per-prompt", type=int, default=2)
    parser.add_argument("--frames", type=int, default=FRAMES)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="quality-baseline-video")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pipe = load_pipeline(WanAdapter(), args.model_dir, ("WanPipeline",), torch.float32, torch.device("cpu"))
    pairs = example_clips(args.clips)
    started = time.perf_counter()
    videos = generate(pipe, example_prompts()[: args.clips], args.per_prompt, args.frames, args.steps,
                      args.guidance_scale, args.seed)  # fmt: skip
    seconds = time.perf_counter() - started
    labels = torch.tensor([label for label, _ in pairs]).repeat_interleave(args.per_prompt)
    motions = torch.tensor([motion for _, motion in pairs]).repeat_interleave(args.per_prompt)
    _, _, held_digits, held_labels = native_digits()
    generated = judge(videos, labels, motions, held_digits)
    real = ceiling(held_digits, held_labels, videos.shape[0], args.frames)
    RESULTS.mkdir(exist_ok=True)
    strip = f"{args.out}-samples.png"
    shown = videos[:: args.per_prompt][:GRID_ROWS]
    grid(frames_of(shown) * 0.5 + 0.5, rows=shown.shape[0], upscale=3).save(RESULTS / strip)
    markdown = "\n".join(
        [
            f"# Quality baseline: {args.model_dir.name}",
            "",
            f"{videos.shape[0]} videos ({args.clips} example prompts × {args.per_prompt} seeds) of {args.frames} "
            f"frames (trained length {FRAMES}), diffusers' WanPipeline with the checkpoint's scheduler, "
            f"{args.steps} steps, guidance {args.guidance_scale}, fixed initial noise; {seconds:.0f} s on this "
            "machine. Prompts such as "
            f'"{example_prompts()[0]}". Produced by `python benchmarks/quality_baseline_video.py'
            f"{'' if args.frames == FRAMES else f' --frames {args.frames}'}`.",
            "",
            "| videos | clips × frames | per-frame accuracy | all frames right | motion accuracy | smoothness dB | "
            "Fréchet (frames vs held-out) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            row("generated", generated),
            row("real clips (ceiling)", real),
            "",
            "Smoothness: PSNR between each frame and its predecessor moved by the asked step (∞ when the digit keeps "
            "its shape exactly).",
            "",
            f"![one prompt per row, frames left to right]({strip})",
            "",
        ]
    )
    (RESULTS / f"{args.out}.md").write_text(markdown)
    record = {"args": portable(vars(args)), "seconds": seconds,
              "generated": asdict(generated), "real": asdict(real)}  # fmt: skip
    (RESULTS / f"{args.out}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
