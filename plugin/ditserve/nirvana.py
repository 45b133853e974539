"""Approximate caching across requests: Nirvana (Agarwal et al., NSDI 2024, "Approximate Caching for Efficiently
Serving Text-to-Image Diffusion Models").

Prompts sent to a server repeat, exactly or nearly. The early steps of a run fix an image's layout and the late
ones its details, so a request whose prompt is close to an earlier one's may start from that run's state part-way
and run only the rest, with its own prompt. Nirvana keeps, for each finished request, its sampler's state after a
few steps K of its N — here one per rung of `plan.approx_cache.levels` (by default after 20, 30, 40 and 50 % of
the steps), with the model's output at that state — keyed by the prompt's embedding. A new request takes the
best match among the kept runs; the higher its similarity, the later the rung it may start from (a ladder of
cosine thresholds, as in the paper); below the lowest rung it is a miss.

What "similar" means: the cosine of the prompts' embeddings, taken from the conditioning the model is called
with — a text model's pooled text embedding (`pooled_projections`: SD3, Flux, digits-flow), else its token
embeddings averaged (over the attention mask where there is one: PixArt, Wan). A class model's "prompt" is its
class id: similarity 1 for the same class, 0 otherwise, so any request for a class may start from another of that
class at the ladder's last rung.

What a state is valid for: a run of the same schedule, so entries are scoped by the job's batch key (steps, size,
guidance, sampler and its fields, a cache override, the LoRA adapter), and by the API key's digest
(`GenerationRequest.tenant`, which the runtime stamps from the key that admitted the request): a request never
sees another key's entries. Edits, parallel-in-time samplers and requests that opt out (`approx_cache: false`)
neither look up nor leave anything. A request that fails or is cancelled leaves nothing: its entry is kept only
when its last step has been taken.

How a request starts at step K: as an edit (`ditserve.editing.Edit.resume`) whose init latents and noise are
the kept run's clean estimate x̂₀ and noise ε̂ at its state x_K; the sampler runs the K skipped steps without a
model call on the line α_t x̂₀ + σ_t ε̂ and reaches x_K where the model takes over, for every sequential sampler
without a change to it: exactly for DDIM and flow Euler (the same request sent twice gives the first image within
4e-7), within their history's discretisation for multistep samplers (DPM-Solver++ 0.027, UniPC 0.015 largest pixel
difference, 10 steps on digits-dit), and in distribution for SDE samplers, which draw their own noise on the way
(Euler ancestral 0.10). Steps are counted as the sampler reports them (Heun counts its model calls).

Reproducibility: a hit's images are made from the kept run's state (its seed and prompt), not from the request's
own seed alone; the result says so (`GenerationStats.resumed_from`: the step it started from, 0 for none), and the
same request with `approx_cache: false` gives its seeds' images. A miss changes nothing: the recorder only reads
the loop, so its images are bit-identical to those of an engine without the cache.

Batches: one sampling loop starts all its rows at one step. A static batch (`Engine.generate_batch`) starts
part-way only when every one of its requests hits at the same rung; otherwise all of them run from noise (and are
kept). The step loop (`ditserve.continuous`) runs every request on its own sampler, so there each request starts
where its own match allows.

Retirement: a kept run starts at most `max_reuse` requests, then leaves the cache, so the next similar request
runs from its own noise and is kept instead. A start from a kept run gives nearly that run's image, so without it
one run per digit answered every later request for that digit on the benchmark's stream (benchmarks/nirvana.py,
digits-flow, 50 steps): 40 % of the evaluations saved, but the Fréchet distance 1.29× the uncached stream's
(120 requests). On 100 requests, two stream seeds: max_reuse 1 saved 20 % (Fréchet ×1.03, ×1.14), 2 saved 27–28 %
(×1.04, ×0.97), 3 saved 30–31 % (×1.13, ×1.09) — at 100 images the distance moves by ~10 % with the sample alone.
The default is 2.

Replacement: least recently used (a start or an insertion makes an entry the most recent), within a bound on
entries and on bytes. Nirvana's LCBFU ranks entries by hits × steps saved, which keeps old popular prompts but is
slow to let a newly popular prompt in (a new entry has no hits yet, so it is the first evicted); LRU admits every
finished request, evicts in O(1), and its order is what a client can predict.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ditserve.config import ApproxCache
from ditserve.editing import Edit
from ditserve.errors import PlanError


def scope(request, sampler, edit) -> str | None:
    """The request's scope in the cache (its API key's digest, "" on an open server), or None when it takes no
    part: it opts out, it is an edit, or its sampler evaluates several steps in one call."""
    if not request.approx_cache or edit is not None or sampler.parallel_in_time:
        return None
    return request.tenant or ""


def embeddings(cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """One embedding per row of the model's conditional inputs: a pooled text embedding, mean token embeddings,
    or a class id (an integer tensor, compared for equality)."""
    if "pooled_projections" in cond:
        return cond["pooled_projections"].float()
    if "encoder_hidden_states" in cond:
        tokens = cond["encoder_hidden_states"].float()
        mask = cond.get("encoder_attention_mask")
        if mask is None:
            return tokens.mean(dim=1)
        weights = mask.float().reshape(*mask.shape[:2], 1)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    if "class_labels" in cond:
        return cond["class_labels"].reshape(-1, 1)
    raise PlanError(f"the cross-request cache finds no prompt embedding among the model's inputs {sorted(cond)}")


def similarity(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Similarity of one embedding to each of `keys`: cosine, or for class ids 1 when equal and 0 otherwise."""
    if not query.is_floating_point():
        return (keys == query).all(dim=-1).float()
    return F.cosine_similarity(keys, query.unsqueeze(0), dim=-1)


@dataclass(frozen=True)
class State:
    """A run's rows at one rung: the sampler's state after `step` of `total` steps, and the model's output there."""

    step: int
    total: int
    x: torch.Tensor
    t: float
    output: torch.Tensor


@dataclass
class Entry:
    """One finished request: its scope, its prompt's embedding and its states at every rung."""

    scope: tuple
    embedding: torch.Tensor
    states: dict[int, State]
    """Rung step → state, each with one row per image of the request."""
    uses: int = 0
    """Requests started from it so far."""

    @property
    def images(self) -> int:
        return next(iter(self.states.values())).x.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(s.x.nbytes + s.output.nbytes for s in self.states.values()) + self.embedding.nbytes


class Resume:
    """A sampling loop that starts from kept states at one rung (a hit for every request of the loop)."""

    def __init__(self, states: list[State]) -> None:
        self.states = states
        self.resumed_from = states[0].step

    def edit(self, engine) -> Edit:
        x = torch.cat([state.x for state in self.states])
        output = torch.cat([state.output for state in self.states])
        first = self.states[0]
        return Edit.resume(engine, x, first.t, output, first.step, first.total)

    def loop(self, denoise, on_step):
        return denoise, on_step


class Recorder:
    """A sampling loop that runs from noise and, once its last step is taken, leaves one entry per request: it
    reads the state at every rung's step and the model's output there, and changes nothing."""

    resumed_from = 0

    def __init__(self, store: Nirvana, scopes: list[tuple], embeddings: list[torch.Tensor], rows: list[int]) -> None:
        self.store, self.scopes, self.embeddings, self.rows = store, scopes, embeddings, rows
        self.done, self.total = 0, None
        self.states: dict[int, State] = {}

    def edit(self, engine) -> None:
        return None

    def loop(self, denoise, on_step):
        def record(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            output = denoise(x, t)
            steps = self.store.rung_steps(self.total) if self.total is not None else ()
            if self.done in steps and self.done not in self.states:  # the first call on the state after `done` steps
                tau = float(t.reshape(-1)[0])  # the rows of one loop share their timestep
                self.states[self.done] = State(self.done, self.total, x.clone(), tau, output.clone())
            return output

        def finish(done: int, total: int, x: torch.Tensor) -> None:
            on_step(done, total, x)  # raises when the request is cancelled or past its deadline
            self.done, self.total = done, total
            if done == total:
                self._keep()

        return record, finish

    def _keep(self) -> None:
        if set(self.states) != set(self.store.rung_steps(self.total)):
            return  # a sampler that called the model fewer times than it reported steps: nothing to resume from
        start = 0
        for scope, embedding, rows in zip(self.scopes, self.embeddings, self.rows, strict=True):
            end = start + rows
            states = {
                k: State(k, s.total, s.x[start:end].clone(), s.t, s.output[start:end].clone())
                for k, s in self.states.items()
            }
            self.store.insert(Entry(scope, embedding, states))
            start = end


class Nirvana:
    """One model's kept runs and the ladder that decides who starts from them. Thread-safe."""

    def __init__(self, config: ApproxCache, world_size: int = 1) -> None:
        if config.enabled and world_size != 1:
            raise PlanError(
                "plan.approx_cache keeps runs in the serving process, and a multi-process plan runs them on its "
                "ranks: disable approx_cache or use plan.parallel none"
            )
        self.config = config
        self.levels = sorted(config.levels, key=lambda level: -level.skip)
        """The rungs, latest start first."""
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        """Least recently used first."""
        self.nbytes = 0
        self._next = 0
        self._lock = threading.Lock()

    def rung_steps(self, total: int) -> tuple[int, ...]:
        """The step of each rung in a run of `total` steps, in the ladder's order (latest first)."""
        return tuple(min(total - 1, max(1, round(level.skip * total))) for level in self.levels)

    def start(self, jobs, cond: dict[str, torch.Tensor]) -> Resume | Recorder | None:
        """How the sampling loop of `jobs` takes part: resumed from kept states, recorded for later ones, or not
        at all (the cache is off, or a request does not take part). `cond` holds one row per image."""
        if not self.config.enabled or any(job.cache_scope is None for job in jobs):
            return None
        vectors = embeddings(cond)
        rows = [len(job.seeds) for job in jobs]
        firsts = [sum(rows[:k]) for k in range(len(jobs))]
        scopes = [(job.cache_scope, job.batch_key) for job in jobs]
        queries = [vectors[first] for first in firsts]
        with self._lock:
            matches = [self._match(scope, query, n) for scope, query, n in zip(scopes, queries, rows, strict=True)]
            steps = {None if match is None else match[1].step for match in matches}
            if None in steps or len(steps) != 1:
                return Recorder(self, scopes, queries, rows)
            for key, _ in matches:
                self._use(key)
        return Resume([state for _, state in matches])

    def _match(self, scope: tuple, query: torch.Tensor, images: int) -> tuple[int, State] | None:
        """The entry to start `images` images from and its state there: the first rows of the most similar entry
        with enough rows, at the latest rung its similarity reaches; None on a miss. Called under the lock."""
        candidates = [(key, e) for key, e in self.entries.items() if e.scope == scope and e.images >= images]
        if not candidates:
            return None
        scores = similarity(query, torch.stack([e.embedding for _, e in candidates]))
        best = int(scores.argmax())
        score, (key, entry) = float(scores[best]), candidates[best]
        for level, step in zip(self.levels, self.rung_steps(next(iter(entry.states.values())).total), strict=True):
            if score >= level.similarity:
                state = self.restored(entry.states[step])
                return key, State(step, state.total, state.x[:images], state.t, state.output[:images])
        return None

    def stored(self, entry: Entry) -> Entry:
        """The entry as it is kept: as recorded here; FlexCache (ditserve/video/flexcache.py) compresses it."""
        return entry

    def restored(self, state: State) -> State:
        """A kept state as the sampler takes it: the inverse of `stored`."""
        return state

    def evict(self) -> Entry:
        """Remove the next entry to go and return it: the least recently used. Called under the lock."""
        return self.entries.popitem(last=False)[1]

    def _use(self, key: int) -> None:
        """Count a start from entry `key`: it becomes the most recent, or retires at its `max_reuse`-th start.
        Called under the lock."""
        entry = self.entries[key]
        entry.uses += 1
        if entry.uses >= self.config.max_reuse:
            del self.entries[key]
            self.nbytes -= entry.nbytes
        else:
            self.entries.move_to_end(key)

    def insert(self, entry: Entry) -> None:
        """Keep `entry` as the most recent; evict the least recently used until both bounds hold (an entry larger
        than the byte bound alone is not kept)."""
        entry = self.stored(entry)
        size = entry.nbytes
        if size > self.config.max_bytes:
            return
        with self._lock:
            self.entries[self._next] = entry
            self._next += 1
            self.nbytes += size
            while len(self.entries) > self.config.max_entries or self.nbytes > self.config.max_bytes:
                self.nbytes -= self.evict().nbytes
