"""The family adapter: everything that differs between DiT, PixArt, SD3, Flux and Wan pipelines.

The engine and every strategy talk to a model through its adapter: which components to load, where
the transformer blocks are, how to condition and call the transformer at a timestep, and how to turn
its output space into images. Strategies never read a model's attribute names themselves.
"""

from __future__ import annotations

import functools
import inspect
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ditserve.errors import RequestError


@dataclass
class BlockGroup:
    """One stack of transformer blocks, e.g. Flux's dual-stream `transformer_blocks`."""

    name: str
    """Attribute path of the stack on the transformer (for messages and caches' keys)."""
    blocks: nn.ModuleList


@dataclass
class Conditioning:
    """Transformer keyword arguments for one batch; `uncond` is None when guidance is off."""

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None = None


@dataclass
class LoadedModel:
    """A loaded pipeline's components, plus what the adapter read from its files."""

    adapter: FamilyAdapter
    transformer: nn.Module
    scheduler_config: dict[str, Any]
    path: Path
    device: torch.device
    dtype: torch.dtype
    components: dict[str, Any] = field(default_factory=dict)
    """Other pipeline parts the family needs (vae, text encoders, tokenizers)."""
    id2label: dict[int, str] = field(default_factory=dict)
    """Class names for class-conditional families; each value may list synonyms separated by commas."""


class FamilyAdapter(ABC):
    """How one diffusers family is loaded, conditioned, called and decoded."""

    family: ClassVar[str]
    conditioning: ClassVar[Literal["class", "text"]]
    """`class` models take a class label (a prompt must name a class); `text` models take free text."""
    resizable: ClassVar[bool] = True
    """Whether requests may choose the image size."""

    @abstractmethod
    def load(self, path: Path, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        """Load the components from a local diffusers directory (never from a hub)."""

    @abstractmethod
    def block_groups(self, transformer: nn.Module) -> list[BlockGroup]:
        """The transformer's block stacks, in execution order."""

    @abstractmethod
    def default_size(self, model: LoadedModel) -> tuple[int, int]:
        """(height, width) in pixels when a request gives none."""

    @abstractmethod
    def latent_shape(self, model: LoadedModel, height: int, width: int) -> tuple[int, ...]:
        """Shape of one sample in the space the sampler works in, for an image of that size."""

    def default_frames(self, model: LoadedModel) -> int | None:
        """Frames of a video when a request gives none; None for image families, which refuse `num_frames`. A
        video family's `latent_shape` takes `frames=` too, and its `decode` returns (N, frames, C, H, W)."""
        return None

    def check_frames(self, model: LoadedModel, frames: int) -> None:
        """Refuse a frame count a video family cannot make, naming the rule (`RequestError` on `num_frames`); by
        default every count is made."""
        return None

    @abstractmethod
    def condition(self, model: LoadedModel, prompts: list[str | int], guidance: bool) -> Conditioning:
        """Transformer inputs for each image's prompt (or class id), and the unconditional ones."""

    @abstractmethod
    def predict(self, model: LoadedModel, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Call the transformer on `x` at scheduler timestep `t`; return the prediction in `x`'s shape."""

    @abstractmethod
    def decode(self, model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        """Samples → images in [-1, 1], (N, C, H, W) float32."""

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (N, C, H, W) → samples: the inverse of `decode` (an edit's init image). Pixel-space
        models take the images as they are; families with a VAE override this (the mean of its latent
        distribution, not a draw from it, so an edit is a function of its seed)."""
        if model.components.get("vae") is not None:
            raise NotImplementedError(f"{type(self).__name__} decodes with a VAE and has no `encode` for it")
        return images.to(model.dtype)

    def image_channels(self, model: LoadedModel) -> int:
        """Channels of the images the model makes (what `decode` returns and `encode` takes)."""
        vae = model.components.get("vae")
        if vae is not None:
            return vae.config.in_channels
        return self.latent_shape(model, *self.default_size(model))[0]

    def schedule_kwargs(
        self, model: LoadedModel, latent_shape: tuple[int, ...], steps: int | None = None
    ) -> dict[str, Any]:
        """Extra `set_timesteps` arguments for one request (e.g. Flux's resolution-dependent `mu`, and its
        `sigmas`, which depend on the number of `steps`; without `steps` the scheduler's default spacing runs)."""
        return {}

    def guidance_inputs(self, model: LoadedModel, scale: float, batch: int) -> dict[str, torch.Tensor] | None:
        """Transformer inputs that carry the guidance `scale`, one row per image, for guidance-distilled
        models (Flux dev); None for families guided by classifier-free guidance. When this returns inputs,
        the caller merges them into the conditional inputs and runs no unconditional batch."""
        return None

    def size_multiple(self, model: LoadedModel) -> int:
        """Height and width must be multiples of this."""
        return 8

    def block_streams(self, block: nn.Module) -> Any:
        """Where one block takes and returns its hidden states (and, for dual-stream blocks, the text
        stream): diffusers' `TransformerBlockMetadata` for the block's class. Caches use it to cache a
        block's residual (output − input) per stream without knowing the block's signature."""
        from diffusers.hooks._helpers import TransformerBlockRegistry

        try:
            return TransformerBlockRegistry.get(type(block))
        except ValueError:
            raise ValueError(
                f"{type(block).__name__} is not a transformer block diffusers describes; "
                f"override {type(self).__name__}.block_streams for it"
            ) from None

    def attention_layers(self, transformer: nn.Module) -> dict[str, nn.Module]:
        """The attention modules inside the transformer's blocks, by their qualified name on the transformer
        (`transformer_blocks.0.attn1`), in execution order: what attention-level caches (PAB, FasterCache)
        reuse and what the engine counts. By default every diffusers attention class in the blocks."""
        from diffusers.hooks._common import _ATTENTION_CLASSES

        return {
            f"{group.name}.{index}.{name}": module
            for group in self.block_groups(transformer)
            for index, block in enumerate(group.blocks)
            for name, module in block.named_modules()
            if name and isinstance(module, _ATTENTION_CLASSES)
        }

    def modulated_input(self, block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The timestep-modulated, normalised input of `block` for the call `block(*args, **kwargs)`
        (what TeaCache watches change between steps). Computed without running the block."""
        x = block_argument(block, "hidden_states", args, kwargs)
        norm_type = getattr(block, "norm_type", None)
        if norm_type == "ada_norm_zero":  # DiT: the block's own timestep + class embedding
            timestep = block_argument(block, "timestep", args, kwargs)
            labels = block_argument(block, "class_labels", args, kwargs)
            return block.norm1(x, timestep, labels, hidden_dtype=x.dtype)[0]
        if norm_type == "ada_norm_single":  # PixArt: a shared timestep projection plus a per-block table
            timestep = block_argument(block, "timestep", args, kwargs)
            table = block.scale_shift_table[None] + timestep.reshape(x.shape[0], 6, -1)
            shift, scale = table.chunk(6, dim=1)[:2]
            return block.norm1(x) * (1 + scale) + shift
        out = block.norm1(x, emb=block_argument(block, "temb", args, kwargs))  # Flux, SD3: AdaLayerNormZero(emb)
        return out[0] if isinstance(out, tuple) else out

    def check_size(self, model: LoadedModel, height: int, width: int) -> None:
        """Refuse a size the family cannot make, naming the rule."""
        default = self.default_size(model)
        if not self.resizable and (height, width) != default:
            raise RequestError("size", f"this model makes {default[0]}x{default[1]} images only")
        multiple = self.size_multiple(model)
        for name, value in (("height", height), ("width", width)):
            if value % multiple:
                raise RequestError(name, f"must be a multiple of {multiple} (got {value})")


@functools.cache
def forward_parameters(cls: type) -> tuple[inspect.Parameter, ...]:
    """The parameters of `cls.forward` without `self` (read once per class: caches ask at every block call)."""
    return tuple(inspect.signature(cls.forward).parameters.values())[1:]


def block_argument(block: nn.Module, name: str, args: tuple, kwargs: dict) -> Any:
    """The value a call `block(*args, **kwargs)` gives parameter `name` (its default when not passed)."""
    if name in kwargs:
        return kwargs[name]
    for index, parameter in enumerate(forward_parameters(type(block))):
        if parameter.name == name:
            return args[index] if index < len(args) else parameter.default
    raise ValueError(f"{type(block).__name__}.forward has no parameter {name!r}")


def load_component(cls: type, path: Path, subfolder: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """One model component of a checkpoint (a diffusers or transformers class), for inference on `device`.

    On `meta` the component is built from its config alone and no weight file is read: a process that
    only checks requests (the multi-process executor's front) gets the shapes without a copy of the model."""
    if torch.device(device).type == "meta":
        from accelerate import init_empty_weights

        with init_empty_weights():
            if hasattr(cls, "load_config"):  # diffusers
                module = cls.from_config(cls.load_config(path, subfolder=subfolder))
            else:  # transformers
                module = cls._from_config(cls.config_class.from_pretrained(path, subfolder=subfolder))
        module = module.to(dtype)
    else:
        module = cls.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype).to(device)
    return module.eval().requires_grad_(False)


def vae_mean(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The mean of a diffusers VAE's latent distribution for images in [-1, 1] (unscaled)."""
    return vae.encode(images.to(vae.dtype)).latent_dist.mode()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def count_blocks(adapter: FamilyAdapter, transformer: nn.Module) -> int:
    """Blocks one transformer call runs when nothing is skipped."""
    return sum(len(group.blocks) for group in adapter.block_groups(transformer))
