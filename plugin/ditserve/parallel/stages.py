"""A transformer's block stack cut into consecutive stages, one per rank of the `pipefusion` group.

PipeFusion and AsyncDiff both give rank p of a group of P ranks blocks [p·L/P, (p+1)·L/P). Every rank
still runs the model's own forward: what comes before the blocks (patch embedding with positions,
timestep, class and caption embeddings) and after them (final norm, projection, unpatchify) is cheap
and stays exactly diffusers'. The block loop is taken over: the first block's `forward` runs the
runner's `step(hidden_states, run)`, where `run(x)` applies this rank's blocks to `x` with the call's
other arguments, and returns the output of the whole stack (the same on every rank); the other
blocks pass their input through.

Cutting the stack this way needs one single-stream stack whose blocks see the tokens only through
`hidden_states`: DiT and PixArt, whose positions are added before the blocks. Flux and SD3 carry a
second (text) stream between blocks, Wan a per-token rotary input; they are refused at load.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ditserve.errors import PlanError, RequestError
from ditserve.models.base import block_argument

STAGEABLE_FAMILIES = ("dit", "pixart")
"""Families with one stack of single-stream blocks that take the tokens only through `hidden_states`."""

Run = Callable[[torch.Tensor], torch.Tensor]
Step = Callable[[torch.Tensor, Run], torch.Tensor]


def check_stages(runner: str, model, stages: int, what: str) -> None:
    """Refuse, at load, a model whose blocks cannot be cut into `stages` equal stages."""
    family = model.adapter.family
    if family not in STAGEABLE_FAMILIES:
        raise PlanError(
            f"runner {runner!r} cuts the block stack into stages, which family {family!r} cannot take (it needs one "
            f"stack of single-stream blocks with positions added before them: {', '.join(STAGEABLE_FAMILIES)}); "
            "use ulysses, ring, usp or cfg for it"
        )
    blocks = len(model.adapter.block_groups(model.transformer)[0].blocks)
    if blocks % stages:
        raise PlanError(
            f"the model's {blocks} transformer blocks cannot be split into {stages} equal {what}; "
            f"choose a degree that divides {blocks}"
        )


def check_no_cache(runner: str, config) -> None:
    """Refuse, at load, a cache with a staged runner: a cache keeps per-block state from call to call, which
    the staged stack breaks (block 0's forward runs a whole stage; PipeFusion calls each block once per patch)."""
    if config.plan.cache.name != "none":
        raise PlanError(
            f"runner {runner!r} does not combine with cache {config.plan.cache.name!r} (its per-block state would "
            "mix patches and stages); set `plan.cache` to none, or use ulysses with the cache"
        )


def check_patches(tokens: int, patches: int, height: int, width: int, *, at_load: bool) -> None:
    """Refuse an image whose tokens cannot be cut into `patches` equal patches."""
    if tokens % patches == 0:
        return
    problem = f"{height}x{width} makes {tokens} image tokens, which {patches} patches cannot split evenly"
    if at_load:
        raise PlanError(f"{problem} at the model's default size; choose a number of patches that divides {tokens}")
    raise RequestError("height", problem)


def take_over(model, group, step: Step) -> Callable[[], None]:
    """Make the block stack run `step` with this rank's stage of `group`; returns the undo."""
    blocks = model.adapter.block_groups(model.transformer)[0].blocks
    per = len(blocks) // group.size
    saved = [block.__dict__.get("forward") for block in blocks]  # the engine's block counter wraps each forward
    forwards = [block.forward for block in blocks]
    mine = forwards[group.rank * per : (group.rank + 1) * per]

    def stack(*args, **kwargs):
        def run(x: torch.Tensor) -> torch.Tensor:
            for forward in mine:
                call_args, call_kwargs = _with_hidden(x, args, kwargs)
                x = forward(*call_args, **call_kwargs)
            return x

        return step(block_argument(blocks[0], "hidden_states", args, kwargs), run)

    def passthrough(block):
        return lambda *args, **kwargs: block_argument(block, "hidden_states", args, kwargs)

    blocks[0].forward = stack
    for block in list(blocks)[1:]:
        block.forward = passthrough(block)

    def undo() -> None:
        for block, forward in zip(blocks, saved, strict=True):
            if forward is None:
                del block.forward
            else:
                block.forward = forward

    return undo


def _with_hidden(x: torch.Tensor, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's arguments with `hidden_states` (the blocks' first parameter) replaced by `x`."""
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": x}
    return (x, *args[1:]), kwargs


def pipeline(hidden: torch.Tensor, run: Run, group, comm, patches: int, on_patch=None):
    """Push `hidden` through the stages of `group`, cut into `patches` bands of tokens, each stage passing a
    patch on (asynchronously) as soon as it has computed it; the last stage broadcasts the whole output.

    Returns (what this rank's stage received, one tensor per patch; the stack's output, on every rank).
    `on_patch(start)` is called before this stage computes the patch whose first token is `start`.
    """
    first, last = group.rank == 0, group.rank == group.size - 1
    inputs, outputs, sends, start = [], [], [], 0
    for chunk in hidden.chunk(patches, dim=1):
        x = chunk if first else comm.recv(chunk, group, group.rank - 1)
        inputs.append(x)
        if on_patch is not None:
            on_patch(start)
        start += chunk.shape[1]
        y = run(x)
        if last:
            outputs.append(y)
        else:
            y = y.contiguous()
            sends.append((comm.send(y, group, group.rank + 1), y))
    for work, _ in sends:
        work.wait()
    out = torch.cat(outputs, dim=1) if last else torch.empty_like(hidden, memory_format=torch.contiguous_format)
    return inputs, comm.broadcast(out, group, group.size - 1)
