"""The REST API as a Starlette app, mounted into the BentoML service: generate, stream, tasks, listings,
and `/metrics` (behind the API key when one is set, unless `DITSERVE_METRICS_OPEN=1`).

Every generation request is counted once in `ditserve_requests_total{transport="http",status=...}`.
A client that disconnects while its request waits or runs has the request cancelled. Bodies must be
`application/json`; they are bounded by `BodyLimit` and checked by the shared path in parsing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ditserve.errors import Cancelled, RequestError
from ditserve.serving.auth import key_from
from ditserve.serving.body_limit import BodyTooLarge
from ditserve.serving.parsing import from_form, from_json
from ditserve.serving.progress import ProgressRelay
from ditserve.serving.runtime import Runtime
from ditserve.serving.schemas import (
    FILE_FORMATS,
    GenerateBody,
    encode_image,
    failure,
    image_fields,
    preview_image,
    result_json,
    video_fields,
)
from ditserve.serving.settings import SETTINGS

PLAYGROUND = Path(__file__).parent / "static" / "playground.html"


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str, field: str | None = None) -> None:
        self.status, self.message, self.kind, self.field = status, message, kind, field


def error_response(err: BaseException) -> tuple[JSONResponse, str]:
    if isinstance(err, BodyTooLarge):  # the rest of the body is never read: close the connection
        body = {"error": {"status": "too_large", "field": "body", "message": str(err)}}
        return JSONResponse(body, 413, headers={"connection": "close"}), "too_large"
    if isinstance(err, HttpError):
        body = {"error": {"status": err.kind, "field": err.field, "message": err.message}}
        return JSONResponse(body, err.status), err.kind
    f = failure(err)
    return JSONResponse(f.json(), f.http), f.status


async def read_body(request: Request, schema=GenerateBody):
    """The request's JSON body, checked against `schema` (415 unless it is declared application/json)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        shown = repr(content_type) if content_type else "none"
        raise HttpError(
            415, f"send the body as JSON with `Content-Type: application/json` (got {shown})", "invalid", "content-type"
        )
    return from_json(await request.body(), schema)


MAX_FORM_PARTS = 32
"""Most parts a multipart form may have (the OpenAI edit route takes at most 12 fields, 2 of them files)."""


async def read_form(request: Request, schema):
    """The request's multipart/form-data body (415 otherwise), checked against `schema` as a JSON body is."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        shown = repr(content_type) if content_type else "none"
        raise HttpError(
            415, f"send the body as `Content-Type: multipart/form-data` (got {shown})", "invalid", "content-type"
        )
    try:
        form = await request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS)
    except BodyTooLarge:
        raise
    except Exception as err:  # a malformed multipart body, or too many parts
        raise HttpError(400, f"is not a readable multipart form ({err})", "invalid", "body") from None
    try:
        items = [(name, value if isinstance(value, str) else await value.read()) for name, value in form.multi_items()]
    finally:
        await form.close()
    return from_form(items, schema)


def authorize(runtime: Runtime, request: Request) -> None:
    if runtime.api_key is None:  # open: no header to look for
        return
    if not runtime.check_key(key_from(request.headers)):
        raise HttpError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", "unauthenticated")


async def wait_for(runtime: Runtime, request: Request, ticket):
    """The ticket's result; cancels it if the client disconnects first."""
    future = asyncio.wrap_future(ticket.future)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.2)
            if done:
                return future.result()
            if await request.is_disconnected():
                runtime.scheduler.cancel(ticket)
    finally:
        if not ticket.future.done():
            runtime.scheduler.cancel(ticket)


def body_bound(name: str, kind: str) -> float | None:
    """The `ge`/`gt`/`le` bound `GenerateBody` puts on a field, read from the schema so the two cannot drift."""
    return next((getattr(m, kind) for m in GenerateBody.model_fields[name].metadata if hasattr(m, kind)), None)


def request_bounds(runtime: Runtime) -> dict:
    """What a request may ask of this model, for a form to bound its controls (the playground): the body's bounds,
    the model's limits, defaults and size rule. The server checks every request against them again."""
    engine, config = runtime.engine, runtime.config
    limits, model = config.limits, engine.model
    default = list(engine.adapter.default_size(model))
    multiple = engine.adapter.size_multiple(model)
    square = True
    if engine.adapter.resizable and 2 * multiple <= limits.max_side:
        try:  # DiT unpatchifies a square token grid: the adapter states that rule only as a check, so ask it
            engine.adapter.check_size(model, multiple, 2 * multiple)
            square = False
        except RequestError:
            pass
    return {
        "steps": {"min": 1, "max": limits.max_steps, "default": config.plan.sampler.steps},
        "num_images": {"min": 1, "max": limits.max_batch, "default": 1},
        "guidance_scale": {
            "min": body_bound("guidance_scale", "ge"),
            "max": body_bound("guidance_scale", "le"),
            "default": config.model.guidance_scale,
        },
        "strength": {"above": body_bound("strength", "gt"), "max": body_bound("strength", "le")},
        "size": {
            "default": default,
            "multiple": multiple,
            "max_side": limits.max_side,
            "resizable": engine.adapter.resizable,
            "square": square,
        },
        "prompt_chars": limits.max_prompt_chars,
        "frames": None
        if not engine.makes_video
        else {"min": 1, "max": limits.max_frames, "default": engine.adapter.default_frames(model)},
    }


def build_app(runtime: Runtime) -> Starlette:
    def counted(handler):
        """Authorize, run, map errors to statuses, count the outcome once."""

        async def endpoint(request: Request) -> Response:
            try:
                authorize(runtime, request)
                response = await handler(request)
                status = "ok"
            except Exception as err:  # every failure is answered and counted, never a bare 500
                response, status = error_response(err)
            runtime.metrics_count("http", status)
            return response

        return endpoint

    def guarded(handler):
        """Authorize and map errors, uncounted (listings, task status)."""

        async def endpoint(request: Request) -> Response:
            try:
                authorize(runtime, request)
                return await handler(request)
            except Exception as err:  # answered with its status, never a bare 500
                return error_response(err)[0]

        return endpoint

    async def generate(request: Request) -> Response:
        body = await read_body(request)
        runtime.check_format(body.format)
        if body.format in FILE_FORMATS and body.num_images != 1:
            raise HttpError(
                400,
                f"format {body.format!r} returns one file; ask for num_images 1 or use 'json'",
                "invalid",
                "format",
            )
        ticket = runtime.submit(body.to_request(), body.model, timeout_s=body.timeout_s)
        result = await wait_for(runtime, request, ticket)
        if body.format in FILE_FORMATS:
            fields = (
                image_fields(result.images[0], result.seeds[0], "png")
                if result.videos is None
                else await asyncio.to_thread(video_fields, result.videos[0], result.seeds[0], body.format, body.fps)
            )
            return Response(fields["data"], media_type=fields["mime_type"], headers={"x-seed": str(result.seeds[0])})
        return JSONResponse(await answer_json(result, body.format, body.fps))

    async def answer_json(result, fmt: str, fps: int) -> dict:
        """The result as JSON; videos are encoded off the event loop (an MP4 runs ffmpeg)."""
        if result.videos is None:
            return result_json(runtime.name, result, fmt)
        return await asyncio.to_thread(result_json, runtime.name, result, fmt, fps)

    async def stream(request: Request) -> Response:
        body = await read_body(request)
        runtime.check_format(body.format)
        relay = ProgressRelay()
        ticket = runtime.submit(
            body.to_request(),
            body.model,
            timeout_s=body.timeout_s,
            on_progress=relay.on_progress,
            preview_every=body.preview_every,
        )
        future = asyncio.wrap_future(ticket.future)

        async def events():
            try:
                async for u in relay.until_done(future):
                    event = {"step": u.step, "total": u.total, "elapsed_s": round(u.elapsed, 4)}
                    if u.previews is not None:
                        event["previews"] = [encode_image(preview_image(p), 0, "png")["b64"] for p in u.previews]
                    yield f"event: progress\ndata: {json.dumps(event)}\n\n"
                try:
                    result = future.result()
                except Exception as err:  # any failure of the request is reported as its status
                    f = failure(err)
                    runtime.metrics_count("http", f.status)
                    yield f"event: error\ndata: {json.dumps(f.json())}\n\n"
                    return
                try:
                    answer = await answer_json(result, body.format, body.fps)
                except RequestError as err:  # a video over the encoded size bound
                    f = failure(err)
                    runtime.metrics_count("http", f.status)
                    yield f"event: error\ndata: {json.dumps(f.json())}\n\n"
                    return
                runtime.metrics_count("http", "ok")
                yield f"event: result\ndata: {json.dumps(answer)}\n\n"
            finally:
                if not ticket.future.done():
                    runtime.scheduler.cancel(ticket)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def stream_endpoint(request: Request) -> Response:
        """Counted when the stream ends (in `events`), or here when the request is refused up front."""
        try:
            authorize(runtime, request)
            return await stream(request)
        except Exception as err:  # every failure is answered and counted, never a bare 500
            response, status = error_response(err)
            runtime.metrics_count("http", status)
            return response

    async def submit_task(request: Request) -> Response:
        body = await read_body(request)
        runtime.check_format(body.format)
        ticket = runtime.submit(body.to_request(), body.model, timeout_s=body.timeout_s)
        task = runtime.add_task(ticket, body.format, body.fps)
        return JSONResponse({"id": task.id, "status": task.status}, 202)

    def find(request: Request):
        task = runtime.tasks.get(request.path_params["id"])
        if task is None:
            raise HttpError(
                404, f"no task {request.path_params['id']!r} (finished tasks are kept for a while)", "not_found", "id"
            )
        return task

    def task_json(task) -> dict:
        out = {"id": task.id, "status": task.status, "step": task.step, "total": task.total}
        if task.ticket.future.done() and task.ticket.future.exception() is not None:
            err = task.ticket.future.exception()
            out["error"] = failure(err).json()["error"]
            if isinstance(err, Cancelled):
                out["steps_done"] = err.steps_done
        return out

    async def task_status(request: Request) -> Response:
        return JSONResponse(task_json(find(request)))

    async def task_result(request: Request) -> Response:
        task = find(request)
        if not task.ticket.future.done():
            return JSONResponse(task_json(task), 202)
        err = task.ticket.future.exception()
        if err is not None:
            raise err
        return JSONResponse(await answer_json(task.ticket.future.result(), task.format, task.fps))

    async def task_cancel(request: Request) -> Response:
        task = find(request)
        runtime.scheduler.cancel(task.ticket)
        with contextlib.suppress(Exception):  # answer once the work has really stopped (within one step)
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(task.ticket.future)), 30)
        return JSONResponse(task_json(task))

    def describe() -> dict:
        """The model as `runtime.describe` has it, with its request bounds once the engine is loaded."""
        return runtime.describe() | ({"bounds": request_bounds(runtime)} if runtime.engine else {})

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [describe()]})

    async def model(request: Request) -> Response:
        if request.path_params["name"] != runtime.name:
            raise HttpError(
                404,
                f"model {request.path_params['name']!r} is not served here; try {runtime.name!r}",
                "not_found",
                "name",
            )
        return JSONResponse(describe())

    async def strategies(request: Request) -> Response:
        return JSONResponse({"strategies": runtime.strategies()})

    async def metrics(request: Request) -> Response:
        """Behind the API key like the API (a scraper on a private network may be let in with METRICS_OPEN)."""
        if not SETTINGS.metrics_open:
            try:
                authorize(runtime, request)
            except HttpError as err:
                return error_response(err)[0]
        text = await asyncio.to_thread(runtime.metrics.exposition)  # reads every process's files: off the loop
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def playground(request: Request) -> Response:
        return HTMLResponse(PLAYGROUND.read_text())

    from ditserve.serving.openai import images_edits, images_generations, list_models
    from ditserve.serving.openai_videos import video_routes

    create_video, retrieve_video, video_content = video_routes(
        runtime, wait_for, read_body, read_form, lambda message: HttpError(404, message, "not_found", "id")
    )

    routes = [
        Route("/generate", counted(generate), methods=["POST"]),
        Route("/generate/stream", stream_endpoint, methods=["POST"]),
        Route("/tasks", counted(submit_task), methods=["POST"]),
        Route("/tasks/{id}", guarded(task_status), methods=["GET"]),
        Route("/tasks/{id}/result", guarded(task_result), methods=["GET"]),
        Route("/tasks/{id}/cancel", guarded(task_cancel), methods=["POST"]),
        Route("/models", guarded(models), methods=["GET"]),
        Route("/models/{name}", guarded(model), methods=["GET"]),
        Route("/strategies", guarded(strategies), methods=["GET"]),
        Route("/v1/images/generations", counted(images_generations(runtime, wait_for, read_body)), methods=["POST"]),
        Route("/v1/images/edits", counted(images_edits(runtime, wait_for, read_form)), methods=["POST"]),
        Route("/v1/videos", counted(create_video), methods=["POST"]),
        Route("/v1/videos/{id}", guarded(retrieve_video), methods=["GET"]),
        Route("/v1/videos/{id}/content", guarded(video_content), methods=["GET"]),
        Route("/v1/models", guarded(list_models(runtime)), methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/playground", playground, methods=["GET"]),
        Route("/", lambda request: RedirectResponse("/playground"), methods=["GET"]),
    ]
    return Starlette(routes=routes)
