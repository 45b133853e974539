"""The engine: one loaded model, its acceleration plan, and the sampling loop that serves requests.

Transports and the CLI build a `GenerationRequest`; the engine checks it against the model's limits,
runs it (progress after every step, cancellation between steps), and returns images with the seeds
that made them and what they cost. Strategies are applied once when the engine loads; their
per-request state is reset before every request and after every failure, so one request never
leaks into the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ditserve.compile import Compiler
from ditserve.config import BUILTIN_PREFIX, ModelConfig, load_config
from ditserve.counters import AttentionCounter, BlockCounter, TokenCounter
from ditserve.editing import Edit, EditInputs, edit_inputs, image_size
from ditserve.errors import Cancelled, ConfigError, PlanError, RequestError
from ditserve.lora import LoraAdapters, discover
from ditserve.models import BUILTIN_MODELS, BUILTIN_TRAINERS, get_adapter
from ditserve.models.base import LoadedModel, count_blocks
from ditserve.models.fullsize import FULLSIZE_PREFIX
from ditserve.nirvana import Recorder, Resume, scope
from ditserve.registry import CACHES, PARALLEL, QUANTIZERS, SAMPLERS, StrategyConfig
from ditserve.request import MAX_SEED, GenerationRequest, GenerationResult, GenerationStats, ProgressEvent
from ditserve.sampling.base import Sampler
from ditserve.tuned import read_tuned
from ditserve.video.flexcache import FlexCache

log = logging.getLogger(__name__)

OnProgress = Callable[[ProgressEvent], None]


def resolve_model_path(path: str) -> Path:
    """`builtin:<name>` → the shipped checkpoint directory; anything else must be a local directory."""
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            raise PlanError(f"unknown built-in model {name!r}; known: {', '.join(sorted(BUILTIN_MODELS))}")
        resolved = BUILTIN_MODELS[name]
        if not any((resolved / model).is_dir() for model in ("transformer", "unet")):  # unet: the unet family
            raise PlanError(
                f"built-in model {name!r} has no weights at {resolved}; "
                f"train them with `python -m {BUILTIN_TRAINERS[name]}`"
            )
        return resolved
    resolved = Path(path)
    if not resolved.is_dir():
        raise PlanError(f"model path {path!r} is not a local directory (nothing is downloaded at run time)")
    return resolved


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def repeat_inputs(kwargs: dict, repeats: int, branches: int) -> dict:
    """Transformer inputs for `repeats` copies of the batch (each of `branches` CFG halves repeated in place),
    so a parallel sampler's call on [x at t₁; x at t₂; ...] sees every image's own conditioning."""
    out = {}
    for key, value in kwargs.items():
        halves = value.chunk(branches) if isinstance(value, torch.Tensor) and value.dim() > 0 else None
        out[key] = value if halves is None else torch.cat([torch.cat([h] * repeats) for h in halves])
    return out


@dataclass(frozen=True)
class Job:
    """A validated request, resolved against the model's defaults."""

    subject: str | int
    """The prompt, or the class id for class-conditional models."""
    steps: int
    height: int
    width: int
    guidance: float
    sampler: Sampler
    seeds: list[int] = field(hash=False)
    """One per image: image k of a request uses the request's seed + k."""
    cache: StrategyConfig | None = None
    """The request's cache override (None: the plan's cache)."""
    edit: EditInputs | None = field(default=None, hash=False, compare=False)
    """The init image, mask and strength of an edit (None: text-to-image)."""
    lora: tuple[str, float] | None = None
    """The LoRA adapter and its scale (None: the base model); part of the batch key, so adapters never mix."""
    cache_scope: str | None = field(default=None, compare=False)
    """The request's scope in the cross-request cache (`ditserve.nirvana.scope`); None: it takes no part."""
    frames: int | None = None
    """Frames per video (video models); None: an image model's job."""

    def latent_shape(self, model: LoadedModel) -> tuple[int, ...]:
        """One sample's latent shape: an image's, or a video's of `frames` frames."""
        if self.frames is None:
            return model.adapter.latent_shape(model, self.height, self.width)
        return model.adapter.latent_shape(model, self.height, self.width, frames=self.frames)

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one batched sampling loop."""
        cache = None if self.cache is None else self.cache.model_dump_json()  # configs may hold lists
        sampler = self.sampler.config.model_dump_json()  # sampler configs may hold lists and dicts too
        edit = None if self.edit is None else self.edit.key
        return (self.steps, self.height, self.width, self.frames, self.guidance, sampler, cache, edit, self.lora)


@dataclass
class StartInputs:
    """Where the sampling loop of a batch of jobs starts."""

    kwargs: dict[str, torch.Tensor]
    """Transformer inputs, one row per image; with classifier-free guidance the conditional rows, then the
    unconditional ones."""
    use_cfg: bool
    """Whether every model call runs the conditional and the unconditional rows (guidance > 1, not distilled)."""
    shape: tuple[int, ...]
    """One image's latent shape."""
    generators: list[torch.Generator]
    """One per image, seeded with its seed: the noise below, then any noise the sampler draws."""
    noise: torch.Tensor
    """Where the sampler starts: the images' noise (an edit's init image noised with it, `Edit.start`)."""
    schedule: dict
    """The family's per-request timestep settings (`FamilyAdapter.schedule_kwargs`)."""
    edit: Edit | None = None
    """The rows' edit (`ditserve.editing`): the steps the model is spared, the blending, what is kept."""
    reuse: Resume | Recorder | None = None
    """The cross-request cache's part (`ditserve.nirvana`): a start from kept states, or a run to keep."""

    @property
    def resumed_from(self) -> int:
        return 0 if self.reuse is None else self.reuse.resumed_from

    def loop(self, denoise, on_step):
        """The sampler's `denoise` and `on_step` for this start: the edit's and the cache's around the loop's own."""
        if self.reuse is not None:
            denoise, on_step = self.reuse.loop(denoise, on_step)
        if self.edit is None:
            return denoise, on_step
        return self.edit.denoise(denoise), self.edit.on_step(on_step)


def load_model(config: ModelConfig, device: torch.device | None = None) -> LoadedModel:
    """The model `config` names, on `device` (default: the config's); on `meta` it has shapes and no weights."""
    adapter = get_adapter(config.model.family)
    dtype, device = getattr(torch, config.model.dtype), device or pick_device(config.model.device)
    if config.model.path.startswith(FULLSIZE_PREFIX):  # a published architecture, random weights
        from ditserve.models.fullsize import build_model

        return build_model(config.model.path[len(FULLSIZE_PREFIX) :], adapter, dtype, device)
    return adapter.load(resolve_model_path(config.resolved_path()), dtype=dtype, device=device)


def cache_beside_sampler(cache: str, sampler: Sampler) -> str | None:
    """Why cache `cache` cannot run beside `sampler`, or None. A cache decides per model call, taking each
    call for one step; a parallel-in-time sampler's call holds a window of steps, and its batch changes size."""
    if cache == "none" or not sampler.parallel_in_time:
        return None
    return (
        f"sampler {sampler.name!r} evaluates several steps in one model call, and cache {cache!r} decides per "
        "call as if it were one step: use cache 'none' or a sequential sampler"
    )


class Front:
    """What checks requests for one model and plan before any model work, and describes them: the adapter,
    the limits, the plan's sampler and runner, and a model to read shapes and labels from.

    Every executor is one: the local `Engine` over the model it loaded and runs, the multi-process
    `parallel.executor.RankExecutor` over a model without weights (its ranks hold the only copies)."""

    def __init__(self, config: ModelConfig, model: LoadedModel) -> None:
        self.config, self.model, self.adapter = config, model, model.adapter
        self.blocks_per_call = count_blocks(self.adapter, model.transformer)
        plan = config.plan
        self.parallel = PARALLEL.get(plan.parallel.name)(plan.parallel)
        self.parallel.check(model, plan)
        self.sampler = self._make_sampler(plan.sampler)
        problem = cache_beside_sampler(plan.cache.name, self.sampler)
        if problem is not None:
            raise PlanError(f"plan: {problem}")
        self.tuned = read_tuned(config)
        """The plans `ditserve tune` found for this model per step count (`ditserve.tuned`), or None."""
        if self.tuned is not None and self.parallel.world_size != 1:
            raise PlanError(
                f"plan.tuned swaps a tuned cache in per request, which plan.parallel {plan.parallel.name!r} (several "
                "ranks) cannot: serve tuned plans with plan.parallel none"
            )
        self.nirvana = FlexCache(plan.approx_cache, self.parallel.world_size)
        """The cross-request cache: kept runs of finished requests (`ditserve.nirvana`, FlexCache's compression and
        replacement as the plan sets them: `ditserve.video.flexcache`)."""
        self.lora_files = discover(model.path)
        """The model directory's LoRA adapters, name → weight file (`ditserve.lora`)."""
        self.lora_problem = self._lora_problem()
        """Why this plan serves no adapter, or None."""

    @property
    def makes_video(self) -> bool:
        """Whether the model makes videos (results carry `videos`), not images."""
        return self.adapter.default_frames(self.model) is not None

    def _lora_problem(self) -> str | None:
        """Why LoRA requests cannot run under this plan (the adapters are then not loaded), or None."""
        plan = self.config.plan
        if not self.lora_files:
            return f"model {self.config.model.name!r} has no LoRA adapters (loras/<name>/ in its directory)"
        if self.parallel.world_size != 1:
            return (
                f"plan.parallel {plan.parallel.name!r} runs the model on several ranks, which load the base weights "
                "only: serve LoRA adapters with plan.parallel none"
            )
        if plan.quant.name != "none":
            return (
                f"plan.quant {plan.quant.name!r} replaces the linear layers the adapters attach to: serve LoRA "
                "adapters with plan.quant none"
            )
        if plan.compile != "none":
            return (
                f"plan.compile {plan.compile!r} would compile the adapter switches into its graphs and recompile on "
                "every change: serve LoRA adapters with plan.compile none"
            )
        return None

    def _make_sampler(self, sampler_config) -> Sampler:
        return SAMPLERS.get(sampler_config.name)(sampler_config, self.model.scheduler_config)

    # -- requests -----------------------------------------------------------------------------

    def validate(self, request: GenerationRequest) -> Job:
        """Check a request against the model and its limits before any model work.

        Raises `RequestError` naming the field and the limit; returns the request resolved against
        the model's defaults (steps, size, guidance, sampler, one seed per image).
        """
        limits = self.config.limits
        if request.prompt is not None and request.class_label is not None:
            raise RequestError("prompt", "give a prompt or a class_label, not both")
        if request.prompt is None and request.class_label is None:
            raise RequestError("prompt", "a prompt (or, for class-conditional models, a class_label) is required")
        if request.class_label is not None and self.adapter.conditioning != "class":
            raise RequestError("class_label", f"model {self.config.model.name!r} takes text prompts, not class labels")
        if request.prompt is not None and len(request.prompt) > limits.max_prompt_chars:
            raise RequestError("prompt", f"must be at most {limits.max_prompt_chars} characters")
        subject = request.prompt if request.prompt is not None else request.class_label
        if self.adapter.conditioning == "class":
            self.adapter.class_id(self.model, subject)
        sampler, cache = self.sampler, None
        if request.sampler is not None:
            try:
                sampler = self._make_sampler(self._override("sampler", request.sampler))
            except PlanError as err:
                raise RequestError("sampler", str(err)) from None
        if request.cache is not None:
            cache = self._override("cache", request.cache)
            if cache == self.config.plan.cache:
                cache = None
            elif self.parallel.world_size != 1:
                raise RequestError("cache", "a multi-process plan (plan.parallel) runs its own cache only; omit it")
        problem = cache_beside_sampler((cache or self.config.plan.cache).name, sampler)
        if problem is not None:
            raise RequestError("cache" if request.cache is not None else "sampler", problem)
        steps = request.steps if request.steps is not None else sampler.config.steps
        guidance = request.guidance_scale if request.guidance_scale is not None else self.config.model.guidance_scale
        tuned = None
        if self.tuned is not None and request.sampler is None and request.cache is None:
            tuned = self.tuned.pick(steps, guidance)
        if tuned is not None:  # the tuned sampler at its own steps gives what `steps` of the plan's would
            sampler = self._make_sampler(tuned.sampler)
            steps = sampler.config.steps
            cache = None if tuned.cache == self.config.plan.cache else tuned.cache
        if steps > limits.max_steps:
            raise RequestError("steps", f"must be at most {limits.max_steps} (got {steps})")
        if request.num_images > limits.max_batch:
            raise RequestError("num_images", f"must be at most {limits.max_batch} (got {request.num_images})")
        frames = self._frames(request)  # before the size: a video model refuses an init image, whatever its size
        height, width = self._size(request)
        if request.seed is not None and request.seed + request.num_images - 1 > MAX_SEED:
            raise RequestError("seed", "seed + num_images must stay below 2**63")
        edit = edit_inputs(request, steps, self.adapter.image_channels(self.model), limits.max_side)
        if edit is not None and sampler.parallel_in_time:
            raise RequestError(
                "sampler",
                f"{sampler.name!r} evaluates several steps in one model call; edits need a sequential sampler",
            )
        lora = self._lora(request)
        base_seed = request.seed if request.seed is not None else secrets.randbelow(2**62)
        seeds = [base_seed + k for k in range(request.num_images)]
        cache_scope = scope(request, sampler, edit)
        return Job(subject, steps, height, width, guidance, sampler, seeds, cache, edit, lora, cache_scope, frames)

    def _frames(self, request: GenerationRequest) -> int | None:
        """The request's frames per video: as asked, else the model's default; None for an image model."""
        default, name = self.adapter.default_frames(self.model), self.config.model.name
        if default is None:
            if request.num_frames is not None:
                raise RequestError("num_frames", f"model {name!r} makes images; leave num_frames out")
            return None
        if request.init_image is not None:
            raise RequestError("init_image", f"model {name!r} makes videos, which take no init image (edits)")
        frames = request.num_frames if request.num_frames is not None else default
        if frames > self.config.limits.max_frames:
            raise RequestError("num_frames", f"must be at most {self.config.limits.max_frames} (got {frames})")
        self.adapter.check_frames(self.model, frames)
        self.parallel.check_frames(self.model, frames)
        return frames

    def _lora(self, request: GenerationRequest) -> tuple[str, float] | None:
        """The request's (adapter, scale), checked against the adapters this plan serves."""
        if request.lora is None:
            if request.lora_scale is not None:
                raise RequestError("lora_scale", "scales an adapter: name one in `lora`, or leave lora_scale out")
            return None
        if self.lora_problem is not None:
            raise RequestError("lora", self.lora_problem)
        if request.lora not in self.lora_files:
            known = ", ".join(self.lora_files)
            raise RequestError("lora", f"unknown adapter {request.lora!r}; this model has: {known}")
        return request.lora, 1.0 if request.lora_scale is None else request.lora_scale

    def _size(self, request: GenerationRequest) -> tuple[int, int]:
        """The request's (height, width): as asked, else the init image's, else the model's default."""
        limits, image = self.config.limits, image_size(request)
        if image is not None:
            asked = (request.height or image[0], request.width or image[1])
            if asked != image:
                raise RequestError(
                    "init_image",
                    f"is {image[1]}x{image[0]} pixels but the request asks for {asked[1]}x{asked[0]}; send an image "
                    "of that size, or leave height and width out to edit at the image's size",
                )
        default_h, default_w = image or self.adapter.default_size(self.model)
        height, width = request.height or default_h, request.width or default_w
        if image is not None and max(image) > limits.max_side:
            raise RequestError(
                "init_image", f"is {width}x{height} pixels; this model makes images of at most {limits.max_side} a side"
            )
        for name, value in (("height", height), ("width", width)):
            if value > limits.max_side:
                raise RequestError(name, f"must be at most {limits.max_side} (got {value})")
        try:
            self.adapter.check_size(self.model, height, width)
            self.parallel.check_size(self.model, height, width)
        except RequestError as err:
            if image is None:
                raise
            raise RequestError(
                "init_image", f"is {width}x{height} pixels, a size this model cannot make: {err}"
            ) from None
        return height, width

    def _override(self, section: str, spec: dict) -> StrategyConfig:
        """A request's `sampler` or `cache` override, checked against `limits.overrides`.

        Naming the plan's own strategy keeps the plan's fields the request does not set, so a calibrated
        cache keeps its calibration while a request tunes its threshold."""
        limits = self.config.limits
        allowed = limits.overrides.get(section, ()) if limits.allow_overrides else ()
        name = spec.get("name", "none")
        if not allowed:
            raise RequestError(section, f"this model's config allows no per-request {section} override")
        if "*" not in allowed and name not in allowed:
            raise RequestError(section, f"{name!r} is not allowed (limits.overrides); allowed: {', '.join(allowed)}")
        plan = getattr(self.config.plan, section)
        if name == plan.name:
            spec = {**plan.model_dump(), **spec}
        registry = SAMPLERS if section == "sampler" else CACHES
        try:
            return registry.parse(spec, section, strict=True)
        except ConfigError as err:
            raise RequestError(section, "; ".join(err.problems)) from None

    def generate(
        self,
        request: GenerationRequest,
        on_progress: OnProgress | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> GenerationResult:
        """Run one request. `cancel` (set by the caller) and `deadline` (a `time.monotonic()` value)
        stop it at the next step boundary with `Cancelled`."""
        return self.generate_batch([request], on_progress, cancel, deadline)[0]

    @property
    def alive(self) -> bool:
        """False once the executor cannot serve again (a rank of a multi-process executor died or hung)."""
        return True

    def close(self) -> None:
        """Stop the executor's ranks, if it has any."""

    def warmup(self) -> float:
        """Run one small request end to end (allocations, lazy inits); returns its seconds."""
        started = time.perf_counter()
        subject = 0 if self.adapter.conditioning == "class" else "warm-up"
        request = GenerationRequest(
            prompt=subject if isinstance(subject, str) else None,
            class_label=subject if isinstance(subject, int) else None,
            steps=min(2, self.config.limits.max_steps),
            seed=0,
            approx_cache=False,  # nothing for clients' requests to start from
        )
        self.generate(request)
        return time.perf_counter() - started

    def describe(self) -> dict:
        """The model, its plan and its limits, as plain data (for listings and `GetModel`)."""
        default_h, default_w = self.adapter.default_size(self.model)
        return {
            "name": self.config.model.name,
            "family": self.config.model.family,
            "conditioning": self.adapter.conditioning,
            "labels": {k: v for k, v in sorted(self.model.id2label.items())},
            "default_size": [default_h, default_w],
            "default_frames": self.adapter.default_frames(self.model),
            "blocks_per_call": self.blocks_per_call,
            "device": str(self.model.device),
            "plan": self.config.plan.model_dump(mode="json"),
            "limits": self.config.limits.model_dump(mode="json"),
            "loras": [] if self.lora_problem is not None else list(self.lora_files),
        }


class TokenTally:
    """A request's token evaluations (`TokenCounter`) and those its calls would have taken with no caching.

    The full count of a call is its rows (samples) times the tokens one row took in the request's first call:
    every cache is reset before a request and has nothing stored to reuse on its first call, which therefore
    computes every token of every layer."""

    def __init__(self, counter: TokenCounter | None) -> None:
        self.counter = counter
        self.counted = 0
        self.full = 0
        self.per_row: float | None = None

    @contextlib.contextmanager
    def call(self, rows: int):
        """Count one transformer call over `rows` samples (the [cond; uncond] halves of one sample count once)."""
        if self.counter is None:
            yield
            return
        before = self.counter.count
        yield
        counted = self.counter.count - before
        if self.per_row is None:
            self.per_row = counted / rows
        self.counted += counted
        self.full += round(self.per_row * rows)


class Engine(Front):
    """The local executor: one loaded model with its plan, and the sampling loop. Thread-safe: requests run one
    at a time.

    In a rank of a multi-process executor (`parallel/ranks.py`), `placement` holds the rank's process groups
    and the plan's runner is applied over them at load, like the cache and the quantizer. `loras=False` loads
    none of the model directory's LoRA adapters: a calibration observes the base model's own layers."""

    def __init__(self, config: ModelConfig, placement=None, *, loras: bool = True) -> None:
        started = time.perf_counter()
        if config.model.threads:
            torch.set_num_threads(config.model.threads)
        super().__init__(config, load_model(config))
        if not loras:
            self.lora_problem = "this engine runs the base model for a calibration and loads no LoRA adapters"
        if self.parallel.world_size != 1 and placement is None:
            raise PlanError(
                f"plan.parallel {config.plan.parallel.name!r} runs on {self.parallel.world_size} ranks: serve it "
                "through the multi-process executor (`ditserve.parallel.executor.open_executor`), not an Engine"
            )
        files = self.lora_files if self.lora_problem is None else {}
        self.loras = LoraAdapters(self.model.transformer, files)  # before any hook: PEFT swaps the linear layers
        self.compiler = Compiler(config.plan, self.model)  # compiled regions, below every hook installed next
        self.block_counter = self.compiler.block_counter() or BlockCounter(self.model)
        self.attention_counter = self.compiler.attention_counter() or AttentionCounter(self.model)
        self.attention_layers_per_call = len(self.adapter.attention_layers(self.model.transformer))
        self.token_counter = None if self.compiler.regions else TokenCounter(self.model)
        """None when compiled: a hook inside a compiled region would break it (token counts stay 0)."""
        plan = config.plan
        self.quantizer = QUANTIZERS.get(plan.quant.name)(plan.quant)
        self.quantizer.apply(self.model)
        self.cache = CACHES.get(plan.cache.name)(plan.cache)
        self.cache.apply(self.model)
        self.compiler.start(self.model, f"cache {plan.cache.name!r}")
        self.parallel.apply(self.model, placement)
        self._lock = threading.Lock()
        if self.compiler.mode != "none":  # compile now, for the default size, rather than in the first request
            log.info("compile %s: warm-up request took %.1fs", self.compiler.mode, self.warmup())
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s (%s) in %.1fs", config.model.name, config.model.family, self.load_seconds)

    @functools.cached_property
    def noise_schedule(self):
        """α(t) and σ(t) of the model's training schedule at any timestep (edits noise their init image with it)."""
        from ditserve.sampling.ode import NoiseSchedule

        return NoiseSchedule(self.model.scheduler_config)

    @classmethod
    def from_config(cls, path: str | Path) -> Engine:
        """An engine for a model config file or `builtin:<name>`."""
        return cls(load_config(path))

    def describe(self) -> dict:
        """`Front.describe`, plus what runs on this device: the compiled mode and the quantizer's path."""
        runs = {"compile": self.compiler.mode, "quant": getattr(self.quantizer, "runs", self.config.plan.quant.name)}
        return super().describe() | {"runs": runs}

    def generate_batch(
        self,
        requests: list[GenerationRequest],
        on_progress: OnProgress | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
        sampler: Sampler | None = None,
    ) -> list[GenerationResult]:
        """Run compatible requests (same `Job.batch_key`) as one batch through the model.

        Every image keeps its own seed and noise generator, so each request gets the images it would
        get alone (up to the float rounding of a larger matrix product). The stats describe the batch.
        `sampler` runs the loop in the requests' sampler's place (a calibration's recorder, `calibrate.py`).
        """
        jobs = [self.validate(request) for request in requests]
        if sampler is not None:
            jobs = [dataclasses.replace(job, sampler=sampler) for job in jobs]
        if len({job.batch_key for job in jobs}) != 1:
            raise ValueError("generate_batch needs requests with the same steps, size, guidance and sampler")
        with self._lock, torch.inference_mode(), self._cache_for(jobs[0].cache) as cache:
            cache.reset()
            self.parallel.reset()
            self.loras.activate(jobs[0].lora)
            try:
                images, stats = self._run(jobs, on_progress, cancel, deadline)
            finally:
                cache.reset()
                self.loras.activate(None)
        results, start = [], 0
        for job in jobs:
            end = start + len(job.seeds)
            results.append(GenerationResult.of(images[start:end], job.seeds, stats, job.subject))
            start = end
        return results

    def start_inputs(self, jobs: list[Job]) -> StartInputs:
        """What the sampling loop of `jobs` (one `Job.batch_key`) starts from; the step loop
        (`ditserve.continuous`) starts every request it admits from here too, so both give the same images."""
        first, model, adapter = jobs[0], self.model, self.adapter
        subjects = [job.subject for job in jobs for _ in job.seeds]
        seeds = [seed for job in jobs for seed in job.seeds]
        embedded_guidance = adapter.guidance_inputs(model, first.guidance, len(seeds))  # guidance-distilled models
        use_cfg = first.guidance > 1.0 and embedded_guidance is None
        conditioning = adapter.condition(model, subjects, guidance=use_cfg)
        kwargs = conditioning.cond | (embedded_guidance or {})
        if use_cfg:
            kwargs = {key: torch.cat([value, conditioning.uncond[key]]) for key, value in kwargs.items()}
        shape = first.latent_shape(model)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(model.device, model.dtype)
        schedule = adapter.schedule_kwargs(model, shape, first.steps)
        reuse = self.nirvana.start(jobs, conditioning.cond)
        edit = None if reuse is None else reuse.edit(self)  # a start from a kept run is an edit of it
        if first.edit is not None:
            edit = Edit(self, [job.edit for job in jobs for _ in job.seeds], noise)
        if edit is not None:
            noise = edit.start(first.sampler, first.steps, generators, schedule)
        return StartInputs(kwargs, use_cfg, shape, generators, noise, schedule, edit, reuse)

    def to_images(self, latents: torch.Tensor, edit: Edit | None = None) -> torch.Tensor:
        """Sampler latents → images (N, C, H, W) in [0, 1] on the CPU (an edit's kept region from its init image),
        or a video model's videos (N, frames, C, H, W)."""
        if edit is not None:
            latents = edit.latents(latents)
        images = ((self.adapter.decode(self.model, latents) + 1) / 2).clamp(0, 1)
        return (images if edit is None else edit.images(images)).cpu()

    def _run(self, jobs: list[Job], on_progress, cancel, deadline) -> tuple[torch.Tensor, GenerationStats]:
        first = jobs[0]
        seeds = [seed for job in jobs for seed in job.seeds]
        stats = GenerationStats(batch_size=len(seeds))
        started = time.perf_counter()
        model, adapter, guidance = self.model, self.adapter, first.guidance
        start = self.start_inputs(jobs)
        kwargs, use_cfg, generators, noise = start.kwargs, start.use_cfg, start.generators, start.noise
        stats.resumed_from = start.resumed_from
        stats.seconds["condition"] = time.perf_counter() - started
        blocks_before = self.block_counter.count
        attention_before = self.attention_counter.count
        tokens = TokenTally(self.token_counter)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            stats.model_evaluations += 1
            repeats = x.shape[0] // len(seeds)  # parallel samplers evaluate k timesteps of every image in one call
            stats.timestep_evaluations += repeats
            inputs = kwargs if repeats == 1 else repeat_inputs(kwargs, repeats, 2 if use_cfg else 1)
            with tokens.call(x.shape[0]):
                if not use_cfg:
                    return adapter.predict(model, x, t, inputs)
                t = t if t.numel() == 1 else torch.cat([t, t])
                cond, uncond = adapter.predict(model, torch.cat([x, x]), t, inputs).chunk(2)
            return uncond + guidance * (cond - uncond)

        def on_step(done: int, total: int, x: torch.Tensor) -> None:
            stats.steps = done
            if on_progress is not None:
                on_progress(ProgressEvent(done, total, time.perf_counter() - started, x))
            self._check_cancel(done, cancel, deadline)

        self._check_cancel(0, cancel, deadline)
        denoise_started = time.perf_counter()
        denoise, on_step = start.loop(denoise, on_step)
        latents = first.sampler.sample(denoise, noise, first.steps, generators, on_step, start.schedule)
        stats.seconds["denoise"] = time.perf_counter() - denoise_started
        decode_started = time.perf_counter()
        images = self.to_images(latents, start.edit)
        stats.seconds["decode"] = time.perf_counter() - decode_started
        stats.block_evaluations = self.block_counter.count - blocks_before
        stats.block_evaluations_full = stats.model_evaluations * self.blocks_per_call
        stats.attention_evaluations = self.attention_counter.count - attention_before
        stats.attention_evaluations_full = stats.model_evaluations * self.attention_layers_per_call
        stats.token_evaluations, stats.token_evaluations_full = tokens.counted, tokens.full
        stats.seconds["total"] = time.perf_counter() - started
        return images, stats

    @contextlib.contextmanager
    def _cache_for(self, config: StrategyConfig | None):
        """The plan's cache, or a request's override swapped in for one batch; the plan's is put back after."""
        if config is None:
            yield self.cache
            return
        override = CACHES.get(config.name)(config)
        self.cache.remove()
        try:
            try:
                override.apply(self.model)
                self.compiler.check(self.model, f"cache {config.name!r}")
            except Exception as err:
                with contextlib.suppress(Exception):  # undo whatever part of it was applied
                    override.remove()
                if isinstance(err, PlanError):  # e.g. a cache that needs calibration the request did not give
                    raise RequestError("cache", str(err)) from None
                raise
            try:
                yield override
            finally:
                override.remove()
        finally:
            self.cache.apply(self.model)

    @staticmethod
    def _check_cancel(done: int, cancel: threading.Event | None, deadline: float | None) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(done, "cancelled")
        if deadline is not None and time.monotonic() > deadline:
            raise Cancelled(done, "deadline exceeded")
