"""The model config: valid YAML loads, and every mistake is named with the field and what is allowed."""

from __future__ import annotations

import pytest
import yaml

from ditserve.config import ModelConfig, load_config, parse_config
from ditserve.errors import ConfigError

BASE = {"model": {"name": "m", "path": "builtin:digits-dit"}}


def with_(**sections) -> dict:
    return {**BASE, **sections}


def problems(data) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return "\n".join(err.value.problems)


def test_builtin_config_loads_and_round_trips_through_yaml(tmp_path):
    config = load_config("builtin:digits-dit")
    assert config.plan.sampler.name == "ddim" and config.plan.sampler.steps == 50
    path = tmp_path / "model.yaml"
    path.write_text(config.to_yaml())
    again = load_config(path)
    assert again.model_dump() == config.model_dump()


def test_defaults_fill_the_plan_with_real_strategy_configs():
    config = parse_config(BASE)
    assert isinstance(config, ModelConfig)
    assert [config.plan.cache.name, config.plan.quant.name, config.plan.parallel.name] == ["none"] * 3
    assert type(config.plan.sampler).__name__ == "DDIMConfig"  # the registry's own config class, not a dict


def test_strategy_fields_are_validated_by_the_strategy_config():
    config = parse_config(with_(plan={"sampler": {"name": "ddim", "steps": 20, "eta": 0.5}}))
    assert config.plan.sampler.eta == 0.5
    text = problems(with_(plan={"sampler": {"name": "ddim", "eta": 2.0}}))
    assert "plan.sampler.eta" in text and "less than or equal to 1" in text


def test_unknown_strategy_field_lists_the_allowed_fields():
    text = problems(with_(plan={"sampler": {"name": "ddim", "stepz": 20}}))
    assert "plan.sampler.stepz: unknown field" in text
    assert "steps" in text and "eta" in text and "use_clipped_model_output" in text


def test_unknown_strategy_name_lists_the_known_names():
    text = problems(with_(plan={"cache": {"name": "tea-cache"}}))
    assert "plan.cache.name" in text and "'tea-cache'" in text and "none" in text


def test_unknown_section_field_lists_the_allowed_fields():
    text = problems(with_(limits={"max_stepz": 3}))
    assert "limits.max_stepz: unknown field" in text and "max_steps" in text and "max_batch" in text


def test_enum_field_names_the_allowed_values():
    text = problems({"model": {"name": "m", "path": "p", "family": "sdxl"}})
    assert "model.family" in text and "'dit'" in text and "'flux'" in text and "'unet'" in text


def test_bounds_are_enforced_and_named():
    text = problems(with_(limits={"max_steps": 0, "timeout_s": -1}))
    assert "limits.max_steps: Input should be greater than or equal to 1" in text
    assert "limits.timeout_s" in text


def test_every_field_of_every_section_is_documented():
    from ditserve.config import AccelPlan, ApproxCache, ModelSpec, ResumeLevel, ServeLimits

    for section in (ModelSpec, AccelPlan, ApproxCache, ResumeLevel, ServeLimits):
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no docstring"


def test_relative_model_path_resolves_against_the_yaml_folder(tmp_path):
    (tmp_path / "weights").mkdir()
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "m", "path": "weights"}}))
    assert load_config(path).resolved_path() == str((tmp_path / "weights").resolve())


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown built-in config"):
        load_config("builtin:nope")


def test_config_is_frozen():
    config = parse_config(BASE)
    with pytest.raises(Exception):  # noqa: B017 — pydantic raises its own ValidationError subclass
        config.plan.sampler.steps = 3
