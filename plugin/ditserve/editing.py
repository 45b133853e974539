"""Edits: image-to-image (SDEdit) and inpainting, for every sampler, inside the engine's sampling loops.

Image-to-image (Meng et al., 2022, "SDEdit"), as diffusers' img2img pipelines do it: of a run of `steps`
steps, the first `steps − int(steps × strength)` are not run by the model; the trajectory starts there from
the init image, noised to that step's level, and the model denoises the rest. Here the sampler is not told.
It starts from the init image noised to its own first timestep T with the request's noise, α_T x₀ + σ_T ε
(T found by running the sampler up to its first model call, `first_timestep`), and its skipped steps are
answered without a model call by the prediction whose clean image is the init image (ε̂ = (x − α_t x₀)/σ_t for
an ε-model, v = ε̂ − x₀ for a flow model, ...). A step given an exact x̂₀ stays on x_t = α_t x₀ + σ_t ε (DDIM
and flow Euler keep ε exactly, multistep and σ-space solvers to their discretisation, SDE samplers draw their
own noise and stay on that line in distribution), so when the model takes over, x is diffusers'
`add_noise(x₀, ε, t)` / `scale_noise` in the sampler's own space (its σ scaling, its grid, its generators) —
for every sequential sampler, the wrapped diffusers schedulers and the own solvers alike, without a change to
any of them (tests/unit/test_editing.py measures it per sampler and against diffusers' own img2img loops).
The skipped steps cost the sampler's arithmetic only, and strength 1 skips nothing: it is text-to-image of
the same seed, bit for bit.

Inpainting (RePaint-style blending, as diffusers' classic inpaint pipelines do with a 4-channel model): at
every model call — the first included, where diffusers' loop still shows pure noise — the kept region of the
model's input is replaced by the init image noised to that call's timestep with the request's noise,
α_t x₀ + σ_t ε (the forward process of the model's training schedule: DDPM's ᾱ for diffusion models,
(1 − σ) x₀ + σ ε for flow models, in the model's input space, where every sampler's input lives), so the
generated region is denoised in the context of the image it must fit. The
blend is applied to what the model sees, not to the sampler's state: samplers act elementwise, so the
generated region evolves exactly as if the state were blended after every step (diffusers), and the final
latents are the init latents outside the mask. After decoding, the kept pixels are pasted back from the init
image, so a VAE's reconstruction error never reaches them: the unmasked region is returned exactly as sent
(the PNG's 8-bit values). The mask is brought to the latent grid by max-pooling: a latent pixel is generated
when any of the image pixels it covers is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ditserve.edit_images import png_size, read_image, read_mask
from ditserve.errors import RequestError
from ditserve.sampling.base import Denoise, OnStep

IMG2IMG_STRENGTH = 0.8
"""Default strength without a mask (diffusers' img2img pipelines)."""
INPAINT_STRENGTH = 1.0
"""Default strength with a mask (diffusers' inpaint pipelines)."""


@dataclass(frozen=True)
class EditInputs:
    """A validated edit request: the init image, the mask, the strength."""

    image: torch.Tensor
    """(C, H, W) in [0, 1]."""
    mask: torch.Tensor | None
    """(1, H, W): 1 where the image is generated, 0 where it is kept; None: the whole image is redrawn."""
    strength: float

    @property
    def key(self) -> tuple:
        """Edits with equal keys can share one static batch (the same steps are skipped, the same blending)."""
        return (self.strength, self.mask is not None)


def image_size(request, field: str = "init_image") -> tuple[int, int] | None:
    """(height, width) of the request's init image, read from its header; None without one."""
    return None if request.init_image is None else png_size(request.init_image, field)


def edit_inputs(request, steps: int, channels: int, max_side: int) -> EditInputs | None:
    """The request's edit, checked and decoded; None when it is plain text-to-image or when the edit changes
    nothing (strength 1 without a mask is text-to-image of the same seed)."""
    if request.init_image is None:
        for name in ("mask", "strength"):
            if getattr(request, name) is not None:
                raise RequestError(name, "applies to edits only: send the image to edit as init_image")
        return None
    mask = None
    if request.mask is not None:
        mask = torch.from_numpy(read_mask(request.mask, "mask", max_side))
    default = INPAINT_STRENGTH if mask is not None else IMG2IMG_STRENGTH
    strength = request.strength if request.strength is not None else default
    if int(steps * strength) < 1:
        raise RequestError(
            "strength", f"{strength} of {steps} steps runs no step; raise strength to at least {1 / steps:.3g}"
        )
    image = torch.from_numpy(read_image(request.init_image, "init_image", channels, max_side))
    if mask is not None and mask.shape[1:] != image.shape[1:]:
        raise RequestError(
            "mask",
            f"is {mask.shape[2]}x{mask.shape[1]} pixels; it must be the init image's size "
            f"({image.shape[2]}x{image.shape[1]})",
        )
    if mask is None and strength == 1.0:
        return None
    return EditInputs(image, mask, strength)


class _FirstCall(Exception):
    """Stops a sampler's dry run at its first model call."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def first_timestep(sampler, noise: torch.Tensor, steps: int, generators, schedule: dict) -> torch.Tensor:
    """The timestep of the sampler's first model call in this run: the sampler runs until it calls the model and
    is stopped there (its set-up only; the generators are put back as they were)."""
    states = [generator.get_state() for generator in generators]

    def stop(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise _FirstCall(t)

    try:
        sampler.sample(stop, noise.clone(), steps, generators, lambda *_: None, schedule)
    except _FirstCall as call:
        return call.t
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
    raise RuntimeError(f"sampler {sampler.name!r} finished without calling the model")


class Edit:
    """The edits of one sampling loop's rows (all with one `EditInputs.key`): what the model is spared and
    sees, and what the result keeps. One per loop: it counts the loop's steps."""

    def __init__(self, engine, inputs: list[EditInputs], noise: torch.Tensor) -> None:
        model, adapter = engine.model, engine.adapter
        self.strength = inputs[0].strength
        self.prediction = engine.noise_schedule.prediction
        self.schedule = engine.noise_schedule
        self.noise = noise
        pixels = torch.stack([edit.image for edit in inputs]).to(model.device, torch.float32)
        self.pixels = pixels
        self.init = adapter.encode(model, pixels * 2 - 1).to(noise.dtype)
        self.pixel_mask = self.mask = None
        if inputs[0].mask is not None:
            self.pixel_mask = torch.stack([edit.mask for edit in inputs]).to(model.device, torch.float32)
            h, w = self.init.shape[-2:]
            pooled = F.adaptive_max_pool2d(self.pixel_mask, (h, w))  # generated where any covered pixel is
            self.mask = pooled.reshape(len(inputs), *([1] * (self.init.dim() - 3)), h, w).to(noise.dtype)
        self.done, self.total = 0, None

    @classmethod
    def resume(cls, engine, x: torch.Tensor, t: float, output: torch.Tensor, skip: int, total: int) -> Edit:
        """A start part-way along another run (the cross-request cache, `ditserve.nirvana`): its state `x` after
        `skip` of its `total` steps, where the model answered `output` at timestep `t`. That answer's clean estimate
        x̂₀ and noise ε̂ = (x − α_t x̂₀)/σ_t are this edit's init latents and noise, so the skipped steps stay on the
        line through x and the model takes over at x itself. No image, no mask."""
        edit = cls.__new__(cls)
        edit.strength = (total - skip + 0.5) / total  # `skipping` skips total − int(total × strength) = skip steps
        edit.prediction = engine.noise_schedule.prediction
        edit.schedule = engine.noise_schedule
        edit.init, edit.noise = edit.schedule.data(output, x, t), edit.schedule.noise(output, x, t)
        edit.pixels = edit.pixel_mask = edit.mask = None
        edit.done, edit.total = 0, None
        return edit

    def start(self, sampler, steps: int, generators, schedule: dict) -> torch.Tensor:
        """What the sampler starts from: the request's noise, or, when steps are skipped, the init image noised
        to the sampler's first timestep T with it (α_T x₀ + σ_T ε), so that the skipped steps, answered with the
        init image's prediction, keep ε and reach the first step the model runs at diffusers' `add_noise`."""
        if self.strength == 1.0:
            return self.noise
        return self.noised(self.noise, first_timestep(sampler, self.noise, steps, generators, schedule))

    def skipping(self) -> bool:
        """Whether the loop is still in the steps the model does not run. Before the first step the sampler's
        step count is unknown (Heun counts its calls), but with strength < 1 at least its first step is skipped."""
        if self.strength == 1.0:
            return False
        return self.total is None or self.done < self.total - int(self.total * self.strength)

    def denoise(self, model_call: Denoise) -> Denoise:
        """`model_call` with the skipped steps answered by the init image's prediction, and the kept region of
        every model input replaced by the noised init image."""

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if self.skipping():
                return self.init_prediction(x, t)
            return model_call(x if self.mask is None else self.blend(x, t), t)

        return denoise

    def on_step(self, report: OnStep) -> OnStep:
        """`report` behind the step count; with a mask its latents show the kept region clean (for previews)."""

        def on_step(done: int, total: int, x: torch.Tensor) -> None:
            self.done, self.total = done, total
            report(done, total, x if self.mask is None else self.latents(x))

        return on_step

    def _levels(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """α_t and σ_t of the model's input at timestep(s) `t`, shaped to broadcast over `x`'s rows."""
        taus = np.broadcast_to(t.detach().double().cpu().numpy().reshape(-1), (x.shape[0],))
        sigmas = self.schedule.sigma(taus)
        alphas = 1 - sigmas if self.schedule.flow else self.schedule.alpha(taus)  # flow: α = 1 − σ, also at σ = 1
        shape = (x.shape[0], *([1] * (x.dim() - 1)))
        alpha = torch.as_tensor(alphas, dtype=x.dtype, device=x.device).reshape(shape)
        sigma = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device).reshape(shape)
        return alpha, sigma

    def noised(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The init latents at timestep(s) `t` with the request's noise: α_t x₀ + σ_t ε."""
        alpha, sigma = self._levels(x, t)
        return alpha * self.init + sigma * self.noise

    def blend(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.mask * x + (1 - self.mask) * self.noised(x, t)

    def init_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What a model that knows the clean image is the init image predicts at `x`, `t`."""
        alpha, sigma = self._levels(x, t)
        x0 = self.init
        if self.prediction == "sample":
            return x0
        eps = (x - alpha * x0) / sigma
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "v_prediction":
            return alpha * eps - sigma * x0
        return eps - x0  # flow: the velocity d x_σ / dσ of x_σ = (1 − σ) x₀ + σ ε

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Final latents: the init latents where the image is kept."""
        return x if self.mask is None else self.mask * x + (1 - self.mask) * self.init

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded images in [0, 1] with the kept pixels pasted back from the init image."""
        if self.pixel_mask is None:
            return images
        mask, pixels = self.pixel_mask.to(images.device), self.pixels.to(images.device)
        return mask * images + (1 - mask) * pixels
