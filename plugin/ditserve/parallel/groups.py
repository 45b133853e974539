"""Process groups in xDiT's (xfuser's) layout, so an xDiT launch configuration maps onto ours.

A plan gives one degree per kind of parallelism: `ulysses` and `ring` (together the sequence-parallel
degree, sp = ulysses × ring), `pipefusion` (pipeline stages), `cfg` (classifier-free-guidance branches)
and `dp` (requests). The world size is their product. Ranks are numbered in xfuser's order
`tp-sp-pp-cfg-dp`, the first varying fastest (tp is always 1 here), and inside sp the Ulysses rank
varies fastest (xfuser's `use_ulysses_low=True`):

    rank = ulysses_r + U * (ring_r + R * (pipefusion_r + P * (cfg_r + C * dp_r)))

A group along one axis holds the ranks that differ only in that axis. Spawned ranks (and the tests) meet
through a rendezvous file (`init_loopback`), never a TCP store, which binds every interface; ranks started
by torchrun use torchrun's store (`worker.py`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import timedelta
from math import prod

import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from ditserve.errors import PlanError

AXES = ("ulysses", "ring", "pipefusion", "cfg", "dp")
"""The degrees in xfuser's rank order, fastest-varying first."""


class Degrees(BaseModel):
    """How many ranks each kind of parallelism takes; the world size is their product."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    ulysses: int = Field(1, ge=1, le=64)
    """Ulysses sequence parallelism: all-to-all from sequence shards to head shards around attention."""
    ring: int = Field(1, ge=1, le=64)
    """Ring sequence parallelism: key/value blocks passed round the ring, merged by log-sum-exp."""
    pipefusion: int = Field(1, ge=1, le=64)
    """Pipeline stages (patch parallel with stale activations for the other patches)."""
    cfg: int = Field(1, ge=1, le=2)
    """Classifier-free-guidance parallelism: the conditional and unconditional branches on different ranks."""
    dp: int = Field(1, ge=1, le=64)
    """Data parallelism: different requests on different ranks."""

    @property
    def world_size(self) -> int:
        return prod(getattr(self, axis) for axis in AXES)

    @property
    def sp(self) -> int:
        """Sequence-parallel degree (ulysses × ring): how many shards the token sequence is cut into."""
        return self.ulysses * self.ring

    def coordinates(self, rank: int) -> dict[str, int]:
        """The rank's index along every axis."""
        coords = {}
        for axis in AXES:
            coords[axis] = rank % getattr(self, axis)
            rank //= getattr(self, axis)
        return coords

    def rank_of(self, coords: dict[str, int]) -> int:
        rank, stride = 0, 1
        for axis in AXES:
            rank += coords.get(axis, 0) * stride
            stride *= getattr(self, axis)
        return rank

    def group_ranks(self, axes: tuple[str, ...]) -> list[list[int]]:
        """Every group whose ranks differ only along `axes` (e.g. `("ulysses", "ring")` for sp)."""
        others = [axis for axis in AXES if axis not in axes]
        groups = []
        for fixed in itertools.product(*(range(getattr(self, axis)) for axis in others)):
            base = dict(zip(others, fixed, strict=True))
            members = []
            for varying in itertools.product(*(range(getattr(self, axis)) for axis in reversed(axes))):
                members.append(self.rank_of(base | dict(zip(reversed(axes), varying, strict=True))))
            groups.append(sorted(members))
        return sorted(groups)


GROUP_AXES: dict[str, tuple[str, ...]] = {
    "ulysses": ("ulysses",),
    "ring": ("ring",),
    "sp": ("ulysses", "ring"),
    "pipefusion": ("pipefusion",),
    "cfg": ("cfg",),
    "dp": ("dp",),
}
"""The groups every rank gets, by name, and the axes each spans."""


@dataclass
class Group:
    """One process group as this rank sees it: its members (global ranks, in group-rank order)."""

    ranks: list[int]
    handle: object | None
    """The torch.distributed group, or None for a group of one (no communication)."""
    rank: int
    """This process's index in `ranks`."""

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass
class ProcessGroups:
    """This rank's groups along every axis, built collectively by `build_groups`."""

    degrees: Degrees
    rank: int
    """This process's rank in the plan's layout (0 .. world_size-1)."""
    groups: dict[str, Group] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Group:
        groups = self.__dict__.get("groups", {})
        if name in groups:
            return groups[name]
        raise AttributeError(name)


def build_groups(degrees: Degrees, members: list[int] | None = None) -> ProcessGroups:
    """Create every group of `degrees` over the global ranks `members` (default: the whole world).

    `dist.new_group` is collective over the world, so every process calls this with the same
    arguments, including processes outside `members` (they get None).
    """
    members = members if members is not None else list(range(dist.get_world_size()))
    if len(members) != degrees.world_size:
        raise PlanError(f"the plan needs {degrees.world_size} ranks, {len(members)} were given")
    me = dist.get_rank()
    local = members.index(me) if me in members else None
    result = ProcessGroups(degrees, local if local is not None else -1)
    for name, axes in GROUP_AXES.items():
        for ranks in degrees.group_ranks(axes):
            global_ranks = [members[r] for r in ranks]
            handle = dist.new_group(global_ranks, backend=dist.get_backend()) if len(global_ranks) > 1 else None
            if local is not None and local in ranks:
                result.groups[name] = Group(global_ranks, handle, ranks.index(local))
    return result if local is not None else None


def init_loopback(rank: int, world_size: int, rendezvous_file: str, timeout_s: float, backend: str = "gloo") -> None:
    """Join the default group through a rendezvous file: no socket listens beyond the peers' own links."""
    dist.init_process_group(
        backend,
        init_method=f"file://{rendezvous_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def check_degrees(degrees: Degrees, *, heads: list[int], tokens: int, text_tokens: int = 0) -> None:
    """Refuse degrees this model cannot take, naming the model's numbers and what to change.

    `heads` lists the head count of every attention the runner shards; `tokens` is the sequence the
    runner cuts into sp shards (image tokens), `text_tokens` the text tokens cut with them (Flux).
    """
    for count in sorted(set(heads)):
        if count % degrees.ulysses:
            raise PlanError(
                f"ulysses degree {degrees.ulysses} does not divide the model's {count} attention heads; "
                f"choose a ulysses degree that divides {count} and put the rest of the ranks on `ring`"
            )
    for what, length in (("image tokens", tokens), ("text tokens", text_tokens)):
        if length and length % degrees.sp:
            raise PlanError(
                f"the sequence-parallel degree ulysses×ring = {degrees.sp} does not divide the {length} {what} "
                f"of this model's default size; choose a degree that divides {length}"
            )
    if tokens and tokens < degrees.sp:
        raise PlanError(f"the sequence of {tokens} tokens is too short for {degrees.sp} shards")
