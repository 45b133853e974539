"""When to run a Triton kernel and when its torch reference: the dispatch rule every kernel shares.

Triton runs on CUDA tensors, and on CPU tensors only under the interpreter (`TRITON_INTERPRET=1`,
read by Triton when it is imported, so it must be set before). Anywhere else a launch fails, so
the custom ops fall back to the reference — which is also the definition of a kernel's right answer.
Each kernel's op is `triton_or_reference(...)`: one custom op over the pair, with the reference's signature.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from collections.abc import Callable

import torch
from torch.library import infer_schema


@functools.cache
def triton_importable() -> bool:
    """Whether the `triton` package is installed (it is an optional dependency: extra `dev`)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter in this process."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Triton for CUDA tensors (or any tensor under the interpreter); the reference otherwise."""
    if not triton_importable():
        return False
    if interpreting():
        return True
    return all(t.is_cuda for t in tensors)


def triton_or_reference(name: str, reference: Callable, launch: Callable, fake: Callable):
    """The custom op `name` (what `torch.compile` sees as one opaque call, shaped by `fake`): `launch` runs
    the Triton kernel where it can run, `reference` elsewhere. Its schema is the reference's signature;
    `launch` takes the same parameters by name (and may have more, with defaults)."""
    signature = inspect.signature(reference)

    def dispatch(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        tensors = [a for a in arguments.values() if isinstance(a, torch.Tensor)]
        return (launch if use_triton(*tensors) else reference)(**arguments)

    op = torch.library.custom_op(name, dispatch, mutates_args=(), schema=infer_schema(reference, mutates_args=()))
    op.register_fake(fake)
    return op


GEMM_TILES = [
    {"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 256, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 32, "BLOCK_N": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
]
"""The output tiles the GEMM kernels (W8A8, W4A4) are tuned over on a GPU."""
GEMM_INTERPRETER_TILE = {"BLOCK_M": 16, "BLOCK_N": 32, "GROUP_M": 2}
"""Their one tile under the interpreter: small, so the CPU run is quick."""


def autotune_configs(gpu_configs: list[dict], interpreter_config: dict) -> list:
    """The autotuner's candidates: several on a GPU, exactly one under the interpreter, which cannot
    benchmark more than one ("0 active drivers")."""
    import triton

    chosen = [interpreter_config] if interpreting() else gpu_configs
    return [
        triton.Config({k: v for k, v in c.items() if k not in ("num_warps", "num_stages")}, **_launch_opts(c))
        for c in chosen
    ]


def _launch_opts(config: dict) -> dict:
    return {k: config[k] for k in ("num_warps", "num_stages") if k in config}
