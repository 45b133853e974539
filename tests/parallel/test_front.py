"""The multi-process executor's front: the serving process checks requests on a model without weights.

`weightless` builds every model component from its config on `meta` (it loads a copy of the checkpoint whose
transformer and text-encoder weight files are emptied, which a real load cannot parse), keeps a real VAE for
previews, and the front validates and describes requests exactly as a loaded `Engine` does."""

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_models import save_flux, save_pixart

from ditserve.config import parse_config
from ditserve.engine import Engine, Front
from ditserve.models import BUILTIN_MODELS
from ditserve.parallel.executor import weightless
from ditserve.request import GenerationRequest


def without_weights(path, copy):
    """A copy of the checkpoint at `path` whose weight files, all but the VAE's, are empty."""
    shutil.copytree(path, copy)
    emptied = [f for f in copy.rglob("*") if f.suffix in (".safetensors", ".bin") and "vae" not in f.parts]
    for weights in emptied:
        weights.write_bytes(b"")
    assert emptied
    return copy


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_latent_dit_dir):
    root = tmp_path_factory.mktemp("front")
    return {
        "dit": (tiny_latent_dit_dir, {"class_label": 3}),
        "pixart": (save_pixart(root / "pixart"), {"prompt": "a cat on a red mat", "height": 32, "width": 48}),
        "flux": (save_flux(root / "flux"), {"prompt": "a cat on a red mat", "height": 32, "width": 48}),
        "sd3": (BUILTIN_MODELS["digits-flow"], {"prompt": "a handwritten seven"}),
    }


@pytest.mark.parametrize("family", ["dit", "pixart", "flux", "sd3"])
def test_the_front_reads_no_weights_and_checks_requests_like_the_engine(checkpoints, family, tmp_path):
    path, subject = checkpoints[family]
    empty = without_weights(path, tmp_path / "empty")
    sampler = {"name": "none"}  # the checkpoint's own scheduler: every family has one
    config = parse_config(
        {"model": {"name": family, "path": str(path), "family": family}, "plan": {"sampler": sampler}}
    )
    model = weightless(config.model_copy(update={"model": config.model.model_copy(update={"path": str(empty)})}))
    assert all(p.device.type == "meta" for p in model.transformer.parameters())
    vae = model.components.get("vae")
    if vae is not None:  # previews are decoded in the serving process
        assert all(p.device.type != "meta" for p in vae.parameters())

    front, engine = Front(config, model), Engine(config)
    request = GenerationRequest(**subject, steps=3, seed=5, num_images=2)
    mine, theirs = front.validate(request), engine.validate(request)
    assert (mine.subject, mine.steps, mine.height, mine.width, mine.guidance, mine.seeds) == (
        theirs.subject, theirs.steps, theirs.height, theirs.width, theirs.guidance, theirs.seeds
    )  # fmt: skip
    assert mine.batch_key == theirs.batch_key
    local = ("device", "runs")  # what runs where: the ranks' business, not the front's
    described = {key: value for key, value in front.describe().items() if key not in local}
    assert described == {key: value for key, value in engine.describe().items() if key not in local}
    if vae is not None:
        latents = torch.randn(1, *model.adapter.latent_shape(model, mine.height, mine.width))
        assert torch.equal(model.adapter.decode(model, latents), engine.adapter.decode(engine.model, latents))
