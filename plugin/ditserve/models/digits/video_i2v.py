"""The embedded image-to-video model, digits-video-i2v: digits-video given the first frame, Wan 2.1 I2V style.

The first frame (1×16×16, in [-1, 1]) goes through a tiny CLIP vision encoder (patch 4: 16 patch tokens and a
class token, width 64, trained with the model) and the transformer's `condition_embedder.image_embedder`; its
tokens sit in every block's cross-attention (attn2) beside the prompt's, with their own key and value
projections (`add_k_proj`, `add_v_proj`), as in diffusers' Wan I2V path. The prompt names only the motion
("moving left"): the digit comes from the image alone, so the per-frame digit accuracy of a generated clip
measures the image conditioning.

The directory is diffusers' `WanImageToVideoPipeline` layout (tokenizer, text_encoder, image_encoder,
transformer, scheduler; vae and image_processor saved as null), but that pipeline's `__call__` cannot run it:
it encodes the first frame with its VAE and concatenates it to the latents along channels, and this model is
in pixel space with no VAE and takes the frame through cross-attention only. `generate` is the sampling loop
(Euler on the flow, classifier-free guidance on the prompt; the image conditions both branches, as in Wan).
diffusers' attention processor also cannot run it as is: it takes the last 512 context tokens as the text (Wan's
T5 window), and ours is `MAX_TOKENS` long, hence `FirstFrameAttnProcessor`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel
from transformers import CLIPVisionConfig, CLIPVisionModel

from ditserve.models.digits.moving import CANVAS, MOTIONS
from ditserve.models.digits.train_video import DEFAULT_OUT as T2V_DIR
from ditserve.models.digits.train_video import TRANSFORMER_CONFIG
from ditserve.models.digits.video_prompts import MAX_TOKENS

MODEL_DIR = Path(__file__).parent / "digits-video-i2v"
IMAGE_PATCH = 4
IMAGE_ENCODER_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    projection_dim=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_channels=1,
    image_size=CANVAS,
    patch_size=IMAGE_PATCH,
)
IMAGE_TOKENS = (CANVAS // IMAGE_PATCH) ** 2 + 1
"""Tokens per first frame: the 4×4 patches and CLIP's class token."""
INNER_DIM = TRANSFORMER_CONFIG["num_attention_heads"] * TRANSFORMER_CONFIG["attention_head_dim"]
I2V_TRANSFORMER_CONFIG = dict(
    TRANSFORMER_CONFIG, image_dim=IMAGE_ENCODER_CONFIG["hidden_size"], added_kv_proj_dim=INNER_DIM
)
"""digits-video's transformer plus the image layers: `image_embedder` maps CLIP's width to the model's, and
`add_k_proj`/`add_v_proj` take the model's width (Wan 2.1 I2V: image_dim 1280, added_kv_proj_dim = inner dim)."""


def motion_prompt(motion: int) -> str:
    """The prompt for `MOTIONS` row `motion`: "moving left"."""
    return f"moving {list(MOTIONS)[motion]}"


def heads(attn, x: torch.Tensor) -> torch.Tensor:
    """(N, L, heads·D) → (N, heads, L, D)."""
    return x.unflatten(2, (attn.heads, -1)).transpose(1, 2)


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Attention over (N, heads, L, D) tensors, back to (N, L, heads·D)."""
    return F.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2)


class FirstFrameAttnProcessor:
    """Wan's cross-attention with the first frame's tokens in front of the prompt's `text_tokens`: the text term
    plus the image term, summed before the output projection (diffusers' `WanAttnProcessor` with the split
    at `text_tokens` instead of its fixed 512; without image tokens it is the text-to-video cross-attention)."""

    def __init__(self, text_tokens: int = MAX_TOKENS):
        self.text_tokens = text_tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        split = encoder_hidden_states.shape[1] - self.text_tokens
        image, text = encoder_hidden_states[:, :split], encoder_hidden_states[:, split:]
        query = heads(attn, attn.norm_q(attn.to_q(hidden_states)))
        out = attend(query, heads(attn, attn.norm_k(attn.to_k(text))), heads(attn, attn.to_v(text)))
        term = self.image_term(attn, query, image) if split > 0 else None
        if term is not None:
            out = out + term
        return attn.to_out[1](attn.to_out[0](out))

    def image_term(self, attn, query: torch.Tensor, image: torch.Tensor) -> torch.Tensor | None:
        """The attention of the video's queries (N, heads, L, D) over the image tokens (N, IMAGE_TOKENS, width),
        (N, L, heads·D); a subclass may reuse an earlier one or return None for none (video/faster_i2v.py)."""
        key = heads(attn, attn.norm_added_k(attn.add_k_proj(image)))
        return attend(query, key, heads(attn, attn.add_v_proj(image)))


def use_first_frame_attention(transformer: WanTransformer3DModel) -> None:
    for block in transformer.blocks:
        block.attn2.set_processor(FirstFrameAttnProcessor())


def build_from_t2v(t2v_dir: Path = T2V_DIR) -> WanImageToVideoPipeline:
    """The I2V pipeline at its start: digits-video's weights, a fresh image encoder and image embedder, and the
    image value projections at zero, so that the image term is zero and the model is digits-video exactly (the
    image key projections get gradients as soon as the values leave zero)."""
    t2v = WanPipeline.from_pretrained(t2v_dir, vae=None, local_files_only=True)
    transformer = WanTransformer3DModel(**I2V_TRANSFORMER_CONFIG)
    missing, unexpected = transformer.load_state_dict(t2v.transformer.state_dict(), strict=False)
    new = [k for k in missing if not (".add_" in k or ".norm_added_k." in k or ".image_embedder." in k)]
    if new or unexpected:
        raise RuntimeError(f"{t2v_dir} does not match the I2V transformer: missing {new}, unexpected {unexpected}")
    with torch.no_grad():
        for block in transformer.blocks:
            block.attn2.add_v_proj.weight.zero_()
            block.attn2.add_v_proj.bias.zero_()
    use_first_frame_attention(transformer)
    return WanImageToVideoPipeline(
        tokenizer=t2v.tokenizer,
        text_encoder=t2v.text_encoder,
        vae=None,
        scheduler=t2v.scheduler,
        image_encoder=CLIPVisionModel(CLIPVisionConfig(**IMAGE_ENCODER_CONFIG)),
        transformer=transformer,
    )


def load(path: Path = MODEL_DIR, device="cpu") -> WanImageToVideoPipeline:
    """The trained I2V pipeline, in eval mode without gradients, its cross-attention split at the prompt's length."""
    from ditserve.models.text import load_pipeline
    from ditserve.models.wan import WanAdapter

    pipe = load_pipeline(WanAdapter(), path, ("WanImageToVideoPipeline",), torch.float32, torch.device(device))
    use_first_frame_attention(pipe.transformer)
    return pipe


def text_pipeline(pipe: WanImageToVideoPipeline) -> WanPipeline:
    """The same modules as a `WanPipeline`, for its `encode_prompt` (identical to the I2V pipeline's, but that one
    calls ftfy without checking it is installed, in diffusers 0.42; this project does not depend on ftfy)."""
    return WanPipeline(pipe.tokenizer, pipe.text_encoder, None, pipe.scheduler, transformer=pipe.transformer)


def encode_first_frame(pipe: WanImageToVideoPipeline, frames: torch.Tensor) -> torch.Tensor:
    """The image tokens (N, IMAGE_TOKENS, 64) of first frames (N, 1, CANVAS, CANVAS) in [-1, 1]: the encoder's last
    hidden state (Wan's pipeline takes the penultimate one of a CLIP trained contrastively for other uses; ours
    is trained for this model only). The frames need no image processor: [-1, 1] is already the encoder's range."""
    return pipe.image_encoder(pixel_values=frames).last_hidden_state


def encode_prompts(pipe: WanImageToVideoPipeline, prompts: list[str], negative: bool):
    """Prompt embeddings (N, MAX_TOKENS, width), and those of "" for each when `negative`."""
    return text_pipeline(pipe).encode_prompt(
        prompts, negative_prompt=[""] * len(prompts) if negative else None,
        do_classifier_free_guidance=negative, max_sequence_length=MAX_TOKENS, device=pipe.transformer.device,
    )  # fmt: skip


@torch.no_grad()
def generate(
    pipe: WanImageToVideoPipeline,
    first_frames: torch.Tensor,
    prompts: list[str],
    noise: torch.Tensor,
    steps: int = 28,
    guidance: float = 4.0,
) -> torch.Tensor:
    """Videos (N, 1, F, CANVAS, CANVAS) in [-1, 1] that start from `first_frames` (N, 1, CANVAS, CANVAS) and move
    as `prompts` say, from initial `noise` (N, 1, F, CANVAS, CANVAS): the scheduler's Euler steps on the predicted
    velocity, one transformer call per step with the conditional and unconditional rows batched together."""
    guided = guidance > 1
    text, negative = encode_prompts(pipe, prompts, guided)
    image = encode_first_frame(pipe, first_frames)
    if guided:
        text, image = torch.cat([text, negative]), torch.cat([image, image])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise
    for t in scheduler.timesteps:
        rows = torch.cat([x, x]) if guided else x
        v = pipe.transformer(
            hidden_states=rows, timestep=t.expand(rows.shape[0]), encoder_hidden_states=text,
            encoder_hidden_states_image=image, return_dict=False,
        )[0]  # fmt: skip
        if guided:
            cond, uncond = v.chunk(2)
            v = uncond + guidance * (cond - uncond)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x.clamp(-1, 1)
