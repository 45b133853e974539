"""The rank side of the runner tests: every spawned rank runs this with the same scenario list.

One set of spawned ranks serves every scenario (spawning and importing torch costs ~20 s a rank on
this machine), each scenario building its own process groups over the first `world_size` ranks and
installing its runner on engines loaded once per rank, then undoing it. Rank 0 runs each request
single-process first (the reference) and records, per scenario, the largest absolute difference and
the PSNR of the parallel images against it, the bytes each rank sent in the first run, and how far a
second run of the same request (after the runner's `reset`) strays from the first.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def installed(parallel: dict, engine) -> Iterator[tuple]:
    """The runner the `parallel` plan section names, installed on `engine`'s model over process groups of the
    first `world_size` ranks, removed when the block ends. Yields (runner, comm): `comm` counts the bytes this
    rank sends, None on a rank outside the runner's groups (every rank enters: creating groups is collective)."""
    from ditserve.parallel.comm import Comm
    from ditserve.parallel.distributed import Placement
    from ditserve.parallel.groups import build_groups
    from ditserve.registry import PARALLEL

    config = PARALLEL.parse(parallel, "parallel")
    runner = PARALLEL.get(config.name)(config)
    groups = build_groups(runner.degrees, list(range(runner.world_size)))
    if groups is None:
        yield runner, None
        return
    comm = Comm()
    runner.check(engine.model, engine.config.plan)
    runner.apply(engine.model, Placement(groups, comm))
    try:
        yield runner, comm
    finally:
        runner.remove()


def run(rank: int, world_size: int, rendezvous: str, spec_file: str, out_file: str) -> None:
    import torch
    import torch.distributed as dist

    from ditserve.config import parse_config
    from ditserve.engine import Engine
    from ditserve.parallel.groups import init_loopback
    from ditserve.quality.metrics import psnr
    from ditserve.request import GenerationRequest

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_file).read_text())
    init_loopback(rank, world_size, rendezvous, timeout_s=300)
    engines: dict = {}

    def engine(key: str) -> Engine:
        if key not in engines:
            model, plan = spec["engines"][key]
            engines[key] = Engine(parse_config({"model": model, "plan": plan}))
        return engines[key]

    results, produced, references = {}, {}, {}
    for scenario in spec["scenarios"]:
        name = scenario["id"]
        request = GenerationRequest(**scenario["request"])
        served = engine(scenario["engine"])
        key = json.dumps([scenario["engine"], scenario["request"]], sort_keys=True)
        if rank == 0 and key not in references:
            references[key] = served.generate(request).images
        reference = references.get(key)
        started = time.perf_counter()
        record = {}
        with installed(scenario["parallel"], served) as (runner, comm):
            if comm is not None:
                try:
                    runner.reset()
                    images = served.generate(request).images
                    record["bytes"] = comm.bytes_sent
                    runner.reset()  # the runner's state of the first request must not reach the second
                    again = served.generate(request).images
                    record["repeat_diff"] = (again - images).abs().max().item()
                except Exception:
                    record["error"] = traceback.format_exc()
                    images = None
        sent = [None] * world_size if rank == 0 else None
        dist.gather_object(record, sent, dst=0)
        if rank == 0:
            summary = {"bytes": [r.get("bytes") for r in sent], "errors": [r["error"] for r in sent if "error" in r]}
            summary["repeat_diff"] = max((r["repeat_diff"] for r in sent if "repeat_diff" in r), default=None)
            if images is not None:
                summary["max_abs_err"] = (images - reference).abs().max().item()
                summary["psnr"] = psnr(images * 2 - 1, reference * 2 - 1).min().item()
            summary["seconds"] = time.perf_counter() - started
            results[name] = summary
        if rank == 0 and images is not None:
            produced[name] = images
    if "diffusers" in spec:
        results["diffusers"] = diffusers_ulysses(rank, spec["diffusers"], engine, produced, GenerationRequest)
    if rank == 0:
        Path(out_file).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def diffusers_ulysses(rank, spec, engine, produced, GenerationRequest) -> dict:
    """diffusers' own Ulysses (`enable_parallelism`) on the same request, against ours and the reference.

    A MOCK, named: `torch.accelerator.device_count` is made to return 1, because diffusers divides the
    rank by it to pick a device and CPUs count 0 accelerators. Ranks {0, 1} and {2, 3} form two
    Ulysses groups of 2 in a (2, ring 1, ulysses 2) mesh, each computing the whole request. This
    changes the engine's transformer for good, so it runs after every other scenario.
    """
    import torch
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    torch.accelerator.device_count = lambda: 1
    served = engine(spec["engine"])
    mesh = init_device_mesh("cpu", (2, 1, 2), mesh_dim_names=("replica", "ring", "ulysses"))
    served.model.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2, mesh=mesh))
    images = served.generate(GenerationRequest(**spec["request"])).images
    if rank != 0:
        return {}
    return {"max_abs_err_vs_ours": (images - produced[spec["ours"]]).abs().max().item()}
