"""The multi-process executor: it spawns its ranks, validates in the serving process (which holds no
transformer weights), serves requests through rank 0, and turns a killed or hung rank into a fast
failure and a not-alive executor. Real spawned processes on gloo, the tiny DiT."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from ditserve_testing import engine_for

from ditserve.config import parse_config
from ditserve.errors import Cancelled, PlanError, RequestError
from ditserve.parallel.executor import RankExecutor, open_executor
from ditserve.parallel.launcher import RankFailure
from ditserve.request import GenerationRequest

TIMEOUT_S = 10.0
START_S = 900.0  # the ranks import torch and diffusers: minutes on a loaded 2-core machine
REQUEST = GenerationRequest(class_label=3, steps=5, seed=11, num_images=2, guidance_scale=3.0)


def executor_for(path, parallel: dict) -> RankExecutor:
    config = {"name": "tiny", "path": str(path), "family": "dit"}
    plan = {"sampler": {"name": "ddim", "steps": 5}, "parallel": {"start_timeout_s": START_S, **parallel}}
    executor = open_executor(parse_config({"model": config, "plan": plan}))
    assert isinstance(executor, RankExecutor)
    return executor


@pytest.fixture(scope="module")
def single(tiny_dit_dir):
    return engine_for(tiny_dit_dir, sampler={"name": "ddim", "steps": 5})


def signal_at_step_two(pid: int, sig: signal.Signals):
    """A progress listener that sends `sig` to `pid` at step 2, once, and the list it appends that moment to."""
    sent: list[float] = []

    def listener(event) -> None:
        if event.step == 2 and not sent:
            os.kill(pid, sig)
            sent.append(time.monotonic())

    return listener, sent


def running(path, parallel: dict):
    """A module fixture's body: the executor for `parallel`, closed after the module."""
    executor = executor_for(path, {**parallel, "timeout_s": TIMEOUT_S})
    yield executor
    executor.close()


@pytest.fixture(scope="module")
def ranked(tiny_dit_dir):
    yield from running(tiny_dit_dir, {"name": "ulysses", "ulysses": 2})


def test_the_ranks_answer_like_the_single_process_engine_with_progress(ranked, single):
    events = []
    result = ranked.generate(REQUEST, on_progress=events.append)
    expected = single.generate(REQUEST)
    assert torch.allclose(result.images, expected.images, atol=1e-4, rtol=0)
    assert result.seeds == expected.seeds
    assert [event.step for event in events] == [1, 2, 3, 4, 5]
    assert result.stats.steps == 5 and ranked.alive
    assert ranked.block_counter.count == result.stats.block_evaluations > 0


def test_the_serving_process_holds_no_transformer_weights(ranked, single):
    """The front validates on a model whose every parameter is on `meta`: the ranks hold the only copies."""
    front = ranked.model.transformer
    real = sum(p.numel() for p in front.parameters() if p.device.type != "meta")
    assert real == 0
    assert sum(p.numel() for p in front.parameters()) == sum(p.numel() for p in single.model.transformer.parameters())


def test_the_executor_describes_what_runs_as_the_engine_does(ranked, single):
    """`runs` (compiled mode, the quantizer's path) is what rank 0's engine reported, keyed as the engine's."""
    assert ranked.describe()["runs"] == single.describe()["runs"] == {"compile": "none", "quant": "none"}
    assert ranked.describe().keys() == single.describe().keys()


def test_an_engine_refuses_a_multi_process_plan(tiny_dit_dir):
    with pytest.raises(PlanError, match="runs on 2 ranks: serve it through the multi-process executor"):
        engine_for(tiny_dit_dir, parallel={"name": "ulysses", "ulysses": 2})


def test_a_cancelled_request_stops_every_rank_and_the_next_one_runs(ranked, single):
    cancel = threading.Event()

    def cancel_after_two(event):
        if event.step == 2:
            cancel.set()

    with pytest.raises(Cancelled) as stopped:
        ranked.generate(
            GenerationRequest(class_label=3, steps=100, seed=1), on_progress=cancel_after_two, cancel=cancel
        )
    assert 2 <= stopped.value.steps_done < 100
    assert torch.allclose(ranked.generate(REQUEST).images, single.generate(REQUEST).images, atol=1e-4, rtol=0)


def test_a_bad_size_is_refused_before_the_ranks_see_it(ranked):
    with pytest.raises(RequestError, match="sequence shards cannot split"):
        ranked.validate(GenerationRequest(class_label=1, steps=2, height=6, width=6))
    with pytest.raises(RequestError):
        ranked.generate(GenerationRequest(class_label=1, steps=2, height=10, width=10))
    assert ranked.alive


def test_a_killed_rank_fails_the_request_fast_and_the_executor_is_not_alive(ranked):
    """Last on this executor: it takes it down."""
    victim = ranked.ranks.pids[1]
    kill_at_step_two, killed_at = signal_at_step_two(victim, signal.SIGKILL)
    long = GenerationRequest(class_label=3, steps=200, seed=1)
    with pytest.raises(RankFailure, match=f"rank 1 \\(pid {victim}\\) exited with signal SIGKILL"):
        ranked.generate(long, on_progress=kill_at_step_two)
    assert time.monotonic() - killed_at[0] < TIMEOUT_S
    assert not ranked.alive
    started = time.monotonic()
    with pytest.raises(RankFailure, match="restart the service"):
        ranked.generate(REQUEST)
    assert time.monotonic() - started < 1.0


@pytest.fixture(scope="module")
def replicas(tiny_dit_dir):
    yield from running(tiny_dit_dir, {"name": "data", "dp": 2})


def test_data_parallel_replicas_share_a_batch_and_answer_like_one_process(replicas, single):
    requests = [GenerationRequest(class_label=label, steps=5, seed=label, guidance_scale=3.0) for label in (1, 2, 3)]
    results = replicas.generate_batch(requests)
    for request, result in zip(requests, results, strict=True):
        assert torch.allclose(result.images, single.generate(request).images, atol=1e-4, rtol=0)
    # replica 0 ran requests 0 and 2 as one batch, replica 1 request 1: one process would run all 3 together
    assert [result.stats.batch_size for result in results] == [2, 1, 2]


def test_a_hung_rank_fails_the_request_after_the_collective_timeout(replicas):
    """Last on this executor: it takes it down. Rank 1 (replica 1) stops mid-request (SIGSTOP, a real hang);
    rank 0 finishes its share and waits for rank 1's results until the collective timeout."""
    stop_at_step_two, stopped = signal_at_step_two(replicas.ranks.pids[1], signal.SIGSTOP)
    requests = [GenerationRequest(class_label=label, steps=200, seed=label) for label in (1, 2)]
    with pytest.raises(RankFailure, match="a rank hangs|[Tt]imed? ?out"):
        replicas.generate_batch(requests, on_progress=stop_at_step_two)
    assert time.monotonic() - stopped[0] < 3 * TIMEOUT_S
    assert not replicas.alive
