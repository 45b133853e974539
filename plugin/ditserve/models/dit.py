"""The `dit` family: diffusers' `DiTTransformer2DModel`, class-conditional, in pixel or VAE latent space.

Covers the embedded digits model (pixel space, no VAE, `labels.json` beside the checkpoint) and real
DiT checkpoints (DiTPipeline directories with `vae/`; class names from `model_index.json`'s `id2label`).
The unconditional class is the label embedder's extra row, index `num_embeds_ada_norm`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel
from torch import nn

from ditserve.errors import RequestError
from ditserve.models.base import (
    BlockGroup,
    Conditioning,
    FamilyAdapter,
    LoadedModel,
    load_component,
    read_json,
    vae_mean,
)


class DiTAdapter(FamilyAdapter):
    """Class-conditional DiT (Peebles & Xie, 2023) as diffusers implements it."""

    family = "dit"
    conditioning = "class"

    def load(self, path: Path, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        transformer = load_component(DiTTransformer2DModel, path, "transformer", dtype, device)
        components = {}
        if (path / "vae").is_dir():
            components["vae"] = load_component(AutoencoderKL, path, "vae", dtype, device)
        labels = read_json(path / "labels.json").get("id2label") or read_json(path / "model_index.json").get("id2label")
        return LoadedModel(
            adapter=self,
            transformer=transformer,
            scheduler_config=read_json(path / "scheduler" / "scheduler_config.json"),
            path=path,
            device=device,
            dtype=dtype,
            components=components,
            id2label={int(k): v for k, v in (labels or {}).items()},
        )

    def block_groups(self, transformer: nn.Module) -> list[BlockGroup]:
        return [BlockGroup("transformer_blocks", transformer.transformer_blocks)]

    def _vae_factor(self, model: LoadedModel) -> int:
        vae = model.components.get("vae")
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1

    def default_size(self, model: LoadedModel) -> tuple[int, int]:
        side = model.transformer.config.sample_size * self._vae_factor(model)
        return side, side

    def size_multiple(self, model: LoadedModel) -> int:
        return model.transformer.config.patch_size * self._vae_factor(model)

    def check_size(self, model: LoadedModel, height: int, width: int) -> None:
        super().check_size(model, height, width)
        if height != width:  # diffusers' DiT unpatchifies assuming a square token grid
            raise RequestError("width", f"DiT models make square images: width must equal height ({height})")

    def latent_shape(self, model: LoadedModel, height: int, width: int) -> tuple[int, ...]:
        factor = self._vae_factor(model)
        return model.transformer.config.in_channels, height // factor, width // factor

    def class_id(self, model: LoadedModel, prompt: str | int) -> int:
        return class_id(model, prompt, model.transformer.config.num_embeds_ada_norm)

    def condition(self, model: LoadedModel, prompts: list[str | int], guidance: bool) -> Conditioning:
        labels = torch.tensor([self.class_id(model, p) for p in prompts], device=model.device)
        null = torch.full_like(labels, model.transformer.config.num_embeds_ada_norm)
        return Conditioning(cond={"class_labels": labels}, uncond={"class_labels": null} if guidance else None)

    def predict(self, model: LoadedModel, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        timestep = t.to(x.device).reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.to(x.device)
        out = model.transformer(x.to(model.dtype), timestep=timestep, return_dict=False, **kwargs)[0]
        return out[:, : x.shape[1]]  # checkpoints trained with learned sigma also output a variance

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        vae = model.components.get("vae")
        if vae is None:
            return images.to(model.dtype)
        return vae_mean(vae, images) * vae.config.scaling_factor

    def decode(self, model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        vae = model.components.get("vae")
        if vae is None:
            return x.float()
        return vae.decode(x.to(vae.dtype) / vae.config.scaling_factor).sample.float()


def class_id(model: LoadedModel, prompt: str | int, num_classes: int) -> int:
    """A class id in [0, `num_classes`) from an id or a label name of `model.id2label` (any of the comma-separated
    synonyms, any case): how every class-conditional family reads a request's prompt."""
    if isinstance(prompt, int):
        if not 0 <= prompt < num_classes:
            raise RequestError("class_label", f"must be in [0, {num_classes - 1}] (got {prompt})")
        return prompt
    wanted = prompt.strip().lower()
    for found, names in model.id2label.items():
        if wanted in (name.strip().lower() for name in names.split(",")):
            return found
    examples = ", ".join(repr(names.split(",")[0].strip()) for _, names in sorted(model.id2label.items())[:10])
    raise RequestError(
        "prompt",
        f"{prompt!r} names no class of this class-conditional model; use a class name such as {examples}, "
        "or give class_label",
    )
