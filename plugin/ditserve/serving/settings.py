"""The server's transport settings, read once from the environment: bind address, limits on bodies,
connections and metrics, drain time. `ditserve serve` and a Bento's bentofile.yaml set them; every one
has a default that is safe on an open network.

    DITSERVE_GRPC_HOST           gRPC bind address: 127.0.0.1, or 0.0.0.0 in a container (BentoML sets
                                 BENTOML_CONTAINERIZED there, and binds its HTTP server to all interfaces)
    DITSERVE_GRPC_PORT           gRPC port, 0 for any free one                               (50051)
    DITSERVE_MAX_BODY_BYTES      largest request body on REST and request message on gRPC    (1 MiB)
    DITSERVE_MAX_VIDEO_BYTES     largest encoded video in an answer (file, or raw frames)     (64 MiB)
    DITSERVE_HTTP_IDLE_S         REST: close a connection idle this long between requests,
                                 or from its opening until its first byte                   (5)
    DITSERVE_HTTP_READ_S         REST: close a connection whose request (headers and body)
                                 has not fully arrived this long after its first byte        (30)
    DITSERVE_GRPC_IDLE_S         gRPC: close a connection with no call for this long         (300)
    DITSERVE_GRPC_MAX_AGE_S      gRPC: close a connection this old, once its calls end       (3600)
    DITSERVE_METRICS_OPEN        1: /metrics needs no API key (for a scraper on a private network)
    DITSERVE_DRAIN_S             seconds in-flight requests get after SIGTERM                (60)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _grpc_host() -> str:
    if "DITSERVE_GRPC_HOST" in os.environ:
        return os.environ["DITSERVE_GRPC_HOST"]
    return "0.0.0.0" if os.environ.get("BENTOML_CONTAINERIZED", "").lower() in ("true", "1") else "127.0.0.1"


def _number(name: str, default: float) -> float:
    value = float(os.environ.get(name, default))
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or bytes (got {value})")
    return value


@dataclass(frozen=True)
class Settings:
    grpc_host: str = field(default_factory=_grpc_host)
    grpc_port: int = field(default_factory=lambda: int(os.environ.get("DITSERVE_GRPC_PORT", "50051")))
    max_body_bytes: int = field(default_factory=lambda: int(_number("DITSERVE_MAX_BODY_BYTES", 1 << 20)))
    max_video_bytes: int = field(default_factory=lambda: int(_number("DITSERVE_MAX_VIDEO_BYTES", 64 << 20)))
    http_idle_s: float = field(default_factory=lambda: _number("DITSERVE_HTTP_IDLE_S", 5))
    http_read_s: float = field(default_factory=lambda: _number("DITSERVE_HTTP_READ_S", 30))
    grpc_idle_s: float = field(default_factory=lambda: _number("DITSERVE_GRPC_IDLE_S", 300))
    grpc_max_age_s: float = field(default_factory=lambda: _number("DITSERVE_GRPC_MAX_AGE_S", 3600))
    metrics_open: bool = field(default_factory=lambda: os.environ.get("DITSERVE_METRICS_OPEN", "") == "1")
    drain_s: float = field(default_factory=lambda: _number("DITSERVE_DRAIN_S", 60))


SETTINGS = Settings()
"""This process's settings (the environment does not change while it serves)."""
