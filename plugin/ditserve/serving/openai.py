"""The OpenAI-compatible image route: `POST /v1/images/generations`, as the official `openai` client calls it.

Supported: `prompt`, `n`, `size` ("WxH", within the model's limits), `response_format` "b64_json",
`model` (the served model's name). `seed`, `steps`, `guidance_scale` may be added as extra body fields.
Unsupported OpenAI fields (`quality`, `style`, "url" responses, ...) are refused with a 400 that names them.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

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


def to_request(body: ImagesBody) -> GenerationRequest:
    height = width = None
    if body.size is not None:
        match = SIZE.match(body.size)
        if match is None:
            from ditserve.errors import RequestError

            raise RequestError("size", f"must look like '16x16' (width x height), got {body.size!r}")
        width, height = int(match[1]), int(match[2])
    return GenerationRequest(
        prompt=body.prompt,
        num_images=body.n,
        height=height,
        width=width,
        seed=body.seed,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
    )


def images_generations(runtime, wait_for, read_body):
    async def handler(request):
        body = await read_body(request, ImagesBody)
        ticket = runtime.submit(to_request(body), body.model)
        result = await wait_for(runtime, request, ticket)
        data = [
            {"b64_json": encode_image(image, seed, "png")["b64"], "revised_prompt": body.prompt}
            for image, seed in zip(result.images, result.seeds, strict=True)
        ]
        return JSONResponse({"created": int(time.time()), "data": data})

    return handler


def list_models(runtime):
    async def handler(request):
        return JSONResponse(
            {"object": "list", "data": [{"id": runtime.name, "object": "model", "owned_by": "ditserve"}]}
        )

    return handler
