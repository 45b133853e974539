"""The one calibration path (`ditserve/calibrate.py`): fixed requests, recorders on the engine, the YAML written."""

from __future__ import annotations

import threading

import pytest
import torch
import yaml
from ditserve_testing import engine_for

from ditserve.calibrate import Recorder, SamplerRecorder, calibration_requests, record, write_plan_section
from ditserve.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


class CallCounter(Recorder):
    """Counts transformer calls per request through a forward hook (what a cache's recorder does, in small)."""

    one_at_a_time = True

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.handle = None

    def attach(self, engine) -> None:
        self.handle = engine.model.transformer.register_forward_hook(lambda *_: self.count())

    def count(self) -> None:
        self.calls[-1] += 1

    def start_request(self) -> None:
        self.calls.append(0)

    def detach(self) -> None:
        self.handle.remove()


def test_requests_cycle_through_the_classes_with_fixed_seeds(tiny_dit_dir):
    engine = engine_for(tiny_dit_dir)
    requests = calibration_requests(engine, 12, steps=3)
    assert [r.class_label for r in requests] == [*range(10), 0, 1]
    assert [r.seed for r in requests] == list(range(1000, 1012)) and {r.steps for r in requests} == {3}
    assert calibration_requests(engine, 12) == calibration_requests(engine, 12)  # every calibration sees the same


def test_a_recorder_observes_each_request_and_leaves_the_model_as_it_was(tiny_dit_dir):
    engine = engine_for(tiny_dit_dir)
    counter = CallCounter()
    results = record(engine, counter, 3, steps=4)
    assert counter.calls == [4, 4, 4] and len(results) == 3
    assert not engine.model.transformer._forward_hooks  # detached


def test_a_sampler_recorder_runs_the_loop_in_the_plan_samplers_place(tiny_dit_dir):
    """The recorder's sampler runs under the engine's lock for these requests only; the plan's stays in place."""
    engine = engine_for(tiny_dit_dir, sampler={"name": "ddim", "steps": 4})
    planned = engine.sampler
    ddpm = engine_for(tiny_dit_dir, sampler={"name": "ddpm", "steps": 4}).sampler
    recorded = record(engine, SamplerRecorder(ddpm), 2)
    assert engine.sampler is planned
    as_ddpm = engine_for(tiny_dit_dir, sampler={"name": "ddpm", "steps": 4}).generate_batch(
        calibration_requests(engine, 2)
    )
    assert all(torch.equal(a.images, b.images) for a, b in zip(recorded, as_ddpm, strict=True))


def test_the_yaml_keeps_the_strategys_other_fields_and_refuses_what_would_not_load(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "m", "path": "x"}, "plan": {"sampler": {"name": "ddim"}}}))
    write_plan_section(str(config), "sampler", "ddim", {"steps": 7})
    write_plan_section(str(config), "sampler", "ddim", {"eta": 0.5})
    assert yaml.safe_load(config.read_text())["plan"]["sampler"] == {"name": "ddim", "steps": 7, "eta": 0.5}
    with pytest.raises(ConfigError, match="steps"):
        write_plan_section(str(config), "sampler", "ddim", {"steps": 0})
    assert yaml.safe_load(config.read_text())["plan"]["sampler"]["steps"] == 7  # nothing written
    write_plan_section(str(config), "sampler", "ddpm", {"steps": 9})  # another strategy: its fields only
    assert yaml.safe_load(config.read_text())["plan"]["sampler"] == {"name": "ddpm", "steps": 9}


def test_a_request_served_during_a_sampler_calibration_keeps_the_plans_sampler(tiny_dit_dir):
    """The recorder's sampler belongs to the calibration's requests only: a request that arrives while it runs waits
    for the engine and then runs the plan's sampler (swapping `engine.sampler` would hand it the recorder)."""
    engine = engine_for(tiny_dit_dir, sampler={"name": "ddim", "steps": 4})
    request = calibration_requests(engine, 1)[0]
    expected = engine.generate(request).images
    ddpm = engine_for(tiny_dit_dir, sampler={"name": "ddpm", "steps": 4}).sampler
    started, served = threading.Event(), threading.Event()

    class Waiting(type(ddpm)):
        def sample(self, *args, **kwargs):
            started.set()
            served.wait(timeout=1.0)  # the other request is validated by now, and waits for the engine's lock
            return super().sample(*args, **kwargs)

    recorder = SamplerRecorder(Waiting(ddpm.config, engine.model.scheduler_config))
    calibration = threading.Thread(target=record, args=(engine, recorder, 1))
    calibration.start()
    assert started.wait(timeout=30)
    result: list = []
    other = threading.Thread(target=lambda: result.append(engine.generate(request).images))
    other.start()
    other.join(timeout=0.5)
    served.set()
    other.join(timeout=30)
    calibration.join(timeout=30)
    assert torch.equal(result[0], expected)
