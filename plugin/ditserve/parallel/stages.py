"""A transformer's block stack cut into consecutive stages, one per rank of the `pipefusion` group.

PipeFusion and AsyncDiff both give rank p of a group of P ranks blocks [p·L/P, (p+1)·L/P). Every rank
still runs the model's own forward: what comes before the blocks (patch embedding with positions,
timestep, class and caption embeddings) and after them (final norm, projection, unpatchify) is cheap
and stays exactly diffusers'. The block loop is taken over by diffusers `ModelHook`s named
`STAGES_HOOK`: block 0's runs the runner's `step(hidden_states, run)`, where `run(x)` applies this rank's
blocks to `x` with the call's other arguments (each beneath its own hook, so a counter installed at load
still counts), and returns the output of the whole stack (the same on every rank); the other blocks' hooks
pass their input through.

Cutting the stack this way needs one single-stream stack whose blocks see the tokens only through
`hidden_states`: DiT and PixArt, whose positions are added before the blocks. Flux and SD3 carry a
second (text) stream between blocks, Wan a per-token rotary input; they are refused at load.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.hooks import ModelHook

from ditserve.errors import PlanError, RequestError
from ditserve.hooks import add_hook, remove_hook
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


def check_no_cache(runner: str, plan) -> None:
    """Refuse, at load, a cache with a staged runner: a cache keeps per-block state from call to call, which
    the staged stack breaks (block 0's forward runs a whole stage; PipeFusion calls each block once per patch)."""
    if plan.cache.name != "none":
        raise PlanError(
            f"runner {runner!r} does not combine with cache {plan.cache.name!r} (its per-block state would "
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


STAGES_HOOK = "ditserve.stages"
"""The name of the hooks `take_over` registers on every block (diffusers' `HookRegistry`)."""


class StageHook(ModelHook):
    """On block 0: runs the runner's `step` over the whole stack, this rank's stage doing the computing."""

    def __init__(self, step: Step, blocks: list[ModelHook]) -> None:
        super().__init__()
        self.step, self.blocks = step, blocks

    def new_forward(self, module, *args, **kwargs):
        def run(x: torch.Tensor) -> torch.Tensor:
            for hook in self.blocks:  # this rank's blocks, each called beneath its own stage hook
                call_args, call_kwargs = _with_hidden(x, args, kwargs)
                x = hook.fn_ref.original_forward(*call_args, **call_kwargs)
            return x

        return self.step(block_argument(module, "hidden_states", args, kwargs), run)


class PassThroughHook(ModelHook):
    """On every other block: hands its input on (block 0's hook already ran the stack)."""

    def new_forward(self, module, *args, **kwargs):
        return block_argument(module, "hidden_states", args, kwargs)


def take_over(model, group, step: Step) -> None:
    """Make the block stack run `step` with this rank's stage of `group` (undo: `give_back`)."""
    blocks = model.adapter.block_groups(model.transformer)[0].blocks
    per = len(blocks) // group.size
    hooks = [PassThroughHook() for _ in blocks]
    for block, hook in list(zip(blocks, hooks, strict=True))[1:]:
        add_hook(model.transformer, block, hook, STAGES_HOOK)
    mine = hooks[group.rank * per : (group.rank + 1) * per]
    stage = StageHook(step, mine)
    if group.rank == 0:
        mine[0] = stage  # block 0's forward beneath the stage hook
    add_hook(model.transformer, blocks[0], stage, STAGES_HOOK)


def give_back(model) -> None:
    """Remove `take_over`'s hooks: every block computes its own input again."""
    remove_hook(model.transformer, STAGES_HOOK)


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
