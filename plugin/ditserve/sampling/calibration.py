"""`ditserve calibrate --sampler NAME`: measure what a sampler needs on a model and write it into the YAML.

Samplers that need calibration (`needs_calibration`: DPM-Solver-v3's statistics, DC-Solver's
compensation ratios) observe fixed-seed requests run through the engine (as many as the sampler's
`calibration_samples` unless `--samples` says): the requests every calibration uses
(`caching.calibration.calibration_requests`: a text model's own example prompts); with `--auto-steps`,
any sampler gets the fewest steps that reach a PSNR target against its full-step output. The fields
found go into the YAML's `plan.sampler`, which then names that sampler (its other fields kept when it
already did), the same way `ditserve calibrate --cache` fills `plan.cache`.
"""

from __future__ import annotations

from typing import Any

import yaml

from ditserve.config import load_config
from ditserve.errors import PlanError
from ditserve.registry import SAMPLERS

DEFAULT_SAMPLES = 8
"""Calibration requests of a sampler that names no `calibration_samples` of its own (DC-Solver)."""


def run_sampler(engine, sampler, samples: int, steps: int | None = None):
    """Run the calibration requests through `engine` as one batch with `sampler` in place of the plan's."""
    from ditserve.caching.calibration import calibration_requests

    requests = [r.model_copy(update={"steps": steps}) for r in calibration_requests(engine, samples)]
    planned = engine.sampler
    engine.sampler = sampler
    try:
        return engine.generate_batch(requests)
    finally:
        engine.sampler = planned


def calibrate(config: str, sampler: str, samples: int | None, auto_steps: float | None = None) -> dict[str, Any]:
    """Calibrate `sampler` on the model of `config` (or find its fewest steps for PSNR `auto_steps`) on
    `samples` requests (None: the sampler's `calibration_samples`), write the fields into that YAML's
    plan.sampler and return them."""
    from ditserve.caching.calibration import config_file
    from ditserve.engine import Engine

    cls = SAMPLERS.get(sampler)
    if auto_steps is None and not getattr(cls, "needs_calibration", False):
        calibrated = ", ".join(name for name, c in SAMPLERS if getattr(c, "needs_calibration", False))
        raise PlanError(
            f"sampler {sampler!r} needs no calibration (calibrated ones: {calibrated}); "
            "`--auto-steps PSNR` finds the fewest steps for any sampler"
        )
    if samples is None:
        samples = getattr(cls, "calibration_samples", DEFAULT_SAMPLES)
    path = config_file(config)
    data = yaml.safe_load(path.read_text())
    section = data.setdefault("plan", {}).get("sampler") or {}
    if isinstance(section, str):
        section = {"name": section}
    settings = {k: v for k, v in section.items() if k != "name"} if section.get("name") == sampler else {}
    loaded = load_config(config)
    # the plan may name this very sampler, still uncalibrated: load the model with the checkpoint's scheduler
    plan = loaded.plan.model_copy(update={"sampler": SAMPLERS.parse({"name": "none"}, "plan.sampler")})
    engine = Engine(loaded.model_copy(update={"plan": plan}))
    if auto_steps is not None:
        from ditserve.sampling.auto_steps import fewest_steps

        fields = {"steps": fewest_steps(engine, {"name": sampler, **settings}, auto_steps, samples)}
    else:
        fields = cls.calibrate(engine, samples, settings, path.resolve().parent)
    section = {"name": sampler, **settings, **fields}
    SAMPLERS.get(sampler)(SAMPLERS.parse(section, "plan.sampler"), engine.model.scheduler_config)  # must load
    data["plan"]["sampler"] = section
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return fields
