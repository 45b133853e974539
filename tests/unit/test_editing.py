"""Edits in the engine (ditserve/editing.py) on the embedded models: image-to-image as diffusers' img2img loops
do it, inpainting as diffusers' classic blending does it, every sampler starting from the noised init image, and
bad edit inputs refused naming the field.

Measured here (10 steps, guidance 4, seeds below; CPU): img2img against a hand-written diffusers img2img loop
(`add_noise` / `scale_noise` at the strength's timestep, then the truncated grid) ≤ 4.2e-7 on digits-dit (DDIM)
and ≤ 1.1e-6 on digits-flow (flow Euler); inpainting against diffusers' state blending, inside the mask,
≤ 4.8e-7; kept pixels equal to the init image's PNG values (difference 0). The bounds below leave room for
other CPUs' rounding.
"""

from __future__ import annotations

import struct
import time
import zlib

import pytest
import torch

from ditserve.edit_images import read_image
from ditserve.errors import RequestError
from ditserve.request import GenerationRequest
from ditserve.serving import png

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10
MATCH = 1e-5
"""Largest pixel difference from the hand-written diffusers loops (float rounding of the same arithmetic)."""
KEPT = 1e-6
"""Largest difference of a kept pixel from the init image (the 8-bit PNG's value, through float arithmetic)."""


@pytest.fixture(scope="module")
def flow_engine():
    from ditserve.engine import Engine

    return Engine.from_config("builtin:digits-flow")


@pytest.fixture(scope="module")
def engines(digits_engine, flow_engine):
    """Model name → (engine, the request fields that pick a digit, the plan's reference sampler)."""
    return {
        "digits-dit": (digits_engine, {"class_label": 8}, "ddim"),
        "digits-flow": (flow_engine, {"prompt": "a handwritten eight"}, "flow-euler"),
    }


def init_png(engine, subject: dict) -> bytes:
    """A real digit (a three) to edit, as PNG bytes."""
    three = {"class_label": 3} if "class_label" in subject else {"prompt": "a handwritten three"}
    return png.encode(engine.generate(GenerationRequest(seed=0, steps=STEPS, **three)).images[0])


def right_half() -> bytes:
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 8:] = 1
    return png.encode(mask)


def pixels(data: bytes) -> torch.Tensor:
    return torch.from_numpy(read_image(data, "init_image", 1, 16))


def reference_loop(engine, request: GenerationRequest, strength: float, mask: torch.Tensor | None = None):
    """diffusers' img2img / classic inpaint loop written out with the model's own scheduler class: noise the init
    latents to timesteps[t_start] (`add_noise`, or `scale_noise` for flow matching), run the rest of the grid and,
    with a mask, blend the state with the init latents noised to the next timestep after every step — and before
    the first, which diffusers leaves out: its first call sees pure noise in the kept region, 0.155 of the image
    short at DDIM's first timestep on digits-dit (t = 900, 10 steps), which moved inpainted pixels by 0.005."""
    import diffusers

    job = engine.validate(request.model_copy(update={"init_image": None, "mask": None, "strength": None}))
    start = engine.start_inputs([job])
    noise, kwargs = start.noise, start.kwargs
    init = pixels(request.init_image)[None] * 2 - 1
    flow = engine.noise_schedule.flow
    scheduler = getattr(diffusers, "FlowMatchEulerDiscreteScheduler" if flow else "DDIMScheduler").from_config(
        engine.model.scheduler_config
    )
    scheduler.set_timesteps(STEPS)
    t_start = STEPS - min(int(STEPS * strength), STEPS)
    timesteps = scheduler.timesteps[t_start:]
    if flow:
        scheduler.set_begin_index(t_start)

    def noised(t):
        return scheduler.scale_noise(init, t[None], noise) if flow else scheduler.add_noise(init, noise, t[None])

    x = noised(timesteps[0]) if strength < 1 else noise
    if mask is not None:  # diffusers blends after each step only; here the first step sees the init image too
        x = mask * x + (1 - mask) * noised(timesteps[0])
    for i, t in enumerate(timesteps):
        cond, uncond = engine.adapter.predict(engine.model, torch.cat([x, x]), t, kwargs).chunk(2)
        output = uncond + job.guidance * (cond - uncond)
        step = {} if flow else {"eta": 0.0, "use_clipped_model_output": True}
        x = scheduler.step(output, t, x, **step).prev_sample
        if mask is not None:
            known = noised(timesteps[i + 1]) if i + 1 < len(timesteps) else init
            x = mask * x + (1 - mask) * known
    return ((x + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("name", ["digits-dit", "digits-flow"])
def test_strength_one_without_a_mask_is_text_to_image_of_the_same_seed(engines, name):
    engine, subject, _ = engines[name]
    plain = engine.generate(GenerationRequest(seed=5, steps=STEPS, **subject))
    edit = engine.generate(
        GenerationRequest(seed=5, steps=STEPS, init_image=init_png(engine, subject), strength=1.0, **subject)
    )
    assert torch.equal(plain.images, edit.images)


@pytest.mark.parametrize("name", ["digits-dit", "digits-flow"])
def test_img2img_is_diffusers_img2img(engines, name):
    engine, subject, sampler = engines[name]
    request = GenerationRequest(
        seed=5, steps=STEPS, init_image=init_png(engine, subject), sampler={"name": sampler}, **subject
    )
    for strength in (0.3, 0.6):
        result = engine.generate(request.model_copy(update={"strength": strength}))
        assert result.stats.model_evaluations == int(STEPS * strength)  # the skipped steps cost no model call
        assert result.stats.steps == STEPS
        assert (result.images - reference_loop(engine, request, strength)).abs().max() <= MATCH


@pytest.mark.parametrize("name", ["digits-dit", "digits-flow"])
def test_a_small_strength_stays_close_to_the_init_image_and_a_larger_one_departs(engines, name):
    engine, subject, _ = engines[name]
    init = init_png(engine, subject)
    distance = {}
    for strength in (0.1, 0.5, 0.9):
        result = engine.generate(GenerationRequest(seed=5, steps=STEPS, init_image=init, strength=strength, **subject))
        distance[strength] = (result.images[0] - pixels(init)).abs().mean().item()
    assert distance[0.1] < 0.01  # measured 0.002 (dit), 0.003 (flow): one step at low noise
    assert distance[0.1] < distance[0.5] < distance[0.9]


@pytest.mark.parametrize("name", ["digits-dit", "digits-flow"])
def test_inpainting_keeps_the_unmasked_region_and_redraws_the_masked_one(engines, name):
    engine, subject, sampler = engines[name]
    init, mask = init_png(engine, subject), right_half()
    request = GenerationRequest(seed=5, steps=STEPS, init_image=init, mask=mask, sampler={"name": sampler}, **subject)
    result = engine.generate(request)
    image, kept = result.images[0], pixels(init)
    assert (image[:, :, :8] - kept[:, :, :8]).abs().max() <= KEPT
    assert (image[:, :, 8:] - kept[:, :, 8:]).abs().mean() > 0.05  # measured 0.2: an eight's right half
    reference = reference_loop(engine, request, 1.0, pixels(mask)[None])
    assert (result.images[..., 8:] - reference[..., 8:]).abs().max() <= MATCH


def test_edits_of_different_images_share_a_batch_and_each_gets_its_own(digits_engine):
    three = init_png(digits_engine, {"class_label": 3})
    seven = png.encode(digits_engine.generate(GenerationRequest(class_label=7, seed=1, steps=STEPS)).images[0])
    top = torch.zeros(1, 16, 16)
    top[:, :8] = 1
    requests = [
        GenerationRequest(class_label=8, seed=5, steps=STEPS, init_image=three, mask=right_half(), strength=0.7),
        GenerationRequest(
            class_label=1, seed=6, steps=STEPS, num_images=2, init_image=seven, mask=png.encode(top), strength=0.7
        ),
    ]
    together = digits_engine.generate_batch(requests)
    for request, result in zip(requests, together, strict=True):
        assert result.stats.batch_size == 3
        assert (result.images - digits_engine.generate(request).images).abs().max() <= 1e-5


def test_a_latent_dit_edits_through_its_vae(tiny_latent_dit_dir):
    """The DiT family in VAE latent space: the init image is encoded with the VAE's scaling, the mask max-pooled to
    the latent grid, and the kept pixels pasted back after decoding (a VAE's round trip would blur them)."""
    from ditserve_testing import engine_for

    engine = engine_for(tiny_latent_dit_dir, sampler={"name": "ddim", "steps": 4})
    init = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = init[None] * 2 - 1
    vae = engine.model.components["vae"]
    round_trip = vae.decode(vae.encode(images).latent_dist.mode()).sample
    assert torch.allclose(
        engine.adapter.decode(engine.model, engine.adapter.encode(engine.model, images)), round_trip, atol=1e-5
    )
    kept = torch.from_numpy(png.to_uint8(init).transpose(2, 0, 1) / 255.0).float()
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 9:] = 1  # not on the latent grid's 2-pixel cells: column 8 is kept, its latent cell generated
    result = engine.generate(
        GenerationRequest(class_label=1, seed=0, init_image=png.encode(init), mask=png.encode(mask))
    )
    assert (result.images[0, :, :, :9] - kept[:, :, :9]).abs().max() <= KEPT
    assert (result.images[0, :, :, 9:] - kept[:, :, 9:]).abs().mean() > 0.05


DETERMINISTIC = [("digits-dit", s) for s in ("ddim", "pndm", "dpm-solver++", "unipc", "euler", "heun")] + [
    ("digits-flow", s) for s in ("flow-euler", "dpm-solver++", "unipc")
]
EXACT = {"ddim", "pndm", "flow-euler"}
"""Samplers whose step is exact for an exact x̂₀: the first model call sees diffusers' add_noise to float rounding."""


def first_model_input(engine, request: GenerationRequest) -> tuple[torch.Tensor, float]:
    seen = []

    def record(module, args, kwargs):
        seen.append(((kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]), kwargs["timestep"]))

    handle = engine.model.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        engine.generate(request)
    finally:
        handle.remove()
    x, t = seen[0]
    return x[:1], float(t.reshape(-1)[0])


@pytest.mark.parametrize(("name", "sampler"), DETERMINISTIC)
def test_every_sampler_starts_the_model_at_the_init_image_noised_to_its_level(engines, name, sampler):
    """The first step the model runs sees α_t x₀ + σ_t ε (diffusers' `add_noise` / `scale_noise`), whatever the
    sampler: the skipped steps are the sampler's own, answered with the init image's prediction."""
    engine, subject, _ = engines[name]
    init = init_png(engine, subject)
    request = GenerationRequest(
        seed=5, steps=STEPS, init_image=init, strength=0.5, sampler={"name": sampler}, **subject
    )
    x, t = first_model_input(engine, request)
    noise = torch.randn(engine.adapter.latent_shape(engine.model, 16, 16), generator=torch.Generator().manual_seed(5))
    schedule = engine.noise_schedule
    sigma = float(schedule.sigma(t))
    alpha = 1 - sigma if schedule.flow else float(schedule.alpha(t))
    expected = alpha * (pixels(init) * 2 - 1) + sigma * noise
    assert 0.2 < sigma < 0.9  # half-way down the schedule
    assert (x[0] - expected).abs().max() <= (1e-5 if sampler in EXACT else 5e-3)  # measured ≤ 1.4e-3


@pytest.mark.parametrize("sampler", ["ddpm", "euler-ancestral"])
def test_a_stochastic_sampler_starts_at_the_init_image_under_its_own_noise(digits_engine, sampler):
    init = init_png(digits_engine, {"class_label": 8})
    request = GenerationRequest(
        class_label=8, seed=5, steps=STEPS, init_image=init, strength=0.5, sampler={"name": sampler}
    )
    x, t = first_model_input(digits_engine, request)
    schedule = digits_engine.noise_schedule
    residual = (x[0] - float(schedule.alpha(t)) * (pixels(init) * 2 - 1)) / float(schedule.sigma(t))
    assert abs(residual.mean().item()) < 0.2 and 0.8 < residual.std().item() < 1.2  # unit Gaussian noise


# -- bad inputs ----------------------------------------------------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_header_png(side: int) -> bytes:
    """A PNG whose header claims side × side grey pixels, with one tiny (wrong) IDAT."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return png.SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 17)) + chunk(b"IEND", b"")


def with_text_bomb(data: bytes) -> bytes:
    """`data` with a zTXt chunk that inflates to 60 MB placed before the pixels."""
    bomb = chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"x" * 60_000_000, 9))
    return data[:33] + bomb + data[33:]


def refused(engine, **fields) -> RequestError:
    with pytest.raises(RequestError) as err:
        engine.validate(GenerationRequest(class_label=8, steps=STEPS, **fields))
    return err.value


def test_bad_edit_inputs_are_refused_naming_the_field(digits_engine):
    init, mask = init_png(digits_engine, {"class_label": 3}), right_half()
    eight_by_eight = png.encode(torch.zeros(1, 8, 8))
    cases = [
        ({"init_image": b"not a png"}, "init_image", "PNG"),
        ({"init_image": init[:60]}, "init_image", "decodable"),
        ({"init_image": init, "height": 8, "width": 8}, "init_image", "16x16"),
        ({"init_image": init, "mask": eight_by_eight}, "mask", "size"),
        ({"mask": mask}, "mask", "init_image"),
        ({"strength": 0.5}, "strength", "init_image"),
        ({"init_image": init, "strength": 0.05}, "strength", "runs no step"),
        ({"init_image": png.encode(torch.zeros(1, 24, 24))}, "init_image", "at most 16"),
        ({"init_image": init, "sampler": {"name": "paradigms"}}, "sampler", "sequential"),
    ]
    for fields, field, words in cases:
        err = refused(digits_engine, **fields)
        assert err.field == field and words in str(err), (fields.keys(), str(err))
    with pytest.raises(ValueError, match="strength"):
        GenerationRequest(class_label=8, init_image=init, strength=1.5)


def test_decompression_bombs_are_refused_or_never_inflated(digits_engine):
    started = time.perf_counter()
    err = refused(digits_engine, init_image=huge_header_png(100_000))
    assert err.field == "init_image" and "100000x100000" in str(err) and "at most 16" in str(err)
    job = digits_engine.validate(
        GenerationRequest(class_label=8, init_image=with_text_bomb(init_png(digits_engine, {"class_label": 3})))
    )
    assert job.edit is not None and job.edit.image.shape == (1, 16, 16)  # the text chunk was dropped, not read
    assert time.perf_counter() - started < 1.0  # inflating the text would take longer and take 60 MB


def test_an_edit_of_the_served_size_fits_the_body_limit():
    """The Bento's model (16×16, one channel): the least compressible init image and mask, base64 in JSON, stay
    far under DITSERVE_MAX_BODY_BYTES (1 MiB)."""
    import base64
    import json

    from ditserve.serving.settings import SETTINGS

    noise = png.encode(torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)))
    body = {"class_label": 8, "init_image": base64.b64encode(noise).decode(), "mask": base64.b64encode(noise).decode()}
    assert len(json.dumps(body)) < SETTINGS.max_body_bytes // 100
