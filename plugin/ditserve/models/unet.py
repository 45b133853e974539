"""The `unet` family: diffusers' `UNet2DModel` with a class embedding, class-conditional, in pixel space.

Covers the embedded digits-unet (unet/ + scheduler/ + labels.json, the layout of diffusers' DDPM
pipelines plus the label names). The unconditional class is the class embedding's last row, index
`num_class_embeds − 1` (the digits models' null class 10).

The "blocks" of a U-Net, for counts and for DeepCache, are its stages in execution order: the down
blocks, the middle block and the up blocks (`block_groups`), each a ResNet stack with optional
self-attention and a down- or upsampler. They are not transformer blocks: they take skip connections
and return tuples that no residual cache understands, so `block_streams` refuses every block-residual
cache (FORA, TeaCache, FBCache, ...) at load with a sentence, and DeepCache is the cache for this family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from ditserve.errors import PlanError
from ditserve.models.base import BlockGroup, Conditioning, FamilyAdapter, LoadedModel, load_component, read_json
from ditserve.models.dit import class_id


class UNetAdapter(FamilyAdapter):
    """Class-conditional pixel-space U-Net (Ho et al., 2020; Dhariwal & Nichol, 2021) as diffusers implements it."""

    family = "unet"
    conditioning = "class"

    def load(self, path: Path, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        unet = load_component(UNet2DModel, path, "unet", dtype, device)
        if not unet.config.num_class_embeds:
            raise PlanError(
                f"the U-Net in {path} has no class embedding (num_class_embeds): the unet family serves "
                "class-conditional UNet2DModel checkpoints only"
            )
        labels = read_json(path / "labels.json").get("id2label") or {}
        return LoadedModel(
            adapter=self,
            transformer=unet,
            scheduler_config=read_json(path / "scheduler" / "scheduler_config.json"),
            path=path,
            device=device,
            dtype=dtype,
            id2label={int(k): v for k, v in labels.items()},
        )

    def block_groups(self, transformer: nn.Module) -> list[BlockGroup]:
        return [
            BlockGroup("down_blocks", transformer.down_blocks),
            BlockGroup("mid_block", nn.ModuleList([transformer.mid_block])),
            BlockGroup("up_blocks", transformer.up_blocks),
        ]

    def block_streams(self, block: nn.Module):
        raise PlanError(
            f"{type(block).__name__} is one of the U-Net stages, not transformer blocks: caches that reuse block "
            "residuals cannot run on the unet family; use cache 'deepcache' (or 'none') in plan.cache"
        )

    def default_size(self, model: LoadedModel) -> tuple[int, int]:
        side = model.transformer.config.sample_size
        return (side, side) if isinstance(side, int) else tuple(side)

    def size_multiple(self, model: LoadedModel) -> int:
        """Each down block but the last halves the image, and the up path must meet the skips at their size."""
        return 2 ** (len(model.transformer.config.block_out_channels) - 1)

    def latent_shape(self, model: LoadedModel, height: int, width: int) -> tuple[int, ...]:
        return model.transformer.config.in_channels, height, width

    def null_class(self, model: LoadedModel) -> int:
        return model.transformer.config.num_class_embeds - 1

    def class_id(self, model: LoadedModel, prompt: str | int) -> int:
        return class_id(model, prompt, self.null_class(model))

    def condition(self, model: LoadedModel, prompts: list[str | int], guidance: bool) -> Conditioning:
        labels = torch.tensor([self.class_id(model, p) for p in prompts], device=model.device)
        null = torch.full_like(labels, self.null_class(model))
        return Conditioning(cond={"class_labels": labels}, uncond={"class_labels": null} if guidance else None)

    def predict(self, model: LoadedModel, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        timestep = t.to(x.device).reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.to(x.device)
        return model.transformer(x.to(model.dtype), timestep=timestep, return_dict=False, **kwargs)[0]

    def decode(self, model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        return x.float()

    def skip_layers(self, transformer: nn.Module) -> tuple[list[list[SkipLayer]], list[list[SkipLayer]]]:
        """The layers of each down block and each up block (in execution order), numbered by the skip connection
        they make or take. conv_in's output is skip 0; every ResNet (with its attention) of the down path and
        every downsampler makes the next; the up path's ResNets (with their attention) take them back in reverse,
        the deepest first, and an upsampler counts with the ResNet before it. DeepCache cuts the U-Net at one
        skip: the layers numbered above it are deep."""
        down, made = [], 0
        for block in transformer.down_blocks:
            layers = []
            for index, resnet in enumerate(block.resnets):
                made += 1
                layers += [SkipLayer(module, made) for module in (resnet, *_attention(block, index))]
            for sampler in block.downsamplers or ():
                made += 1
                layers.append(SkipLayer(sampler, made))
            down.append(layers)
        up, taken = [], made
        for block in transformer.up_blocks:
            layers = []
            for index, resnet in enumerate(block.resnets):
                layers += [SkipLayer(module, taken) for module in (resnet, *_attention(block, index))]
                taken -= 1
            layers += [SkipLayer(sampler, taken + 1) for sampler in block.upsamplers or ()]
            up.append(layers)
        return down, up


@dataclass(frozen=True)
class SkipLayer:
    """One module of a U-Net block and the skip connection it makes (down path) or takes (up path)."""

    module: nn.Module
    skip: int


def _attention(block: nn.Module, index: int) -> tuple[nn.Module, ...]:
    """The attention that follows ResNet `index` of a block, if the block has attentions."""
    attentions = getattr(block, "attentions", None)
    return (attentions[index],) if attentions else ()
