"""The text-to-image family adapters (pixart, sd3, flux, wan) on tiny random pipelines built here.

Each family's pipeline is built from small configs (1-2 blocks per stack, tiny VAE, tiny CLIP/T5/UMT5
encoders, tokenizers made from a few lines of text), saved with `save_pretrained`, and loaded back
through the engine. The engine's images must match the diffusers pipeline's own, run on the same
initial latents, within float rounding.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from ditserve_testing import (
    clip_encoder,
    clip_tokenizer,
    image_vae,
    t5_encoder,
    t5_tokenizer,
    tiny_flux_pipeline,
    tiny_pixart_pipeline,
    tiny_sd3_transformer,
    tiny_wan_transformer,
)

from ditserve.errors import PlanError, RequestError
from ditserve.request import GenerationRequest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a cat on the moon"
SIZE = {"pixart": (32, 48), "sd3": (32, 48), "flux": (32, 48), "flux-dev": (32, 32), "wan": (32, 64)}
"""(height, width) each family's tests ask for: small, and not square where the family allows it."""


pytestmark = pytest.mark.usefixtures("one_thread")


def build_sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    clip, t5 = clip_tokenizer(), t5_tokenizer()
    transformer = tiny_sd3_transformer(num_layers=2)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=image_vae(4, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_encoder(clip, 16, with_projection=True),
        tokenizer=clip,
        text_encoder_2=clip_encoder(clip, 16, with_projection=True),
        tokenizer_2=clip,
        text_encoder_3=t5_encoder(t5),
        tokenizer_3=t5,
    )


def build_wan():
    # The `none` sampler cannot run Wan's shipped UniPCMultistepScheduler (see the report); FlowMatchEuler
    # is what WanPipeline's signature names and runs here.
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = t5_tokenizer()
    transformer = tiny_wan_transformer(num_layers=2)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(tokenizer, umt5=True),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )


BUILDERS = {
    # 3 heads: the size conditions take a third of the width each; sample size 128 exercises them
    "pixart": lambda: tiny_pixart_pipeline(sample_size=128, heads=3),
    "sd3": build_sd3,
    "flux": lambda: tiny_flux_pipeline(num_single_layers=2),
    "flux-dev": lambda: tiny_flux_pipeline(num_single_layers=2, guidance_embeds=True),
    "wan": build_wan,
}
BLOCKS = {
    "pixart": {"transformer_blocks": 2},
    "sd3": {"transformer_blocks": 2},
    "flux": {"transformer_blocks": 1, "single_transformer_blocks": 2},
    "flux-dev": {"transformer_blocks": 1, "single_transformer_blocks": 2},
    "wan": {"blocks": 2},
}
FAMILIES = list(BUILDERS)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Family → a saved tiny pipeline directory, built on first use."""
    root = tmp_path_factory.mktemp("families")
    made: dict = {}

    def get(name: str):
        if name not in made:
            torch.manual_seed(0)
            BUILDERS[name]().save_pretrained(root / name)
            made[name] = root / name
        return made[name]

    return get


@pytest.fixture(scope="session")
def engines(checkpoints):
    """Family → an engine over its tiny checkpoint, running the checkpoint's own scheduler for 2 steps."""
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    made: dict = {}

    def get(name: str):
        if name not in made:
            model = {"name": f"tiny-{name}", "path": str(checkpoints(name)), "family": name.split("-")[0]}
            made[name] = Engine(parse_config({"model": model, "plan": {"sampler": {"name": "none", "steps": 2}}}))
        return made[name]

    return get


def generate(engine, name: str, prompt: str = PROMPT, **fields):
    height, width = SIZE[name]
    if name != "wan":
        return engine.generate(GenerationRequest(prompt=prompt, height=height, width=width, **fields))
    # Wan makes videos: the frame of a one-frame video is the image these tests look at
    result = engine.generate(GenerationRequest(prompt=prompt, height=height, width=width, num_frames=1, **fields))
    return dataclasses.replace(result, images=result.videos[:, 0])


def initial_latents(engine, name: str, seeds: list[int]) -> torch.Tensor:
    """The engine's starting noise: one CPU generator per image, seeded seed + k."""
    shape = engine.adapter.latent_shape(engine.model, *SIZE[name])
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds])


# -- every family ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_images_have_the_size_asked_for_and_follow_the_seed(engines, name):
    engine = engines(name)
    first = generate(engine, name, seed=3, num_images=2, guidance_scale=3.0)
    again = generate(engine, name, seed=3, num_images=2, guidance_scale=3.0)
    other = generate(engine, name, seed=5, num_images=2, guidance_scale=3.0)
    assert first.images.shape == (2, 3, *SIZE[name])
    assert first.images.dtype == torch.float32
    assert first.images.min() >= 0 and first.images.max() <= 1
    assert torch.equal(first.images, again.images)
    assert not torch.allclose(first.images, other.images)
    assert not torch.allclose(first.images[0], first.images[1])


@pytest.mark.parametrize("name", FAMILIES)
def test_the_prompt_and_the_guidance_scale_change_the_image(engines, name):
    engine = engines(name)
    height, width = SIZE[name]
    base = generate(engine, name, seed=1, guidance_scale=3.0).images
    other_prompt = generate(engine, name, prompt="a dog in the snow", seed=1, guidance_scale=3.0).images
    unguided = generate(engine, name, seed=1, guidance_scale=1.0).images
    assert not torch.allclose(base, other_prompt)
    assert not torch.allclose(base, unguided)


@pytest.mark.parametrize("name", FAMILIES)
def test_block_groups_list_every_block_and_the_engine_counts_them(engines, name):
    engine = engines(name)
    groups = engine.adapter.block_groups(engine.model.transformer)
    assert {group.name: len(group.blocks) for group in groups} == BLOCKS[name]
    stats = generate(engine, name, seed=0, guidance_scale=2.0).stats
    assert stats.model_evaluations == stats.steps == 2
    assert stats.block_evaluations == stats.model_evaluations * sum(BLOCKS[name].values())
    assert stats.block_evaluations == stats.block_evaluations_full


@pytest.mark.parametrize("name", ["pixart", "sd3", "flux", "wan"])
def test_modulated_input_is_what_each_block_feeds_its_attention(engines, name):
    """`modulated_input` (what TeaCache watches) equals the normalised, modulated tokens the block's own
    self-attention receives; for Flux's single-stream blocks, the image tokens of them."""
    engine = engines(name)
    seen: dict[str, list] = {}
    handles = []
    for group in engine.adapter.block_groups(engine.model.transformer):
        block = group.blocks[0]
        attention = block.attn1 if hasattr(block, "attn1") else block.attn

        def before_block(module, args, kwargs, key=group.name):
            seen.setdefault(key, []).append(engine.adapter.modulated_input(module, args, kwargs))

        def before_attention(module, args, kwargs, key=group.name):
            seen[key].append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

        handles += [
            block.register_forward_pre_hook(before_block, with_kwargs=True),
            attention.register_forward_pre_hook(before_attention, with_kwargs=True),
        ]
    try:
        generate(engine, name, seed=0, guidance_scale=1.0, steps=1)
    finally:
        for handle in handles:
            handle.remove()
    assert set(seen) == set(BLOCKS[name])
    for modulated, attended in seen.values():
        torch.testing.assert_close(modulated, attended[:, -modulated.shape[1] :], rtol=0, atol=1e-6)


def test_a_family_refuses_another_familys_pipeline(checkpoints):
    from ditserve.models import get_adapter

    with pytest.raises(PlanError, match="holds a PixArtAlphaPipeline, which family 'sd3' cannot run"):
        get_adapter("sd3").load(checkpoints("pixart"), torch.float32, torch.device("cpu"))


def test_a_text_family_refuses_a_directory_without_a_pipeline(tmp_path):
    from ditserve.models import get_adapter

    with pytest.raises(PlanError, match="has no model_index.json"):
        get_adapter("flux").load(tmp_path, torch.float32, torch.device("cpu"))


# -- the engine gives what the diffusers pipeline gives ------------------------------------------------


def reference(checkpoints, name: str):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(checkpoints(name), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_close(images: torch.Tensor, expected: torch.Tensor) -> None:
    assert images.shape == expected.shape
    difference = (images - expected.float()).abs().max().item()
    assert difference <= 1e-4, f"the engine's images differ from the pipeline's by up to {difference:.2e}"


@pytest.mark.parametrize(("name", "guidance"), [("pixart", 4.5), ("sd3", 5.0), ("wan", 5.0), ("sd3", 1.0)])
def test_engine_matches_the_pipeline(engines, checkpoints, name, guidance):
    engine = engines(name)
    height, width = SIZE[name]
    result = generate(engine, name, seed=7, num_images=2, guidance_scale=guidance, steps=2)
    latents = initial_latents(engine, name, [7, 8])
    pipe = reference(checkpoints, name)
    common = {"height": height, "width": width, "num_inference_steps": 2, "guidance_scale": guidance}
    with torch.inference_mode():
        if name == "wan":
            frames = pipe(PROMPT, num_frames=1, latents=latents, output_type="pt", **common).frames
            expected = frames[:, 0]
        else:
            extra = {"use_resolution_binning": False} if name == "pixart" else {}
            expected = pipe(PROMPT, num_images_per_prompt=2, latents=latents, output_type="pt", **common, **extra)
            expected = expected.images
    assert_close(result.images, expected)


def flux_reference(checkpoints, engine, name: str, steps: int, guidance: float, **call):
    from ditserve.models.flux import pack

    height, width = SIZE[name]
    latents = pack(initial_latents(engine, name, [7, 8]))
    with torch.inference_mode():
        return reference(checkpoints, name)(
            PROMPT,
            height=height,
            width=width,
            num_images_per_prompt=2,
            num_inference_steps=steps,
            latents=latents,
            output_type="pt",
            guidance_scale=guidance,
            **call,
        ).images


# One step: there the engine's schedule and the pipeline's agree whether or not the engine passes
# `steps` to `schedule_kwargs` (sigmas [1.0] either way); the two-step test below needs that.


def test_flux_classifier_free_guidance_is_the_pipelines_true_cfg(engines, checkpoints):
    engine = engines("flux")
    result = generate(engine, "flux", seed=7, num_images=2, guidance_scale=2.5, steps=1)
    expected = flux_reference(checkpoints, engine, "flux", 1, 3.5, true_cfg_scale=2.5, negative_prompt="")
    assert_close(result.images, expected)


def test_flux_dev_embeds_the_requested_guidance_instead_of_running_cfg(engines, checkpoints):
    engine = engines("flux-dev")
    result = generate(engine, "flux-dev", seed=7, num_images=2, guidance_scale=2.0, steps=1)
    assert result.stats.model_evaluations == 1  # no unconditional batch: the scale rides in the `guidance` input
    expected = flux_reference(checkpoints, engine, "flux-dev", 1, 2.0)
    assert_close(result.images, expected)


def test_flux_guidance_inputs_carry_the_scale_for_distilled_checkpoints_only(engines):
    dev, schnell = engines("flux-dev"), engines("flux")
    inputs = dev.adapter.guidance_inputs(dev.model, 2.0, 3)
    assert torch.equal(inputs["guidance"], torch.full((3,), 2.0))
    assert schnell.adapter.guidance_inputs(schnell.model, 2.0, 3) is None


def test_flux_engine_runs_the_pipelines_schedule(engines, checkpoints):
    engine = engines("flux")
    result = generate(engine, "flux", seed=7, num_images=2, guidance_scale=1.0, steps=2)
    expected = flux_reference(checkpoints, engine, "flux", 2, 3.5)
    assert_close(result.images, expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_encode_inverts_decode_around_the_vae(engines, name):
    """`encode` undoes `decode`'s latent scaling (and shift, and Wan's per-channel normalisation): through both,
    an image makes the VAE's own round trip of its mean latent."""
    engine = engines(name)
    images = torch.rand(2, 3, *SIZE[name], generator=torch.Generator().manual_seed(0)) * 2 - 1
    vae = engine.model.components["vae"]
    with torch.no_grad():
        through = engine.adapter.decode(engine.model, engine.adapter.encode(engine.model, images))
        video = name == "wan"  # an image is a one-frame video, decoded frame-major (N, frames, C, H, W)
        raw = vae.decode(vae.encode(images[:, :, None] if video else images).latent_dist.mode()).sample
    assert torch.allclose(through[:, 0] if video else through, raw[:, :, 0] if video else raw, atol=1e-5)


@pytest.mark.parametrize("name", [name for name in FAMILIES if name != "wan"])  # videos take no init image
def test_edits_run_on_every_family_and_keep_the_unmasked_pixels(engines, name):
    from ditserve.serving import png

    engine = engines(name)
    height, width = SIZE[name]
    init = torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))
    init_png = png.encode(init)
    kept = torch.from_numpy(png.to_uint8(init).transpose(2, 0, 1) / 255.0).float()
    mask = torch.zeros(1, height, width)
    mask[:, :, width // 2 :] = 1
    plain = generate(engine, name, seed=2, guidance_scale=3.0)
    assert torch.equal(
        generate(engine, name, seed=2, guidance_scale=3.0, init_image=init_png, strength=1.0).images, plain.images
    )
    img2img = generate(engine, name, seed=2, guidance_scale=3.0, init_image=init_png, strength=0.5)
    assert img2img.images.shape == plain.images.shape and img2img.stats.model_evaluations == 1
    inpaint = generate(engine, name, seed=2, guidance_scale=3.0, init_image=init_png, mask=png.encode(mask))
    assert (inpaint.images[0, :, :, : width // 2] - kept[:, :, : width // 2]).abs().max() <= 1e-6
    assert not torch.allclose(inpaint.images[0, :, :, width // 2 :], kept[:, :, width // 2 :], atol=0.05)


def test_wan_per_frame_timesteps_reach_each_frames_tokens(engines):
    """Timesteps (batch, latent frames) go to the transformer per token, frame by frame: all frames at t is the
    ordinary call, and moving one frame's level changes the transformer's input for that frame's tokens only."""
    from ditserve.models.wan import frame_timesteps

    model = engines("wan").model
    x = torch.randn(2, 16, 3, 4, 8, generator=torch.Generator().manual_seed(0))  # 3 latent frames of 2×4 tokens
    cond = {"encoder_hidden_states": torch.randn(2, 7, model.transformer.config.text_dim)}
    t = torch.tensor(500.0)
    same = torch.full((2, 3), 500.0)
    with torch.no_grad():
        per_frame, ordinary = model.adapter.predict(model, x, same, cond), model.adapter.predict(model, x, t, cond)
    assert torch.allclose(per_frame, ordinary, atol=1e-5)
    staggered = torch.tensor([[900.0, 500.0, 100.0], [100.0, 500.0, 900.0]])
    assert frame_timesteps(model, x, staggered).tolist() == [[900.0] * 8 + [500.0] * 8 + [100.0] * 8,
                                                             [100.0] * 8 + [500.0] * 8 + [900.0] * 8]  # fmt: skip
    with pytest.raises(ValueError, match="per-frame timesteps"):
        frame_timesteps(model, x, torch.zeros(2, 2))


def test_wan_videos_through_its_vae_are_the_pipelines_and_need_4k_plus_1_frames(engines, checkpoints):
    """Five frames are two latent frames (the VAE packs four frames into each after the first), decoded as the
    pipeline decodes them; a count the VAE cannot make is refused, naming the rule."""
    engine = engines("wan")
    height, width = SIZE["wan"]
    call = {"height": height, "width": width, "num_frames": 5, "guidance_scale": 5.0}
    request = GenerationRequest(prompt=PROMPT, seed=7, steps=2, **call)
    result = engine.generate(request)
    shape = engine.adapter.latent_shape(engine.model, height, width, frames=5)
    assert shape[1] == 2
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(7))[None]
    with torch.inference_mode():
        pipe = reference(checkpoints, "wan")
        expected = pipe(PROMPT, num_inference_steps=2, latents=latents, output_type="pt", **call).frames
    assert_close(result.videos, expected)
    with pytest.raises(RequestError, match="must be 4k \\+ 1") as refused:
        engine.validate(request.model_copy(update={"num_frames": 4}))
    assert refused.value.field == "num_frames"
