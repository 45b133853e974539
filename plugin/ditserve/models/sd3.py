"""The `sd3` family: Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`), rectified flow in VAE latent space.

What differs: three text encoders (two CLIPs, whose pooled outputs are concatenated into
`pooled_projections`, and T5, whose tokens follow the CLIPs' in `encoder_hidden_states`; without T5
those are zeros, as in the pipeline); the transformer takes the scheduler's timestep as it is (0..1000);
the VAE latents are scaled and shifted (`latents / scaling_factor + shift_factor` before decoding).
A pipeline saved without a VAE works in pixel space (the embedded digits-flow model).
The unconditional prompt is the empty one. Skip-layer guidance (SD3.5 medium) is not applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditserve.models.base import BlockGroup, Conditioning, LoadedModel
from ditserve.models.text import LatentOrPixelAdapter, batch_timestep, call_default, distinct, load_pipeline, loaded


class SD3Adapter(LatentOrPixelAdapter):
    """Stable Diffusion 3 (Esser et al., 2024), the MMDiT, as diffusers implements it."""

    family = "sd3"
    conditioning = "text"

    def load(self, path: Path, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        pipe = load_pipeline(self, path, ("StableDiffusion3Pipeline",), dtype, device)
        return loaded(self, pipe, path, dtype, device)

    def block_groups(self, transformer: nn.Module) -> list[BlockGroup]:
        return [BlockGroup("transformer_blocks", transformer.transformer_blocks)]

    def default_size(self, model: LoadedModel) -> tuple[int, int]:
        side = model.components["pipeline"].default_sample_size * self.vae_factor(model)
        return side, side

    def schedule_kwargs(
        self, model: LoadedModel, latent_shape: tuple[int, ...], steps: int | None = None
    ) -> dict[str, Any]:
        config = model.scheduler_config
        if not config.get("use_dynamic_shifting"):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        patch = model.transformer.config.patch_size
        image_seq_len = (latent_shape[-2] // patch) * (latent_shape[-1] // patch)
        mu = calculate_shift(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.16),
        )
        return {"mu": mu}

    def condition(self, model: LoadedModel, prompts: list[str | int], guidance: bool) -> Conditioning:
        pipe = model.components["pipeline"]
        unique, index = distinct(prompts, model.device)
        embeds, null_embeds, pooled, null_pooled = pipe.encode_prompt(
            prompt=unique,
            prompt_2=None,
            prompt_3=None,
            device=model.device,
            do_classifier_free_guidance=guidance,
            negative_prompt="",
            max_sequence_length=call_default(pipe, "max_sequence_length"),
        )
        cond = {"encoder_hidden_states": embeds[index], "pooled_projections": pooled[index]}
        if not guidance:
            return Conditioning(cond)
        null = {"encoder_hidden_states": null_embeds[index], "pooled_projections": null_pooled[index]}
        return Conditioning(cond, null)

    def predict(self, model: LoadedModel, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        return model.transformer(
            hidden_states=x.to(model.dtype),
            timestep=batch_timestep(t, x.shape[0], x.device),
            encoder_hidden_states=kwargs["encoder_hidden_states"],
            pooled_projections=kwargs["pooled_projections"],
            return_dict=False,
        )[0]
