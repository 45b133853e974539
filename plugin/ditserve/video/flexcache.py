"""Approximate caching across video requests: FlexCache (Sun et al., 2024, "FlexCache: Flexible Approximate Cache
System for Video Diffusion").

FlexCache is Nirvana's cross-request cache (`ditserve/nirvana.py`: keep the sampler's states of finished requests
at a few rungs, start a request with a similar prompt from the nearest one and skip the steps before) made to fit
video, whose states are `frames` times an image's. Two of its three ideas are here, as `plan.approx_cache` fields:

- Compression (`compression`): a kept state and the model's output there are stored in float16 (half the bytes,
  relative error 2^-11) or as int8 with one scale per latent frame (a quarter; every value within 1/254 of its
  frame's largest magnitude). The paper compresses the kept latents before storing them (6.7× less on average);
  its bytes are what `max_bytes` bounds, so the same bound keeps 2 or 4 times as many runs.
- Replacement (`replacement: gdsf`): the entry evicted is the one worth least per kept byte — model compute it
  saves (its starts so far plus one, times the steps its latest rung skips, times its latent elements: videos of
  more frames or images save more per step) over its bytes — plus an age: each eviction raises a clock to the
  evicted entry's worth and a kept entry's worth is set on top of the clock when it is inserted or started from.
  Frequency-and-size aware like Nirvana's LCBFU and the paper's policy, but a newly popular prompt is not the
  first to go (the objection in nirvana.py, "Replacement"): its worth starts above every entry that has not been
  used since the clock last moved.

Not here: the paper's object/background decoupling (separate kept states for a prompt's object and its background,
composed at a start). The embedded video model draws one digit on an empty canvas: there is no background to
share between prompts.

Measured on digits-video (benchmarks/video.py → results/video.md; 30-request stream, Zipf 1.0 over the 40
(digit, motion) pairs in random phrasings, 24 steps): an entry is 16,640 bytes as computed and 4,416 in int8; the
cache saved 21.4 % of model evaluations (11 hits, each starting at step 14 of 24) with the frames' Fréchet
distance 8.8 % above the uncached stream's — short of the 30 % goal, because this model's prompt embeddings do
not tell a paraphrase from another (digit, motion) (paraphrases 0.61-0.93 cosine, other requests up to 0.97), so
only repeats of the same prompt may start part-way. Under a bound of 4 int8 entries LRU and GDSF made the same
6 hits on that stream (its popular prompts are also its recent ones).

Everything else is Nirvana's: the ladder of similarities, scopes (API key, schedule), retirement after
`max_reuse` starts, the entry bound, and how a start is resumed (`ditserve.editing.Edit.resume`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ditserve.nirvana import Entry, Nirvana, State

INT8_LEVELS = 127
"""Largest int8 magnitude used: a value v of a frame whose largest magnitude is m is kept as round(v * 127 / m)."""


@dataclass(frozen=True)
class Packed:
    """A tensor as kept: its values in a narrower dtype and, for int8, one float32 scale per (row, channel,
    frame) — per slice over the last two (spatial) dimensions."""

    values: torch.Tensor
    scales: torch.Tensor | None
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def __getitem__(self, rows: slice) -> Packed:
        return Packed(self.values[rows], None if self.scales is None else self.scales[rows], self.dtype)


def pack(x: torch.Tensor, compression: str) -> Packed:
    """`x` stored as `compression` says ("float16" or "int8")."""
    if compression == "float16":
        return Packed(x.to(torch.float16), None, x.dtype)
    scales = x.float().abs().amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    scales = scales / INT8_LEVELS
    return Packed(torch.round(x.float() / scales).to(torch.int8), scales, x.dtype)


def unpack(packed: Packed) -> torch.Tensor:
    """The tensor `pack` was given, within its compression's error."""
    if packed.scales is None:
        return packed.values.to(packed.dtype)
    return (packed.values.float() * packed.scales).to(packed.dtype)


@dataclass
class KeptEntry(Entry):
    """An entry as FlexCache keeps it: its states packed, and its worth in the replacement order."""

    worth: float = 0.0


class FlexCache(Nirvana):
    """Nirvana with compressed states and (optionally) greedy-dual-size-frequency replacement. Thread-safe."""

    def __init__(self, config, world_size: int = 1) -> None:
        super().__init__(config, world_size)
        self.clock = 0.0
        """The worth of the last entry evicted (greedy-dual aging); 0 until the first eviction."""

    def stored(self, entry: Entry) -> Entry:
        states = entry.states
        if self.config.compression != "none":
            states = {
                step: State(
                    s.step,
                    s.total,
                    pack(s.x, self.config.compression),
                    s.t,
                    pack(s.output, self.config.compression),
                )
                for step, s in states.items()
            }
        kept = KeptEntry(entry.scope, entry.embedding, states, entry.uses)
        kept.worth = self._worth(kept)
        return kept

    def restored(self, state: State) -> State:
        if self.config.compression == "none":
            return state
        return State(state.step, state.total, unpack(state.x), state.t, unpack(state.output))

    def _worth(self, entry: KeptEntry) -> float:
        """The clock plus the model compute the entry saves per kept byte (see the module docstring)."""
        deepest = entry.states[max(entry.states)]
        elements = deepest.x.shape.numel()
        return self.clock + (entry.uses + 1) * deepest.step * elements / entry.nbytes

    def evict(self) -> Entry:
        if self.config.replacement == "lru":
            return super().evict()
        key = min(self.entries, key=lambda k: self.entries[k].worth)  # ties: the least recently used
        evicted = self.entries.pop(key)
        self.clock = evicted.worth
        return evicted

    def _use(self, key: int) -> None:
        super()._use(key)
        if key in self.entries:  # not retired
            self.entries[key].worth = self._worth(self.entries[key])
