"""Other implementations of feature caching, installed on an uncached ditserve engine for benchmarks/caching.py.

cache-dit 1.5.3 (the `peers` extra) and diffusers' own cache hooks run their own code on the engine's
transformer; the engine's block counter still sees which blocks they skip. Each peer is configured the
way its documentation recommends for its best results, then swept (`cache_dit_sweeps`).

What it takes to run them on the embedded models (found on this machine):
- cache-dit drives diffusers' DiT through a hand-made `BlockAdapter` (ForwardPattern 3: blocks take and
  return hidden states only; SD3's joint blocks are Pattern 1) with the forward-pattern check off (the
  engine's block counter wraps `forward`, hiding the signature it inspects) and CFG in one batch
  (`enable_separate_cfg=False`: the engine batches [cond; uncond]). DiT reads `transformer_blocks[0].norm1`
  after the block loop, where cache-dit has put its wrapper: the wrapper is given block 0's `norm1`.
  SD3's last joint block returns no encoder states, so TaylorSeer's encoder calibrator is off there.
- cache-dit's F8B0 (its choice for large models) computes the first 8 blocks of every step: the embedded
  models have 6 (digits-dit) and 4 (digits-flow), so it would cache nothing and is not swept; Fn = 1, 2
  and Bn = 0, 1 are.
- diffusers' hooks need a cache context set on every call and `reset_stateful_hooks()` between requests.
  Its TaylorSeer hook, left to its default module identifiers, hooks nothing in DiT's blocks (it looks
  for attention-like module names); it is given the block names, as its `cache_identifiers` allow.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from ditserve.engine import Engine


class Peer:
    """A peer cache: `install` on an uncached engine once, `before` every request (the peer's reset)."""

    label = ""
    source = ""
    family = ""
    """The sweep it belongs to (one curve of settings differing in one knob)."""

    def install(self, engine: Engine, steps: int) -> None:
        raise NotImplementedError

    def before(self) -> None:
        raise NotImplementedError


# -- cache-dit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheDiTSetting:
    """One cache-dit DBCache configuration (its `DBCacheConfig` fields, and the TaylorSeer calibrator order)."""

    threshold: float = 0.08
    front: int = 1
    back: int = 0
    warmup: int = 8
    warmup_interval: int = 1
    max_continuous: int = -1
    taylorseer: int = 0
    mask: str | None = None
    """A predefined `steps_mask` policy (slow, medium, fast, ultra), or None."""
    mask_policy: str = "dynamic"
    """`steps_computation_policy`: in the mask's cached steps, `dynamic` still asks the threshold, `static`
    always reuses."""

    @property
    def family(self) -> str:
        """The label without the swept threshold."""
        parts = [f"F{self.front}B{self.back}", f"warm-up {self.warmup}"]
        if self.warmup_interval != 1:
            parts[-1] += f"/{self.warmup_interval}"
        if self.max_continuous >= 0:
            parts.append(f"max {self.max_continuous} cached in a row")
        if self.mask:
            parts.append(f"SCM {self.mask} {self.mask_policy}")
        if self.taylorseer:
            parts.append(f"TaylorSeer order {self.taylorseer}")
        return "cache-dit DBCache " + ", ".join(parts)

    @property
    def label(self) -> str:
        if self.mask and self.mask_policy == "static":
            return self.family
        return f"{self.family}, threshold {self.threshold}"


class CacheDiTPeer(Peer):
    source = "cache-dit"

    def __init__(self, setting: CacheDiTSetting) -> None:
        self.setting = setting
        self.label, self.family = setting.label, setting.family

    def install(self, engine: Engine, steps: int) -> None:
        import cache_dit
        from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern, TaylorSeerCalibratorConfig
        from cache_dit.caching.cache_blocks.pattern_3_4_5 import CachedBlocks_Pattern_3_4_5

        CachedBlocks_Pattern_3_4_5.norm1 = property(lambda self: self.transformer_blocks[0].norm1)
        s = self.setting
        self.transformer = transformer = engine.model.transformer
        sd3 = engine.config.model.family == "sd3"
        adapter = BlockAdapter(
            transformer=transformer,
            blocks=transformer.transformer_blocks,
            forward_pattern=ForwardPattern.Pattern_1 if sd3 else ForwardPattern.Pattern_3,
            has_separate_cfg=False,
            check_forward_pattern=False,
        )
        self.config = DBCacheConfig(
            Fn_compute_blocks=s.front,
            Bn_compute_blocks=s.back,
            residual_diff_threshold=s.threshold,
            max_warmup_steps=s.warmup,
            warmup_interval=s.warmup_interval,
            max_continuous_cached_steps=s.max_continuous,
            enable_separate_cfg=False,
            num_inference_steps=steps,
            steps_computation_mask=cache_dit.steps_mask(total_steps=steps, mask_policy=s.mask) if s.mask else None,
            steps_computation_policy=s.mask_policy,
        )
        self.calibrator = (
            TaylorSeerCalibratorConfig(taylorseer_order=s.taylorseer, enable_encoder_calibrator=not sd3)
            if s.taylorseer
            else None
        )
        cache_dit.enable_cache(adapter, cache_config=copy.deepcopy(self.config), calibrator_config=self.calibrator)

    def before(self) -> None:
        import cache_dit

        calibrator = copy.deepcopy(self.calibrator) if self.calibrator else None
        cache_dit.refresh_context(
            self.transformer, cache_config=copy.deepcopy(self.config), calibrator_config=calibrator
        )


THRESHOLDS = ((0.08, 0.14, 0.24, 0.4, 0.64), (0.04,))
"""cache-dit's `residual_diff_threshold` from its default (0.08) up, and the gentler point below it (its
integrations recommend 0.12–0.24)."""
MASKS = ("slow", "medium", "fast", "ultra")


def cache_dit_families(our_warmup: int) -> list[CacheDiTSetting]:
    """The threshold sweeps, most telling first: plain DBCache F1B0 with our warm-up; with our dbcache's run
    limit (the same algorithm as ours); cache-dit's recommended Fn=1, Bn=0, at most 3 cached steps in a row,
    TaylorSeer order 1; that with TaylorSeer order 2; with its recommended warm-ups (4; its default 8 at
    interval 2, at most 2 in a row, as in its serving examples); Fn=2; Bn=1."""
    return [
        CacheDiTSetting(warmup=our_warmup),
        CacheDiTSetting(warmup=our_warmup, max_continuous=2),
        CacheDiTSetting(warmup=our_warmup, max_continuous=3, taylorseer=1),
        CacheDiTSetting(warmup=our_warmup, max_continuous=3, taylorseer=2),
        CacheDiTSetting(warmup=4, max_continuous=3, taylorseer=1),
        CacheDiTSetting(warmup=8, warmup_interval=2, max_continuous=2, taylorseer=1),
        CacheDiTSetting(front=2, warmup=our_warmup, max_continuous=3, taylorseer=1),
        CacheDiTSetting(back=1, warmup=our_warmup, max_continuous=3, taylorseer=1),
    ]


def with_threshold(setting: CacheDiTSetting, threshold: float) -> CacheDiTSetting:
    return dataclasses.replace(setting, threshold=threshold)


def cache_dit_masks(our_warmup: int) -> list[CacheDiTSetting]:
    """Its static step masks (SCM presets) with the recommended setting, under the dynamic policy at the
    threshold its integrations default to (0.24) and under the static policy."""
    recommended = CacheDiTSetting(threshold=0.24, warmup=our_warmup, max_continuous=3, taylorseer=1)
    return [
        dataclasses.replace(recommended, mask=mask, mask_policy=policy)
        for policy in ("dynamic", "static")
        for mask in MASKS
    ]


# -- diffusers hooks ---------------------------------------------------------------------------------


@dataclass
class DiffusersPeer(Peer):
    """One of diffusers' cache hooks, as `kind` (`fbc`, `taylorseer`) at `value` (threshold or interval)."""

    kind: str
    value: float
    order: int = 1
    identifiers: list[str] | None = field(default_factory=lambda: [r"transformer_blocks\.\d+"])
    """TaylorSeer's `cache_identifiers`; None leaves diffusers' default (which matches nothing in DiT)."""
    source = "diffusers"

    def __post_init__(self) -> None:
        if self.kind == "fbc":
            self.family = "diffusers FirstBlockCache"
            self.label = f"{self.family}, threshold {self.value}"
        else:
            default = " (default identifiers)" if self.identifiers is None else ""
            self.family = f"diffusers TaylorSeer order {self.order}{default}"
            self.label = f"{self.family}, interval {int(self.value)}"

    def install(self, engine: Engine, steps: int) -> None:
        from diffusers.hooks import (
            FirstBlockCacheConfig,
            HookRegistry,
            TaylorSeerCacheConfig,
            apply_first_block_cache,
            apply_taylorseer_cache,
        )
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        transformer = engine.model.transformer
        if self.kind == "fbc":
            apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=self.value))
        else:
            config = TaylorSeerCacheConfig(
                cache_interval=int(self.value),
                max_order=self.order,
                taylor_factors_dtype=torch.float32,
                cache_identifiers=self.identifiers,
            )
            apply_taylorseer_cache(transformer, config)
        self.registry = HookRegistry.check_if_exists_or_initialize(transformer)
        transformer.register_forward_pre_hook(lambda module, args: _set_cache_context(module, CacheContext("cond")))

    def before(self) -> None:
        self.registry.reset_stateful_hooks()


FBC_THRESHOLDS = ((0.05, 0.08, 0.12, 0.18, 0.27), (0.03,))
"""First Block Cache's threshold from the low end of its documented range up, and a gentler point."""
TAYLORSEER_INTERVALS = ((3, 4, 6), (2,))
"""TaylorSeer's `cache_interval` up from 3, and 2 (at its default order 1)."""
