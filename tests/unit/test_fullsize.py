"""Full-size architectures (`fullsize:<name>`): the published configs, and the same code at tiny width through
the engine, giving what the family's diffusers pipeline gives."""

from __future__ import annotations

import pytest
import torch

from ditserve.errors import PlanError
from ditserve.request import GenerationRequest

PROMPT = "a red cat"
SIZE = 32
FAMILY = {"flux-dev": "flux", "sd35-medium": "sd3", "pixart-sigma": "pixart", "wan21-1.3b": "wan"}


def engine_for(name: str, **plan):
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    model = {"name": "fullsize", "path": f"fullsize:{name}@tiny", "family": FAMILY[name]}
    return Engine(parse_config({"model": model, "plan": {"sampler": {"name": "none", "steps": 2}, **plan}}))


def pipeline_images(engine, name: str, seeds: list[int], guidance: float) -> torch.Tensor:
    """The family pipeline's own `__call__` from the engine's starting noise (one CPU generator per image)."""
    from ditserve.models.flux import pack

    shape = engine.adapter.latent_shape(engine.model, SIZE, SIZE)
    latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    pipe = engine.model.components["pipeline"]
    common = {"height": SIZE, "width": SIZE, "num_inference_steps": 2, "guidance_scale": guidance, "output_type": "pt"}
    with torch.inference_mode():
        if name == "wan":
            return pipe(PROMPT, num_frames=1, latents=latents, **common).frames[:, 0]
        if name == "flux":
            latents = pack(latents)
        extra = {"use_resolution_binning": False} if name == "pixart" else {}
        return pipe(PROMPT, num_images_per_prompt=len(seeds), latents=latents, **common, **extra).images


@pytest.mark.parametrize("name", list(FAMILY))
def test_tiny_build_runs_through_the_engine_as_the_pipeline_does(name):
    engine = engine_for(name)
    frames = {"num_frames": 1} if FAMILY[name] == "wan" else {}  # Wan makes videos: one frame, the image
    request = GenerationRequest(prompt=PROMPT, height=SIZE, width=SIZE, seed=7, num_images=2, guidance_scale=3.0)
    result = engine.generate(request.model_copy(update=frames))
    images = result.images if result.videos is None else result.videos[:, 0]
    expected = pipeline_images(engine, FAMILY[name], [7, 8], 3.0)
    assert images.shape == expected.shape
    assert (images - expected.float()).abs().max().item() <= 1e-4


def test_published_configs_have_the_published_sizes():
    """Parameter counts of the transformers the configs describe (built on the meta device: no memory)."""
    from ditserve.models.fullsize import build_pipeline

    counts = {}
    for name in FAMILY:
        transformer = build_pipeline(name, torch.bfloat16, torch.device("meta")).transformer
        counts[name] = sum(p.numel() for p in transformer.parameters()) / 1e9
    assert counts == pytest.approx({"flux-dev": 11.90, "sd35-medium": 2.24, "pixart-sigma": 0.61, "wan21-1.3b": 1.42},
                                   abs=0.01)  # fmt: skip


def test_an_unknown_architecture_or_a_wrong_family_is_refused_at_load():
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    with pytest.raises(PlanError, match="unknown full-size architecture 'flux-pro'; known: flux-dev"):
        Engine(parse_config({"model": {"name": "x", "path": "fullsize:flux-pro", "family": "flux"}}))
    with pytest.raises(PlanError, match="is a 'flux' architecture; set `model.family: flux`"):
        Engine(parse_config({"model": {"name": "x", "path": "fullsize:flux-dev@tiny", "family": "sd3"}}))
