"""LoRA adapters per request on the engine (`ditserve.lora`), with the shipped "bold" adapter of digits-dit: it
does its job, switching it off gives the base model back bit for bit, a bad name is refused naming the field,
and the plans it cannot run under refuse it with what to change."""

from __future__ import annotations

import pytest
import torch

from ditserve.config import load_config, parse_config
from ditserve.engine import Engine, Front, load_model
from ditserve.errors import PlanError, RequestError
from ditserve.lora import MAX_ADAPTERS, WEIGHT_NAME, discover, peft_capable
from ditserve.quality.classifier import accuracy, load_classifier
from ditserve.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_thread")


def digits(lora: str | None = None, **fields) -> GenerationRequest:
    return GenerationRequest(**{"class_label": 3, "seed": 11, "steps": 10, "lora": lora, **fields})


def test_the_bold_adapter_draws_more_ink_and_the_digits_stay_readable(digits_engine):
    batch = [
        GenerationRequest(class_label=c, num_images=2, steps=20, seed=100 * c, lora=lora)
        for lora in (None, "bold")
        for c in range(10)
    ]
    plain = torch.cat([r.images for r in digits_engine.generate_batch(batch[:10])])
    bold = torch.cat([r.images for r in digits_engine.generate_batch(batch[10:])])
    labels = torch.arange(10).repeat_interleave(2)
    assert bold.mean() > 1.2 * plain.mean()  # 1.28x over 200 images at 50 steps (the adapter's training.json)
    assert accuracy(load_classifier(), bold * 2 - 1, labels) >= 0.9


def test_a_plain_request_after_an_adapter_request_is_bit_identical_to_a_fresh_engine(digits_engine):
    with_adapter = digits_engine.generate(digits("bold")).images
    after = digits_engine.generate(digits()).images
    fresh = Engine(load_config("builtin:digits-dit")).generate(digits()).images
    assert torch.equal(after, fresh)
    assert (with_adapter - fresh).abs().max() > 0.1
    assert digits_engine.loras.active is None  # switched off once the adapter's batch ended


def test_scale_zero_is_the_base_model_and_the_scale_is_applied(digits_engine):
    base = digits_engine.generate(digits()).images
    assert torch.equal(digits_engine.generate(digits("bold", lora_scale=0.0)).images, base)
    half = digits_engine.generate(digits("bold", lora_scale=0.5)).images
    full = digits_engine.generate(digits("bold")).images
    assert 0 < (half - base).abs().mean() < (full - base).abs().mean()


def test_requests_with_different_adapters_or_scales_never_share_a_batch_key(digits_engine):
    keys = {digits_engine.validate(r).batch_key for r in (digits(), digits("bold"), digits("bold", lora_scale=0.5))}
    assert len(keys) == 3
    with pytest.raises(ValueError, match="same steps"):
        digits_engine.generate_batch([digits(), digits("bold")])


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"lora": "italic"}, "lora", "unknown adapter 'italic'; this model has: bold"),
        ({"lora_scale": 0.5}, "lora_scale", "name one in `lora`"),
    ],
)
def test_a_bad_adapter_is_refused_naming_the_field(digits_engine, fields, field, words):
    with pytest.raises(RequestError, match=words) as err:
        digits_engine.validate(GenerationRequest(class_label=3, **fields))
    assert err.value.field == field


def test_a_quantized_plan_refuses_adapter_requests_and_says_what_to_change():
    config = load_config("builtin:digits-dit")
    quantized = config.model_copy(update={"plan": config.plan.model_copy(update={"quant": {"name": "int8"}})})
    engine = Engine(parse_config(quantized.model_dump(mode="json")))
    with pytest.raises(RequestError, match="plan.quant 'int8' replaces the linear layers.*plan.quant none"):
        engine.validate(digits("bold"))
    assert engine.describe()["loras"] == []
    assert engine.generate(digits()).images.shape == (1, 1, 16, 16)  # the base model still serves


def test_a_multi_process_plan_refuses_adapter_requests_and_says_what_to_change():
    data = load_config("builtin:digits-dit").model_dump(mode="json")
    config = parse_config(data | {"plan": data["plan"] | {"parallel": {"name": "cfg", "cfg": 2}}})
    front = Front(config, load_model(config, torch.device("meta")))  # the multi-process executor's front
    with pytest.raises(RequestError, match="plan.parallel 'cfg'.*plan.parallel none"):
        front.validate(digits("bold"))


def test_adapters_are_found_by_folder_and_bounded(tmp_path):
    assert discover(tmp_path) == {}
    for k in range(MAX_ADAPTERS):
        (tmp_path / "loras" / f"style-{k}").mkdir(parents=True)
        (tmp_path / "loras" / f"style-{k}" / WEIGHT_NAME).touch()
    (tmp_path / "loras" / "notes").mkdir()  # no weights: not an adapter
    assert len(discover(tmp_path)) == MAX_ADAPTERS
    (tmp_path / "loras" / "one-more").mkdir()
    (tmp_path / "loras" / "one-more" / WEIGHT_NAME).touch()
    with pytest.raises(PlanError, match=f"at most {MAX_ADAPTERS} are loaded"):
        discover(tmp_path)


def test_a_model_class_without_diffusers_lora_mixin_gains_it_and_keeps_its_name():
    from diffusers import DiTTransformer2DModel
    from diffusers.loaders.peft import PeftAdapterMixin

    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, sample_size=8, num_layers=1)
    assert not isinstance(model, PeftAdapterMixin)
    peft_capable(model)
    assert isinstance(model, PeftAdapterMixin) and isinstance(model, DiTTransformer2DModel)
    assert type(model).__name__ == "DiTTransformer2DModel"


def test_the_cross_request_cache_never_starts_a_request_from_another_adapters_run():
    """Its entries are scoped by `Job.batch_key`, which holds the adapter: a plain request after an adapter
    request of the same class starts from its own noise, and a repeat with the same adapter resumes."""
    config = load_config("builtin:digits-dit")
    cache = config.plan.approx_cache.model_copy(update={"enabled": True})
    engine = Engine(config.model_copy(update={"plan": config.plan.model_copy(update={"approx_cache": cache})}))
    engine.generate(digits("bold"))
    plain, again = engine.generate(digits()), engine.generate(digits("bold"))
    assert plain.stats.resumed_from == 0
    assert torch.equal(plain.images, engine.generate(digits(approx_cache=False)).images)
    assert again.stats.resumed_from > 0
