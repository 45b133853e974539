"""The multi-process executor: ranks hold the model and run every request; this process only checks and forwards.

The serving process keeps what validating a request needs (the adapter, the limits, the plan, the labels
and shapes of the model) on a model loaded onto the `meta` device: every module and config is there, no
weight is (`weightless`). Only the decoder is loaded for real where the model has one, because progress
previews are decoded where they are streamed. Requests go one way: validated here, sent to rank 0 through
a `RankChannel`, computed by the ranks' own engines (`ranks.py`), results back. Nothing here calls into a
rank's engine, and nothing in a rank calls back here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ditserve.config import ModelConfig
from ditserve.engine import Engine, Front, load_model
from ditserve.models.base import LoadedModel
from ditserve.parallel.launcher import RankChannel, SpawnedRanks
from ditserve.registry import PARALLEL
from ditserve.request import GenerationRequest, GenerationResult


def weightless(config: ModelConfig) -> LoadedModel:
    """The model of `config` with every parameter on `meta` (shapes, configs, labels, tokenizers; no weights),
    except a VAE, which is loaded for real to decode previews."""
    model = load_model(config, torch.device("meta"))
    vae = model.components.get("vae")
    if vae is not None and (model.path / "vae").is_dir():
        vae = type(vae).from_pretrained(model.path, subfolder="vae", torch_dtype=model.dtype).eval()
        model.components["vae"] = vae
        if "pipeline" in model.components:
            model.components["pipeline"].vae = vae
    return model


@dataclass
class BlockTally:
    """Transformer blocks the ranks computed, summed from the results (what `Engine.block_counter` counts)."""

    count: int = 0


class RankExecutor(Front):
    """Serves one model with a multi-process plan: validates here, runs on the ranks."""

    def __init__(self, config: ModelConfig, channel: RankChannel | None = None, model: LoadedModel | None = None):
        super().__init__(config, model if model is not None else weightless(config))
        self.block_counter = BlockTally()
        self.ranks = channel if channel is not None else SpawnedRanks(config)

    def generate_batch(
        self, requests: list[GenerationRequest], on_progress=None, cancel=None, deadline=None
    ) -> list[GenerationResult]:
        """Run compatible requests as one batch on the ranks, as `Engine.generate_batch` does in one process."""
        jobs = [self.validate(request) for request in requests]
        if len({job.batch_key for job in jobs}) != 1:
            raise ValueError("generate_batch needs requests with the same steps, size, guidance and sampler")
        results = self.ranks.run(requests, on_progress, cancel, deadline)
        replicas = {id(result.stats): result.stats for result in results}  # one stats object per replica's batch
        self.block_counter.count += sum(stats.block_evaluations for stats in replicas.values())
        return results

    def describe(self) -> dict:
        """`Front.describe`, plus what runs on the ranks' device, as `Engine.describe` says it: rank 0's engine
        reports it when it starts (the paths a quantizer picks depend on the device, which this process lacks)."""
        return super().describe() | {"runs": self.ranks.runs}

    @property
    def alive(self) -> bool:
        return self.ranks.alive

    def close(self) -> None:
        self.ranks.close()


def open_executor(config: ModelConfig) -> Front:
    """The executor for `config`'s plan: the local `Engine`, or a `RankExecutor` over spawned ranks."""
    runner = PARALLEL.get(config.plan.parallel.name)(config.plan.parallel)
    return Engine(config) if runner.world_size == 1 else RankExecutor(config)
