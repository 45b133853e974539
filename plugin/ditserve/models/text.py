"""What the text-conditioned families (pixart, sd3, flux, wan) share, and what pixart and sd3 share besides.

Each loads a whole diffusers pipeline from its local directory and keeps it, so that prompts are
encoded by the pipeline's own `encode_prompt` (its tokenizers, truncation, padding and pooling) and
every default that shapes the result (`max_sequence_length`, ...) is read from the pipeline's
`__call__` signature rather than copied here, unless the checkpoint pins it in `call_defaults.json`
(the embedded digits-flow model has no T5 and pins `max_sequence_length` to 0, so SD3's pipeline adds
no zero tokens in T5's place).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from ditserve.errors import PlanError
from ditserve.models.base import FamilyAdapter, LoadedModel, load_component, read_json, vae_mean

CALL_DEFAULTS_FILE = "call_defaults.json"
"""Optional file beside model_index.json: `__call__` defaults the checkpoint needs other than the pipeline's."""


class LatentOrPixelAdapter(FamilyAdapter):
    """Sizes, `encode` and `decode` for a family whose pipeline may be saved without its VAE (sd3, pixart).

    With a VAE the transformer works on its latents, scaled and shifted as the VAE's config says (SD3's
    VAE has a `shift_factor`, PixArt's none); saved without one (the embedded digits-flow and
    digits-scenes) it works on pixels, where the pipeline would still claim a factor of 8."""

    def vae_factor(self, model: LoadedModel) -> int:
        """Pixels per latent side: the pipeline's VAE factor, 1 in pixel space."""
        pipe = model.components["pipeline"]
        return pipe.vae_scale_factor if pipe.vae is not None else 1

    def size_multiple(self, model: LoadedModel) -> int:
        return model.transformer.config.patch_size * self.vae_factor(model)

    def latent_shape(self, model: LoadedModel, height: int, width: int) -> tuple[int, ...]:
        factor = self.vae_factor(model)
        return model.transformer.config.in_channels, height // factor, width // factor

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        vae = model.components["vae"]
        if vae is None:
            return images.to(model.dtype)
        return (vae_mean(vae, images) - _shift(vae)) * vae.config.scaling_factor

    def decode(self, model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        vae = model.components["vae"]
        if vae is None:
            return x.float()
        latents = x.to(vae.dtype) / vae.config.scaling_factor + _shift(vae)
        return vae.decode(latents, return_dict=False)[0].float()


def _shift(vae) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


def load_pipeline(adapter: FamilyAdapter, path: Path, classes: tuple[str, ...], dtype: torch.dtype, device):
    """The pipeline in `path` (the layout `save_pretrained` writes), if its class is one of `classes`."""
    import diffusers

    index = read_json(path / "model_index.json")
    name = index.get("_class_name")
    if name is None:
        raise PlanError(
            f"{path} has no model_index.json: family {adapter.family!r} loads a whole diffusers pipeline "
            f"directory ({' or '.join(classes)}), as `pipeline.save_pretrained` writes it"
        )
    if name not in classes:
        raise PlanError(
            f"{path} holds a {name}, which family {adapter.family!r} cannot run; it runs {', '.join(classes)} "
            "(set `model.family` to the checkpoint's family)"
        )
    absent = {key: None for key, value in index.items() if value == [None, None]}  # saved as null: pass None
    given = empty_modules(path, index, dtype) if torch.device(device).type == "meta" else {}
    pipe = getattr(diffusers, name).from_pretrained(path, dtype=dtype, local_files_only=True, **absent, **given)
    pipe.set_progress_bar_config(disable=True)
    pipe.call_defaults = read_json(path / CALL_DEFAULTS_FILE)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe.to(device)


def empty_modules(path: Path, index: dict, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The pipeline's model components built on `meta` from their configs (no weight file read)."""
    modules = {}
    for key, value in index.items():
        if isinstance(value, list) and len(value) == 2 and value[0] in ("diffusers", "transformers"):
            cls = getattr(importlib.import_module(value[0]), value[1])
            if issubclass(cls, torch.nn.Module):
                modules[key] = load_component(cls, path, key, dtype, torch.device("meta"))
    return modules


def loaded(adapter: FamilyAdapter, pipe, path: Path, dtype: torch.dtype, device) -> LoadedModel:
    """A `LoadedModel` over a pipeline: its transformer, its scheduler's config, the pipeline as a component."""
    return LoadedModel(
        adapter=adapter,
        transformer=pipe.transformer,
        scheduler_config=read_json(path / "scheduler" / "scheduler_config.json") or dict(pipe.scheduler.config),
        path=path,
        device=torch.device(device),
        dtype=dtype,
        components={"pipeline": pipe, "vae": pipe.vae},
    )


def call_default(pipe, name: str) -> Any:
    """The default the pipeline's `__call__` gives argument `name` (what a plain `pipe(prompt)` uses), or the
    value the checkpoint pins in `call_defaults.json`."""
    pinned = getattr(pipe, "call_defaults", None) or {}
    if name in pinned:
        return pinned[name]
    return inspect.signature(type(pipe).__call__).parameters[name].default


def distinct(prompts: list[str | int], device) -> tuple[list[str], torch.Tensor]:
    """The distinct prompts (each is encoded once), and for each image the index of its prompt."""
    texts = [str(p) for p in prompts]
    unique = list(dict.fromkeys(texts))
    return unique, torch.tensor([unique.index(p) for p in texts], device=device)


def batch_timestep(t: torch.Tensor, batch: int, device) -> torch.Tensor:
    """The scheduler timestep `t` (0-d, or one per image) as one value per batch row."""
    t = t.to(device)
    return t.reshape(-1).expand(batch) if t.numel() == 1 else t
