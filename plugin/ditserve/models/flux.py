"""The `flux` family: FLUX.1 (`FluxTransformer2DModel`), rectified flow over packed VAE latents.

What differs:
- Text: CLIP's pooled output goes to `pooled_projections`, T5's tokens to `encoder_hidden_states`.
- Latents: the sampler works on the VAE latent (C, H/8, W/8), which is exactly what the pipeline
  draws its noise in; `predict` packs it into 2x2 patches, (H/16 * W/16, 4C) tokens, for the
  transformer and unpacks the output, so images from a seed match the pipeline's from the same
  generator. Token positions are passed as `img_ids` (row, column) and `txt_ids` (zeros).
- Timesteps: the transformer takes the scheduler's timestep / 1000. The schedule is the pipeline's:
  sigmas `linspace(1, 1/steps, steps)`, shifted by the resolution-dependent `mu`.
- Decoding: `latents / scaling_factor + shift_factor`.
- Guidance. Guidance-distilled checkpoints (FLUX.1-dev: `guidance_embeds`) take the request's scale as
  an input, `guidance`, one value per image (`guidance_inputs`), and the engine then runs no
  unconditional pass. Other checkpoints get classifier-free guidance with the empty prompt as the
  unconditional one, which is the pipeline's "true CFG" (`true_cfg_scale`, `negative_prompt=""`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditserve.models.base import BlockGroup, Conditioning, FamilyAdapter, LoadedModel, block_argument, vae_mean
from ditserve.models.text import batch_timestep, call_default, distinct, load_pipeline, loaded


def pack(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) latents → (N, H/2 * W/2, 4C) tokens, as `FluxPipeline._pack_latents`."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of `height` x `width`, as `FluxPipeline._unpack_latents`."""
    n, _, channels = tokens.shape
    x = tokens.view(n, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, channels // 4, height, width)


class FluxAdapter(FamilyAdapter):
    """FLUX.1 (Black Forest Labs, 2024), the double- then single-stream DiT, as diffusers implements it."""

    family = "flux"
    conditioning = "text"

    def load(self, path: Path, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        return loaded(self, load_pipeline(self, path, ("FluxPipeline",), dtype, device), path, dtype, device)

    def block_groups(self, transformer: nn.Module) -> list[BlockGroup]:
        return [
            BlockGroup("transformer_blocks", transformer.transformer_blocks),
            BlockGroup("single_transformer_blocks", transformer.single_transformer_blocks),
        ]

    def modulated_input(self, block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        if hasattr(block, "norm1"):  # dual-stream block: the image stream's AdaLayerNormZero
            return super().modulated_input(block, args, kwargs)
        # Single-stream block: one AdaLayerNormZeroSingle over [text, image] tokens; the image tokens' part
        # (normalisation is per token), as for the dual-stream blocks.
        x = block_argument(block, "hidden_states", args, kwargs)
        return block.norm(x, emb=block_argument(block, "temb", args, kwargs))[0]

    def default_size(self, model: LoadedModel) -> tuple[int, int]:
        pipe = model.components["pipeline"]
        side = pipe.default_sample_size * pipe.vae_scale_factor
        return side, side

    def size_multiple(self, model: LoadedModel) -> int:
        return 2 * model.components["pipeline"].vae_scale_factor  # the VAE's factor, then 2x2 packing

    def latent_shape(self, model: LoadedModel, height: int, width: int) -> tuple[int, ...]:
        factor = 2 * model.components["pipeline"].vae_scale_factor
        return model.transformer.config.in_channels // 4, 2 * (height // factor), 2 * (width // factor)

    def schedule_kwargs(
        self, model: LoadedModel, latent_shape: tuple[int, ...], steps: int | None = None
    ) -> dict[str, Any]:
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = model.scheduler_config
        kwargs: dict[str, Any] = {}
        if steps is not None and not config.get("use_flow_sigmas"):
            kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        if config.get("use_dynamic_shifting"):
            image_seq_len = (latent_shape[-2] // 2) * (latent_shape[-1] // 2)
            kwargs["mu"] = calculate_shift(
                image_seq_len,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.15),
            )
        return kwargs

    def guidance_inputs(self, model: LoadedModel, scale: float, batch: int) -> dict[str, torch.Tensor] | None:
        if not model.transformer.config.guidance_embeds:
            return None
        return {"guidance": torch.full((batch,), scale, dtype=torch.float32, device=model.device)}

    def _encode(self, model: LoadedModel, prompts: list[str]) -> dict[str, torch.Tensor]:
        pipe = model.components["pipeline"]
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts, device=model.device, max_sequence_length=call_default(pipe, "max_sequence_length")
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def condition(self, model: LoadedModel, prompts: list[str | int], guidance: bool) -> Conditioning:
        unique, index = distinct(prompts, model.device)
        cond = {key: value[index] for key, value in self._encode(model, unique).items()}
        if not guidance:
            return Conditioning(cond)
        every = torch.zeros_like(index)  # one empty prompt for all images
        null = {key: value[every] for key, value in self._encode(model, [""]).items()}
        return Conditioning(cond, null)

    def predict(self, model: LoadedModel, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        from diffusers import FluxPipeline

        batch, _, height, width = x.shape
        embeds = kwargs["encoder_hidden_states"]
        tokens = pack(x.to(model.dtype))
        out = model.transformer(
            hidden_states=tokens,
            timestep=batch_timestep(t, batch, x.device).to(tokens.dtype) / 1000,
            guidance=kwargs.get("guidance"),
            pooled_projections=kwargs["pooled_projections"],
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=embeds.dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, x.device, embeds.dtype),
            return_dict=False,
        )[0]
        return unpack(out, height, width)

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        vae = model.components["vae"]
        return (vae_mean(vae, images) - vae.config.shift_factor) * vae.config.scaling_factor

    def decode(self, model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        vae = model.components["vae"]
        latents = x.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(latents, return_dict=False)[0].float()
