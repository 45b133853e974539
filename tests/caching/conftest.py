"""Fixtures for the cache battery: a 4-block tiny DiT checkpoint and a tiny U-Net checkpoint, and tiny random
Flux, PixArt, SD3, Wan and U-Net models driven through their family adapters (no pipeline, no text encoder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ditserve_testing import (
    save_tiny_dit,
    save_tiny_unet,
    tiny_flux_transformer,
    tiny_pixart_pipeline,
    tiny_pixart_transformer,
    tiny_sd3_transformer,
    tiny_unet,
    tiny_wan_transformer,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_thread):
    """Every cache test runs torch on one core: the root conftest's fixture, made automatic here."""


@pytest.fixture(scope="session")
def dit4_dir(tmp_path_factory):
    """A random 4-block class-conditional DiT checkpoint (pixel space, 8x8, one channel)."""
    return save_tiny_dit(tmp_path_factory.mktemp("dit4"), num_layers=4)


@pytest.fixture(scope="session")
def uncached(dit4_dir):
    """The 4-block DiT's engine with no cache: the reference of every bit-identity check."""
    from .battery import engine_for

    return engine_for(dit4_dir, {"name": "none"})


@pytest.fixture(scope="session")
def unet_dir(tmp_path_factory):
    """A random class-conditional U-Net checkpoint (pixel space, 8x8, one channel, three levels)."""
    return save_tiny_unet(tmp_path_factory.mktemp("unet"))


@pytest.fixture(scope="session")
def unet_uncached(unet_dir):
    """The tiny U-Net's engine with no cache: the reference of bit-identity checks of U-Net caches."""
    from .battery import engine_for

    return engine_for(unet_dir, {"name": "none"}, family="unet")


@pytest.fixture(scope="session")
def pixart_dir(tmp_path_factory):
    """A random 2-block PixArt-α pipeline (T5 encoder, VAE, 8x8 latents) saved as a checkpoint: the text model of
    caches that need cross-attention."""
    path = tmp_path_factory.mktemp("pixart")
    torch.manual_seed(0)
    tiny_pixart_pipeline(sample_size=8).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pixart_uncached(pixart_dir):
    """The tiny PixArt's engine with no cache."""
    from .battery import engine_for

    return engine_for(pixart_dir, {"name": "none"}, family="pixart")


def tiny_flux():
    torch.manual_seed(0)
    return tiny_flux_transformer(num_layers=2, num_single_layers=3).eval()


def tiny_pixart():
    torch.manual_seed(0)
    return tiny_pixart_transformer(sample_size=8, num_layers=4, out_channels=4).eval()


def tiny_sd3():
    torch.manual_seed(0)
    return tiny_sd3_transformer(num_layers=4).eval()


def tiny_wan():
    torch.manual_seed(0)
    return tiny_wan_transformer(num_layers=4).eval()


FAMILIES = {"flux": tiny_flux, "pixart": tiny_pixart, "sd3": tiny_sd3, "wan": tiny_wan, "unet": tiny_unet}
"""The families the battery runs besides DiT (which it runs through the real engine)."""


class FamilyLoop:
    """A tiny transformer of one family behind its real adapter, run through a short denoising-like loop
    (x ← x − 0.1·prediction, timesteps falling) with every block and attention-layer call counted as the
    engine counts them."""

    def __init__(self, family: str) -> None:
        from ditserve.counters import AttentionCounter, BlockCounter, TokenCounter
        from ditserve.models import get_adapter
        from ditserve.models.base import LoadedModel

        transformer = FAMILIES[family]()
        self.family = family
        self.model = LoadedModel(get_adapter(family), transformer, {}, Path("."), torch.device("cpu"), torch.float32)
        self.counters = {
            "block": BlockCounter(self.model),
            "attention": AttentionCounter(self.model),
            "token": TokenCounter(self.model),
        }

    def model_blocks(self, steps: int) -> int:
        """Block evaluations of `steps` uncached calls."""
        return steps * sum(len(g.blocks) for g in self.model.adapter.block_groups(self.model.transformer))

    def inputs(self, batch: int, seed: int) -> tuple[torch.Tensor, dict]:
        g = torch.Generator().manual_seed(seed)
        if self.family == "flux":
            x = torch.randn(batch, 16, 16, generator=g)
            text = {
                "encoder_hidden_states": torch.randn(batch, 4, 32, generator=g),
                "pooled_projections": torch.randn(batch, 32, generator=g),
                "txt_ids": torch.zeros(4, 3),
                "img_ids": torch.stack(
                    torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1
                ).reshape(-1, 3),
            }
            return x, text
        if self.family == "sd3":
            x = torch.randn(batch, 4, 8, 8, generator=g)
            return x, {
                "encoder_hidden_states": torch.randn(batch, 5, 32, generator=g),
                "pooled_projections": torch.randn(batch, 32, generator=g),
            }
        if self.family == "wan":
            x = torch.randn(batch, 16, 1, 8, 8, generator=g)
            return x, {"encoder_hidden_states": torch.randn(batch, 5, 32, generator=g)}
        if self.family == "unet":
            return torch.randn(batch, 1, 8, 8, generator=g), {"class_labels": torch.arange(batch) % 10}
        x = torch.randn(batch, 4, 8, 8, generator=g)
        text = {
            "encoder_hidden_states": torch.randn(batch, 5, 32, generator=g),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        }
        return x, text

    def run(
        self, steps: int = 10, batch: int = 2, seed: int = 0, context: bool = False, unit: str = "block"
    ) -> tuple[torch.Tensor, int]:
        """Final sample and the evaluations of `unit` ("block", "attention" or "token") it took. `context` sets
        diffusers' cache context ("cond") for its own hooks, as its pipelines do (not every transformer has
        `cache_context`)."""
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        if context:
            _set_cache_context(self.model.transformer, CacheContext("cond"))
        x, text = self.inputs(batch, seed)
        counter = self.counters[unit]
        before = counter.count
        transformer = self.model.transformer
        with torch.inference_mode():
            for k in range(steps):
                t = torch.full((batch,), 999.0 * (1 - k / steps))
                timestep = t / 1000 if self.family == "flux" else t
                out = transformer(x, timestep=timestep, return_dict=False, **text)[0]
                x = x - 0.1 * out
        return x, counter.count - before
