"""Compiled execution, `plan.compile`: `none`, `regional`, `full` or `graphs`.

- `regional`: `torch.compile` on each transformer block's own `forward`, as diffusers'
  `compile_repeated_blocks` does: the blocks of one class share one compiled graph (so a 57-block Flux
  compiles two graphs), and everything between blocks — the caches' decisions, the engine's counters,
  the sampler — stays in Python. Caches work unchanged: a cache hook wraps the compiled block and either
  calls it or not.
- `full`: the whole transformer as one compiled graph (fewer launches, fusion across blocks). A cache
  decides per block in Python, inside the transformer, so with a cache the plan runs `regional` instead
  (the load log says so).
- `graphs`: `full` with CUDA graphs (inductor's `reduce-overhead`): a step replays one recorded graph, which
  removes the per-kernel launch cost that dominates small models on a GPU. Shapes are fixed per recording
  (each new batch size or image size records once). Outputs are copied out of the graph's pool, so a
  multistep sampler that keeps earlier outputs never sees them overwritten by the next replay. On a CPU it
  is `full`.

The compiled regions are installed right after the model loads, below every hook (the engine's counters,
caches), and switched on once the plan is applied (`start`): a calibrating quantizer runs the model eagerly
with its recording hooks first. They compile on their first call — after the quantizer has rewritten the
layers, so they compile the quantized layers too (the kernels are `torch.library` ops with fake implementations, which
`torch.compile` treats as single ops). A hook installed *inside* a compiled region (an attention-level
cache: PAB, FasterCache) would be traced into the graph with its Python state, so a plan with one is
refused at load with the reason. The engine's counters count at the regions, outside the compiled code:
they would otherwise be traced (and their changing count would recompile every call).

The engine warms the compiled model at load (one request at the default size), so the first user does not
wait for compilation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ditserve.errors import PlanError

if TYPE_CHECKING:
    from ditserve.config import AccelPlan
    from ditserve.models.base import LoadedModel

log = logging.getLogger(__name__)

CompileMode = Literal["none", "regional", "full", "graphs"]
COUNTER_HOOK = "ditserve.compiled_region_counter"


class Region:
    """A module's `forward`, compiled: runs eager until `enabled` (the quantizer's calibration runs the model with
    recording hooks inside the regions first), then the compiled code. With CUDA graphs its tensor outputs are
    copied out, since the next replay overwrites them."""

    def __init__(self, forward, options: dict) -> None:
        self.eager, self.compiled = forward, torch.compile(forward, **options)
        self.copy_out = options.get("mode") == "reduce-overhead"
        self.enabled = False

    def __call__(self, *args, **kwargs):
        if not self.enabled:
            return self.eager(*args, **kwargs)
        out = self.compiled(*args, **kwargs)
        return torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, out) if self.copy_out else out


class RegionCounter:
    """Counts, at each compiled region's call (outside its compiled code), the blocks or attention layers
    the region holds. Stands in for the engine's per-module counters, which would sit inside the graph."""

    def __init__(self, root: nn.Module, units: list[tuple[nn.Module, int]], name: str) -> None:
        from diffusers.hooks import ModelHook

        from ditserve.hooks import add_hook

        self.count = 0
        counter = self

        class Add(ModelHook):
            def __init__(self, weight: int) -> None:
                super().__init__()
                self.weight = weight

            def pre_forward(self, module, *args, **kwargs):
                counter.count += self.weight
                return args, kwargs

        for module, weight in units:
            add_hook(root, module, Add(weight), f"{COUNTER_HOOK}.{name}")


class Compiler:
    """Installs the compiled regions a plan asks for on a loaded model, and checks hooks against them."""

    def __init__(self, plan: AccelPlan, model: LoadedModel) -> None:
        mode: CompileMode = plan.compile
        if mode != "none" and plan.parallel.name != "none":
            raise PlanError(
                f"compile: {mode} runs in this process, but plan.parallel {plan.parallel.name!r} runs the model in "
                "its own ranks; set compile: none"
            )
        if mode in ("full", "graphs") and plan.cache.name != "none":
            log.info(
                "compile: %s asked for with cache %r; running regional (a cache decides per block in Python, "
                "so the blocks are the largest regions that can be compiled)",
                mode,
                plan.cache.name,
            )
            mode = "regional"
        self.mode: CompileMode = mode
        self.model = model
        self.regions: list[nn.Module] = []
        if mode == "regional":
            self.regions = [b for group in model.adapter.block_groups(model.transformer) for b in group.blocks]
        elif mode in ("full", "graphs"):
            self.regions = [model.transformer]
        options = {"mode": "reduce-overhead"} if mode == "graphs" and model.device.type == "cuda" else {}
        self.compiled = [Region(region.forward, options) for region in self.regions]
        for region, compiled in zip(self.regions, self.compiled, strict=True):
            region.forward = compiled

    def _attention_layers(self, module: nn.Module) -> int:
        from diffusers.hooks._common import _ATTENTION_CLASSES

        return sum(isinstance(m, _ATTENTION_CLASSES) for m in module.modules())

    def block_counter(self) -> RegionCounter | None:
        """A counter of blocks at the regions, when the blocks are inside one (`full`); else None."""
        if self.mode not in ("full", "graphs"):
            return None
        blocks = sum(len(group.blocks) for group in self.model.adapter.block_groups(self.model.transformer))
        return RegionCounter(self.model.transformer, [(self.model.transformer, blocks)], "blocks")

    def attention_counter(self) -> RegionCounter | None:
        """A counter of attention layers at the regions that hold them; None when not compiled."""
        if not self.regions:
            return None
        units = [(region, self._attention_layers(region)) for region in self.regions]
        return RegionCounter(self.model.transformer, units, "attention")

    def start(self, model: LoadedModel, what: str) -> None:
        """Check the hooks the plan installed (`check`), then switch the regions to their compiled code, which
        compiles on its first call."""
        self.check(model, what)
        for compiled in self.compiled:
            compiled.enabled = True
        if self.regions:
            log.info("compile: %s (%d compiled regions, compiled on first call)", self.mode, len(self.regions))

    def check(self, model: LoadedModel, what: str = "the plan") -> None:
        """Refuse hooks installed inside a compiled region (e.g. an attention-level cache), naming them."""
        inside = [
            f"{type(region).__name__}.{name}"
            for region in self.regions
            for name, module in region.named_modules()
            if name and getattr(getattr(module, "_diffusers_hook", None), "hooks", None)
        ]
        if inside:
            raise PlanError(
                f"compile: {self.mode} compiles whole {'blocks' if self.mode == 'regional' else 'transformers'}, "
                f"but {what} hooks modules inside them ({', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''}), "
                "whose Python state a compiled graph cannot keep; set compile: none for this cache"
            )
