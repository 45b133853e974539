"""What a quantizer is: a config and `apply`, which rewrites the loaded transformer once at load time.

Quantizers act on the transformer's blocks as the family adapter lists them (`block_groups`), never
on a model's attribute names, and before any cache is installed (the engine applies the quantizer
first), so a cache's hooks wrap the quantized blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from ditserve.registry import Strategy, StrategyConfig

if TYPE_CHECKING:
    from ditserve.models.base import LoadedModel


class QuantConfig(StrategyConfig):
    """Base of quantizer configs."""


class CalibratedQuantConfig(QuantConfig):
    """Base of configs for quantizers that need activation statistics from real sampling runs."""

    calibration: str | None = None
    """A file written by `ditserve calibrate --quant NAME` (or `python -m ditserve.quantization.calibrate`);
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

    def calibrate(self, model: LoadedModel) -> dict[str, torch.Tensor]:
        """Collect what `apply` needs from sampling runs of the unquantized model (tensors, to be stored)."""
        return {}

    def statistics(self, model: LoadedModel) -> dict[str, torch.Tensor]:
        """The stored calibration named by the config, or a fresh calibration run when it names none."""
        path = getattr(self.config, "calibration", None)
        if path is None:
            return self.calibrate(model)
        from pathlib import Path

        from safetensors.torch import load_file

        from ditserve.errors import PlanError

        if not Path(path).is_file():
            raise PlanError(
                f"quant.calibration: {path!r} does not exist; run `ditserve calibrate --quant {self.name} "
                "--config <model.yaml>` to write it, or remove the field to calibrate at load"
            )
        return load_file(path)


def block_linears(model: LoadedModel) -> dict[str, nn.Linear]:
    """Every `nn.Linear` inside the transformer's blocks, by qualified name under the transformer."""
    transformer_names = {module: name for name, module in model.transformer.named_modules()}
    found = {}
    for group in model.adapter.block_groups(model.transformer):
        for module in group.blocks.modules():
            if isinstance(module, nn.Linear):
                found[transformer_names[module]] = module
    return found


Scope = Literal["blocks", "transformer"]
"""Which linear layers a weight quantizer rewrites: those in the blocks (the bulk of the compute), or every
one in the transformer (the blocks plus the embedders and the output head: the bulk of what is left of the
weight bytes once the blocks are quantized, and little of the compute)."""


def scoped_linears(model: LoadedModel, scope: Scope) -> dict[str, nn.Linear]:
    """The linears a quantizer with this scope rewrites, by qualified name under the transformer."""
    if scope == "blocks":
        return block_linears(model)
    return {name: m for name, m in model.transformer.named_modules() if isinstance(m, nn.Linear)}


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` (dotted) was."""
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


class StoredInFp16(nn.Module):
    """A parametrization: the parameter is stored in fp16 and handed to the layer in its compute dtype."""

    def __init__(self, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.compute_dtype = compute_dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.compute_dtype)


def store_fp32_parameters_in_fp16(root: nn.Module) -> list[str]:
    """Store every fp32 parameter left in `root` (embedding tables, convolutions, norm weights: what a
    linear-layer quantizer leaves) in fp16, computed in fp32 as before; returns their names.

    A checkpoint deployed in 16 bits stores them so; without this, a 4-bit scheme's size against a 16-bit
    model would count these few tensors at twice their deployed bytes. fp16 rather than bf16: their range
    fits, and its 10-bit mantissa keeps them within 5e-4 relative of fp32."""
    names = []
    for module_name, module in list(root.named_modules()):
        for param_name, param in list(module.named_parameters(recurse=False)):
            if param.dtype == torch.float32:  # cast first: a parametrization may not change the dtype it stores
                setattr(module, param_name, nn.Parameter(param.detach().half(), requires_grad=False))
                parametrize.register_parametrization(module, param_name, StoredInFp16(param.dtype), unsafe=True)
                names.append(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def weight_bytes(module: nn.Module) -> int:
    """Bytes of what a checkpoint of the module stores (its state dict: parameters and persistent
    buffers), each storage counted once. Non-persistent buffers — DiT's sin-cos position table — are
    recomputed at load, so they are not weights."""
    seen, total = set(), 0
    for tensor in module.state_dict(keep_vars=True).values():
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
