"""Tiny checkpoints for the parallel tests: a DiT shaped like digits-dit, Flux and PixArt pipelines.

Head counts are chosen so that Ulysses degree 2 divides them; token counts (64 for the DiT; 96 image
and 512 text tokens for Flux at 32x48; 96 image tokens for PixArt at 32x48) divide by 2 and 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT = ["a photo of a cat on a red mat", "a painting of a dog in the snow", "an astronaut riding a horse"]


def _t5_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    unigram.train_from_iterator(TEXT * 5, trainer)
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )


def _t5_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config).eval()


def _clip(hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = sorted(set("".join(TEXT).replace(" ", "")) | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, CLIPTextModel(config).eval()


def _vae(**extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        **extra,
    )


def save_digits_like_dit(path: Path) -> Path:
    """A random DiT with digits-dit's shape (16x16 pixels, patch 2: 64 tokens, 4 heads), 2 blocks."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=1,
        out_channels=1,
        num_layers=2,
        sample_size=16,
        patch_size=2,
        num_embeds_ada_norm=10,
    ).save_pretrained(path / "transformer")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True).save_pretrained(
        path / "scheduler"
    )
    (path / "labels.json").write_text(json.dumps({"id2label": {str(i): str(i) for i in range(10)}}))
    return path


def save_flux(path: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    clip_tokenizer, clip = _clip()
    t5 = _t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    FluxPipeline(
        scheduler=scheduler,
        vae=_vae(shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=_t5_encoder(t5),
        tokenizer_2=t5,
        transformer=transformer,
    ).save_pretrained(path)
    return path


def save_pixart(path: Path) -> Path:
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    tokenizer = _t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=16,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=16,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(tokenizer),
        vae=_vae(),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    ).save_pretrained(path)
    return path
