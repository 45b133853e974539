"""The `wan` family: Wan 2.1 / 2.2 text-to-video (`WanTransformer3DModel`) making videos.

What differs: latents are video-shaped, (C, latent frames, H/8, W/8), where a Wan VAE packs 4 frames into one
latent frame after the first (videos of 4k + 1 frames); a checkpoint saved without a VAE (the embedded
digits-video) works on the frames themselves, as `LatentOrPixelAdapter` does for images. The text encoder is
UMT5, whose embeddings the pipeline cuts at the prompt's length and pads with zeros (no attention mask reaches
the transformer); the transformer takes the scheduler's timestep as it is, per token for Wan 2.2 TI2V
(`expand_timesteps`), or one per frame from the video techniques (`frame_timesteps`); decoding first
un-normalises the latents per channel (`latents * latents_std + latents_mean`, the VAE config's lists) and
gives the frames frame-major, (N, frames, C, H, W). The frame count a request leaves out is the checkpoint's
(`call_defaults.json`), else the pipeline's (81). The unconditional prompt is the empty one. Wan 2.2's
two-expert checkpoints (`transformer_2`, `boundary_ratio`) are refused at load: they switch transformers
mid-schedule, which the one block list of an adapter cannot describe.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ditserve.errors import PlanError, RequestError
from ditserve.models.base import BlockGroup, Conditioning, LoadedModel, block_argument, vae_mean
from ditserve.models.text import LatentOrPixelAdapter, batch_timestep, call_default, distinct, load_pipeline, loaded


def frame_timesteps(model: LoadedModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-frame timesteps (N, latent frames) as the transformer's per-token ones: Wan orders its tokens frame by
    frame. Video techniques that hold frames at different noise levels (FIFO-Diffusion's queue) call with these;
    only a checkpoint trained with per-frame levels (digits-video, diffusion-forcing style) is meant to take them."""
    _, patch_h, patch_w = model.transformer.config.patch_size
    if t.shape != (x.shape[0], x.shape[2]):
        raise ValueError(
            f"per-frame timesteps must be (batch, frames) = {(x.shape[0], x.shape[2])}, got {tuple(t.shape)}"
        )
    tokens_per_frame = (x.shape[3] // patch_h) * (x.shape[4] // patch_w)
    return t.to(x.device).repeat_interleave(tokens_per_frame, dim=1)


class WanAdapter(LatentOrPixelAdapter):
    """Wan (Wan Team, 2025) text-to-video, as diffusers implements it."""

    family = "wan"
    conditioning = "text"

    def load(self, path: Path, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        pipe = load_pipeline(self, path, ("WanPipeline",), dtype, device)
        if pipe.transformer is None or pipe.transformer_2 is not None or pipe.config.boundary_ratio is not None:
            raise PlanError(
                f"{path} is a two-expert Wan 2.2 checkpoint (transformer_2 / boundary_ratio), which family 'wan' "
                "does not run; use a one-transformer Wan checkpoint (Wan 2.1 T2V, Wan 2.2 TI2V-5B)"
            )
        return loaded(self, pipe, path, dtype, device)

    def block_groups(self, transformer: nn.Module) -> list[BlockGroup]:
        return [BlockGroup("blocks", transformer.blocks)]

    def modulated_input(self, block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        # A Wan block modulates with its own table plus the shared timestep projection `temb`:
        # (batch, 6, dim), or per token (batch, tokens, 6, dim) for Wan 2.2 TI2V. As `WanTransformerBlock`.
        x = block_argument(block, "hidden_states", args, kwargs)
        temb = block_argument(block, "temb", args, kwargs).float()
        if temb.ndim == 4:
            shift, scale = (block.scale_shift_table.unsqueeze(0) + temb).chunk(6, dim=2)[:2]
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (block.scale_shift_table + temb).chunk(6, dim=1)[:2]
        return (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)

    def default_size(self, model: LoadedModel) -> tuple[int, int]:
        pipe = model.components["pipeline"]
        return call_default(pipe, "height"), call_default(pipe, "width")

    def vae_factor(self, model: LoadedModel) -> int:
        """Pixels per latent side: the VAE's spatial factor, 1 in pixel space."""
        pipe = model.components["pipeline"]
        return pipe.vae_scale_factor_spatial if pipe.vae is not None else 1

    def frames_per_latent(self, model: LoadedModel) -> int:
        """Frames per latent frame after the first: the VAE's temporal factor, 1 in pixel space."""
        pipe = model.components["pipeline"]
        return pipe.vae_scale_factor_temporal if pipe.vae is not None else 1

    def size_multiple(self, model: LoadedModel) -> int:
        patch = model.transformer.config.patch_size
        return self.vae_factor(model) * max(patch[1], patch[2])

    def default_frames(self, model: LoadedModel) -> int:
        return call_default(model.components["pipeline"], "num_frames")

    def check_frames(self, model: LoadedModel, frames: int) -> None:
        factor = self.frames_per_latent(model)
        if (frames - 1) % factor:
            raise RequestError(
                "num_frames",
                f"must be {factor}k + 1 (got {frames}): this model's VAE packs {factor} frames into each latent "
                "frame after the first",
            )

    def latent_shape(self, model: LoadedModel, height: int, width: int, frames: int = 1) -> tuple[int, ...]:
        """(C, latent frames, h, w) for `frames` frames of height × width (one frame unless told: an image)."""
        factor = self.vae_factor(model)
        latent_frames = (frames - 1) // self.frames_per_latent(model) + 1
        return model.transformer.config.in_channels, latent_frames, height // factor, width // factor

    def condition(self, model: LoadedModel, prompts: list[str | int], guidance: bool) -> Conditioning:
        pipe = model.components["pipeline"]
        unique, index = distinct(prompts, model.device)
        embeds, null_embeds = pipe.encode_prompt(
            prompt=unique,
            negative_prompt="",
            do_classifier_free_guidance=guidance,
            max_sequence_length=call_default(pipe, "max_sequence_length"),
            device=model.device,
        )
        cond = {"encoder_hidden_states": embeds[index].to(model.dtype)}
        if not guidance:
            return Conditioning(cond)
        return Conditioning(cond, {"encoder_hidden_states": null_embeds[index].to(model.dtype)})

    def _timestep(self, model: LoadedModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 2:
            return frame_timesteps(model, x, t)
        if not model.components["pipeline"].config.expand_timesteps:
            return batch_timestep(t, x.shape[0], x.device)
        # Wan 2.2 TI2V: one timestep per latent token (all equal in text-to-video), as the pipeline builds it.
        mask = torch.ones(x.shape[2:], dtype=torch.float32, device=x.device)
        return (mask[:, ::2, ::2] * t.to(x.device)).flatten().unsqueeze(0).expand(x.shape[0], -1)

    def predict(self, model: LoadedModel, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        return model.transformer(
            hidden_states=x.to(model.dtype),
            timestep=self._timestep(model, x, t),
            encoder_hidden_states=kwargs["encoder_hidden_states"],
            return_dict=False,
        )[0]

    def _normalisation(self, model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and 1 / std, shaped to broadcast over (N, C, F, H, W)."""
        vae = model.components["vae"]
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(x.device, vae.dtype)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(x.device, vae.dtype)
        return mean, inverse_std

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        """An image as a one-frame video's latents, normalised as the pipeline's (the inverse of `decode`)."""
        if model.components["vae"] is None:
            return super().encode(model, images[:, :, None])
        mean, inverse_std = self._normalisation(model, images)
        return (vae_mean(model.components["vae"], images[:, :, None]) - mean) * inverse_std

    def decode(self, model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, latent frames, h, w) → frames (N, frames, C, H, W) in [-1, 1]."""
        vae = model.components["vae"]
        if vae is None:
            return super().decode(model, x).transpose(1, 2)
        mean, inverse_std = self._normalisation(model, x)
        return vae.decode(x.to(vae.dtype) / inverse_std + mean, return_dict=False)[0].float().transpose(1, 2)
