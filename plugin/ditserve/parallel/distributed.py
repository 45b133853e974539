"""The base of every multi-process runner: its degrees, what it checks at load, what it installs in each rank.

Every runner config carries the five degrees of xDiT's layout (see `groups.py`): world = ulysses × ring ×
pipefusion × cfg × dp. A technique names the axes it drives (`AXES`); cfg and dp compose with every
technique, and a degree on another axis is refused at load with the numbers and the runner that has it.

In each rank the executor builds an `Engine` whose runner `apply`s its share of the work: the runner's
sequence-parallel attention over the sp group (when sp > 1), its own hooks (the staged runners), and the
CFG split over the cfg group (when cfg > 1). Data parallelism needs no hook: the executor gives each
replica its requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from ditserve.errors import PlanError, RequestError
from ditserve.parallel.base import ParallelConfig, ParallelRunner
from ditserve.parallel.groups import AXES, Degrees, check_degrees

if TYPE_CHECKING:
    from ditserve.models.base import LoadedModel
    from ditserve.parallel.comm import Comm
    from ditserve.parallel.groups import ProcessGroups
    from ditserve.parallel.sequence import AttentionFor

COMPOSING_AXES = ("cfg", "dp")
"""Axes every technique composes with: guidance branches and replicas never touch the model's sequence."""
SUGGESTION = {
    "ulysses": "for Ulysses with Ring use `usp`",
    "ring": "for Ring with Ulysses use `usp`",
    "pipefusion": "pipeline stages run under `pipefusion` or `asyncdiff` without sequence parallelism",
}
"""What to use instead of a degree a technique does not drive."""


class DistributedConfig(ParallelConfig):
    """Fields every multi-process runner shares: the five degrees and how the ranks run."""

    AXES: ClassVar[tuple[str, ...]] = ()
    """The axes this runner's technique drives, besides cfg and dp."""

    ulysses: int = Field(1, ge=1, le=64)
    """Ulysses sequence parallelism: ranks the sequence is sharded over, all-to-all to head shards."""
    ring: int = Field(1, ge=1, le=64)
    """Ring sequence parallelism: ranks whose key/value shards pass round a ring."""
    pipefusion: int = Field(1, ge=1, le=64)
    """Pipeline stages: ranks the transformer's blocks are cut over."""
    cfg: int = Field(1, ge=1, le=2)
    """2 puts the conditional and unconditional guidance branches on different ranks (saves work only with
    guidance > 1 or batches of an even number of images)."""
    dp: int = Field(1, ge=1, le=64)
    """Data parallelism: compatible requests batched together are spread over this many replicas."""
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    """Longest a collective, or a step with no progress, may wait before the request fails and the runner
    is declared dead (rank lost or hung)."""
    start_timeout_s: float = Field(300.0, gt=0.0, le=3600.0)
    """Longest the ranks may take to start and load the model."""
    threads: int = Field(1, ge=1, le=256)
    """torch CPU threads per rank."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """`auto`: NCCL when the model runs on CUDA, gloo on CPU."""

    @model_validator(mode="after")
    def _axes_compose(self):
        allowed = set(self.AXES) | set(COMPOSING_AXES)
        for axis in AXES:
            if getattr(self, axis) > 1 and axis not in allowed:
                sizes = " × ".join(f"{a} {getattr(self, a)}" for a in AXES if getattr(self, a) > 1)
                raise ValueError(
                    f"runner {self.name!r} does not compose with {axis} {getattr(self, axis)} (world {sizes} = "
                    f"{self.degrees().world_size}): it composes with cfg and dp only, besides "
                    f"{' and '.join(self.AXES) or 'its own degree'}; {SUGGESTION.get(axis, 'remove it')}"
                )
        if self.degrees().world_size < 2:
            raise ValueError(f"runner {self.name!r} needs at least 2 ranks; its degrees multiply to 1")
        return self

    def degrees(self) -> Degrees:
        return Degrees(**{axis: getattr(self, axis) for axis in AXES})


@dataclass
class Placement:
    """Where one rank sits: its process groups along every axis and the collectives it sends through."""

    groups: ProcessGroups
    comm: Comm


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
    """A runner over torch.distributed ranks; subclasses choose the sequence-parallel attention or hooks."""

    Config = DistributedConfig

    def __init__(self, config: DistributedConfig) -> None:
        super().__init__(config)
        self._applied: list = []  # (undo, reset) of what `apply` installed, by technique

    @property
    def degrees(self) -> Degrees:
        return self.config.degrees()

    @property
    def world_size(self) -> int:
        return self.degrees.world_size

    def check(self, model: LoadedModel, plan) -> None:
        """Refuse, at load, degrees the model cannot take (heads, sequence length, family)."""
        degrees = self.degrees
        if degrees.sp == 1:
            return
        from ditserve.parallel.sequence import FAMILY_PLANS, check_routable, self_attentions

        family = model.adapter.family
        if family not in FAMILY_PLANS and not getattr(type(model.transformer), "_cp_plan", None):
            raise PlanError(
                f"runner {self.name!r} cannot shard the sequence of family {family!r} (no context-parallel plan); "
                "use `cfg` or `data` parallelism for it"
            )
        check_routable(model)
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

    def attention(self, groups: ProcessGroups, comm: Comm, model: LoadedModel) -> AttentionFor | None:
        """Each self-attention's distributed attention over the sp group (None: this runner shards no sequence)."""
        return None

    def install(self, model: LoadedModel, placement: Placement) -> None:
        """The runner's own hooks beyond sequence sharding and the CFG split (the staged runners')."""

    def installed(self, undo, reset=None) -> None:
        """Record one technique's undo (and per-request reset) for `remove` and `reset`."""
        self._applied.append((undo, reset))

    def apply(self, model: LoadedModel, placement: Placement) -> None:
        from ditserve.parallel.guidance import apply_cfg_split, remove_cfg_split
        from ditserve.parallel.sequence import shard_sequence, unshard_sequence

        groups, comm = placement.groups, placement.comm
        attention = self.attention(groups, comm, model)
        if attention is not None:
            shard_sequence(model, groups.sp, comm, attention)
            self.installed(lambda: unshard_sequence(model), getattr(attention, "reset", None))
        self.install(model, placement)
        if groups.cfg.size > 1:
            apply_cfg_split(model.transformer, groups.cfg, comm)
            self.installed(lambda: remove_cfg_split(model.transformer))

    def reset(self) -> None:
        for _, reset in self._applied:
            if reset is not None:
                reset()

    def remove(self) -> None:
        for undo, _ in self._applied:
            undo()
        self._applied.clear()
