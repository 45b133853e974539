"""The linear layers a quantizer rewrites, how it swaps one, and what the result weighs.

Shared by the weight quantizers (int8, fp8, w8a8, svdquant, mixed); kept out of `base.py` so that a
quantizer's config validates without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

if TYPE_CHECKING:
    from ditserve.models.base import LoadedModel
    from ditserve.quantization.base import Scope


def block_linears(model: LoadedModel) -> dict[str, nn.Linear]:
    """Every `nn.Linear` inside the transformer's blocks, by qualified name under the transformer."""
    transformer_names = {module: name for name, module in model.transformer.named_modules()}
    found = {}
    for group in model.adapter.block_groups(model.transformer):
        for module in group.blocks.modules():
            if isinstance(module, nn.Linear):
                found[transformer_names[module]] = module
    return found


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
