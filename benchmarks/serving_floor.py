"""The floor of the serving overhead: the bare transports around the same engine call, in one BentoML process.

A trivial Starlette app mounted in a BentoML service (as ditserve's REST is) and a grpc.aio server on a thread
of that process (as ditserve's gRPC is) answer `POST /generate` and `Generate` by running `Engine.generate` on a
worker thread and returning its PNG: no validation path, limits, scheduler, step loop or metrics. Their paired
overhead (latency minus the engine time they report) is what the transports, one thread hand-off each way
and the PNG cost on this machine when the answer takes the engine's time. A transport that answers at once
measures lower: nothing in the client or the server has slept and gone cold in between (on the 2-core VM a
bare grpc.aio round trip took 0.6 ms back to back, 2.0 ms after the client idled 45 ms). benchmarks/serving.py
starts this server and measures it beside ditserve's, call for call.

    cd benchmarks && DITSERVE_CONFIG=model.yaml FLOOR_GRPC_PORT=50052 bentoml serve serving_floor:Floor --port 3001
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ditserve.request import GenerationRequest
from ditserve.serving.schemas import result_json

ENGINE: list = []
"""The loaded engine (the service loads it at start; the app and the gRPC servicer read it)."""
WORKER = ThreadPoolExecutor(1, thread_name_prefix="floor-engine")
"""One engine thread, as ditserve's scheduler has."""


def run(fields: dict):
    return ENGINE[0].generate(GenerationRequest(**fields))


async def generate(request: Request) -> JSONResponse:
    fields = json.loads(await request.body())
    result = await asyncio.get_running_loop().run_in_executor(WORKER, run, fields)
    return JSONResponse(result_json("floor", result, "png"))


app = Starlette(routes=[Route("/generate", generate, methods=["POST"])])


def serve_grpc(port: int) -> None:
    """A grpc.aio server with ditserve's `Generate` on this thread's own event loop."""
    import grpc

    from ditserve.serving.grpc_server import to_response
    from ditserve.v1 import diffusion_pb2_grpc as pb_grpc

    class Servicer(pb_grpc.DiffusionServiceServicer):
        async def Generate(self, request, context):
            fields = {"class_label": request.class_label, "seed": request.seed, "steps": request.steps}
            result = await asyncio.get_running_loop().run_in_executor(WORKER, run, fields)
            return to_response("floor", result, "png")

    async def main() -> None:
        server = grpc.aio.server()
        pb_grpc.add_DiffusionServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="floor", workers=1, traffic={"timeout": 600}, metrics={"enabled": False})
class Floor:
    """Loads the engine of $DITSERVE_CONFIG, then serves REST here and gRPC on $FLOOR_GRPC_PORT."""

    def __init__(self) -> None:
        from ditserve.engine import Engine

        ENGINE.append(Engine.from_config(os.environ["DITSERVE_CONFIG"]))
        port = int(os.environ["FLOOR_GRPC_PORT"])
        threading.Thread(target=serve_grpc, args=(port,), name="floor-grpc", daemon=True).start()
