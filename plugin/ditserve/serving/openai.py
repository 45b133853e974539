"""The OpenAI-compatible image routes, as the official `openai` client calls them: `POST /v1/images/generations`
(JSON) and `POST /v1/images/edits` (multipart/form-data).

Supported: `prompt`, `n`, `size` ("WxH", within the model's limits), `response_format` "b64_json",
`model` (the served model's name); for edits `image` (a PNG file) and `mask` (a PNG file of the image's size
whose fully transparent pixels mark where the image is edited; without one, the image's own transparent
pixels do). `seed`, `steps`, `guidance_scale`, `lora`, `lora_scale`, `approx_cache` (and for edits `strength`)
may be added as extra fields.
Unsupported OpenAI fields (`quality`, `style`, "url" responses, several images, ...) are refused with a 400
that names them.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from ditserve.edit_images import has_alpha
from ditserve.errors import RequestError
from ditserve.request import MAX_SEED, GenerationRequest
from ditserve.serving.schemas import encode_image

SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImagesBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    prompt: str = Field(max_length=100_000)
    model: str | None = Field(None, max_length=64)
    n: int = Field(1, ge=1, le=100_000)
    size: str | None = Field(None, max_length=16)
    """"WxH" in pixels; default: the model's native size."""
    response_format: Literal["b64_json"] = "b64_json"
    user: str | None = Field(None, max_length=256)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=100_000)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    lora: str | None = Field(None, min_length=1, max_length=64)
    """A LoRA adapter of the model by name (an extra field, as `/generate` takes it)."""
    lora_scale: float | None = Field(None, ge=0, le=2)
    approx_cache: bool = True
    """false: this request neither starts from an earlier similar request's run nor leaves its own, where the plan
    enables the cross-request cache (an extra field, as `/generate` and gRPC field 19 take it)."""


class EditsBody(ImagesBody):
    image: bytes
    """The PNG to edit (one file)."""
    mask: bytes | None = None
    """A PNG of the image's size: fully transparent where the image is edited."""
    strength: float | None = Field(None, gt=0, le=1)
    """Share of the steps the model runs (default 1 with a mask; 0.8 for a whole-image edit)."""


def size_fields(size: str | None) -> dict[str, int | None]:
    """`height` and `width` from OpenAI's "WxH"."""
    if size is None:
        return {"height": None, "width": None}
    match = SIZE.match(size)
    if match is None:
        raise RequestError("size", f"must look like '16x16' (width x height), got {size!r}")
    return {"height": int(match[2]), "width": int(match[1])}


def to_request(body: ImagesBody) -> GenerationRequest:
    return GenerationRequest(
        prompt=body.prompt,
        num_images=body.n,
        seed=body.seed,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
        lora=body.lora,
        lora_scale=body.lora_scale,
        approx_cache=body.approx_cache,
        **size_fields(body.size),
    )


def edit_request(body: EditsBody) -> GenerationRequest:
    """An edit: the mask's transparent pixels are edited; without a mask, the image's own transparent pixels
    (OpenAI's rule), or, for an image without transparency, the whole image at `strength`."""
    mask = body.mask
    if mask is None and has_alpha(body.image, "image"):
        mask = body.image
    if mask is None and body.strength is None:
        raise RequestError(
            "mask",
            "send a mask (transparent where the image is edited), an image with transparent pixels to edit, "
            "or a strength to redraw the whole image",
        )
    return to_request(body).model_copy(update={"init_image": body.image, "mask": mask, "strength": body.strength})


def answer(result, prompt: str) -> JSONResponse:
    data = [
        {"b64_json": encode_image(image, seed, "png")["b64"], "revised_prompt": prompt}
        for image, seed in zip(result.images, result.seeds, strict=True)
    ]
    return JSONResponse({"created": int(time.time()), "data": data})


def images_generations(runtime, wait_for, read_body):
    async def handler(request):
        body = await read_body(request, ImagesBody)
        ticket = runtime.submit(to_request(body), body.model)
        return answer(await wait_for(runtime, request, ticket), body.prompt)

    return handler


def images_edits(runtime, wait_for, read_form):
    async def handler(request):
        body = await read_form(request, EditsBody)
        try:
            ticket = runtime.submit(edit_request(body), body.model)
        except RequestError as err:  # named as this route names the field
            if err.field != "init_image":
                raise
            raise RequestError("image", str(err).removeprefix("init_image: ")) from None
        return answer(await wait_for(runtime, request, ticket), body.prompt)

    return handler


def list_models(runtime):
    async def handler(request):
        return JSONResponse(
            {"object": "list", "data": [{"id": runtime.name, "object": "model", "owned_by": "ditserve"}]}
        )

    return handler
