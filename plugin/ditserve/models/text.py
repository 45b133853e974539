"""What the text-conditioned families (pixart, sd3, flux, wan) share.

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
from ditserve.models.base import FamilyAdapter, LoadedModel, load_component, read_json

CALL_DEFAULTS_FILE = "call_defaults.json"
"""Optional file beside model_index.json: `__call__` defaults the checkpoint needs other than the pipeline's."""


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
