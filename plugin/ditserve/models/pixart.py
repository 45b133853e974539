"""The `pixart` family: PixArt-α and PixArt-Σ (`PixArtTransformer2DModel`), T5-conditioned, in VAE latent space
or, saved without a VAE, in pixel space (the embedded digits-scenes model).

What differs: the T5 embeddings come with their attention mask, which the transformer needs
(`encoder_attention_mask`); PixArt-α's 1024 px checkpoints (`sample_size` 128) also take the image's
resolution and aspect ratio (`added_cond_kwargs`), computed here from the latent's size; checkpoints
that learned the variance output twice the latent channels, of which the first half is the noise.
The unconditional prompt is the empty one, as in the pipelines. Like `use_resolution_binning=False`
in the pipelines: the requested size is made as given, never snapped to the training aspect ratios.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ditserve.models.base import BlockGroup, Conditioning, LoadedModel
from ditserve.models.text import LatentOrPixelAdapter, batch_timestep, call_default, distinct, load_pipeline, loaded

PIPELINES = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")


class PixArtAdapter(LatentOrPixelAdapter):
    """PixArt-α / PixArt-Σ text-to-image (Chen et al., 2023, 2024) as diffusers implements them."""

    family = "pixart"
    conditioning = "text"

    def load(self, path: Path, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        return loaded(self, load_pipeline(self, path, PIPELINES, dtype, device), path, dtype, device)

    def block_groups(self, transformer: nn.Module) -> list[BlockGroup]:
        return [BlockGroup("transformer_blocks", transformer.transformer_blocks)]

    def default_size(self, model: LoadedModel) -> tuple[int, int]:
        side = model.transformer.config.sample_size * self.vae_factor(model)
        return side, side

    def condition(self, model: LoadedModel, prompts: list[str | int], guidance: bool) -> Conditioning:
        from diffusers.utils import is_bs4_available, is_ftfy_available

        pipe = model.components["pipeline"]
        unique, index = distinct(prompts, model.device)
        # The pipelines clean captions by default, and fall back (with a warning per prompt) without bs4/ftfy.
        clean = call_default(pipe, "clean_caption") and is_bs4_available() and is_ftfy_available()
        embeds, mask, null_embeds, null_mask = pipe.encode_prompt(
            unique,
            do_classifier_free_guidance=guidance,
            negative_prompt="",
            device=model.device,
            clean_caption=clean,
            max_sequence_length=call_default(pipe, "max_sequence_length"),
        )
        cond = {"encoder_hidden_states": embeds[index], "encoder_attention_mask": mask[index]}
        if not guidance:
            return Conditioning(cond)
        null = {"encoder_hidden_states": null_embeds[index], "encoder_attention_mask": null_mask[index]}
        return Conditioning(cond, null)

    def _added_cond_kwargs(self, model: LoadedModel, x: torch.Tensor, dtype: torch.dtype) -> dict:
        """Resolution and aspect ratio, where the pipeline passes them (PixArt-α at `sample_size` 128)."""
        pipe = model.components["pipeline"]
        if type(pipe).__name__ != "PixArtAlphaPipeline" or model.transformer.config.sample_size != 128:
            return {"resolution": None, "aspect_ratio": None}
        height, width = x.shape[-2] * self.vae_factor(model), x.shape[-1] * self.vae_factor(model)
        batch = x.shape[0]
        resolution = torch.tensor([height, width]).repeat(batch, 1).to(dtype=dtype, device=x.device)
        aspect_ratio = torch.tensor([float(height / width)]).repeat(batch, 1).to(dtype=dtype, device=x.device)
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}

    def predict(self, model: LoadedModel, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        embeds = kwargs["encoder_hidden_states"]
        out = model.transformer(
            x.to(model.dtype),
            encoder_hidden_states=embeds,
            encoder_attention_mask=kwargs["encoder_attention_mask"],
            timestep=batch_timestep(t, x.shape[0], x.device),
            added_cond_kwargs=self._added_cond_kwargs(model, x, embeds.dtype),
            return_dict=False,
        )[0]
        config = model.transformer.config
        if config.out_channels // 2 == config.in_channels:  # learned variance: keep the noise half
            out = out.chunk(2, dim=1)[0]
        return out
