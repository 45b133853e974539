"""The one calibration path: requests, a recorder on the engine, a fit, the YAML written back.

`ditserve calibrate --cache|--sampler|--quant NAME --config X` loads the model with the strategy under
calibration switched off (`calibration_engine`), runs fixed-seed calibration requests through the
engine while a strategy's `Recorder` observes (`record`), lets the strategy fit its fields from what
was recorded, and writes them into the YAML's plan section (`write_plan_section`), which then names
that strategy (its other fields kept when it already did). The rest of the file is rewritten as
parsed (comments are lost).

A strategy supplies only what it records (a `Recorder`: hooks it attaches to the model, and/or a
sampler that runs the loop in the plan sampler's place) and how it fits the result; the requests,
the loop, the conditioning and guidance are the engine's, so a calibration sees the model exactly as
serving runs it. The contract per registry:

- sampler and cache: a classmethod `calibrate(engine, samples, settings, directory) -> fields` that calls
  `record(engine, recorder, samples)` (a sampler with a `SamplerRecorder`; a cache with a recorder that
  applies a recording cache in `attach`, runs `one_at_a_time` and resets it in `start_request`), fits, and
  writes any file it needs into `directory` (the YAML's folder);
- quantizer: a method `calibrate(engine) -> tensors`, on `quantizer_engine` (unquantized, uncached); the
  tensors are stored as safetensors and named in `plan.quant.calibration`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ditserve.config import BUILTIN_PREFIX, ModelConfig, parse_config
from ditserve.registry import REGISTRIES

if TYPE_CHECKING:
    from ditserve.engine import Engine
    from ditserve.models.base import LoadedModel
    from ditserve.request import GenerationRequest, GenerationResult
    from ditserve.sampling.base import Sampler

EXAMPLE_PROMPTS_FILE = "example_prompts.json"
"""A checkpoint's own prompts (a JSON list), in the order calibration cycles through them."""
STOCK_PROMPTS = ("a photo of a cat", "a mountain lake at dawn", "a red bicycle", "an old city street")
FIRST_SEED = 1000
"""Calibration request k uses seed FIRST_SEED + k: every calibration of a model sees the same noise."""


def calibration_requests(
    engine: Engine, samples: int, steps: int | None = None, first_seed: int = FIRST_SEED
) -> list[GenerationRequest]:
    """`samples` requests with fixed seeds, for every calibration: every class in turn for class models;
    for text models the prompts the checkpoint ships in `example_prompts.json` (digits-flow: its training
    prompts, every digit in turn), else stock prompts. Statistics of a model on prompts it never saw do
    not describe how it samples: DPM-Solver-v3 calibrated on the stock prompts reached 16 dB on
    digits-flow at 5 steps, on its own prompts 26.5 dB (sampling/dpm_solver_v3.py). `first_seed` moves the
    seeds, for a check on noise the calibration never saw (`ditserve tune`'s held-back seeds)."""
    from ditserve.request import GenerationRequest

    if engine.adapter.conditioning == "class":
        labels = sorted(engine.model.id2label) or list(range(10))
        subjects = [{"class_label": labels[k % len(labels)]} for k in range(samples)]
    else:
        path = engine.model.path / EXAMPLE_PROMPTS_FILE
        prompts = json.loads(path.read_text()) if path.is_file() else STOCK_PROMPTS
        subjects = [{"prompt": prompts[k % len(prompts)]} for k in range(samples)]
    return [  # every run from its own noise, whatever the plan's cross-request cache (ditserve/nirvana.py)
        GenerationRequest(**subject, seed=first_seed + k, steps=steps, approx_cache=False)
        for k, subject in enumerate(subjects)
    ]


class Recorder:
    """What a strategy's calibration observes while the engine runs the calibration requests.

    A recorder attaches hooks to the model (`attach`/`detach`), and/or offers a `sampler` that runs the
    denoising loop in the plan sampler's place (a sampler's calibration records its trajectories there).
    With `one_at_a_time`, the requests run one by one and `start_request` marks each boundary (a cache's
    recorder keeps per-request state); otherwise they run as one batch."""

    sampler: Sampler | None = None
    """Runs the loop instead of the plan's sampler (under the engine's lock), or None for the plan's."""
    one_at_a_time: bool = False
    """Run the requests one by one (calling `start_request` before each) rather than as one batch."""

    def attach(self, engine: Engine) -> None:
        """Install what observes the model (hooks), before the first request."""

    def detach(self) -> None:
        """Remove what `attach` installed, after the last request (also after a failure)."""

    def start_request(self) -> None:
        """Called before each request when `one_at_a_time`."""


def record(engine: Engine, recorder: Recorder, samples: int, steps: int | None = None) -> list[GenerationResult]:
    """Run `samples` calibration requests (at `steps`, default the plan's) through `engine` while
    `recorder` observes; return the results."""
    requests = calibration_requests(engine, samples, steps)
    recorder.attach(engine)
    try:
        if not recorder.one_at_a_time:
            return engine.generate_batch(requests, sampler=recorder.sampler)
        results = []
        for request in requests:
            recorder.start_request()
            results += engine.generate_batch([request], sampler=recorder.sampler)
        return results
    finally:
        recorder.detach()


# -- the model a calibration observes --------------------------------------------------------------


def calibration_engine(config: ModelConfig, section: str) -> Engine:
    """The model of `config` in one process with its plan's `section` strategy set to `none` (a sampler's
    calibration then runs on the checkpoint's own scheduler) and no LoRA adapters: what a cache's or a
    sampler's calibration observes. A quantizer's observes `quantizer_engine`."""
    from ditserve.engine import Engine

    update = {section: REGISTRIES[section].parse({"name": "none"}, f"plan.{section}")}
    update["parallel"] = REGISTRIES["parallel"].parse({"name": "none"}, "plan.parallel")
    plan = config.plan.model_copy(update=update)
    return Engine(config.model_copy(update={"plan": plan}), loras=False)


def quantizer_engine(model: LoadedModel | ModelConfig) -> Engine:
    """The unquantized, uncached model without LoRA adapters (its layer names are the ones a quantizer replaces)
    that a quantizer's calibration observes, on the checkpoint's own scheduler at the default guidance: the same
    for `ditserve calibrate --quant` (given the model config) and for a calibration at load (given the model
    being loaded, whose checkpoint it loads once more), so a stored calibration and one made at load are the same."""
    from ditserve.engine import Engine

    if isinstance(model, ModelConfig):
        spec = model.model
        source = {"name": spec.name, "path": model.resolved_path(), "family": spec.family, "dtype": spec.dtype}
        source["device"] = spec.device
    else:
        source = {"name": "calibration", "path": str(model.path), "family": model.adapter.family}
        source |= {"dtype": str(model.dtype).removeprefix("torch."), "device": model.device.type}
    return Engine(parse_config({"model": source, "plan": {"sampler": {"name": "none"}}}), loras=False)


# -- the YAML --------------------------------------------------------------------------------------


def config_file(config: str) -> Path:
    """The YAML file behind a config argument (`builtin:<name>` is the shipped file in the package)."""
    if config.startswith(BUILTIN_PREFIX):
        return Path(__file__).parent / "configs" / f"{config[len(BUILTIN_PREFIX) :]}.yaml"
    return Path(config)


def plan_section(config: str, section: str) -> dict[str, Any]:
    """The YAML's `plan.<section>` mapping as written (a bare name becomes `{name: ...}`)."""
    data = yaml.safe_load(config_file(config).read_text())
    found = (data.get("plan") or {}).get(section) or {}
    return {"name": found} if isinstance(found, str) else dict(found)


def settings_in_yaml(config: str, section: str, name: str) -> dict[str, Any]:
    """The fields the YAML already gives strategy `name` in `plan.<section>` (none if it names another)."""
    found = plan_section(config, section)
    return {k: v for k, v in found.items() if k != "name"} if found.get("name") == name else {}


def write_plan_section(config: str, section: str, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Write `fields` into the YAML's `plan.<section>` for strategy `name`, keeping the fields it already
    gave that strategy; the section must validate before anything is written. Returns the section."""
    path = config_file(config)
    data = yaml.safe_load(path.read_text())
    written = {"name": name, **settings_in_yaml(config, section, name), **fields}
    REGISTRIES[section].parse(written, f"plan.{section}")  # what is written must load
    data.setdefault("plan", {})[section] = written
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return written


class SamplerRecorder(Recorder):
    """A sampler's recorder: its own sampler runs the loop and keeps what it saw (trajectories, ratios)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler


# -- the command -----------------------------------------------------------------------------------

DEFAULT_SAMPLES = 8
"""Calibration requests when neither `--samples` nor the strategy (`calibration_samples`) says."""


def calibrate(config: str, section: str, name: str, samples: int | None, out: str | None = None) -> dict[str, Any]:
    """`ditserve calibrate`: calibrate strategy `name` of `plan.<section>` on the model of `config` with
    `samples` requests, write its fields into that YAML's plan and return them. A quantizer's statistics
    go to a safetensors file (`out`, default beside the YAML) that the written `calibration` field names."""
    from ditserve.config import load_config
    from ditserve.errors import PlanError

    registry = REGISTRIES[section]
    cls = registry.get(name)
    if not getattr(cls, "needs_calibration", False):
        calibrated = ", ".join(n for n, c in registry if getattr(c, "needs_calibration", False))
        hint = "; `--auto-steps PSNR` finds the fewest steps for any sampler" if section == "sampler" else ""
        raise PlanError(f"{registry.kind} {name!r} needs no calibration; calibrated ones: {calibrated}{hint}")
    loaded = load_config(config)
    directory = config_file(config).resolve().parent
    settings = settings_in_yaml(config, section, name)
    if section == "quant":
        fields = calibrate_quantizer(
            loaded, cls, settings, samples, out or directory / f"{loaded.model.name}-{name}.safetensors"
        )
    else:
        samples = samples if samples is not None else getattr(cls, "calibration_samples", DEFAULT_SAMPLES)
        fields = cls.calibrate(calibration_engine(loaded, section), samples, settings, directory)
    write_plan_section(config, section, name, fields)
    return fields


def calibrate_quantizer(
    config: ModelConfig, cls: type, settings: dict[str, Any], samples: int | None, out
) -> dict[str, Any]:
    """Run quantizer `cls`'s calibration (its fields from `settings`, `samples` on top) and store the
    statistics as safetensors at `out`; the plan field that names them."""
    from safetensors.torch import save_file

    from ditserve.registry import QUANTIZERS

    fields = {k: v for k, v in settings.items() if k != "calibration"}
    if samples is not None:
        fields["calibration_samples"] = samples
    quantizer = cls(QUANTIZERS.parse({"name": cls.name, **fields}, "plan.quant"))
    statistics = quantizer.calibrate(quantizer_engine(config))
    path = Path(out).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: t.detach().cpu().contiguous() for key, t in statistics.items()}, str(path))
    return {**fields, "calibration": str(path)}
