"""TFM-PTQ: time-feature maintenance — the layers on the timestep-embedding path, and the adaLN layers they
feed, are calibrated over the whole finite set of timesteps, not over the steps the calibration runs visited.

After "TFMQ-DM: Temporal Feature Maintenance Quantization for Diffusion Models" (Huang et al., CVPR 2024),
which observes that the temporal features (the timestep embedding and what it modulates) depend on the
timestep alone, not on the image, and take one value per timestep: a finite set known before any
sampling. Calibrating them on the activations of a few sampling runs fits them to the handful of
timesteps those runs visited and breaks them at the others; the paper calibrates that block separately,
on the whole set. Here, on top of the low-bit float and integer-grid weight formats of `lbq` (same
formats, block scales, GPTQ rounding, bits):
1. the time-feature layers are found, not named: the linears whose input does not change when the image
   latent of a recorded call is replaced by noise (on a DiT: each block's timestep MLP and its adaLN
   modulation; on an MMDiT the text-only ones as well, which depend only on the timestep and the prompt);
2. their input second moment H and mean are taken over `timesteps` timesteps evenly spread over the
   scheduler's training range, each paired with the conditions of `condition_rows` recorded images (the
   finite set, sampled; a flow model's continuous timesteps likewise), and they are rounded with GPTQ along
   that H;
3. each one's bias absorbs the mean output error over the set, (W − Ŵ)·E[x], so the modulation keeps its
   mean at every timestep (the bias is stored in fp16 either way: no extra bytes).
Every other layer is quantized exactly as `lbq` does, so `lbq` with the same fields is this scheme without
time-feature maintenance. A model whose blocks have no time-feature linear is refused at load.
Measured against it (4 images, 20 steps): digits-dit E2M1 33.4 vs 32.6 dB; digits-flow fp4 40.2 vs 40.5 dB (the
bias correction alone: +0.05 dB there). Mixing the sampling runs' H into the finite set's cost 0.3 dB on
digits-dit and changed nothing on digits-flow.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

import torch
from pydantic import Field

from ditserve.calibrate import record
from ditserve.errors import PlanError
from ditserve.quantization.base import Quantizer
from ditserve.quantization.calibration import InputSecondMoment, Together, TransformerInputs, thinned
from ditserve.quantization.layers import replace_module, scoped_linears, store_fp32_parameters_in_fp16
from ditserve.quantization.lbq import SEARCHED, LBQConfig, quantize_layer
from ditserve.quantization.lowbit_formats import BLOCK
from ditserve.registry import QUANTIZERS

log = logging.getLogger(__name__)

TIME_FEATURE = ".finite_set_hessian"
"""Suffix of the statistics of a time-feature layer (its finite-set H; `.finite_set_mean` its mean input)."""


class TFMPTQConfig(LBQConfig):
    name: Literal["tfm-ptq"] = "tfm-ptq"
    timesteps: int = Field(100, ge=2, le=1000)
    """Timesteps of the finite set, evenly spread over the scheduler's training range."""
    condition_rows: int = Field(32, ge=1, le=256)
    """Rows of the first recorded call (both halves of a guidance batch; at most all of them) whose conditions each
    timestep is paired with: for a class model, enough to hold every class (8 rows, 4 of digits-dit's 10 classes,
    scored 4 dB under lbq; all 32, 0.8 dB over it)."""


def latent(call: tuple[tuple, dict]) -> torch.Tensor:
    """The image latent of a recorded transformer call (its first argument, or `hidden_states`)."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def with_latent(call: tuple[tuple, dict], x: torch.Tensor) -> tuple[tuple, dict]:
    args, kwargs = call
    return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})


def layer_inputs(model, call: tuple[tuple, dict], names: dict) -> dict[str, torch.Tensor]:
    """The input of each named linear on one transformer call."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args[0].detach().clone()))
        for name, module in names.items()
    ]
    try:
        with torch.inference_mode():
            model.transformer(*call[0], **call[1])
    finally:
        for handle in handles:
            handle.remove()
    return seen


def time_feature_layers(model, call: tuple[tuple, dict], linears: dict) -> list[str]:
    """The linears whose input is the same when the call's latent is replaced by noise."""
    x = latent(call)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device, x.dtype)
    before, after = layer_inputs(model, call, linears), layer_inputs(model, with_latent(call, noise), linears)
    return [name for name in linears if name in before and torch.equal(before[name], after[name])]


def finite_set_calls(model, call: tuple[tuple, dict], timesteps: int, chunk: int = 25) -> list[tuple[tuple, dict]]:
    """The recorded call (its rows' conditions) at each of `timesteps` timesteps spread over the training range,
    `chunk` timesteps per call."""
    args, kwargs = call
    rows = latent(call).shape[0]
    top = float(model.scheduler_config.get("num_train_timesteps", 1000)) - 1
    grid = torch.linspace(0, top, timesteps).round()

    def repeat(value, times: int):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            return value.repeat(times, *([1] * (value.dim() - 1)))
        return value

    calls = []
    for part in grid.split(chunk):
        timestep = part.repeat_interleave(rows).to(latent(call).device, kwargs["timestep"].dtype)
        repeated = {k: repeat(v, len(part)) for k, v in kwargs.items()} | {"timestep": timestep}
        calls.append((tuple(repeat(a, len(part)) for a in args), repeated))
    return calls


class InputMean(InputSecondMoment):
    """`InputSecondMoment` plus each layer's mean input (what a bias correction needs)."""

    def __init__(self, names: dict) -> None:
        super().__init__()
        self.names, self.totals = names, {}

    def attach(self, engine) -> None:
        self.handles = [
            module.register_forward_pre_hook(lambda _m, args, name=name: self.observe(name, args[0]))
            for name, module in self.names.items()
        ]

    def observe(self, name: str, x: torch.Tensor) -> None:
        super().observe(name, x)
        self.totals[name] = self.totals.get(name, 0) + x.detach().reshape(-1, x.shape[-1]).double().sum(dim=0)


def maintained_bias(linear, rounded: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The fp16 bias that gives the rounded weight the float layer's mean output over inputs of this mean:
    b + (W − Ŵ)·E[x]."""
    return (linear.bias.detach().float() + (linear.weight.detach().float() - rounded) @ mean.float()).half()


@QUANTIZERS.register("tfm-ptq")
class TFMPTQ(Quantizer):
    """TFM-PTQ: lbq's low-bit weights, the time-feature layers calibrated over the finite set of timesteps."""

    Config = TFMPTQConfig
    needs_calibration = True

    def calibrate(self, engine) -> dict[str, torch.Tensor]:
        """lbq's input second moments of every layer, and for the time-feature layers their H and mean input
        over the finite set of timesteps."""
        cfg = self.config
        calls, moments = TransformerInputs(), InputSecondMoment(cfg.scope)
        record(engine, Together(calls, moments), cfg.calibration_samples, cfg.calibration_steps)
        model = engine.model
        linears = scoped_linears(model, cfg.scope)
        probe = thinned(calls.calls[0], cfg.condition_rows)
        temporal = {name: linears[name] for name in time_feature_layers(model, probe, linears)}
        finite = InputMean(temporal)
        finite.attach(None)
        try:
            with torch.inference_mode():
                for args, kwargs in finite_set_calls(model, probe, cfg.timesteps):
                    model.transformer(*args, **kwargs)
        finally:
            finite.detach()
        statistics = moments.moments()
        for name, hessian in finite.moments().items():
            statistics[name + TIME_FEATURE] = hessian
            statistics[f"{name}.finite_set_mean"] = (finite.totals[name] / finite.rows[name]).float()
        return statistics

    def apply(self, model) -> None:
        cfg = self.config
        linears = scoped_linears(model, cfg.scope)
        block = BLOCK[cfg.convention]
        for name, linear in linears.items():  # before calibrating: a refusal should not cost a calibration run
            if linear.in_features % block:
                raise PlanError(
                    f"quant tfm-ptq: layer {name} has {linear.in_features} inputs, not a multiple of the "
                    f"{cfg.convention} block of {block}; use scope: blocks if it lies outside them, or lbq"
                )
        statistics = self.statistics(model)
        temporal = [name for name in linears if name + TIME_FEATURE in statistics]
        if not temporal:
            raise PlanError(
                "quant tfm-ptq: no linear layer in scope takes the timestep features alone (none kept its input "
                "when the image latent changed), so there is nothing to maintain; use lbq with the same fields"
            )
        candidates = SEARCHED.get(cfg.format, (cfg.format,))
        chosen = Counter()
        for name, linear in linears.items():
            hessian = statistics[name + TIME_FEATURE] if name in temporal else statistics[name]
            layer, _ = quantize_layer(linear, hessian, candidates, cfg)
            if name in temporal and linear.bias is not None:
                layer.bias = maintained_bias(linear, layer.dequantized_weight(), statistics[f"{name}.finite_set_mean"])
            replace_module(model.transformer, name, layer)
            chosen[layer.format] += 1
        if cfg.scope == "transformer":
            store_fp32_parameters_in_fp16(model.transformer)
        formats = ", ".join(f"{fmt} in {n} layers" for fmt, n in chosen.most_common())
        self.runs = (
            f"simulated {cfg.convention} {cfg.format} weights ({formats}); {len(temporal)} time-feature layers "
            f"calibrated over {cfg.timesteps} timesteps"
        )
        log.info("tfm-ptq: %s", self.runs)
