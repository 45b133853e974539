"""What the quantizers record while the engine runs calibration requests (`ditserve/calibrate.py`).

Statistics come from real sampling trajectories (every step of a sampler run, guidance on), not from
random inputs, because a DiT's activations change with the timestep: the ranges seen at step 1 and
step 50 differ, and a quantizer must cover both.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from ditserve.calibrate import Recorder, record
from ditserve.quantization.layers import block_linears, scoped_linears

if TYPE_CHECKING:
    from ditserve.engine import Engine
    from ditserve.quantization.base import Scope

log = logging.getLogger(__name__)


class LinearInputs(Recorder):
    """Observes the input of every linear layer in scope on each call; subclasses say what they keep of it."""

    def __init__(self, scope: Scope | None = None) -> None:
        self.scope = scope
        """The linears observed: those `scoped_linears` gives for this scope, or the blocks' (None)."""
        self.handles: list[Any] = []

    def attach(self, engine: Engine) -> None:
        model = engine.model
        linears = block_linears(model) if self.scope is None else scoped_linears(model, self.scope)
        self.handles = [
            module.register_forward_pre_hook(lambda _m, args, name=name: self.observe(name, args[0]))
            for name, module in linears.items()
        ]

    def observe(self, name: str, x: torch.Tensor) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()


class InputAbsmax(LinearInputs):
    """Per input channel, the largest |activation| each linear layer saw (SmoothQuant's statistic)."""

    def __init__(self, scope: Scope | None = None) -> None:
        super().__init__(scope)
        self.absmax: dict[str, torch.Tensor] = {}

    def observe(self, name: str, x: torch.Tensor) -> None:
        seen = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
        self.absmax[name] = torch.maximum(self.absmax[name], seen) if name in self.absmax else seen


class InputSecondMoment(LinearInputs):
    """Per linear layer, E[x xᵀ] over every input row it saw: the Hessian of its output's squared error in the
    weights (GPTQ's H), so that tr(ΔW H ΔWᵀ) is the output error a weight change ΔW causes on calibration data."""

    def __init__(self, scope: Scope | None = None) -> None:
        super().__init__(scope)
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}

    def observe(self, name: str, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        self.sums[name] = self.sums.get(name, 0) + flat.T @ flat
        self.rows[name] = self.rows.get(name, 0) + flat.shape[0]

    def moments(self) -> dict[str, torch.Tensor]:
        return {name: (total / self.rows[name]).float() for name, total in self.sums.items()}


class TransformerInputs(Recorder):
    """The arguments of every transformer call (one per step: the doubled batch under guidance), to replay."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.handle: Any = None

    def attach(self, engine: Engine) -> None:
        self.handle = engine.model.transformer.register_forward_pre_hook(
            lambda _m, args, kwargs: self.calls.append((args, kwargs)), with_kwargs=True
        )

    def detach(self) -> None:
        self.handle.remove()


def spread(calls: list, count: int) -> list:
    """`count` of the recorded transformer calls, evenly spaced over them (so over the sampling steps)."""
    return calls[:: max(1, len(calls) // count)][:count]


def thinned(call: tuple[tuple, dict], rows: int) -> tuple[tuple, dict]:
    """A recorded transformer call on `rows` of its batch, evenly spaced (so both halves of a guidance batch):
    every tensor argument whose first dimension is the batch is sliced alike."""
    args, kwargs = call
    batch = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 1).shape[0]
    keep = torch.arange(0, batch, max(1, batch // rows))[:rows]

    def slice_(value):
        return value[keep] if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch else value

    return tuple(slice_(a) for a in args), {k: slice_(v) for k, v in kwargs.items()}


def probe_outputs(model, probes: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    """The transformer's output (fp32) on each recorded call: what a layer's sensitivity is measured on."""
    with torch.inference_mode():
        return [model.transformer(*args, **kwargs)[0].float() for args, kwargs in probes]  # output or tuple


class Together(Recorder):
    """Several recorders observing the same calibration requests (one sampling run for all their statistics)."""

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders = recorders

    def attach(self, engine: Engine) -> None:
        for recorder in self.recorders:
            recorder.attach(engine)

    def detach(self) -> None:
        for recorder in self.recorders:
            recorder.detach()


def input_absmax(engine: Engine, samples: int, steps: int, scope: Scope | None = None) -> dict[str, torch.Tensor]:
    """`InputAbsmax` over `samples` calibration requests of `steps` steps on `engine`'s (unquantized) model."""
    recorder = InputAbsmax(scope)
    record(engine, recorder, samples, steps)
    log.info("calibrated %d linear layers on %d samples × %d steps", len(recorder.absmax), samples, steps)
    return recorder.absmax


def input_second_moments(
    engine: Engine, samples: int, steps: int, scope: Scope | None = None
) -> dict[str, torch.Tensor]:
    """`InputSecondMoment` over `samples` calibration requests of `steps` steps on `engine`'s (unquantized) model."""
    recorder = InputSecondMoment(scope)
    record(engine, recorder, samples, steps)
    log.info("recorded E[xxᵀ] of %d linear layers on %d samples × %d steps", len(recorder.sums), samples, steps)
    return recorder.moments()


def smoothing_factors(absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|X_j|^α / max|W_j|^(1−α): divide activations by s, multiply weights by it,
    moving quantization difficulty from activation outlier channels to the weights."""
    w_max = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (absmax.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
