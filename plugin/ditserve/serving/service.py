"""The BentoML service: one model, REST (mounted Starlette app) and gRPC over one `Runtime`.

Thin on purpose: it reads its settings from the environment (set by `ditserve serve` or a Bento's
bentofile.yaml), starts the gRPC server and the engine's background load, and wires readiness,
metrics and shutdown into BentoML's hooks.

    DITSERVE_CONFIG         model config YAML or builtin:<name>      (default builtin:digits-dit)
    DITSERVE_GRPC_HOST      gRPC bind address                        (default 127.0.0.1)
    DITSERVE_GRPC_PORT      gRPC port, 0 for any free one            (default 50051)
    DITSERVE_API_KEY        if set, both transports require it
    DITSERVE_WARMUP_ROUNDS  warm-up batches before ready             (default 1)
    DITSERVE_DRAIN_S        seconds in-flight requests get at shutdown (default 60)
"""

from __future__ import annotations

import logging
import os
import signal

import bentoml

from ditserve.serving.http_app import build_app
from ditserve.serving.runtime import Runtime

log = logging.getLogger(__name__)

runtime = Runtime.from_env()
"""Built at import (config only, nothing heavy), so the mounted app and the service share it."""


@bentoml.asgi_app(build_app(runtime), path="/")
@bentoml.service(name="ditserve", traffic={"timeout": 3600}, workers=1)
class DiffusionServer:
    """Serves one diffusion-transformer model over REST and gRPC."""

    def __init__(self) -> None:
        from ditserve.serving.grpc_server import GrpcServer

        self.runtime = runtime
        host = os.environ.get("DITSERVE_GRPC_HOST", "127.0.0.1")
        port = int(os.environ.get("DITSERVE_GRPC_PORT", "50051"))
        self.grpc = GrpcServer(runtime, host, port)
        bound = self.grpc.start()
        log.info("gRPC listening on %s:%d", host, bound)
        print(f"ditserve: gRPC on {host}:{bound}", flush=True)
        runtime.on_ready(lambda: self.grpc.set_serving(True))
        runtime.start()
        self._drain_on_sigterm()

    def _drain_on_sigterm(self) -> None:
        """On SIGTERM refuse new work on both transports at once, then let the HTTP server shut down as usual.

        Chained in front of uvicorn's own handler (installed before the service starts), which then waits for
        in-flight HTTP requests and runs `drain`.
        """
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame) -> None:
            self.runtime.begin_drain()
            self.grpc.set_serving(False)
            if callable(previous):
                previous(signum, frame)

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
        grace = float(os.environ.get("DITSERVE_DRAIN_S", "60"))
        self.runtime.ready.clear()
        self.grpc.stop(grace)
        drained = self.runtime.shutdown(grace)
        log.info("shutdown: %s", "drained" if drained else "gave up waiting for in-flight requests")
