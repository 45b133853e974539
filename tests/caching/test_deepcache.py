"""The cache battery for `deepcache` (on the tiny U-Net), its refusal of transformer families, its cached step
against the paper's equation computed by hand, and its fidelity on the trained digits-unet across step counts."""

from __future__ import annotations

import pytest
import torch

from ditserve.caching.floors import FIDELITY_FLOORS_DB
from ditserve.errors import PlanError
from ditserve.quality import mean_finite, psnr
from ditserve.registry import CACHES

from .battery import CacheBattery, engine_for
from .conftest import FamilyLoop

UNET_ONLY = "runs on the unet family only"


class TestDeepCache(CacheBattery):
    name = "deepcache"
    family = "unet"
    exact = {"interval": 1}
    skipping = {"interval": 3}
    refuses = {family: UNET_ONLY for family in ("flux", "pixart", "sd3", "wan")}


def test_a_dit_is_refused_at_load_with_what_to_pick_instead(dit4_dir):
    with pytest.raises(PlanError, match=f"{UNET_ONLY}; this model is dit: pick another cache"):
        engine_for(dit4_dir, {"name": "deepcache"})


def test_a_branch_past_the_deepest_skip_is_refused_naming_the_deepest(unet_dir):
    """The tiny U-Net's skips: conv_in 0, then per level a ResNet and a downsampler (1-2, 3-4) and a ResNet (5)."""
    engine_for(unet_dir, {"name": "deepcache", "branch": 5}, "unet")  # reuses the middle block only
    with pytest.raises(PlanError, match="set branch to at most 5"):
        engine_for(unet_dir, {"name": "deepcache", "branch": 6}, "unet")


@pytest.mark.parametrize("branch", range(6))
def test_a_cached_step_runs_one_more_stage_per_skip_of_the_branch(branch):
    """Seven stages (3 down, the middle, 3 up). Branch 0 runs the last up block (its last ResNet) alone; each
    skip deeper brings in one more stage, alternately of the down and the up path; the middle is never run."""
    loop = FamilyLoop("unet")
    cache = CACHES.get("deepcache")(CACHES.parse({"name": "deepcache", "interval": 4, "branch": branch}, "c"))
    cache.apply(loop.model)
    _, blocks = loop.run(steps=8)
    assert blocks == 2 * 7 + 6 * (branch + 1)


def shallow_branch_by_hand(unet, x, t, labels, deep: torch.Tensor, branch: int) -> torch.Tensor:
    """The U-Net's output from `deep`, the input the branch's up layer takes from below, and the fresh skips:
    branch 0 runs conv_in and the last up block's last ResNet; branch 1 also the first level's ResNet and the
    last up block's first ResNet."""
    emb = unet.time_embedding(unet.time_proj(t)) + unet.class_embedding(labels)
    skips = [unet.conv_in(x)]
    if branch == 0:
        h = unet.up_blocks[-1].resnets[-1](torch.cat([deep, skips[0]], dim=1), emb)
    else:
        skips.append(unet.down_blocks[0].resnets[0](skips[0], emb))
        h = unet.up_blocks[-1](deep, tuple(skips), emb)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


@pytest.mark.parametrize(("branch", "below"), [(0, "up_blocks.2.resnets.0"), (1, "up_blocks.1")])
def test_a_cached_step_is_the_shallow_branch_on_the_deep_feature_of_the_last_full_step(branch, below):
    """The paper's Eq. 5, by hand: at a cached step the output is the shallow branch run on the fresh input and
    on what the layer below the branch's up layer gave at the last full step (read with a plain torch forward
    hook, not through the cache)."""
    loop = FamilyLoop("unet")
    unet = loop.model.transformer
    x_full, x_cached = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    labels, t_full, t_cached = torch.tensor([3, 10]), torch.tensor([900.0, 900.0]), torch.tensor([700.0, 700.0])
    deep = {}
    handle = unet.get_submodule(below).register_forward_hook(lambda module, args, out: deep.update(feature=out))
    with torch.no_grad():
        unet(x_full, timestep=t_full, class_labels=labels)
        handle.remove()
        expected = shallow_branch_by_hand(unet, x_cached, t_cached, labels, deep["feature"], branch)

    settings = {"name": "deepcache", "interval": 2, "branch": branch}
    cache = CACHES.get("deepcache")(CACHES.parse(settings, "plan.cache"))
    cache.apply(loop.model)
    with torch.no_grad():
        unet(x_full, timestep=t_full, class_labels=labels)
        got = unet(x_cached, timestep=t_cached, class_labels=labels).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# -- fidelity on the trained U-Net across step counts ---------------------------------------------------------


@pytest.fixture(scope="module")
def digits_unet():
    from ditserve.engine import Engine

    torch.set_num_threads(1)
    return Engine.from_config("builtin:digits-unet")


def mean_psnr(engine, steps: int, cache: dict) -> tuple[float, float]:
    """Mean PSNR of `cache` against no cache on four digits (seeds 7-10), and the share of stages it computed."""
    from ditserve.request import GenerationRequest

    def run(cache):
        asks = [
            GenerationRequest(class_label=c, seed=7 + k, steps=steps, cache=cache) for k, c in enumerate((0, 3, 7, 9))
        ]
        results = engine.generate_batch(asks)
        return torch.cat([r.images for r in results]), results[0].stats

    reference, _ = run(None)
    images, stats = run(cache)
    return mean_finite(psnr(images * 2 - 1, reference * 2 - 1)), stats.block_evaluations / stats.block_evaluations_full


@pytest.mark.parametrize("steps", [20, 28, 50])
def test_the_defaults_hold_the_floor_at_every_step_count_while_skipping(digits_unet, steps):
    db, share = mean_psnr(digits_unet, steps, {"name": "deepcache"})
    assert db >= FIDELITY_FLOORS_DB["deepcache"] and share < 0.6, (db, share)


def test_deep_features_kept_from_the_first_step_fail_the_floor(digits_unet):
    """The check can fail: a DeepCache that never refreshes its deep features (one full step) misses it."""
    db, _ = mean_psnr(digits_unet, 20, {"name": "deepcache", "interval": 100})
    assert db < FIDELITY_FLOORS_DB["deepcache"] - 5, db
