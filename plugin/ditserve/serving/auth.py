"""The optional API key, on both transports: `Authorization: Bearer <key>` or `x-api-key: <key>`.

The key comes from the environment (`DITSERVE_API_KEY`), never from a request or a log line. Health,
readiness and the playground page stay open so that probes and the page itself load; `/metrics` needs
the key unless `DITSERVE_METRICS_OPEN=1` (see http_app.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc

OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def key_from(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> str | None:
    """The API key a client sent, from HTTP headers or gRPC metadata (names are lower-case in both)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        name = name.lower()
        if name == "x-api-key":
            return value
        if name == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the right key with UNAUTHENTICATED before they reach the servicer."""

    def __init__(self, runtime, on_refused=None) -> None:
        self.runtime = runtime
        self.on_refused = on_refused

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_GRPC_PREFIXES) or self.runtime.check_key(
            key_from(details.invocation_metadata or ())
        ):
            return await continuation(details)
        if self.on_refused is not None:
            self.on_refused(details.method)
        handler = await continuation(details)

        async def refuse(request, context):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key: send `authorization: Bearer <key>`"
            )

        if handler is not None and handler.response_streaming:

            async def refuse_stream(request, context):
                await refuse(request, context)
                yield  # pragma: no cover - abort raises first

            return grpc.unary_stream_rpc_method_handler(
                refuse_stream, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            refuse,
            handler.request_deserializer if handler else None,
            handler.response_serializer if handler else None,
        )
