"""Helpers the test modules import by name: tiny checkpoints and engines over them.

They live here, not in conftest.py, because several test folders have a conftest.py of their own and
`from conftest import ...` would pick whichever one was imported first.
"""

from __future__ import annotations

import contextlib


def save_tiny_dit(
    path,
    *,
    with_vae: bool = False,
    prediction_type: str = "epsilon",
    heads: int = 2,
    head_dim: int = 8,
    sample_size: int = 8,
    num_layers: int = 2,
    edit=None,
):
    """A random DiT checkpoint directory (2 blocks unless told) in diffusers' layout (optionally a latent one
    with a VAE); `edit(transformer)` may change the weights before they are saved."""
    import json

    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    in_channels = 4 if with_vae else 1
    transformer = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=2 * in_channels if with_vae else in_channels,  # real DiT checkpoints learn sigma too
        num_layers=num_layers,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    if edit is not None:
        with torch.no_grad():
            edit(transformer)
    transformer.save_pretrained(path / "transformer")
    DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    ).save_pretrained(path / "scheduler")
    if with_vae:
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            norm_num_groups=4,
            layers_per_block=1,
        ).save_pretrained(path / "vae")
        labels = {"id2label": {str(i): f"class {i}" for i in range(10)}}
        (path / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline", **labels}))
    else:
        names = {str(i): f"label{i}, {i}" for i in range(10)}
        (path / "labels.json").write_text(json.dumps({"id2label": names}))
    return path


def save_tiny_lora(model_dir, name: str) -> None:
    """A random rank-2 LoRA (both factors random, so it changes the output) for the tiny DiT at `model_dir`."""
    import torch
    from diffusers import DiTTransformer2DModel
    from peft import LoraConfig

    from ditserve.lora import LORA_DIR, peft_capable

    torch.manual_seed(1)
    model = peft_capable(DiTTransformer2DModel.from_pretrained(model_dir / "transformer"))
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v", "ff.net.2"], init_lora_weights=False)
    model.add_adapter(config, name)
    model.save_lora_adapter(model_dir / LORA_DIR / name, adapter_name=name)


def tiny_unet():
    """A random class-conditional `UNet2DModel` shaped like digits-unet (its config) at a fraction of its width:
    three levels (8x8, 4x4, 2x2), attention at the second and in the middle block, 10 classes and the null class."""
    import torch
    from diffusers import UNet2DModel

    from ditserve.models.digits.train_unet import UNET_CONFIG

    torch.manual_seed(0)
    narrow = dict(sample_size=8, block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=8)
    return UNet2DModel(**{**UNET_CONFIG, **narrow}).eval()


def save_tiny_unet(path):
    """`tiny_unet` as a checkpoint directory the unet family loads (unet/ + scheduler/ + labels.json)."""
    import json

    from diffusers import DDPMScheduler

    tiny_unet().save_pretrained(path / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(path / "scheduler")
    (path / "labels.json").write_text(json.dumps({"id2label": {str(i): f"label{i}, {i}" for i in range(10)}}))
    return path


FLOW_SHIFT = 3.0


def save_tiny_flow_dit(path):
    """The tiny DiT with a `FlowMatchEulerDiscreteScheduler` config: a flow-matching model (the DiT adapter
    feeds it the scheduler's timestep, 1000·σ, like any flow transformer)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    save_tiny_dit(path)
    FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT).save_pretrained(path / "scheduler")
    return path


def wait_ready(proc, url: str, log, seconds: float, failure_mark: str | None = None) -> None:
    """Poll `url`/readyz every 0.5 s until it answers 200. Fails with the tail of the server's `log` file if
    `proc` exits, `failure_mark` appears in the log, or `seconds` pass first."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = log.read_text()
        if proc.poll() is not None or (failure_mark is not None and failure_mark in text):
            raise AssertionError(f"the server exited ({proc.returncode}) or failed to start:\n{text[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server was not ready after {seconds} s:\n{log.read_text()[-3000:]}")


def assert_documented_config(registry, spec: dict) -> None:
    """The strategy `spec` names says what it is, documents every field of its config, and refuses an unknown one."""
    import pytest

    from ditserve.errors import ConfigError

    cls = registry.get(spec["name"])
    assert cls.name == spec["name"] and cls.describe(), "the class docstring's first line says what it is"
    for field, info in cls.Config.model_fields.items():
        if field != "name":
            assert info.description, f"{cls.name}.{field} has no docstring"
    with pytest.raises(ConfigError, match="no_such_field: unknown field"):
        registry.parse({**spec, "no_such_field": 1}, "plan")


def engine_for(path, **plan):
    """An engine over a checkpoint directory with the given plan sections."""
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    return Engine(parse_config({"model": {"name": "tiny", "path": str(path), "family": "dit"}, "plan": plan}))


# -- tiny text-to-image components (tokenizers built from a few lines of text, random encoders, VAE) --

TEXT = [
    "a photo of a cat sitting on a red mat",
    "a painting of a dog in the snow",
    "an astronaut riding a horse on the moon",
    "the quick brown fox jumps over the lazy dog",
    "a bowl of fruit on a wooden table",
    "city lights at night, rain on the street",
]
# -- tiny components ---------------------------------------------------------------------------------


def clip_tokenizer():
    """A character-level CLIP BPE tokenizer with a few merges (CLIP's 77-token window)."""
    from transformers import CLIPTokenizer

    chars = sorted(set("".join(TEXT).replace(" ", "")) | set("abcdefghijklmnopqrstuvwxyz0123456789,.!?'-"))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("a", "t</w>"), ("t", "h"), ("th", "e</w>")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer():
    """A T5-style tokenizer: a Unigram model trained on `TEXT`, appending `</s>`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=100, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    unigram.train_from_iterator(TEXT * 5, trainer)
    unigram.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )


def clip_encoder(tokenizer, hidden: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def t5_encoder(tokenizer, d_model: int = 32, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    fields = {
        "vocab_size": len(tokenizer),
        "d_model": d_model,
        "d_ff": 2 * d_model,
        "d_kv": 8,
        "num_layers": 1,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return (UMT5EncoderModel(UMT5Config(**fields)) if umt5 else T5EncoderModel(T5Config(**fields))).eval()


def image_vae(latent_channels: int, **factors):
    """A 2-level AutoencoderKL (8x fewer pixels per side is real; 2x keeps the tests small)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        **factors,
    )


def tiny_flux_transformer(num_layers: int, num_single_layers: int, guidance_embeds: bool = False):
    """A random Flux transformer: 2 heads of 16 (Ulysses 2 divides them), 16 latent channels, 32-wide text;
    `guidance_embeds` for a guidance-distilled one (FLUX.1-dev)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    )


def tiny_pixart_transformer(sample_size: int, num_layers: int, out_channels: int, heads: int = 2):
    """A random PixArt-α transformer: `heads` heads of 8, 4 latent channels (8 out: learned sigma), 32-wide T5."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=num_layers,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=heads,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=8 * heads,
        out_channels=out_channels,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )


def tiny_pixart_pipeline(sample_size: int, heads: int = 2):
    """A random PixArt-α pipeline: 2 blocks that learn sigma (8 output channels), T5, DPM-Solver++."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    tokenizer = t5_tokenizer()
    transformer = tiny_pixart_transformer(sample_size=sample_size, num_layers=2, out_channels=8, heads=heads)
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(tokenizer),
        vae=image_vae(4),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )


def tiny_flux_pipeline(num_single_layers: int, guidance_embeds: bool = False):
    """A random Flux pipeline: one double-stream block, `num_single_layers` single-stream ones, CLIP and T5;
    FLUX.1-schnell-like, or FLUX.1-dev-like (guidance-distilled) with `guidance_embeds`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    clip, t5 = clip_tokenizer(), t5_tokenizer()
    transformer = tiny_flux_transformer(
        num_layers=1, num_single_layers=num_single_layers, guidance_embeds=guidance_embeds
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=image_vae(4, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=clip_encoder(clip, 32, with_projection=False),
        tokenizer=clip,
        text_encoder_2=t5_encoder(t5),
        tokenizer_2=t5,
        transformer=transformer,
    )


def tiny_sd3_transformer(num_layers: int):
    """A random SD3 MMDiT: 2 heads of 8, 4 latent channels, 32-wide text; its last joint block is
    `context_pre_only` (it returns no text stream), as in every SD3 checkpoint."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=32,
    )


def tiny_wan_transformer(num_layers: int):
    """A random Wan transformer: 2 heads of 12, 16 latent channels, 32-wide UMT5 text, self- and cross-attention."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


@contextlib.contextmanager
def running_scheduler(engine, **limits):
    """A scheduler over `engine` (queue of 8, batches of 4 images unless `limits` say otherwise), closed within
    60 s when the block ends, however it ends."""
    from ditserve.config import ServeLimits
    from ditserve.scheduler import Scheduler

    scheduler = Scheduler(engine, ServeLimits(**{"max_queue": 8, "batch_images": 4, "max_batch": 4, **limits}))
    try:
        yield scheduler
    finally:
        scheduler.close(60)
