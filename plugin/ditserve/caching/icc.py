"""ICC: increment-calibrated caching, from "Accelerating Diffusion Transformer via Increment-Calibrated Caching
with Channel-Aware Singular Value Decomposition" (Chen et al., 2025, arXiv 2505.05829; github.com/ccccczzy/icc).

What is cached: the input and output of every linear layer inside the blocks' attention and feed-forward
modules (the paper's qkv, output projection, fc1 and fc2). When it is refreshed: statically, full steps spaced
`spacing` of the denoising trajectory apart (caching/trajectory.py), as FORA's are; a full step computes and
stores every layer. In between, plain caching would return a layer's stored output y₀ = W x₀ + b unchanged;
ICC corrects it by the increment of its input: y = y₀ + W_r (x − x₀), with W_r a rank-r approximation of the
layer's own weight W, so the layer costs r·(in + out) multiply-adds per token instead of in·out. Everything
else in the block (norms, modulation, the attention product, activations) runs on the corrected values, so
each cached step follows the new input where a reused block would not; it is training-free (the correction
comes from the weights). Text-side projections of cross-attention see the same input at every step, so their
increment is zero and they return the stored output exactly.

Channel-aware SVD: a few input channels of a DiT's layers carry outlier magnitudes, and a plain SVD of W
spends its rank on directions those channels do not use, so the correction fails exactly where the increment
is large. The approximation is taken of W·diag(s), s the mean magnitude of each input channel, and mapped
back: W_r = [W·diag(s)]_r·diag(s)⁻¹ (the paper's CA-SVD). The channel magnitudes come from
`ditserve calibrate --cache icc` (or the checkpoint's shipped `calibration/icc.json`, which names a
safetensors file of them per layer); `channel_aware: false` uses the plain SVD and needs no calibration.
Step counts: the spacing is a fraction of the trajectory, so it covers the same stretch at any step count;
`interval` fixes it in steps. `interval: 1` computes every layer at every step (bit-identical to no caching).
Decisions are per batch. The saving is in multiply-adds inside blocks that still run, so block and
attention counts stay whole; the cache counts the layer calls it served from the low-rank path (`increments`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.hooks import ModelHook
from pydantic import Field
from torch import nn

from ditserve.caching.base import CacheConfig, CacheStrategy
from ditserve.caching.calibration import with_shipped_calibration
from ditserve.caching.progress import DenoisingProgress
from ditserve.caching.trajectory import static_full_step
from ditserve.errors import PlanError
from ditserve.hooks import add_hook, remove_hook
from ditserve.registry import CACHES

SCALES_FILE = "icc-scales.safetensors"
"""The file a calibration writes the channel magnitudes to, beside the YAML or in the checkpoint's calibration."""


class ICCConfig(CacheConfig):
    name: Literal["icc"] = "icc"
    spacing: float = Field(0.08, gt=0.0, le=1.0)
    """Full steps are at least this much denoising progress (1 − t/t₀) apart; the steps between correct the
    stored layer outputs by the low-rank increment."""
    interval: int | None = Field(None, ge=1, le=100)
    """Compute every layer every `interval` steps instead of by `spacing`."""
    warmup: int = Field(2, ge=0, le=1000)
    """Steps at the start that always compute."""
    rank: float = Field(0.125, gt=0.0, le=1.0)
    """The rank of each correction, as a fraction of the layer's smaller dimension. At 1/8 a corrected call of a
    square layer costs 1/4 of computing it; on digits-dit (default spacing) 1/8 kept 38–40 dB at 20–50 steps
    where 1/4 kept 41–43 dB for a third more multiply-adds."""
    channel_aware: bool = True
    """Weight the SVD by the calibrated input-channel magnitudes (CA-SVD); false: plain SVD, no calibration."""
    scales: str | None = None
    """A safetensors file of each layer's mean input-channel magnitudes (by the layer's name in the
    transformer); written by `ditserve calibrate --cache icc`."""


def increment_layers(model) -> dict[str, nn.Linear]:
    """The linear layers of the blocks' attention and feed-forward modules, by their name in the transformer
    (a LoRA-wrapped layer by its unwrapped name: its base layer is corrected, its adapter runs as it is)."""
    from diffusers.hooks._common import _ATTENTION_CLASSES, _FEEDFORWARD_CLASSES

    found: dict[str, nn.Linear] = {}
    names = {module: name for name, module in model.transformer.named_modules()}
    for group in model.adapter.block_groups(model.transformer):
        for block in group.blocks:
            for module in block.modules():
                if isinstance(module, (*_ATTENTION_CLASSES, *_FEEDFORWARD_CLASSES)):
                    linears = [m for m in module.modules() if isinstance(m, nn.Linear) and "lora_" not in names[m]]
                    found |= {names[m].replace(".base_layer", ""): m for m in linears}
    return found


def low_rank(weight: torch.Tensor, rank: int, scales: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A the rank-`rank` approximation of `weight` (out × in); with `scales`, the approximation
    of weight·diag(scales) mapped back by diag(scales)⁻¹ (channel-aware)."""
    w = weight.detach().float()
    s = None if scales is None else scales.float().clamp_min(1e-6)
    u, sigma, vh = torch.linalg.svd(w if s is None else w * s, full_matrices=False)
    a = vh[:rank] if s is None else vh[:rank] / s
    return a.to(weight.dtype), (u[:, :rank] * sigma[:rank]).to(weight.dtype)


class IncrementLinear(ModelHook):
    """On one linear layer: computes and stores (input, output), or corrects the stored output by the low-rank
    map of the input's increment, as the cache decided for this call."""

    def __init__(self, cache: ICC, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.cache = cache
        self.a, self.b = a, b
        self.reset_state(None)

    def reset_state(self, module):
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        return module

    def new_forward(self, module, x):
        if self.cache.full or self.x is None or self.x.shape != x.shape:
            self.x, self.y = x, self.fn_ref.original_forward(x)
            return self.y
        self.cache.increments += 1
        return self.y + nn.functional.linear(nn.functional.linear(x - self.x, self.a), self.b)


class ChannelRecorder:
    """Records the mean magnitude of every input channel of the increment layers (a calibration's recorder)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.handles: list[Any] = []

    def apply(self, model) -> None:
        for name, layer in increment_layers(model).items():
            self.handles.append(layer.register_forward_pre_hook(lambda m, args, name=name: self.record(name, args[0])))

    def record(self, name: str, x: torch.Tensor) -> None:
        flat = x.detach().float().abs().reshape(-1, x.shape[-1])
        self.sums[name] = self.sums.get(name, 0) + flat.sum(0)
        self.rows[name] = self.rows.get(name, 0) + flat.shape[0]

    def reset(self) -> None:
        """Statistics run over all calibration requests: nothing per request to forget."""

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@CACHES.register("icc")
class ICC(CacheStrategy):
    """ICC: between full steps, each linear layer corrects its stored output by a low-rank map of its input change."""

    Config = ICCConfig
    needs_calibration = True
    saves_evaluations = False
    """Its saving is multiply-adds inside layers that still run, which block and attention counts do not show
    (`increments` does)."""
    transformer = None

    @property
    def hook_name(self) -> str:
        return f"ditserve.{type(self).__name__}"

    def apply(self, model) -> None:
        self.require_family(model)
        scales: dict[str, torch.Tensor] = {}
        if self.config.channel_aware:
            self.config = with_shipped_calibration(self.config, model)
            self.require_calibration("scales")
            scales = self._load_scales(self.config.scales)
        layers = increment_layers(model)
        if not layers:
            raise PlanError(
                f"cache 'icc' found no linear layer in the attention or feed-forward modules of this "
                f"{model.adapter.family} transformer's blocks: pick another cache (e.g. fora) in plan.cache"
            )
        missing = sorted(set(layers) - set(scales)) if self.config.channel_aware else []
        if missing:
            raise PlanError(
                f"cache 'icc': the calibration has no channel magnitudes for {', '.join(missing[:3])} of this model; "
                "rerun `ditserve calibrate --cache icc --config <model.yaml>` (or set channel_aware: false)"
            )
        self.transformer = model.transformer
        self.hooks: list[IncrementLinear] = []
        for name, layer in layers.items():
            rank = max(1, math.ceil(self.config.rank * min(layer.weight.shape)))
            a, b = low_rank(layer.weight, rank, scales.get(name))
            self.hooks.append(IncrementLinear(self, a, b))
            add_hook(self.transformer, layer, self.hooks[-1], self.hook_name)
        self.calls = DenoisingProgress(self._decide)
        add_hook(self.transformer, self.transformer, self.calls, self.hook_name)
        self.increments = 0
        """Linear-layer calls served by the low-rank correction in the current (or last) request: zeroed at a
        request's first call, not by `reset`, so it can still be read after the engine reset the cache."""
        self.reset()

    @staticmethod
    def _load_scales(path: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (OSError, ValueError) as err:
            raise PlanError(
                f"cache 'icc' cannot read its channel magnitudes {path!r} ({err}): rerun "
                "`ditserve calibrate --cache icc --config <model.yaml>`"
            ) from err

    def reset(self) -> None:
        self.calls.reset()
        for hook in self.hooks:
            hook.reset_state(None)
        self.full = True
        self.last_full = 0.0

    def remove(self) -> None:
        if self.transformer is not None:  # None: `apply` refused before it reached the model
            remove_hook(self.transformer, self.hook_name)

    def _decide(self) -> None:
        config, progress = self.config, self.calls.progress
        if self.calls.call == 0:
            self.increments = 0
        self.full = static_full_step(
            self.calls.call, progress, self.last_full, config.warmup, config.interval, config.spacing, 0.0
        )
        if self.full:
            self.last_full = progress

    @classmethod
    def calibrate(cls, engine, samples: int, settings: dict | None = None, directory=None) -> dict[str, Any]:
        """Record every increment layer's mean input-channel magnitude over `samples` uncached requests and store
        them as safetensors in `directory`; the field naming the file."""
        from safetensors.torch import save_file

        from ditserve.caching.calibration import per_request

        recorder = ChannelRecorder()
        per_request(engine, recorder, samples, lambda: None)
        scales = {name: (total / recorder.rows[name]).contiguous() for name, total in recorder.sums.items()}
        path = Path(directory) / SCALES_FILE
        save_file(scales, str(path))
        return {"scales": str(path.resolve())}
