"""FIFO-Diffusion (Kim et al., NeurIPS 2024, "FIFO-Diffusion: Generating Infinite Videos from Text without
Training"): videos of any length from a model trained on short clips, streamed frame by frame.

Diagonal denoising: a queue of frames holds one frame per noise level of an S-step schedule, the head nearly
clean, the tail pure noise. Each iteration moves every frame one level down (one Euler step with its own
σ → σ_next, the model called on windows of `window` consecutive frames with one timestep per frame); the head
is then clean and leaves the queue (it is yielded at once), and a fresh noise frame joins the tail. The model
only ever sees `window` frames, so the video can be as long as wanted.

Latent partitioning: S = window × partitions, so the queue is `partitions` windows long and one model call
spans only `window` consecutive levels (the level gap inside a call, which the model was not trained to bridge
in the paper's models, shrinks with more partitions). Lookahead denoising: the windows overlap by half (2 ×
partitions calls per iteration) and each frame is updated only by the window in which it sits in the later
half, so every updated frame sees `window / 2` cleaner frames before it; the queue gains `window / 2` frames in
front of the head, the frames that left last. Every window of an iteration reads the queue as it was before the
iteration (as the paper's tail-first loop does), so the windows of one iteration go through the model in one
batched call. This costs twice the model evaluations per frame of the ordinary sampler (once without
lookahead); the levels a window tells the model are the frames' true ones (left frames at σ = 0).

Queue initialisation. The paper fills the queue from a trained-length video made by the ordinary sampler,
noised diagonally (`start="video"`, the default: the head positions hold copies of its first frame, which leave
first and are dropped). digits-video was trained with independent per-frame levels (diffusion forcing), so it can
also start from pure noise (`start="noise"`): a warm-up of S − 1 iterations in which the queue is a pyramid
(frames nearer the head go down one level per iteration, the rest wait at σ = 1) ends in the diagonal without any
frame leaving, and no base video is made. Measured on the shipped digits-video (benchmarks/results/video-fifo.md:
12 prompts, 32 frames, 2 partitions, S = 16): per-frame accuracy 0.117 ± 0.087 from the video start against
0.099 ± 0.061 from noise (the trained-length video: 0.156 ± 0.077), so the video start is kept, though the gap is
inside the spread of a checkpoint still near chance. `partitions` defaults to 2, the measured setting (S = 16 at
8 frames per window; the paper uses 4 with 16-frame windows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ditserve.engine import repeat_inputs
from ditserve.models.base import LoadedModel


@dataclass(frozen=True)
class FifoConfig:
    """How the queue is laid out and started."""

    window: int = 8
    """Frames per model call: the clip length the model was trained on."""
    partitions: int = 2
    """Windows the queue is long (n in the paper); the schedule has window × partitions steps."""
    lookahead: bool = True
    """Overlap the windows by half and update each frame from the window where it is in the later half."""
    start: Literal["video", "noise"] = "video"
    """`video`: the paper's diagonally noised base video; `noise`: a pyramid warm-up from pure noise."""
    guidance_scale: float = 4.0
    """Classifier-free guidance scale (≤ 1: no unconditional branch)."""

    def __post_init__(self) -> None:
        if self.window < 2 or (self.lookahead and self.window % 2):
            raise ValueError(f"window must be ≥ 2 and even with lookahead, got {self.window}")
        if self.partitions < 1:
            raise ValueError(f"partitions must be ≥ 1, got {self.partitions}")

    @property
    def steps(self) -> int:
        """S: noise levels in the queue, one frame per level."""
        return self.window * self.partitions

    @property
    def front(self) -> int:
        """Frames kept in front of the head (the last ones that left), context for lookahead's first window."""
        return self.window // 2 if self.lookahead else 0


@dataclass
class FifoCounts:
    """Model work done, for the cost per output frame."""

    calls: int = 0
    """Transformer forward calls."""
    window_evaluations: int = 0
    """Windows of `window` frames evaluated, guidance branches counted separately."""
    frame_evaluations: int = 0
    """Frames evaluated (batch rows × frames), guidance branches counted separately."""


def level_schedule(model: LoadedModel, steps: int) -> torch.Tensor:
    """σ of the S + 1 levels, ascending: 0 (clean), the checkpoint's scheduler's S sigmas reversed, up to 1."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas.flip(0).to(torch.float32)


def guided_velocity(
    model: LoadedModel, prompts: list[str], guidance_scale: float, counts: FifoCounts
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`velocity(x, sigma)` for windows x (windows × N, C, F, H, W), window-major with the N prompts in each, at
    per-frame σ (windows × N, F); classifier-free guidance as the engine does it (both branches in one call)."""
    adapter, use_cfg = model.adapter, guidance_scale > 1.0
    conditioning = adapter.condition(model, prompts, guidance=use_cfg)
    kwargs = conditioning.cond
    if use_cfg:
        kwargs = {key: torch.cat([value, conditioning.uncond[key]]) for key, value in kwargs.items()}
    branches = 2 if use_cfg else 1
    train_steps = model.scheduler_config.get("num_train_timesteps", 1000)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        repeats = x.shape[0] // len(prompts)
        inputs = kwargs if repeats == 1 else repeat_inputs(kwargs, repeats, branches)
        t = (sigma * train_steps).to(model.device)
        counts.calls += 1
        counts.window_evaluations += x.shape[0] * branches
        counts.frame_evaluations += x.shape[0] * x.shape[2] * branches
        if not use_cfg:
            return adapter.predict(model, x.to(model.device), t, inputs).float()
        cond, uncond = adapter.predict(model, torch.cat([x, x]).to(model.device), torch.cat([t, t]), inputs).chunk(2)
        return (uncond + guidance_scale * (cond - uncond)).float()

    return velocity


def euler_step(velocity, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One flow-matching Euler step of every frame from its own σ to its own σ_next (both (N, F))."""
    return x + (sigma_next - sigma)[:, None, :, None, None] * velocity(x, sigma)


def sample_clip(velocity, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The ordinary sampler: all frames of `noise` (N, C, F, H, W) share one level, down all of `levels`."""
    x = noise
    for sigma, sigma_next in zip(levels.flip(0)[:-1], levels.flip(0)[1:], strict=True):
        shape = (x.shape[0], x.shape[2])
        x = euler_step(velocity, x, sigma.expand(shape), sigma_next.expand(shape))
    return x


def window_starts(config: FifoConfig) -> list[int]:
    """Queue positions where each model call's window starts (the front counted)."""
    stride = config.window // 2 if config.lookahead else config.window
    return list(range(0, config.front + config.steps - config.window + 1, stride))


def target_levels(config: FifoConfig, iteration: int) -> torch.Tensor:
    """Level index each queue position (front, then the S-frame diagonal) reaches in `iteration`.

    Steady state (iteration ≥ 0): diagonal position q goes from level q + 1 to q, so the head reaches 0 (clean).
    Warm-up (iteration −(S − 1) … −1): the pyramid min(S, q − iteration), which starts all at S and ends in the
    diagonal. (The front keeps its levels: frames that left, at 0, or noise before any has.)"""
    q = torch.arange(config.steps)
    return (q - min(iteration, 0)).clamp(max=config.steps)


def diagonal_step(
    velocity, queue: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, config: FifoConfig
) -> torch.Tensor:
    """One iteration: every window of the queue (N, C, positions, H, W) through the model in one batched call at
    its frames' σ (positions,), each frame taken to its σ_next from the window where it sits in the later half
    (with lookahead; else from its only window). The front is context only."""
    n, window = queue.shape[0], config.window
    starts = window_starts(config)
    updated_from = window // 2 if config.lookahead else 0
    x = torch.cat([queue[:, :, s : s + window] for s in starts])
    now = torch.cat([sigma[s : s + window].expand(n, -1) for s in starts])
    later = torch.cat([sigma_next[s : s + window].expand(n, -1) for s in starts])
    out = queue.clone()
    for s, stepped in zip(starts, euler_step(velocity, x, now, later).split(n), strict=True):
        out[:, :, s + updated_from : s + window] = stepped[:, :, updated_from:]
    return out


def _fresh(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One noise frame per video, (N, C, 1, H, W), each from its own generator."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])[:, :, None]


@torch.no_grad()
def fifo_frames(
    model: LoadedModel,
    prompts: list[str],
    frames: int,
    seeds: list[int],
    config: FifoConfig | None = None,
    counts: FifoCounts | None = None,
) -> Iterator[torch.Tensor]:
    """Yield `frames` frames (N, C, H, W) of the N videos of `prompts` (video k seeded with `seeds[k]`), in
    order, each as soon as it leaves the queue. Frames are in the model's latent space: for digits-video (no VAE)
    the pixels in [-1, 1]; a Wan VAE packs several frames into one latent frame, so its latents are decoded
    together once the video is done, not one by one. `counts` (if given) accumulates the model work."""
    config = config or FifoConfig()
    counts = counts if counts is not None else FifoCounts()
    if len(seeds) != len(prompts) or not prompts:
        raise ValueError(f"one seed per prompt, at least one: {len(prompts)} prompts, {len(seeds)} seeds")
    if frames < 1:
        raise ValueError(f"frames must be ≥ 1, got {frames}")
    shape = model.adapter.latent_shape(model, *model.adapter.default_size(model))
    frame_shape = (shape[0], *shape[2:])
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    velocity = guided_velocity(model, prompts, config.guidance_scale, counts)
    sigmas = level_schedule(model, config.steps)
    steps, front, window = config.steps, config.front, config.window

    if config.start == "noise":
        queue = torch.cat([_fresh(generators, frame_shape) for _ in range(front + steps)], dim=2)
        level = torch.full((front + steps,), steps)
        first_iteration, dropped = -(steps - 1), 0
    else:
        base = sample_clip(velocity, torch.cat([_fresh(generators, frame_shape) for _ in range(window)], dim=2), sigmas)
        source = [0] * front + [max(0, q - (steps - window)) for q in range(steps)]
        level = torch.cat([torch.ones(front, dtype=torch.long), torch.arange(1, steps + 1)])
        noise = torch.cat([_fresh(generators, frame_shape) for _ in source], dim=2)
        s = sigmas[level][None, None, :, None, None]
        queue = (1 - s) * base[:, :, source] + s * noise
        first_iteration, dropped = 0, steps - window

    yielded, iteration = -dropped, first_iteration
    while yielded < frames:
        target = level.clone()
        target[front:] = target_levels(config, iteration)
        queue = diagonal_step(velocity, queue, sigmas[level], sigmas[target], config)
        level = target
        if iteration >= 0:
            if yielded >= 0:
                yield queue[:, :, front].clone()
            yielded += 1
            queue = torch.cat([queue[:, :, 1:], _fresh(generators, frame_shape)], dim=2)
            level = torch.cat([level[1:], torch.tensor([steps])])
        iteration += 1


def fifo_video(
    model: LoadedModel,
    prompts: list[str],
    frames: int,
    seeds: list[int],
    config: FifoConfig | None = None,
    counts: FifoCounts | None = None,
) -> torch.Tensor:
    """The whole video (N, C, frames, H, W) of `fifo_frames`, for callers that do not stream."""
    return torch.stack(list(fifo_frames(model, prompts, frames, seeds, config, counts)), dim=2)
