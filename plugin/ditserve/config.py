"""The model config: which model to load, the acceleration plan that runs it, and its serving limits.

One YAML file per served model (see bentos/digits/model.yaml and README, "Config"):

    model: {name: digits-dit, path: builtin:digits-dit, family: dit, dtype: float32}
    plan:
      sampler: {name: ddim, steps: 50}
      cache:   {name: none}
      quant:   {name: none}
      parallel: {name: none}
    limits: {max_steps: 200, max_batch: 16, max_side: 64, max_queue: 64, timeout_s: 120}

Each plan section names a registered strategy and gives its fields; the fields are validated against
that strategy's own `Config`. Every error names the field, the rule it broke and, for an unknown
field or name, the allowed ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator

from ditserve.errors import ConfigError
from ditserve.registry import CACHES, PARALLEL, QUANTIZERS, SAMPLERS, StrategyConfig
from ditserve.tuned import read_tuned
from ditserve.validation import validate_model

BUILTIN_PREFIX = "builtin:"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ModelSpec(_Section):
    """Which model to load and how."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Name clients use to address the model (letters, digits, `_ . -`)."""
    path: str = Field(min_length=1)
    """`builtin:<name>` for an embedded model, or a local diffusers directory (`from_pretrained`
    layout). Relative paths are resolved against the YAML file's folder. Nothing is downloaded."""
    family: Literal["dit", "pixart", "sd3", "flux", "wan", "unet"] = "dit"
    """Model family; selects the adapter that knows the pipeline's components and blocks."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weight and activation dtype. CPUs want float32."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """`auto` picks `cuda` when a GPU is visible, else `cpu`."""
    guidance_scale: float = Field(4.0, ge=0.0, le=50.0)
    """Default classifier-free guidance scale when a request gives none; ≤ 1 disables guidance."""
    threads: int = Field(0, ge=0, le=256)
    """CPU threads for torch (0 = leave torch's default)."""


class ResumeLevel(_Section):
    """One rung of the cross-request cache's ladder: how similar a prompt must be to skip how much."""

    similarity: float = Field(gt=0.0, le=1.0)
    """The least cosine similarity of the prompt embeddings (class models: 1 for the same class, else 0)."""
    skip: float = Field(gt=0.0, lt=1.0)
    """The share of the steps skipped: the request starts from the cached trajectory after this share of its
    steps (rounded to a step; the cache keeps every run's state at each rung's step)."""


class ApproxCache(_Section):
    """Approximate caching across requests (Nirvana, `ditserve/nirvana.py`): a request whose prompt is close to
    an earlier request's starts from that request's trajectory part-way and skips the steps before."""

    enabled: bool = False
    """Off by default: a request then always starts from its own noise."""
    levels: tuple[ResumeLevel, ...] = Field(
        default_factory=lambda: (
            ResumeLevel(similarity=0.999, skip=0.5),
            ResumeLevel(similarity=0.99, skip=0.4),
            ResumeLevel(similarity=0.98, skip=0.3),
            ResumeLevel(similarity=0.95, skip=0.2),
        ),
        min_length=1,
        max_length=8,
    )
    """The ladder: the request starts after the largest `skip` whose `similarity` its best match reaches. The
    defaults are set on digits-flow's pooled text embedding, where prompts for one digit score ≥ 0.978 and for
    different digits ≤ 0.82 (every pair of its 120 training prompts)."""
    max_reuse: int = Field(2, ge=1, le=1_000_000)
    """Requests one kept run may start before it is retired, so that the next similar request runs from its own
    noise and is kept in its place. A start from a kept run gives nearly that run's image (the rest of the steps
    follow a near-identical prompt), so this bounds how many answers share one picture (see nirvana.py,
    "Retirement", for what each setting cost on the digits-flow stream)."""
    max_entries: int = Field(256, ge=1, le=100_000)
    """Finished requests kept, over all API keys; the least recently used goes first."""
    max_bytes: int = Field(64 * 2**20, ge=2**10, le=2**36)
    """Bytes of kept latents (the states of every rung, and the model outputs there), over all API keys."""
    compression: Literal["none", "float16", "int8"] = "none"
    """How kept states are stored (FlexCache, `ditserve/video/flexcache.py`): as computed, in half precision, or
    as int8 with one scale per frame (a quarter of the bytes; each value within 1/254 of its frame's largest)."""
    replacement: Literal["lru", "gdsf"] = "lru"
    """Which entry the bounds evict: the least recently used, or (FlexCache) the one of least model compute saved
    per kept byte — its starts so far plus one, times the steps and pixels its latest rung skips, over its bytes —
    aged so that a new entry outranks ones that stopped being used (greedy-dual-size-frequency)."""


class AccelPlan(_Section):
    """The strategies that run the model: one per registry, each `{name: ..., <its fields>}`."""

    model_config = ConfigDict(validate_default=True)  # defaults are mappings too: resolve them like given ones

    sampler: SerializeAsAny[StrategyConfig] = Field(default_factory=lambda: {"name": "ddim"})
    """The denoising sampler (`ditserve strategies` lists them) and its steps."""
    cache: SerializeAsAny[StrategyConfig] = Field(default_factory=lambda: {"name": "none"})
    """Feature caching across denoising steps."""
    quant: SerializeAsAny[StrategyConfig] = Field(default_factory=lambda: {"name": "none"})
    """Weight/activation quantization and the attention backend."""
    parallel: SerializeAsAny[StrategyConfig] = Field(default_factory=lambda: {"name": "none"})
    """Multi-process runner; `none` runs in this process."""
    approx_cache: ApproxCache = Field(default_factory=ApproxCache)
    """Starting requests part-way from earlier similar ones (off by default)."""
    tuned: str | None = None
    """A tuned-plans file written by `ditserve tune` (relative paths: against this YAML's folder): a request that
    sets neither sampler nor cache runs under the tuned sampler and cache for its steps and guidance, where the
    file has one (ditserve/tuned.py). Checked at load: it must exist, parse and be tuned for this model."""
    compile: Literal["none", "regional", "full", "graphs"] = "none"
    """`torch.compile` the transformer: `regional` (each block; block-level caches run around the compiled
    blocks), `full` (the whole transformer; with a cache it runs `regional`), `graphs` (`full` with CUDA graphs,
    for small fixed-shape models on a GPU). Compiled at load, with one warm-up request (ditserve/compile.py)."""

    @field_validator("sampler", "cache", "quant", "parallel", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info) -> StrategyConfig:
        registry = {"sampler": SAMPLERS, "cache": CACHES, "quant": QUANTIZERS, "parallel": PARALLEL}[info.field_name]
        return registry.parse(value, f"plan.{info.field_name}")


class ServeLimits(_Section):
    """What one request may ask for and how much work the server accepts."""

    max_steps: int = Field(200, ge=1, le=1000)
    """Most denoising steps a request may ask for."""
    max_batch: int = Field(16, ge=1, le=256)
    """Most images per request, and per batched model call."""
    max_side: int = Field(1024, ge=8, le=8192)
    """Largest height or width in pixels (for families whose size can change)."""
    max_frames: int = Field(81, ge=1, le=1024)
    """Most frames per video (video models; Wan's own default is 81); image models take no frame count."""
    max_prompt_chars: int = Field(2000, ge=1, le=100_000)
    """Longest prompt, in characters."""
    max_queue: int = Field(64, ge=1, le=100_000)
    """Requests waiting beyond this are refused (HTTP 429 / RESOURCE_EXHAUSTED)."""
    batch_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)
    """How long the scheduler waits for another compatible request before it runs a batch that is not full; the
    wait starts again at each one that joins, so a stream of arrivals (clients answered by the previous batch
    coming back) fills the batch, while a lone request waits this long once."""
    batch_wait_max_ms: float = Field(100.0, ge=0.0, le=10_000.0)
    """The longest a batch waits to fill in all, however steadily requests keep arriving (never less than
    `batch_wait_ms`)."""
    batch_images: int = Field(8, ge=1, le=256)
    """Images the scheduler packs into one batched model call (requests with more run alone)."""
    batching: Literal["continuous", "static"] = "continuous"
    """`continuous`: the batch is formed again at every denoising step, so a request joins the running one at
    the next step and leaves as soon as it is done (requests whose cache or sampler cannot run beside other
    steps still batch statically by plan); `static`: a batch of requests with the same plan runs to its end.
    `batch_wait_ms` and `batch_wait_max_ms` apply to static batches only."""
    pad_batches: bool = False
    """Pad every batched model call to a fixed shape so an image's arithmetic never depends on its batch-mates:
    a batched image is then bit-identical to the same request served alone. Continuous batching pads every
    call to 2 × `batch_images` rows, static batching every batch to `batch_images` images: a lone request
    then costs a full batch."""
    timeout_s: float = Field(120.0, gt=0.0, le=86_400.0)
    """A request still unfinished after this many seconds is cancelled."""
    allow_overrides: bool = True
    """Whether a request may override the plan's sampler and cache (for side-by-side comparisons)."""
    overrides: dict[Literal["sampler", "cache"], tuple[str, ...]] = Field(
        default_factory=lambda: {"sampler": ("*",), "cache": ("*",)}
    )
    """Per plan section, the strategies a request may pick there (`*`: any registered one), e.g.
    `{sampler: ["*"], cache: [none, fora]}`; a section left out cannot be overridden. `quant` and `parallel`
    change the loaded weights and processes, so requests never override them. Needs `allow_overrides`."""

    @field_validator("overrides")
    @classmethod
    def _known_strategies(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for section, names in value.items():
            registry = {"sampler": SAMPLERS, "cache": CACHES}[section]
            for name in names:
                if name != "*" and name not in registry:
                    known = ", ".join(registry.names())
                    raise ValueError(f"{section}: unknown {registry.kind} {name!r}; known: *, {known}")
        return value


class ModelConfig(_Section):
    """A served model: what to load, the plan that accelerates it, and the limits of its API."""

    model: ModelSpec
    plan: AccelPlan = Field(default_factory=AccelPlan)
    limits: ServeLimits = Field(default_factory=ServeLimits)
    source: Path | None = Field(None, exclude=True)
    """The YAML file this config was read from, if any (relative model paths resolve against it)."""

    def resolved_path(self) -> str:
        """The model path with a relative local path made absolute against the YAML's folder."""
        path = self.model.path
        if path.startswith(BUILTIN_PREFIX) or Path(path).is_absolute() or self.source is None:
            return path
        return str((self.source.parent / path).resolve())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def parse_config(data: Any, source: Path | None = None) -> ModelConfig:
    """Validate a mapping (as read from YAML) into a `ModelConfig`."""
    if not isinstance(data, dict):
        raise ConfigError([f"the config must be a mapping with `model`, `plan`, `limits`; got {type(data).__name__}"])
    config = validate_model(ModelConfig, data)
    config = config.model_copy(update={"source": source}) if source else config
    read_tuned(config)  # a bad tuned-plans file fails at load, not at the first request
    return config


def load_config(path: str | Path) -> ModelConfig:
    """Read and validate a model config: a YAML path, or `builtin:<name>` for a shipped one."""
    if str(path).startswith(BUILTIN_PREFIX):
        name = str(path)[len(BUILTIN_PREFIX) :]
        file = Path(__file__).parent / "configs" / f"{name}.yaml"
        if not file.is_file():
            known = sorted(p.stem for p in file.parent.glob("*.yaml"))
            raise ConfigError([f"unknown built-in config {name!r}; known: {', '.join(known)}"])
        return parse_config(yaml.safe_load(file.read_text()))
    file = Path(path)
    if not file.is_file():
        raise ConfigError([f"config file {str(file)!r} does not exist"])
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"{file}: not valid YAML: {err}"]) from None
    return parse_config(data, source=file.resolve())
