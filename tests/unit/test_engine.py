"""The engine: determinism, per-image seeds, progress, cancellation, stats, and request validation."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from ditserve_testing import engine_for

from ditserve.errors import Cancelled, PlanError, RequestError
from ditserve.request import GenerationRequest


@pytest.fixture(scope="module")
def engine(tiny_dit_dir):
    return engine_for(tiny_dit_dir, sampler={"name": "ddim", "steps": 6})


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**{"class_label": 3, "seed": 5, **fields})


def test_same_seed_gives_bit_identical_images(engine):
    first = engine.generate(request(num_images=2))
    second = engine.generate(request(num_images=2))
    assert torch.equal(first.images, second.images)
    assert first.seeds == second.seeds == [5, 6]


def test_different_seeds_give_different_images(engine):
    a, b = engine.generate(request(seed=1)), engine.generate(request(seed=2))
    assert not torch.allclose(a.images, b.images)


def test_image_k_of_a_request_is_the_request_with_seed_plus_k(engine):
    batch = engine.generate(request(seed=20, num_images=3))
    alone = engine.generate(request(seed=22))
    torch.testing.assert_close(batch.images[2], alone.images[0], rtol=0, atol=1e-5)


def test_missing_seed_is_drawn_and_reported(engine):
    result = engine.generate(request(seed=None))
    again = engine.generate(request(seed=result.seeds[0]))
    assert torch.equal(result.images, again.images)


def test_progress_is_reported_after_every_step(engine):
    events = []
    engine.generate(request(steps=4), on_progress=events.append)
    assert [(e.step, e.total) for e in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(e.latents.shape == (1, 1, 8, 8) for e in events)
    assert [e.elapsed for e in events] == sorted(e.elapsed for e in events)


def test_cancel_stops_between_steps_and_leaves_nothing_behind(engine):
    cancel = threading.Event()
    seen = []

    def on_progress(event):
        seen.append(event.step)
        if event.step == 2:
            cancel.set()

    before = engine.block_counter.count
    with pytest.raises(Cancelled) as err:
        engine.generate(request(steps=6), on_progress=on_progress, cancel=cancel)
    assert err.value.steps_done == 2 and seen == [1, 2]
    assert engine.block_counter.count - before == 2 * engine.blocks_per_call  # no third step ran
    fresh = engine_for(engine.model.path, sampler={"name": "ddim", "steps": 6})
    assert torch.equal(engine.generate(request()).images, fresh.generate(request()).images)


def test_passed_deadline_cancels_before_any_model_work(engine):
    before = engine.block_counter.count
    with pytest.raises(Cancelled, match="deadline exceeded after 0 steps"):
        engine.generate(request(), deadline=time.monotonic() - 1)
    assert engine.block_counter.count == before


def test_stats_count_model_and_block_evaluations(engine):
    guided = engine.generate(request(steps=5, guidance_scale=4.0)).stats
    assert guided.steps == 5 and guided.model_evaluations == 5
    assert guided.block_evaluations == guided.block_evaluations_full == 5 * 2 and guided.blocks_skipped == 0
    assert set(guided.seconds) == {"condition", "denoise", "decode", "total"}
    unguided = engine.generate(request(steps=5, guidance_scale=1.0))
    assert unguided.stats.model_evaluations == 5
    assert not torch.equal(unguided.images, engine.generate(request(steps=5, guidance_scale=4.0)).images)


def test_stats_count_tokens_of_every_attention_and_feed_forward_layer(engine):
    """Uncached, every call computes each image's tokens (16: an 8x8 image in 2x2 patches) in each block's
    attention layer and feed-forward network, for the cond and uncond halves; a block cache skipping blocks
    computes fewer, and the full count stays what the calls would cost uncached."""
    guided = engine.generate(request(steps=5, guidance_scale=4.0, num_images=3)).stats
    assert guided.token_evaluations == guided.token_evaluations_full == 5 * 2 * 2 * (3 * 2) * 16
    single = engine.generate(request(steps=5, guidance_scale=1.0)).stats
    assert single.token_evaluations == single.token_evaluations_full == 5 * 2 * 2 * 16
    skipping = engine.generate(request(steps=5, num_images=3, cache={"name": "fora", "interval": 2})).stats
    assert skipping.token_evaluations_full == guided.token_evaluations_full
    assert skipping.token_evaluations / skipping.token_evaluations_full == pytest.approx(
        skipping.block_evaluations / skipping.block_evaluations_full
    )


def test_prompt_names_a_class_by_any_synonym(engine):
    by_label = engine.generate(request(class_label=7)).images
    for prompt in ("label7", "7", " LABEL7 "):
        assert torch.equal(engine.generate(request(class_label=None, prompt=prompt)).images, by_label)


def test_request_sampler_override(engine):
    base = engine.generate(request(steps=3))
    ddpm = engine.generate(request(steps=3, sampler={"name": "ddpm"}))
    assert not torch.equal(base.images, ddpm.images)
    with pytest.raises(RequestError, match="sampler: .*unknown sampler 'nope'"):
        engine.generate(request(sampler={"name": "nope"}))


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"steps": 201}, "steps", "at most 200"),
        ({"num_images": 17}, "num_images", "at most 16"),
        ({"class_label": None}, "prompt", "required"),
        ({"prompt": "seven"}, "prompt", "not both"),
        ({"class_label": 10}, "class_label", r"\[0, 9\]"),
        ({"class_label": None, "prompt": "giraffe"}, "prompt", "names no class"),
        ({"class_label": None, "prompt": "x" * 2001}, "prompt", "2000 characters"),
        ({"height": 13, "width": 13}, "height", "multiple of 2"),
        ({"height": 12, "width": 8}, "width", "square"),
        ({"width": 2048}, "width", "at most 1024"),
    ],
)
def test_invalid_requests_are_refused_with_the_field_and_limit(engine, fields, field, message):
    before = engine.block_counter.count
    with pytest.raises(RequestError, match=message) as err:
        engine.generate(request(**fields))
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert engine.block_counter.count == before  # refused before any model work


def test_non_finite_guidance_is_refused_by_the_request_type():
    with pytest.raises(ValueError, match="guidance_scale"):
        GenerationRequest(class_label=1, guidance_scale=float("nan"))


def test_size_may_change_for_dit(engine):
    result = engine.generate(request(height=12, width=12, steps=2))
    assert result.images.shape == (1, 1, 12, 12)


def test_latent_dit_with_vae_and_learned_sigma(tiny_latent_dit_dir):
    engine = engine_for(tiny_latent_dit_dir, sampler={"name": "ddim", "steps": 2})
    assert engine.describe()["default_size"] == [16, 16]
    result = engine.generate(GenerationRequest(prompt="class 4", seed=0))
    assert result.images.shape == (1, 3, 16, 16)
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_missing_model_directory_is_a_plan_error(tmp_path):
    with pytest.raises(PlanError, match="not a local directory"):
        engine_for(tmp_path / "absent")


def test_warmup_runs_a_request(engine):
    assert engine.warmup() > 0


def test_compatible_requests_batch_and_each_gets_its_own_images(engine):
    a, b = request(class_label=1, seed=40, num_images=2), request(class_label=8, seed=90)
    batched = engine.generate_batch([a, b])
    assert [r.seeds for r in batched] == [[40, 41], [90]]
    assert batched[0].stats.batch_size == 3 and batched[0].stats.model_evaluations == 6
    for got, alone in zip(batched, (engine.generate(a), engine.generate(b)), strict=True):
        torch.testing.assert_close(got.images, alone.images, rtol=0, atol=1e-5)
        assert got.images.shape == alone.images.shape


def test_incompatible_requests_are_not_batched(engine):
    with pytest.raises(ValueError, match="same steps, size, guidance and sampler"):
        engine.generate_batch([request(steps=2), request(steps=3)])
