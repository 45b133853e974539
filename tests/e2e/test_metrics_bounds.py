"""`/metrics` has bounded cardinality (route templates, never raw paths or ids), parses after hostile paths,
and needs the API key when one is set."""

from __future__ import annotations

import secrets

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_process import API_KEY

pytestmark = pytest.mark.e2e

UNIQUE_PATHS = 1000


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30) as client:
        yield client


def test_metrics_need_the_api_key(server):
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers={"x-api-key": "wrong"}, timeout=10).status_code == 401
    assert "ditserve_http_requests_total" in server.metrics_text()


def test_metrics_stay_the_same_size_after_1000_unique_paths(server, http):
    """The old server labelled BentoML's request metrics with the raw path: every unique path a new series."""

    def path(k: int) -> str:
        return f"/probe-{k}-{secrets.token_hex(16)}" if k % 2 else f"/tasks/{secrets.token_hex(24)}"

    def method(k: int) -> str:
        return "GET" if k % 3 else "POST"

    for k in range(6):  # every (route, method, status) these requests use exists before the baseline
        http.request(method(k), path(k))
    before = len(server.metrics_text())
    for k in range(UNIQUE_PATHS):
        assert http.request(method(k), path(k)).status_code in (404, 405)
    after = len(server.metrics_text())
    assert after <= before * 1.05, (before, after)


def test_ids_and_raw_paths_never_become_labels_and_the_text_still_parses(server, http, rest):
    task = rest.submit(class_label=2, seed=1, steps=2)
    assert http.get(f"/tasks/{task}").status_code == 200
    assert http.get("/tasks/%00").status_code == 404  # a NUL byte in a path once broke the exposition text
    assert http.get("/tasks/" + "%E2%80%8F" * 5).status_code == 404
    text = server.metrics_text()
    assert task not in text and "\x00" not in text and "probe-" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    routes = {s.labels["route"] for s in families["ditserve_http_requests"].samples}
    assert "/tasks/{id}" in routes and "unmatched" in routes
    assert len(routes) < 20, routes  # templates and fixed probe paths only: 1000+ paths were requested
