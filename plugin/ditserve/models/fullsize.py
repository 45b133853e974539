"""Full-size DiT architectures from their published configs, with random weights: for speed, not images.

`fullsize:<name>` as a model path (`fullsize:flux-dev`, `fullsize:sd35-medium`, `fullsize:pixart-sigma`,
`fullsize:wan21-1.3b`) builds the transformer of that checkpoint exactly as its published `config.json`
describes it, with random weights, in the config's dtype, directly on the device (a 12B model never
passes through host memory and nothing is downloaded), and wraps it in the family's diffusers pipeline,
so the engine drives it through the same family adapter as the real checkpoint. What surrounds the
transformer is a stand-in that keeps the interfaces and costs next to nothing: text encoders of one
layer with the published output widths and sequence lengths (so the transformer sees as many text
tokens as with the real encoders), and a VAE with the published latent channels and 8x downsampling
but few channels. Time per denoising step is therefore the real model's; encoding and decoding are not.

`fullsize:<name>@tiny` is the same code with the width and depth shrunk: the CPU tests run it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ditserve.errors import PlanError
from ditserve.models.base import FamilyAdapter, LoadedModel

FULLSIZE_PREFIX = "fullsize:"
TINY_SUFFIX = "@tiny"


@dataclass(frozen=True)
class Architecture:
    """A published transformer config, the overrides that shrink it for CPU tests, and its pipeline."""

    family: str
    transformer: dict[str, Any]
    """The checkpoint's `transformer/config.json`, as published."""
    tiny: dict[str, Any]
    """Overrides of `transformer` for the CPU tests (same structure, a few channels wide)."""
    pipeline: Callable[[dict[str, Any], torch.device], Any]
    """The diffusers pipeline around a transformer config (stand-in encoders and VAE sized from it), the
    transformer created on the device."""


# -- stand-in tokenizers, text encoders and VAEs ---------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _clip_tokenizer():
    """A CLIP tokenizer whose vocabulary is single characters (no merges): every prompt tokenizes."""
    from transformers import CLIPTokenizer

    vocab = {symbol: index for index, symbol in enumerate([*_LETTERS, *(c + "</w>" for c in _LETTERS)])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    """A T5 tokenizer (Unigram over single characters, `</s>` appended) without a trained vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(c, -2.0) for c in _LETTERS]
    unigram = Tokenizer(models.Unigram(pieces, unk_id=2))
    unigram.normalizer = normalizers.Lowercase()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def _clip_encoder(tokenizer, width: int, with_projection: bool):
    """One CLIP text layer whose hidden states (and projection) are `width` wide."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=1, max_position_embeddings=77, projection_dim=width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _t5_encoder(tokenizer, width: int, umt5: bool = False):
    """One T5 (or UMT5) encoder layer whose output is `width` wide."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    fields = dict(
        vocab_size=len(tokenizer), d_model=width, d_ff=64, d_kv=16, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return UMT5EncoderModel(UMT5Config(**fields)) if umt5 else T5EncoderModel(T5Config(**fields))


def _image_vae(latent_channels: int, **scaling):
    """An AutoencoderKL with 8x downsampling (4 levels, as the real ones) and 8 channels a level."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **scaling,
    )  # fmt: skip


def _on_device(cls, config: dict[str, Any], device: torch.device):
    """`cls(**config)` with its parameters initialised on `device` (a 12B model never passes through host memory)."""
    with torch.device(device):
        return cls(**config)


# -- the four architectures --------------------------------------------------------------------------------


def _flux_pipeline(config: dict[str, Any], device: torch.device):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    return FluxPipeline(
        scheduler=scheduler,
        vae=_image_vae(16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_clip_encoder(clip, config["pooled_projection_dim"], with_projection=False),
        tokenizer=clip,
        text_encoder_2=_t5_encoder(t5, config["joint_attention_dim"]),
        tokenizer_2=t5,
        transformer=_on_device(FluxTransformer2DModel, config, device),
    )


def _sd3_pipeline(config: dict[str, Any], device: torch.device):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    pooled = config["pooled_projection_dim"]  # CLIP-L (768) and CLIP-G (1280) pooled outputs, concatenated
    clip_l = pooled * 3 // 8
    return StableDiffusion3Pipeline(
        transformer=_on_device(SD3Transformer2DModel, config, device),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_image_vae(16, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_clip_encoder(clip, clip_l, with_projection=True),
        tokenizer=clip,
        text_encoder_2=_clip_encoder(clip, pooled - clip_l, with_projection=True),
        tokenizer_2=clip,
        text_encoder_3=_t5_encoder(t5, config["joint_attention_dim"]),
        tokenizer_3=t5,
    )


def _pixart_pipeline(config: dict[str, Any], device: torch.device):
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    t5 = _t5_tokenizer()
    return PixArtSigmaPipeline(
        tokenizer=t5,
        text_encoder=_t5_encoder(t5, config["caption_channels"]),
        vae=_image_vae(4, scaling_factor=0.13025),
        transformer=_on_device(PixArtTransformer2DModel, config, device),
        scheduler=DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    )


def _wan_pipeline(config: dict[str, Any], device: torch.device):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    t5 = _t5_tokenizer()
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)  # 8x space, 4x time
    return WanPipeline(
        tokenizer=t5,
        text_encoder=_t5_encoder(t5, config["text_dim"], umt5=True),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # the one-step-at-a-time samplers run it
        transformer=_on_device(WanTransformer3DModel, config, device),
    )


ARCHITECTURES: dict[str, Architecture] = {
    "flux-dev": Architecture(
        family="flux",
        transformer={  # black-forest-labs/FLUX.1-dev, 11.9B parameters
            "attention_head_dim": 128,
            "axes_dims_rope": (16, 56, 56),
            "guidance_embeds": True,
            "in_channels": 64,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 19,
            "num_single_layers": 38,
            "patch_size": 1,
            "pooled_projection_dim": 768,
        },
        tiny={
            "attention_head_dim": 16,
            "axes_dims_rope": (4, 6, 6),
            "joint_attention_dim": 32,
            "num_attention_heads": 2,
            "num_layers": 1,
            "num_single_layers": 2,
            "pooled_projection_dim": 32,
        },
        pipeline=_flux_pipeline,
    ),
    "sd35-medium": Architecture(
        family="sd3",
        transformer={  # stabilityai/stable-diffusion-3.5-medium (MMDiT-X), 2.2B parameters
            "attention_head_dim": 64,
            "caption_projection_dim": 1536,
            "dual_attention_layers": tuple(range(13)),
            "in_channels": 16,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 24,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 384,
            "qk_norm": "rms_norm",
            "sample_size": 128,
        },
        tiny={
            "attention_head_dim": 8,
            "caption_projection_dim": 16,
            "dual_attention_layers": (0,),
            "joint_attention_dim": 32,
            "num_attention_heads": 2,
            "num_layers": 2,
            "pooled_projection_dim": 32,
            "pos_embed_max_size": 32,
            "sample_size": 16,
        },
        pipeline=_sd3_pipeline,
    ),
    "pixart-sigma": Architecture(
        family="pixart",
        transformer={  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, 0.6B parameters
            "activation_fn": "gelu-approximate",
            "attention_bias": True,
            "attention_head_dim": 72,
            "caption_channels": 4096,
            "cross_attention_dim": 1152,
            "in_channels": 4,
            "norm_elementwise_affine": False,
            "norm_eps": 1e-6,
            "norm_type": "ada_norm_single",
            "num_attention_heads": 16,
            "num_embeds_ada_norm": 1000,
            "num_layers": 28,
            "out_channels": 8,
            "patch_size": 2,
            "sample_size": 128,
            "use_additional_conditions": False,
        },
        tiny={
            "attention_head_dim": 8,
            "caption_channels": 32,
            "cross_attention_dim": 16,
            "num_attention_heads": 2,
            "num_layers": 2,
            "sample_size": 8,
        },
        pipeline=_pixart_pipeline,
    ),
    "wan21-1.3b": Architecture(
        family="wan",
        transformer={  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, 1.4B parameters
            "attention_head_dim": 128,
            "cross_attn_norm": True,
            "eps": 1e-6,
            "ffn_dim": 8960,
            "freq_dim": 256,
            "in_channels": 16,
            "num_attention_heads": 12,
            "num_layers": 30,
            "out_channels": 16,
            "patch_size": (1, 2, 2),
            "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 1024,
            "text_dim": 4096,
        },
        tiny={
            "attention_head_dim": 12,
            "ffn_dim": 32,
            "freq_dim": 32,
            "num_attention_heads": 2,
            "num_layers": 2,
            "rope_max_seq_len": 64,  # the default 480x832 is 52 patches wide
            "text_dim": 32,
        },
        pipeline=_wan_pipeline,
    ),
}
"""Name (what follows `fullsize:`) → architecture."""


def parse_name(name: str) -> tuple[Architecture, bool]:
    """`flux-dev` or `flux-dev@tiny` → (its architecture, whether tiny); an unknown name lists the known."""
    base, tiny = (name[: -len(TINY_SUFFIX)], True) if name.endswith(TINY_SUFFIX) else (name, False)
    if base not in ARCHITECTURES:
        raise PlanError(f"unknown full-size architecture {base!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[base], tiny


def build_pipeline(name: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """The pipeline of architecture `name` with random weights, created on `device` and cast to `dtype`
    (modules the transformer class keeps in fp32 when loading a checkpoint stay in fp32, as they would)."""
    architecture, tiny = parse_name(name)
    config = architecture.transformer | (architecture.tiny if tiny else {})
    torch.manual_seed(seed)
    pipe = architecture.pipeline(config, device)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):  # nn.Module's `to`: ModelMixin's warns about the fp32 modules
            torch.nn.Module.to(component, device, dtype).eval().requires_grad_(False)
    keep = set(getattr(pipe.transformer, "_keep_in_fp32_modules", None) or ())
    for tensor_name, tensor in [*pipe.transformer.named_parameters(), *pipe.transformer.named_buffers()]:
        if keep.intersection(tensor_name.split(".")):
            tensor.data = tensor.data.float()
    pipe.set_progress_bar_config(disable=True)
    pipe.call_defaults = {}
    return pipe


def build_model(name: str, adapter: FamilyAdapter, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    """A `LoadedModel` over `build_pipeline(name)` for the engine, refused if the config names another family."""
    from pathlib import Path

    from ditserve.models.text import loaded

    architecture, _ = parse_name(name)
    if architecture.family != adapter.family:
        raise PlanError(
            f"{FULLSIZE_PREFIX}{name} is a {architecture.family!r} architecture; set `model.family: "
            f"{architecture.family}` (the config says {adapter.family!r})"
        )
    pipe = build_pipeline(name, dtype, device)
    model = loaded(adapter, pipe, Path(FULLSIZE_PREFIX + name), dtype, device)
    model.scheduler_config = {"_class_name": type(pipe.scheduler).__name__, **pipe.scheduler.config}  # as saved
    return model
