"""REST connection timeouts that uvicorn lacks: an idle connection and a half-sent request are closed.

uvicorn arms its keep-alive timer only after a response, so a connection that never sends a byte stays
open for ever, and nothing bounds the time a client takes to send its headers (a few slow clients hold
every connection: "slowloris"). `TimedHttpProtocol` is uvicorn's httptools protocol plus two timers:

- idle: from the connection's opening (as uvicorn does after each response) until its first byte,
  `DITSERVE_HTTP_IDLE_S`;
- read: from a request's first byte until its headers and body have arrived, `DITSERVE_HTTP_READ_S`.

BentoML builds uvicorn's config itself and offers no protocol option, so `install` points uvicorn's
"auto" HTTP protocol at this class; the service calls it at import, before its worker starts uvicorn.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ditserve.serving.settings import SETTINGS


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with an idle timeout from the start and a request-read timeout."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = SETTINGS.http_idle_s
        self._read_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._stop_read_timer()
        self._read_timer = self.loop.call_later(SETTINGS.http_read_s, self._read_timed_out)

    def on_message_complete(self) -> None:
        self._stop_read_timer()
        super().on_message_complete()

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def install() -> None:
    """Make uvicorn's default ("auto") HTTP protocol `TimedHttpProtocol` in this process."""
    from uvicorn import config

    config.HTTP_PROTOCOLS["auto"] = f"{__name__}:TimedHttpProtocol"
