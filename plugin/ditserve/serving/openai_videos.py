"""The OpenAI-style video routes, as the official `openai` client calls them (`client.videos.create`, `.retrieve`,
`.download_content`) and as SGLang-diffusion serves them: `POST /v1/videos` (multipart/form-data, as the client
sends it, or JSON), `GET /v1/videos/{id}` and `GET /v1/videos/{id}/content` (the MP4).

OpenAI's API is asynchronous: create answers a queued job, which the client polls until `completed`. This server
is synchronous, as its image routes are: create runs the request and answers the finished video object
(`status` "completed", `progress` 100); a request it cannot run is answered with its error status (400 naming the
field, 429, 504, ...) instead of a "failed" job. Finished videos are kept in memory, at most `MAX_KEPT` of them (the
oldest is forgotten first), for retrieve and content; listing, deletion, remixes and thumbnail or spritesheet
variants are not served.

Fields: `prompt`, `model` (the served model's name), `size` ("WxH", within the model's limits), `seconds` (the
clip's length: `seconds` × `fps` frames; default: the model's frame count), and as extra fields `num_frames`
(instead of `seconds`), `fps` (default 8), `seed`, `steps`, `guidance_scale`. `input_reference` (image-to-video)
is refused with a 400 that names it.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import threading
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from ditserve.errors import RequestError
from ditserve.request import MAX_SEED, GenerationRequest
from ditserve.serving.openai import size_fields
from ditserve.serving.schemas import video_fields

MAX_KEPT = 64
"""Finished videos kept for retrieve and content (each at most DITSERVE_MAX_VIDEO_BYTES)."""


class VideosBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    prompt: str = Field(max_length=100_000)
    model: str | None = Field(None, max_length=64)
    size: str | None = Field(None, max_length=16)
    """"WxH" in pixels; default: the model's native size."""
    seconds: str | None = Field(None, max_length=8, pattern=r"^\d{1,4}$")
    """Clip length in whole seconds, a string as OpenAI's API takes it: `seconds` × `fps` frames."""
    num_frames: int | None = Field(None, ge=1, le=100_000)
    """Frames, instead of `seconds` (an extra field)."""
    fps: int = Field(8, ge=1, le=120)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=100_000)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    input_reference: bytes | None = None
    """Refused: the served models are text-to-video."""


def to_request(body: VideosBody) -> GenerationRequest:
    if body.input_reference is not None:
        raise RequestError("input_reference", "this server makes videos from text only; leave input_reference out")
    if body.seconds is not None and body.num_frames is not None:
        raise RequestError("seconds", "give seconds or num_frames, not both")
    frames = body.num_frames if body.seconds is None else int(body.seconds) * body.fps
    if frames == 0:
        raise RequestError("seconds", "must be at least 1")
    return GenerationRequest(
        prompt=body.prompt,
        num_frames=frames,
        seed=body.seed,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
        **size_fields(body.size),
    )


@dataclass(frozen=True)
class KeptVideo:
    """A finished video: OpenAI's video object, and its MP4."""

    about: dict
    mp4: bytes


class KeptVideos:
    """The finished videos by id, oldest forgotten first beyond `MAX_KEPT`; safe from any thread."""

    def __init__(self) -> None:
        self._videos: collections.OrderedDict[str, KeptVideo] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, video: KeptVideo) -> None:
        with self._lock:
            self._videos[video.about["id"]] = video
            while len(self._videos) > MAX_KEPT:
                self._videos.popitem(last=False)

    def get(self, video_id: str) -> KeptVideo:
        with self._lock:
            video = self._videos.get(video_id)
        if video is None:
            raise LookupError(f"no video {video_id!r} (the last {MAX_KEPT} finished videos are kept)")
        return video


def video_routes(runtime, wait_for, read_body, read_form, not_found):
    """The create, retrieve and content handlers over one store of finished videos. `not_found(message)` is the
    transport's 404 error."""
    kept = KeptVideos()

    async def create(request):
        multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
        body = await (read_form(request, VideosBody) if multipart else read_body(request, VideosBody))
        runtime.check_format("mp4")
        ticket = runtime.submit(to_request(body), body.model)
        created = int(time.time())
        result = await wait_for(runtime, request, ticket)
        video = result.videos[0]
        mp4 = (await asyncio.to_thread(video_fields, video, result.seeds[0], "mp4", body.fps))["data"]
        frames, _, height, width = video.shape
        about = {
            "id": f"video_{secrets.token_hex(12)}",
            "object": "video",
            "model": runtime.name,
            "status": "completed",
            "progress": 100,
            "created_at": created,
            "completed_at": int(time.time()),
            "expires_at": None,
            "prompt": body.prompt,
            "size": f"{width}x{height}",
            "seconds": f"{frames / body.fps:g}",
            "remixed_from_video_id": None,
            "error": None,
            "seed": result.seeds[0],
            "num_frames": frames,
            "fps": body.fps,
        }
        kept.add(KeptVideo(about, mp4))
        return JSONResponse(about)

    def find(request) -> KeptVideo:
        try:
            return kept.get(request.path_params["id"])
        except LookupError as err:
            raise not_found(str(err)) from None

    async def retrieve(request):
        return JSONResponse(find(request).about)

    async def content(request):
        video = find(request)
        variant = request.query_params.get("variant", "video")
        if variant != "video":
            raise RequestError("variant", f"only 'video' (the MP4) is served, not {variant!r}")
        return Response(video.mp4, media_type="video/mp4")

    return create, retrieve, content
