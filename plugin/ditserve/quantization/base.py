"""What a quantizer is: a config and `apply`, which rewrites the loaded transformer once at load time.

Quantizers act on the transformer's blocks as the family adapter lists them (`block_groups`), never
on a model's attribute names, and before any cache is installed (the engine applies the quantizer
first), so a cache's hooks wrap the quantized blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ditserve.registry import Strategy, StrategyConfig

if TYPE_CHECKING:  # the quantizers import torch; validating their configs needs none of it
    import torch

    from ditserve.engine import Engine
    from ditserve.models.base import LoadedModel


class QuantConfig(StrategyConfig):
    """Base of quantizer configs."""


class CalibratedQuantConfig(QuantConfig):
    """Base of configs for quantizers that need activation statistics from real sampling runs."""

    calibration: str | None = None
    """A file written by `ditserve calibrate --quant NAME` (which names it here);
    None calibrates at load on `calibration_samples` images (seconds on the digits model, long on big ones)."""
    calibration_samples: int = Field(4, ge=1, le=256)
    """Images sampled to collect statistics when calibrating."""
    calibration_steps: int = Field(10, ge=1, le=100)
    """Sampler steps per calibration image."""


class Quantizer(Strategy):
    """Rewrites the transformer's layers (weights, activations, attention) for lower precision."""

    Config = QuantConfig
    needs_calibration: ClassVar[bool] = False
    """True when `apply` uses statistics that `calibrate` collects."""

    def apply(self, model: LoadedModel) -> None:
        """Quantize the loaded model in place."""

    def calibrate(self, engine: Engine) -> dict[str, torch.Tensor]:
        """Collect what `apply` needs while `engine` (the unquantized model) runs calibration requests
        (`ditserve.calibrate.record` with this quantizer's recorder); tensors, to be stored."""
        return {}

    def statistics(self, model: LoadedModel) -> dict[str, torch.Tensor]:
        """The stored calibration named by the config, or a fresh calibration run when it names none (on
        another copy of the checkpoint, as `ditserve calibrate --quant` runs it)."""
        path = getattr(self.config, "calibration", None)
        if path is None:
            from ditserve.calibrate import quantizer_engine

            return self.calibrate(quantizer_engine(model))
        from pathlib import Path

        from safetensors.torch import load_file

        from ditserve.errors import PlanError

        if not Path(path).is_file():
            raise PlanError(
                f"quant.calibration: {path!r} does not exist; run `ditserve calibrate --quant {self.name} "
                "--config <model.yaml>` to write it, or remove the field to calibrate at load"
            )
        return load_file(path)


Scope = Literal["blocks", "transformer"]
"""Which linear layers a weight quantizer rewrites: those in the blocks (the bulk of the compute), or every
one in the transformer (the blocks plus the embedders and the output head: the bulk of what is left of the
weight bytes once the blocks are quantized, and little of the compute)."""
