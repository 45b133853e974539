"""Write benchmarks/results/quality-baseline-video-i2v.md (+ .json) and a samples PNG strip for digits-video-i2v.

python benchmarks/quality_baseline_video_i2v.py [--clips 40] [--per-prompt 2] [--steps 28] [--guidance-scale 4]

Each of `--clips` example (digit, motion) pairs (quality_baseline_video's pairs) gets the first frame of a real
clip of a held-out digit of that class (digits the model never saw) at a start of its own, and the prompt that
names the motion ("moving left"); `--per-prompt` videos each from fixed initial noise, through the sampling
loop of video_i2v.py (diffusers' WanImageToVideoPipeline cannot run a model without a VAE). Judged by
quality/video.py against the given frame's digit (per-frame accuracy, motion accuracy, smoothness, Fréchet),
plus first-frame fidelity: the PSNR of generated frame 0 to the given frame. The real clips those first
frames come from are the ceiling.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from quality_baseline_video import GRID_ROWS, RESULTS, row
from records import portable

from ditserve.images import grid
from ditserve.models.digits.moving import CANVAS, FRAMES, clips, native_digits
from ditserve.models.digits.video_i2v import MODEL_DIR, generate, load, motion_prompt
from ditserve.models.digits.video_prompts import example_clips
from ditserve.quality.metrics import mean_finite, psnr
from ditserve.quality.video import frames_of, judge


def held_out_workload(clips_asked: int, per_prompt: int, frames: int = FRAMES):
    """The clips asked for, each repeated `per_prompt` times: (real clips (N, 1, frames, H, W), labels, motions,
    motion prompts). Pair k takes the k-th held-out digit of its class, starting at its own place."""
    _, _, held_digits, held_labels = native_digits()
    pairs = example_clips(clips_asked)
    labels = torch.tensor([label for label, _ in pairs])
    motions = torch.tensor([motion for _, motion in pairs])
    index = torch.stack([(held_labels == label).nonzero()[k // 10 % 5, 0] for k, label in enumerate(labels)])
    k = torch.arange(clips_asked)
    starts = torch.stack([(5 * k) % CANVAS, (3 * k + 7) % CANVAS], dim=1)
    real = clips(held_digits[index], motions, starts, frames)
    repeat = lambda x: x.repeat_interleave(per_prompt, dim=0)  # noqa: E731
    prompts = [motion_prompt(int(m)) for m in repeat(motions)]
    return repeat(real), repeat(labels), repeat(motions), prompts


def initial_noise(n: int, per_prompt: int, frames: int, seed: int) -> torch.Tensor:
    """Noise for n videos, `per_prompt` per clip asked; clip k's from seed + k."""
    return torch.cat([
        torch.randn(per_prompt, 1, frames, CANVAS, CANVAS, generator=torch.Generator().manual_seed(seed + k))
        for k in range(n // per_prompt)
    ])  # fmt: skip


def first_frame_psnr(videos: torch.Tensor, given: torch.Tensor) -> float:
    """Mean PSNR (dB, range [-1, 1]) of each video's frame 0 to its given first frame (finite values)."""
    return mean_finite(psnr(videos[:, :, 0], given))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--per-prompt", type=int, default=2)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="quality-baseline-video-i2v")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pipe = load(args.model_dir)
    real, labels, motions, prompts = held_out_workload(args.clips, args.per_prompt)
    noise = initial_noise(real.shape[0], args.per_prompt, FRAMES, args.seed)
    started = time.perf_counter()
    videos = generate(pipe, real[:, :, 0], prompts, noise, args.steps, args.guidance_scale)
    seconds = time.perf_counter() - started
    _, _, held_digits, _ = native_digits()
    generated = judge(videos, labels, motions, held_digits)
    ceiling = judge(real, labels, motions, held_digits)
    fidelity = first_frame_psnr(videos, real[:, :, 0])
    RESULTS.mkdir(exist_ok=True)
    strip = f"{args.out}-samples.png"
    shown = torch.stack([real[:: args.per_prompt][:GRID_ROWS], videos[:: args.per_prompt][:GRID_ROWS]], dim=1)
    shown = shown.flatten(0, 1)  # each real clip, then the video generated from its first frame
    grid(frames_of(shown) * 0.5 + 0.5, rows=shown.shape[0], upscale=3).save(RESULTS / strip)
    markdown = "\n".join(
        [
            f"# Quality baseline: {args.model_dir.name}",
            "",
            f"{videos.shape[0]} videos ({args.clips} held-out first frames × {args.per_prompt} seeds) of {FRAMES} "
            f"frames, the sampling loop of models/digits/video_i2v.py (Euler on the flow, guidance "
            f"{args.guidance_scale} on the prompt, the image in both branches), {args.steps} steps, fixed initial "
            f'noise; {seconds:.0f} s on this machine. Prompts name only the motion ("{prompts[0]}"): the digit '
            "comes from the first frame, so per-frame accuracy is against the given frame's digit. Produced by "
            "`python benchmarks/quality_baseline_video_i2v.py`.",
            "",
            "| videos | clips × frames | per-frame accuracy | all frames right | motion accuracy | smoothness dB | "
            "Fréchet (frames vs held-out) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            row("generated", generated),
            row("real clips (ceiling)", ceiling),
            "",
            f"First-frame fidelity: PSNR of generated frame 0 to the given frame **{fidelity:.1f} dB** "
            "(range [-1, 1]; the real clips: ∞).",
            "",
            "Smoothness: PSNR between each frame and its predecessor moved by the asked step (∞ when the digit keeps "
            "its shape exactly).",
            "",
            f"![rows in pairs: a real held-out clip, then the video generated from its first frame]({strip})",
            "",
        ]
    )
    (RESULTS / f"{args.out}.md").write_text(markdown)
    record = {"args": portable(vars(args)), "seconds": seconds, "first_frame_psnr": fidelity,
              "generated": asdict(generated), "real": asdict(ceiling)}  # fmt: skip
    (RESULTS / f"{args.out}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
