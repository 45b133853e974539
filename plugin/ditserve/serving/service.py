"""The BentoML service: one model, REST (mounted Starlette app) and gRPC over one `Runtime`.

Thin on purpose: it reads its settings from the environment (set by `ditserve serve` or a Bento's
bentofile.yaml; the transport settings are listed in settings.py), starts the gRPC server and the
engine's background load, and wires readiness, metrics, limits and shutdown into BentoML's hooks.

    DITSERVE_CONFIG         model config YAML or builtin:<name>      (default builtin:digits-dit)
    DITSERVE_API_KEY        if set, both transports (and /metrics) require it
    DITSERVE_WARMUP_ROUNDS  warm-up batches before ready             (default 1)

A Bento's `args` may set `gpu: <count>` (bentos/digits-gpu): the service then asks BentoML for that
many GPUs.
"""

from __future__ import annotations

import logging
import signal
import threading

import bentoml

from ditserve.serving import connections
from ditserve.serving.body_limit import BodyLimit
from ditserve.serving.http_app import build_app
from ditserve.serving.route_metrics import RouteMetrics
from ditserve.serving.runtime import Runtime
from ditserve.serving.settings import SETTINGS

log = logging.getLogger(__name__)

runtime = Runtime.from_env()
"""Built at import (config only, nothing heavy), so the mounted app and the service share it."""
app = build_app(runtime)
connections.install()  # uvicorn starts after this module is imported: its connections get our timeouts
GPUS = int(getattr(bentoml.use_arguments(), "gpu", 0))


@bentoml.asgi_app(app, path="/")
@bentoml.service(
    name="ditserve",
    traffic={"timeout": 3600},
    workers=1,
    metrics={"enabled": False},  # BentoML labels its HTTP metrics with raw paths; RouteMetrics replaces them
    **({"resources": {"gpu": GPUS}} if GPUS else {}),
)
class DiffusionServer:
    """Serves one diffusion-transformer model over REST and gRPC."""

    def __init__(self) -> None:
        from ditserve.serving.grpc_server import GrpcServer

        self.runtime = runtime
        self.grpc = GrpcServer(runtime, SETTINGS.grpc_host, SETTINGS.grpc_port)
        bound = self.grpc.start()
        log.info("gRPC listening on %s:%d", SETTINGS.grpc_host, bound)
        print(f"ditserve: gRPC on {SETTINGS.grpc_host}:{bound}", flush=True)
        runtime.on_ready(lambda: self.grpc.set_serving(runtime.serving))  # not if SIGTERM came during warm-up
        runtime.start()
        self._drain_on_sigterm()

    def _drain_on_sigterm(self) -> None:
        """On SIGTERM: not ready at once, new requests answered 503 / UNAVAILABLE "shutting down" while the
        admitted ones finish, then the HTTP server's own shutdown (uvicorn's handler, installed before the
        service starts), which stops listening and runs `drain`. Handing over at once instead would close
        the REST listener within a second, so new clients would be refused or reset rather than answered."""
        previous = signal.getsignal(signal.SIGTERM)

        def hand_over(signum) -> None:
            drained = self.runtime.shutdown(SETTINGS.drain_s)
            log.info("SIGTERM: %s; stopping the HTTP server", "drained" if drained else "gave up waiting")
            if callable(previous):
                previous(signum, None)

        def on_sigterm(signum, frame) -> None:
            if self.runtime.draining.is_set():  # a second SIGTERM: stop waiting
                if callable(previous):
                    previous(signum, frame)
                return
            self.runtime.begin_drain()
            self.grpc.set_serving(False)
            threading.Thread(target=hand_over, args=(signum,), name="ditserve-drain", daemon=True).start()

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread: BentoML's own shutdown path (`drain`) still applies
            log.warning("could not install the SIGTERM drain hook; new requests are refused only at shutdown")

    def __is_ready__(self) -> bool:
        return self.runtime.serving

    def __is_alive__(self) -> bool:
        """/livez: false once the engine cannot serve again (a rank of a multi-process runner died or hung)."""
        return self.runtime.alive

    @bentoml.on_shutdown
    def drain(self) -> None:
        """Health NOT_SERVING, refuse new work, let in-flight requests finish, then stop."""
        self.runtime.begin_drain()
        self.grpc.stop(SETTINGS.drain_s)
        drained = self.runtime.shutdown(SETTINGS.drain_s)
        log.info("shutdown: %s", "drained" if drained else "gave up waiting for in-flight requests")


DiffusionServer.add_asgi_middleware(RouteMetrics, metrics=runtime.metrics, routes=app.routes)  # outermost: sees 413s
DiffusionServer.add_asgi_middleware(BodyLimit, limit=SETTINGS.max_body_bytes)
