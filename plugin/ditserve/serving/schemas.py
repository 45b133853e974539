"""Request and response bodies of both transports, and the error each failure becomes on each.

The request body is `GenerationRequest`'s fields plus transport options (model, format, previews,
timeout); numbers are bounded here as well as by the model's limits, which the engine checks. Types are
strict: `"20"` or `true` is not an int. No torch here: the transports load without it (results are
encoded by functions that import it when they run).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ditserve.errors import Cancelled, RequestError
from ditserve.request import MAX_SEED, GenerationRequest
from ditserve.serving import png, video_files
from ditserve.serving.settings import SETTINGS

if TYPE_CHECKING:
    import torch

    from ditserve.request import GenerationResult


class GenerateBody(BaseModel):
    """`POST /generate` and `/generate/stream`, `/tasks`, gRPC `Generate`: what to draw and how to return it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    model: str | None = Field(None, max_length=64)
    """The served model's name (optional: a server serves one model)."""
    prompt: str | None = Field(None, max_length=100_000)
    class_label: int | None = Field(None, ge=0, le=2**31 - 1)
    steps: int | None = Field(None, ge=1, le=100_000)
    guidance_scale: float | None = Field(None, ge=0.0, le=100.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_images: int = Field(1, ge=1, le=100_000)
    height: int | None = Field(None, ge=1, le=100_000)
    width: int | None = Field(None, ge=1, le=100_000)
    num_frames: int | None = Field(None, ge=1, le=100_000)
    """Video models: frames per video (default: the model's); image models refuse it."""
    sampler: dict[str, Any] | None = None
    """Override of the plan's sampler, `{"name": ..., fields}`, where the model config allows it."""
    cache: dict[str, Any] | None = None
    """Override of the plan's cache, `{"name": ..., fields}`, where the model config allows it."""
    init_image: bytes | None = None
    """Edits: the PNG to start from (REST: base64 in the JSON; gRPC: bytes). See `GenerationRequest`."""
    mask: bytes | None = None
    """Edits: a PNG of the init image's size; transparent (or light) where the image is generated."""
    strength: float | None = Field(None, gt=0.0, le=1.0)
    """Edits: the share of the steps the model runs (default 0.8, with a mask 1.0)."""
    lora: str | None = Field(None, min_length=1, max_length=64)
    """A LoRA adapter of the model by name (`GET /models` lists them); default: the base model."""
    lora_scale: float | None = Field(None, ge=0.0, le=2.0)
    """How strongly the adapter applies; default 1. Needs `lora`."""
    approx_cache: bool = True
    """Where the model's plan enables the cross-request cache: false starts this request from its own noise and
    keeps nothing of it (see `GenerationRequest.approx_cache`)."""
    format: Literal["json", "png", "raw", "mp4", "webp", "gif"] = "json"
    """`json`: PNGs (a video model's: lossless animated WebPs) in base64; `png`: the one image as image/png; `raw`:
    exact float32 pixels in base64; `mp4`, `webp`, `gif` (video models): the one video as that file, or in
    JSON from the stream and task routes."""
    fps: int = Field(8, ge=1, le=120)
    """Video files: frames per second they play at."""
    preview_every: int = Field(0, ge=0, le=100_000)
    """Streaming: a preview image every k steps (0: none)."""
    timeout_s: float | None = Field(None, gt=0, le=86_400)
    """Give up after this many seconds (capped by the model's `timeout_s`)."""

    def to_request(self) -> GenerationRequest:
        fields = self.model_dump(exclude={"model", "format", "fps", "preview_every", "timeout_s"})
        return GenerationRequest(**fields)


RAW_MIME = "application/x-float32"


def image_fields(image: torch.Tensor, seed: int, fmt: str) -> dict:
    """One (C, H, W) image in [0, 1]: its bytes (PNG, or exact float32 for "raw") and what describes them,
    named as the gRPC `Image` names its fields."""
    c, h, w = image.shape
    if fmt == "raw":
        data, mime = image.contiguous().numpy().astype("<f4").tobytes(), RAW_MIME
    else:
        data, mime = png.encode(image), "image/png"
    return {"seed": seed, "mime_type": mime, "channels": c, "height": h, "width": w, "data": data}


def encode_image(image: torch.Tensor, seed: int, fmt: str) -> dict:
    """One (C, H, W) image in [0, 1] as JSON: PNG or exact float32 bytes, base64."""
    fields = image_fields(image, seed, fmt)
    fields["b64"] = base64.b64encode(fields.pop("data")).decode()
    return fields


FILE_FORMATS = {"png": "image/png", **video_files.MIME_TYPES}
"""Formats `/generate` answers with the one image or video as a file instead of JSON."""


def check_format(fmt: str, video: bool) -> None:
    """Refuse an output format the served model cannot make: video files from an image model, PNG from a video one."""
    if video and fmt == "png":
        raise RequestError("format", "this model makes videos: ask for json, raw, mp4, webp or gif")
    if not video and fmt in video_files.MIME_TYPES:
        raise RequestError("format", "this model makes images: ask for json, png or raw")


def preview_image(preview: torch.Tensor) -> torch.Tensor:
    """A progress preview as one (C, H, W) image: a video's first frame."""
    return preview[0] if preview.ndim == 4 else preview


def video_fields(video: torch.Tensor, seed: int, fmt: str, fps: int) -> dict:
    """One (frames, C, H, W) video in [0, 1]: its bytes and what describes them. `raw` is exact float32 frames,
    `json` a lossless animated WebP, `mp4`/`webp`/`gif` that file; every encoding at most
    `DITSERVE_MAX_VIDEO_BYTES`."""
    frames, c, h, w = video.shape
    limit = SETTINGS.max_video_bytes
    if fmt == "raw":
        data, mime = video_files.bounded(video.contiguous().numpy().astype("<f4").tobytes(), fmt, limit), RAW_MIME
    else:
        container = "webp" if fmt == "json" else fmt
        data, mime = video_files.encode(video, container, fps, limit), video_files.MIME_TYPES[container]
    return {"seed": seed, "mime_type": mime, "frames": frames, "channels": c, "height": h, "width": w, "data": data}


def encode_video(video: torch.Tensor, seed: int, fmt: str, fps: int) -> dict:
    """One video as JSON: its file or float32 bytes in base64, with `fps`."""
    fields = video_fields(video, seed, fmt, fps)
    fields["b64"] = base64.b64encode(fields.pop("data")).decode()
    return fields | {"fps": fps}


def stats_json(result: GenerationResult) -> dict:
    s = result.stats
    return {
        "steps": s.steps,
        "batch_size": s.batch_size,
        "model_evaluations": s.model_evaluations,
        "block_evaluations": s.block_evaluations,
        "block_evaluations_full": s.block_evaluations_full,
        "attention_evaluations": s.attention_evaluations,
        "attention_evaluations_full": s.attention_evaluations_full,
        "token_evaluations": s.token_evaluations,
        "token_evaluations_full": s.token_evaluations_full,
        "resumed_from": s.resumed_from,
        "seconds": {k: round(v, 6) for k, v in s.seconds.items()},
    }


def result_json(model: str, result: GenerationResult, fmt: str, fps: int = 8) -> dict:
    """The answer's JSON: images, or a video model's videos (`fps`: what their files play at)."""
    if result.videos is not None:
        videos = [encode_video(video, seed, fmt, fps) for video, seed in zip(result.videos, result.seeds, strict=True)]
        return {"model": model, "videos": videos, "stats": stats_json(result)}
    images = [encode_image(image, seed, fmt) for image, seed in zip(result.images, result.seeds, strict=True)]
    return {"model": model, "images": images, "stats": stats_json(result)}


@dataclass(frozen=True)
class Failure:
    """A failure as both transports report it."""

    http: int
    grpc: str
    """A `grpc.StatusCode` name."""
    status: str
    """The metrics label."""
    message: str
    field: str | None = None

    def json(self) -> dict:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


class NotReady(RuntimeError):
    """The engine is still loading or warming up."""


class UnknownModel(LookupError):
    """A request named a model this server does not serve."""


def failure(err: BaseException) -> Failure:
    """Map an exception raised while admitting or running a request to its status on each transport."""
    if isinstance(err, RequestError):
        return Failure(400, "INVALID_ARGUMENT", "invalid", str(err), err.field)
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return Failure(400, "INVALID_ARGUMENT", "invalid", problems, field)
    if isinstance(err, UnknownModel):
        return Failure(404, "NOT_FOUND", "not_found", str(err), "model")
    if isinstance(err, NotReady):
        return Failure(503, "UNAVAILABLE", "unavailable", str(err))
    if isinstance(err, Cancelled):
        if err.reason == "deadline exceeded":
            return Failure(504, "DEADLINE_EXCEEDED", "deadline", str(err))
        return Failure(409, "CANCELLED", "cancelled", str(err))
    from ditserve.parallel.launcher import RankFailure  # here, not at the top: these modules load torch
    from ditserve.scheduler import QueueFull, ShuttingDown

    if isinstance(err, QueueFull):
        return Failure(429, "RESOURCE_EXHAUSTED", "queue_full", str(err))
    if isinstance(err, ShuttingDown):
        return Failure(503, "UNAVAILABLE", "unavailable", str(err))
    if isinstance(err, RankFailure):  # the engine is down until a restart: not "serves the next request"
        return Failure(503, "UNAVAILABLE", "unavailable", str(err))
    return Failure(
        500,
        "INTERNAL",
        "error",
        f"the request failed inside the model ({type(err).__name__}: {err}); "
        "the server reset its state and serves the next request",
    )
