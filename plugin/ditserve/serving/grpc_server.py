"""The gRPC API (`ditserve.v1.DiffusionService`) on a grpc.aio server with its own thread and event loop.

BentoML 1.4 has no gRPC for `@bentoml.service`, so the service starts this server over the same
`Runtime` (engine, scheduler, metrics): limits, queue and batching are shared with REST. Standard
health checking reports NOT_SERVING until warm-up is done and again while draining; reflection is on.
A client that cancels, disconnects or passes its deadline has its request cancelled at the next step.
Image models answer `Generate` and `GenerateStream`, video models `GenerateVideo`; each refuses the other kind
with INVALID_ARGUMENT, naming the call to make.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ditserve.errors import RequestError
from ditserve.serving.auth import ApiKeyInterceptor
from ditserve.serving.parsing import from_proto
from ditserve.serving.progress import ProgressRelay
from ditserve.serving.runtime import Runtime
from ditserve.serving.schemas import failure, image_fields, preview_image
from ditserve.serving.settings import SETTINGS
from ditserve.v1 import diffusion_pb2 as pb
from ditserve.v1 import diffusion_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["DiffusionService"].full_name
MAX_SEND = 256 << 20
"""Largest response message (256 MiB): a full batch of raw float32 images at the largest size."""
WATCH_S = 0.5
"""How often health checks whether the engine is still alive."""


def server_options(settings=SETTINGS) -> list[tuple[str, int]]:
    """Message and connection bounds: requests as large as a REST body at most, idle and old connections
    closed (with a GOAWAY; clients reconnect on their next call), as uvicorn's timeouts do for REST."""
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", MAX_SEND),
        ("grpc.max_connection_idle_ms", int(settings.grpc_idle_s * 1000)),
        ("grpc.max_connection_age_ms", int(settings.grpc_max_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.drain_s * 1000)),
    ]


def mirrored(message_class, values, **given):
    """A `message_class` with the fields in `given`, and every other field it declares taken by name from
    `values` (a dict, or an object's attributes): the proto names its fields as the Python side does, so a
    field added to both is carried without a change here."""
    get = values.__getitem__ if isinstance(values, dict) else lambda name: getattr(values, name)
    fields = {f.name: get(f.name) for f in message_class.DESCRIPTOR.fields if f.name not in given}
    return message_class(**fields, **given)


def to_response(model: str, result, fmt: str) -> pb.GenerateResponse:
    stats = mirrored(pb.Stats, result.stats)
    images = [pb.Image(**image_fields(i, seed, fmt)) for i, seed in zip(result.images, result.seeds, strict=True)]
    return pb.GenerateResponse(model=model, images=images, stats=stats)


def progress(update) -> pb.Progress:
    """A progress update as the streaming calls send it: previews as PNGs (a video's first frame)."""
    previews = [] if update.previews is None else update.previews
    images = [pb.Image(**image_fields(preview_image(p), 0, "png")) for p in previews]
    return pb.Progress(step=update.step, total=update.total, elapsed_s=update.elapsed, previews=images)


class DiffusionServicer(pb_grpc.DiffusionServiceServicer):
    """Translates protobuf to `GenerationRequest` and back; the runtime's scheduler does the work."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _fail(self, context, err: BaseException):
        f = failure(err)
        self.runtime.metrics_count("grpc", f.status)
        await context.abort(getattr(grpc.StatusCode, f.grpc), f.message)

    def _submit(self, body, context, video: bool = False, **options):
        engine = self.runtime.engine
        if engine is not None and engine.makes_video != video:
            call, kind = ("GenerateVideo", "videos") if engine.makes_video else ("Generate or GenerateStream", "images")
            raise RequestError("model", f"model {self.runtime.name!r} makes {kind}: call {call}")
        remaining = context.time_remaining()
        return self.runtime.submit(body.to_request(), body.model, timeout_s=remaining, **options)

    async def Generate(self, request, context):
        try:
            body = from_proto(request)
            ticket = self._submit(body, context)
        except Exception as err:  # refused before any work: its status, counted
            return await self._fail(context, err)
        try:
            result = await asyncio.wrap_future(ticket.future)
        except asyncio.CancelledError:  # the client cancelled, disconnected or ran out of time
            self.runtime.scheduler.cancel(ticket)
            self.runtime.metrics_count("grpc", "cancelled")
            raise
        except Exception as err:  # failed while running: its status, counted
            return await self._fail(context, err)
        self.runtime.metrics_count("grpc", "ok")
        return to_response(self.runtime.name, result, body.format)

    async def _stream(self, request, context, event, answer, video: bool = False):
        """A streaming call: `event(progress=...)` after every step while the request runs, then the messages
        `answer(body, result)` makes of the result; a refusal or failure ends it with its status, counted."""
        relay = ProgressRelay()
        try:
            body = from_proto(request)
            ticket = self._submit(
                body, context, video=video, on_progress=relay.on_progress, preview_every=body.preview_every
            )
        except Exception as err:  # refused before any work: its status, counted
            await self._fail(context, err)
            return
        future = asyncio.wrap_future(ticket.future)
        try:
            async for u in relay.until_done(future):
                yield event(progress=progress(u))
            try:
                result = future.result()
            except Exception as err:  # failed while running: its status, counted
                await self._fail(context, err)
                return
            self.runtime.metrics_count("grpc", "ok")
            for message in answer(body, result):
                yield message
        except asyncio.CancelledError:
            self.runtime.scheduler.cancel(ticket)
            self.runtime.metrics_count("grpc", "cancelled")
            raise

    async def GenerateStream(self, request, context):
        def answer(body, result):
            yield pb.GenerateEvent(result=to_response(self.runtime.name, result, body.format))

        async for message in self._stream(request, context, pb.GenerateEvent, answer):
            yield message

    async def GenerateVideo(self, request, context):
        def answer(body, result):
            for k, (video, seed) in enumerate(zip(result.videos, result.seeds, strict=True)):
                for index, frame in enumerate(video):
                    image = pb.Image(**image_fields(frame, seed, body.format))
                    yield pb.VideoEvent(frame=pb.VideoFrame(video=k, index=index, image=image))
            done = pb.VideoDone(model=self.runtime.name, frames=result.videos.shape[1], seeds=result.seeds)
            done.stats.CopyFrom(mirrored(pb.Stats, result.stats))
            yield pb.VideoEvent(done=done)

        async for message in self._stream(request, context, pb.VideoEvent, answer, video=True):
            yield message

    def _model_info(self) -> pb.ModelInfo:
        info = self.runtime.describe()
        limits = self.runtime.config.limits
        strategies = [
            pb.StrategyInfo(
                kind=s["kind"],
                name=s["name"],
                about=s["about"],
                active=s["active"],
                fields=[
                    pb.StrategyField(name=f["name"], type=f["type"], doc=f["doc"], default_json=_json(f["default"]))
                    for f in s["fields"]
                ],
            )
            for s in self.runtime.strategies()
        ]
        message = pb.ModelInfo(
            name=self.runtime.name,
            family=self.runtime.config.model.family,
            conditioning=info.get("conditioning", ""),
            labels={int(k): v for k, v in info.get("labels", {}).items()},
            default_size=info.get("default_size", []),
            strategies=strategies,
            loras=info.get("loras", []),
            default_frames=info.get("default_frames") or 0,
            limits=mirrored(
                pb.Limits, limits, overrides=[pb.Overridable(section=k, names=v) for k, v in limits.overrides.items()]
            ),
        )
        message.plan.update(self.runtime.config.plan.model_dump(mode="json"))
        return message

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[self._model_info()])

    async def GetModel(self, request, context):
        if request.name and request.name != self.runtime.name:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"model {request.name!r} is not served here; try {self.runtime.name!r}"
            )
        return self._model_info()


def _json(value) -> str:
    import json

    return json.dumps(value, default=str)


class GrpcServer:
    """A grpc.aio server on its own thread and event loop, over a `Runtime`."""

    def __init__(self, runtime: Runtime, host: str = "127.0.0.1", port: int = 0) -> None:
        self.runtime, self.host, self.port = runtime, host, port
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._serving = False
        self._watch: asyncio.Task | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ditserve-grpc", daemon=True)

    def start(self) -> int:
        """Start serving (NOT_SERVING until `set_serving(True)`); returns the bound port."""
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise RuntimeError(f"gRPC server could not bind {self.host}:{self.port}: {self._error}")
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as err:  # reported by start()
            self._error = err
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    async def _serve(self) -> None:
        def refused(method: str) -> None:
            if method.endswith(("/Generate", "/GenerateStream", "/GenerateVideo")):  # the counted generation calls
                self.runtime.metrics_count("grpc", "unauthenticated")

        # Without a key every call is let in: no interceptor, whose coroutine layer each call would pay for.
        interceptors = [ApiKeyInterceptor(self.runtime, refused)] if self.runtime.api_key else []
        server = grpc.aio.server(interceptors=interceptors, options=server_options())
        pb_grpc.add_DiffusionServiceServicer_to_server(DiffusionServicer(self.runtime), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
        )
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        if self.port == 0:
            raise OSError("port in use")
        await self._set(False)
        await server.start()
        self._server = server
        self._watch = asyncio.ensure_future(self._follow_engine())

    async def _follow_engine(self) -> None:
        """NOT_SERVING once the engine dies (a rank of a multi-process runner), as /livez and /readyz report it."""
        while True:
            await asyncio.sleep(WATCH_S)
            if self._serving and not self.runtime.alive:
                await self._set(False)

    async def _set(self, serving: bool) -> None:
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set("", status)
        await self._health.set(SERVICE, status)

    def set_serving(self, serving: bool) -> None:
        asyncio.run_coroutine_threadsafe(self._set(serving), self.loop).result(10)

    def stop(self, grace: float = 60.0) -> None:
        """NOT_SERVING, refuse new calls, let running ones finish (up to `grace` seconds), stop the thread."""
        if self._server is None:
            return
        self.set_serving(False)
        asyncio.run_coroutine_threadsafe(self._server.stop(grace), self.loop).result(grace + 10)
        self.loop.call_soon_threadsafe(self._watch.cancel)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
