"""DeepCache: Accelerating Diffusion Models for Free (Ma, Fang & Wang, CVPR 2024, arXiv 2312.00858;
code: github.com/horseee/DeepCache).

A U-Net's deep features — what its up path carries back from the low-resolution levels — change slowly
from one denoising step to the next, while its skip connections carry the fast-changing detail. DeepCache
runs the whole U-Net at a full step and keeps the deep features; at the steps in between it runs only the
shallow branch — the layers of the down path up to one skip connection, and the layers of the up path from
the one that takes that skip back — and hands that up layer the deep features kept at the last full step
in place of the deeper layers' output (the paper's Eq. 5, "Cached Feature + Shallow Branch"). The cut is
`branch`, a skip connection numbered from the outermost, as the paper's branch index and the `deepcache`
package's `cache_branch_id` are: 0 (conv_in's skip) leaves only the last ResNet of the last up block to
run, the cheapest branch.

What is cached: the output of every layer deeper than the branch (the family adapter's `skip_layers`:
ResNets with their attention, down- and upsamplers; a block all of whose layers are deep, and the middle
block, as one), through a hook on each that returns its kept output on a cached step. Only the last of them,
the layer before the branch's up layer, is read; the others' outputs go only into deeper layers that are
skipped too. When it is refreshed: statically, the first `warmup` calls, then every `interval`-th call (the
paper's uniform 1:N strategy, its N), computes everything. The paper's non-uniform 1:N (full steps denser
around a center step, spaced by a power) was tried here and left out: with the same number of full steps,
power 1.4 and centers at 0–90% of the request, it scored 0.3–4 dB under uniform on digits-unet (28 and 50
steps, N = 4–6). `interval: 1` computes every layer at every step (bit-identical to no caching).

Decisions are per batch: a call computes the deep layers for every sample of the batch, both halves of the
[cond; uncond] classifier-free-guidance batch included, or for none. The engine counts U-Net stages (3 down
blocks, the middle block, 3 up blocks on digits-unet) as its blocks: a stage whose layers all reuse their
output is not computed.

Runs on the unet family only (it needs the adapter's skip connections); other families are refused at load.
"""

from __future__ import annotations

from typing import Any, Literal

from diffusers.hooks import ModelHook
from pydantic import Field
from torch import nn

from ditserve.caching.base import CacheConfig, CacheStrategy
from ditserve.caching.progress import DenoisingProgress
from ditserve.errors import PlanError
from ditserve.hooks import add_hook, remove_hook
from ditserve.models.base import LoadedModel
from ditserve.registry import CACHES

HOOK_NAME = "ditserve.DeepCache"


class DeepCacheConfig(CacheConfig):
    name: Literal["deepcache"] = "deepcache"
    interval: int = Field(3, ge=1, le=100)
    """DeepCache's N: every `interval`-th step runs the whole U-Net and refreshes the deep features; the steps
    between run the shallow branch only. 1 computes everything."""
    branch: int = Field(0, ge=0, le=64)
    """The skip connection the shallow branch reaches down to, from the outermost: 0 (conv_in's) runs only the
    last up block's last ResNet on cached steps; each step deeper adds a layer on both paths (1 adds the first
    ResNet of the down path and the ResNet before that one); at the deepest skip only the middle block is
    reused."""
    warmup: int = Field(0, ge=0, le=1000)
    """Steps at the start that always run the whole U-Net."""


class DeepHook(ModelHook):
    """On one deep U-Net layer: runs it and keeps its output at a full step, returns the kept output otherwise."""

    def __init__(self, cache: DeepCache, key: int) -> None:
        super().__init__()
        self.cache = cache
        self.key = key

    def new_forward(self, module: nn.Module, *args, **kwargs) -> Any:
        kept = self.cache.kept
        if self.cache.full or self.key not in kept:
            kept[self.key] = self.fn_ref.original_forward(*args, **kwargs)
        return kept[self.key]


@CACHES.register("deepcache")
class DeepCache(CacheStrategy):
    """DeepCache: reuse a U-Net's deep features between full steps, recompute the shallow branch (static)."""

    Config = DeepCacheConfig
    families = ("unet",)  # the adapter lists its stages and skip connections
    model: LoadedModel | None = None

    def apply(self, model: LoadedModel) -> None:
        self.model = model
        self.calls = DenoisingProgress(self.begin_call)
        self.reset()
        for key, module in enumerate(self.deep_modules(model)):
            add_hook(model.transformer, module, DeepHook(self, key), HOOK_NAME)
        add_hook(model.transformer, model.transformer, self.calls, HOOK_NAME)

    def deep_modules(self, model: LoadedModel) -> list[nn.Module]:
        """The layers below the shallow branch, whose outputs are reused on cached steps (a block whose layers are
        all deep as one); refuses a model or a branch where there are none."""
        self.require_family(model)
        down, middle, up = (group.blocks for group in model.adapter.block_groups(model.transformer))
        down_layers, up_layers = model.adapter.skip_layers(model.transformer)
        deepest = max(layer.skip for layers in down_layers for layer in layers)
        if self.config.branch > deepest:
            raise PlanError(
                f"cache 'deepcache': branch {self.config.branch} is past this U-Net's deepest skip connection, leaving "
                f"nothing deep to reuse; set branch to at most {deepest}"
            )
        deep = list(middle)
        for block, layers in zip([*down, *up], [*down_layers, *up_layers], strict=True):
            inner = [layer.module for layer in layers if layer.skip > self.config.branch]
            deep += [block] if len(inner) == len(layers) else inner
        return deep

    def remove(self) -> None:
        if self.model is not None:  # None: `apply` refused before it reached the model
            remove_hook(self.model.transformer, HOOK_NAME)

    def reset(self) -> None:
        self.calls.reset()
        self.kept: dict[int, Any] = {}
        """Deep stage → its output at the last full step."""
        self.full = True

    def begin_call(self) -> None:
        call, warmup = self.calls.call, self.config.warmup
        self.full = call < warmup or (call - warmup) % self.config.interval == 0
