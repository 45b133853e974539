"""Request bodies bounded before they reach memory: an ASGI middleware around the whole HTTP app.

A body whose declared `Content-Length` is over the limit is answered 413 at once, without reading a byte
of it; a body without a length (chunked) is counted while it is read and refused as soon as it passes
the limit. Either way the connection is closed after the answer, so the rest is never read, and the
server holds at most the limit (plus the HTTP server's 64 KiB read buffer) per request. gRPC has the same
bound on request messages (`grpc.max_receive_message_length`, see grpc_server.py).
"""

from __future__ import annotations

import json


class BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the limit; answered 413."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body over {limit} bytes; send at most {limit}")


def too_large_response(limit: int) -> tuple[dict, dict]:
    """The two ASGI messages of the 413 answer (JSON, like every other error; the connection then closes)."""
    body = json.dumps({"error": {"status": "too_large", "field": "body", "message": str(BodyTooLarge(limit))}})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]
    start = {"type": "http.response.start", "status": 413, "headers": headers}
    return start, {"type": "http.response.body", "body": body.encode()}


class BodyLimit:
    """Refuse HTTP request bodies over `limit` bytes: by the declared length up front, or while streaming."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            for message in too_large_response(self.limit):
                await send(message)
            return
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:  # an app that did not answer it itself
            if started:
                raise
            for message in too_large_response(self.limit):
                await send(message)
