"""The base of every multi-process runner: its degrees, what it checks at load, what it installs in each rank.

A runner's config gives the degrees of its layout (see `groups.py`); the engine that loads it starts the
ranks (`launcher.RankPool`), each of which loads the model and calls `install` with its process groups.
`install` shards the sequence (when sp > 1, with the runner's `attention`) and splits the guidance
batch (when cfg > 1); what it returns is reset before every request and removed to undo it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ditserve.errors import PlanError, RequestError
from ditserve.parallel.base import ParallelConfig, ParallelRunner
from ditserve.parallel.groups import Degrees, check_degrees

if TYPE_CHECKING:
    from ditserve.models.base import LoadedModel
    from ditserve.parallel.comm import Comm
    from ditserve.parallel.groups import ProcessGroups
    from ditserve.parallel.sequence import CoreAttention


class DistributedConfig(ParallelConfig):
    """Fields every multi-process runner shares."""

    cfg: int = Field(1, ge=1, le=2)
    """2 puts the conditional and unconditional guidance branches on different ranks (needs guidance > 1
    to save work; without guidance both ranks compute the same batch)."""
    dp: int = Field(1, ge=1, le=64)
    """Data parallelism: compatible requests batched together are spread over this many rank groups."""
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    """Longest a collective, or a step with no progress, may wait before the request fails and the runner
    is declared dead (rank lost or hung)."""
    start_timeout_s: float = Field(300.0, gt=0.0, le=3600.0)
    """Longest the ranks may take to start and load the model."""
    threads: int = Field(1, ge=1, le=256)
    """torch CPU threads per rank."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """`auto`: NCCL when the model runs on CUDA, gloo on CPU."""

    def degrees(self) -> Degrees:
        return Degrees(ulysses=getattr(self, "ulysses", 1), ring=getattr(self, "ring", 1), cfg=self.cfg, dp=self.dp)


@dataclass
class Installed:
    """What `install` changed in one rank; `reset` before each request, `remove` to undo."""

    undo: list = field(default_factory=list)
    resets: list = field(default_factory=list)

    def reset(self) -> None:
        for reset in self.resets:
            reset()

    def remove(self) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()


def sequence_lengths(model: LoadedModel, height: int, width: int) -> tuple[int, int]:
    """(image tokens, text tokens cut with them) of one transformer call at this image size."""
    from ditserve.models.text import call_default

    latent = model.adapter.latent_shape(model, height, width)
    if model.adapter.family == "flux":
        pipe = model.components["pipeline"]
        return (latent[-2] // 2) * (latent[-1] // 2), call_default(pipe, "max_sequence_length")
    patch = model.transformer.config.patch_size
    return (latent[-2] // patch) * (latent[-1] // patch), 0


class DistributedRunner(ParallelRunner):
    """A runner over torch.distributed ranks; subclasses choose the sequence-parallel attention."""

    Config = DistributedConfig
    pool = None

    @property
    def degrees(self) -> Degrees:
        return self.config.degrees()

    @property
    def world_size(self) -> int:
        return self.degrees.world_size

    def check(self, model: LoadedModel) -> None:
        """Refuse, at load, degrees the model cannot take (heads, sequence length, family)."""
        degrees = self.degrees
        if degrees.sp == 1:
            return
        from ditserve.parallel.sequence import FAMILY_PLANS, self_attentions

        family = model.adapter.family
        if family not in FAMILY_PLANS and not getattr(type(model.transformer), "_cp_plan", None):
            raise PlanError(
                f"runner {self.name!r} cannot shard the sequence of family {family!r} (no context-parallel plan); "
                "use `cfg` or `dp` parallelism for it"
            )
        tokens, text = sequence_lengths(model, *model.adapter.default_size(model))
        check_degrees(degrees, heads=[attn.heads for attn in self_attentions(model)], tokens=tokens, text_tokens=text)

    def check_size(self, model: LoadedModel, height: int, width: int) -> None:
        """Refuse a request size whose token count the sequence-parallel degree does not divide."""
        sp = self.degrees.sp
        if sp == 1:
            return
        tokens, _ = sequence_lengths(model, height, width)
        if tokens % sp:
            raise RequestError(
                "height", f"{height}x{width} makes {tokens} tokens, which {sp} sequence shards cannot split evenly"
            )

    def attention(self, groups: ProcessGroups, comm: Comm) -> CoreAttention | None:
        """The distributed self-attention over the sp group (None: this runner shards no sequence)."""
        return None

    def install(self, engine, groups: ProcessGroups, comm: Comm) -> Installed:
        """Make this rank's engine compute its share of every denoising call."""
        from ditserve.parallel.cfg import split_guidance
        from ditserve.parallel.sequence import shard_sequence

        installed = Installed()
        attention = self.attention(groups, comm)
        if attention is not None:
            sharding = shard_sequence(engine.model, groups.sp, comm, attention)
            installed.undo.append(sharding.remove)
            if hasattr(attention, "reset"):
                installed.resets.append(attention.reset)
        if groups.cfg.size > 1:
            installed.undo.append(split_guidance(engine, groups.cfg, comm))
        return installed

    # -- serving: the engine drives the ranks through these ------------------------------------

    def start(self, config) -> None:
        """Spawn the ranks for the engine's `config` and wait until every one has loaded the model."""
        from ditserve.parallel.launcher import RankPool

        self.pool = RankPool(self, config)

    def generate_batch(self, engine, requests, on_progress, cancel, deadline):
        jobs = [engine.validate(request) for request in requests]
        if len({job.batch_key for job in jobs}) != 1:
            raise ValueError("generate_batch needs requests with the same steps, size, guidance and sampler")
        for job in jobs:
            self.check_size(engine.model, job.height, job.width)
        return self.pool.generate_batch(requests, [job.guidance for job in jobs], on_progress, cancel, deadline)

    @property
    def alive(self) -> bool:
        return self.pool is not None and self.pool.alive

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
