"""LoRA adapters per request: the named adapters of a model directory, loaded once, one active per model call.

A model directory may hold `loras/<name>/pytorch_lora_weights.safetensors`, LoRA weights in diffusers/PEFT
format (what `PeftAdapterMixin.save_lora_adapter` writes). The engine loads each into the transformer at load
with diffusers' own machinery (`load_lora_adapter`, backed by `peft`), so every adapter's low-rank layers sit
beside the base weights, never merged into them. A request names one (`lora`, with `lora_scale`); before each
model call the engine makes exactly that adapter active at that scale (`set_adapters`), or switches every
adapter off (`disable_lora`) for a request without one. Switching is a flag and a scale per wrapped layer — no
weights move — and requests with different adapters never share a call (`Job.batch_key`, the scheduler's
continuous batch), so a LoRA request cannot leak into the next one.

diffusers 0.42.1's `DiTTransformer2DModel` (and `PixArtTransformer2DModel`) do not inherit `PeftAdapterMixin`,
though nothing in the mixin depends on the model class: it injects PEFT layers into the named `nn.Linear`
modules of any `ModelMixin`. `peft_capable` gives such a model the mixin by switching its instance to a
subclass that adds it — the smallest change that lets the same diffusers calls load, switch and save adapters
for every family.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from torch import nn

from ditserve.errors import PlanError

log = logging.getLogger(__name__)

LORA_DIR = "loras"
"""The folder of a model directory that holds one sub-folder per named adapter."""
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""diffusers' file name for LoRA weights in safetensors format."""
MAX_ADAPTERS = 16
"""More adapters than this in one model directory fail the load: each is resident in memory for the whole run."""
MAX_NAME_CHARS = 64


def peft_capable(transformer: nn.Module) -> nn.Module:
    """`transformer`, with diffusers' `PeftAdapterMixin` methods (its class gains the mixin if it lacks it)."""
    from diffusers.loaders.peft import PeftAdapterMixin

    if not isinstance(transformer, PeftAdapterMixin):
        transformer.__class__ = _with_mixin(type(transformer), PeftAdapterMixin)
    return transformer


@functools.cache
def _with_mixin(cls: type, mixin: type) -> type:
    """`cls` with `mixin` added, under `cls`'s own name (diffusers keys per-class behaviour by the name)."""
    return type(cls.__name__, (cls, mixin), {"__module__": cls.__module__})


def discover(model_dir: Path) -> dict[str, Path]:
    """The adapters of a model directory, name → weight file, sorted by name; at most `MAX_ADAPTERS`."""
    root = model_dir / LORA_DIR
    if not root.is_dir():
        return {}
    found = {sub.name: sub / WEIGHT_NAME for sub in sorted(root.iterdir()) if (sub / WEIGHT_NAME).is_file()}
    if len(found) > MAX_ADAPTERS:
        raise PlanError(
            f"{root} holds {len(found)} LoRA adapters; at most {MAX_ADAPTERS} are loaded (each stays in memory): "
            "move the ones this server does not need out of that folder"
        )
    for name in found:
        if len(name) > MAX_NAME_CHARS or not name.replace("-", "").replace("_", "").isalnum():
            raise PlanError(
                f"LoRA folder {name!r} in {root}: name adapters with letters, digits, '-' and '_' "
                f"(at most {MAX_NAME_CHARS} characters)"
            )
    return found


class LoraAdapters:
    """The named adapters loaded into one transformer, and which one is active (None: all off)."""

    def __init__(self, transformer: nn.Module, files: dict[str, Path]) -> None:
        self.transformer = transformer
        self.names: tuple[str, ...] = tuple(files)
        self.active: tuple[str, float] | None = None
        self.switches = 0
        """How many times the active adapter changed (the cost of mixing adapters across batches)."""
        self.load_seconds = 0.0
        if not files:
            return
        started = time.perf_counter()
        peft_capable(transformer)
        for name, path in files.items():
            try:
                transformer.load_lora_adapter(str(path.parent), weight_name=path.name, adapter_name=name, prefix=None)
            except Exception as err:
                raise PlanError(f"LoRA adapter {name!r} ({path}) does not fit this model: {err}") from err
        transformer.disable_lora()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %d LoRA adapters (%s) in %.2fs", len(files), ", ".join(files), self.load_seconds)

    def activate(self, lora: tuple[str, float] | None) -> None:
        """Make adapter `lora` = (name, scale) the only active one, or switch all off (None), for the next calls.

        A no-op when it is already so, which makes calling it before every model call free."""
        if lora == self.active:
            return
        if lora is None:
            self.transformer.disable_lora()
        else:
            self.transformer.enable_lora()
            self.transformer.set_adapters(lora[0], lora[1])
        self.active = lora
        self.switches += 1
