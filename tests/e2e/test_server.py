"""End to end over one real server process: both transports, the guarantees, metrics, the OpenAI route."""

from __future__ import annotations

import itertools
import threading
import time

import httpx
import pytest
from server_process import API_KEY

from ditserve.client import GrpcClient, RestClient, ServerError

pytestmark = pytest.mark.e2e


def test_not_ready_until_warmed_up(server, grpc_client):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert server.health_seen and server.health_seen[0] == "NOT_SERVING"
    assert 503 in server.readyz_seen and server.readyz_seen[-1] == 200
    assert server.readyz_seen.index(503) < server.readyz_seen.index(200)
    answer = health_pb2_grpc.HealthStub(grpc_client.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_rest_and_grpc_give_the_same_image(rest, grpc_client):
    a = rest.generate(class_label=3, seed=11, num_images=2, format="raw")
    b = grpc_client.generate(class_label=3, seed=11, num_images=2, format="raw")
    assert [i["seed"] for i in a["images"]] == [i["seed"] for i in b["images"]] == [11, 12]
    assert [i["data"] for i in a["images"]] == [i["data"] for i in b["images"]]
    png_a, png_b = rest.generate(class_label=3, seed=11), grpc_client.generate(class_label=3, seed=11)
    assert png_a["images"][0]["data"] == png_b["images"][0]["data"]
    assert png_a["images"][0]["data"].startswith(b"\x89PNG")


def test_rest_client_reconnects_when_the_server_closes_its_idle_connection(server):
    """uvicorn closes a keep-alive connection after 5 idle seconds; the client's next call must open a new
    one and succeed, not fail on the dead socket (it keeps one connection per thread, see `RestClient`)."""
    import select

    rest = RestClient(server.url, API_KEY)
    first = rest.generate(class_label=2, seed=4, steps=2)
    sock = rest._local.connection.sock  # peeked at to make sure the server really closed it before the next call
    assert select.select([sock], [], [], 15)[0], "the server kept the idle connection open; nothing to test"
    again = rest.generate(class_label=2, seed=4, steps=2)
    assert again["images"][0]["data"] == first["images"][0]["data"]
    assert rest._local.connection.sock is not sock
    rest.close()


def test_a_batched_image_is_bit_identical_to_the_request_alone(server, rest):
    seeds = [21, 22, 23]  # the queue holds 3
    batches_before = server.metric("ditserve_batch_images_count")
    images_before = server.metric("ditserve_batch_images_sum")
    together: dict[int, bytes] = {}

    def one(seed):  # the threads share one client (it keeps a connection per thread)
        together[seed] = rest.generate(class_label=5, seed=seed, format="raw")["images"][0]["data"]

    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    calls = server.metric("ditserve_batch_images_count") - batches_before  # continuous: one per step
    images = server.metric("ditserve_batch_images_sum") - images_before
    assert images > calls, "the concurrent requests never shared a model call"
    for seed in seeds:
        alone = rest.generate(class_label=5, seed=seed, format="raw")["images"][0]["data"]
        assert together[seed] == alone


BAD = [  # (fields, the field the error must name)
    ({"class_label": 3, "steps": 1001}, "steps"),
    ({"class_label": 3, "steps": 0}, "steps"),
    ({"class_label": 3, "num_images": 5}, "num_images"),
    ({"class_label": 3, "height": 64}, "height"),
    ({"class_label": 3, "width": 6}, "width"),
    ({"class_label": 3, "guidance_scale": -1.0}, "guidance_scale"),
    ({"class_label": 3, "guidance_scale": 1e9}, "guidance_scale"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": "giraffe"}, "prompt"),
    ({}, "prompt"),
    ({"class_label": 3, "sampler": {"name": "no-such-sampler"}}, "sampler"),
    ({"class_label": 3, "sampler": {"name": "ddim", "steps": "many"}}, "sampler"),
    ({"class_label": 3, "seed": -1}, "seed"),
]


@pytest.mark.parametrize(("fields", "field"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_input_is_refused_on_both_transports_naming_the_field(rest, grpc_client, fields, field):
    with pytest.raises(ServerError) as http:
        rest.generate(**fields)
    assert http.value.status == 400 and field in (http.value.field or "") + http.value.message
    if field == "seed":  # a uint64 cannot be negative: the gRPC client refuses to build it
        return
    with pytest.raises(ServerError) as rpc:
        grpc_client.generate(**fields)
    assert rpc.value.status == "INVALID_ARGUMENT" and field in rpc.value.message


def test_non_finite_and_malformed_bodies_get_400_and_the_server_stays_healthy(server, rest):
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    for body in (
        b'{"class_label": 3, "guidance_scale": NaN}',
        b'{"class_label": 3, "guidance_scale": Infinity}',
        b"{not json",
        b"[1, 2]",
        b'{"class_label": 3, "colour": "red"}',
    ):
        response = httpx.post(f"{server.url}/generate", content=body, headers=headers, timeout=30)
        assert response.status_code == 400, (body, response.text)
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert rest.generate(class_label=1, seed=0, steps=2)["stats"]["steps"] == 2


def test_a_wrong_api_key_is_refused_on_both_transports(server):
    for key in (None, "wrong"):
        with pytest.raises(ServerError) as http:
            RestClient(server.url, key).generate(class_label=3)
        assert http.value.status == 401
        with pytest.raises(ServerError) as rpc:
            GrpcClient(server.grpc, key).generate(class_label=3)
        assert rpc.value.status == "UNAUTHENTICATED"


def test_a_full_queue_refuses_exactly_the_extra_request(rest, grpc_client):
    ids = [rest.submit(class_label=2, seed=s, steps=400) for s in range(3)]  # the queue holds 3
    with pytest.raises(ServerError) as http:
        rest.generate(class_label=2, seed=9, steps=2)
    assert http.value.status == 429
    with pytest.raises(ServerError) as rpc:
        grpc_client.generate(class_label=2, seed=9, steps=2)
    assert rpc.value.status == "RESOURCE_EXHAUSTED"
    deadline = time.monotonic() + 120
    while any(rest.task(i)["status"] in ("queued", "running") for i in ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [rest.task(i)["status"] for i in ids] == ["succeeded"] * 3
    assert all(rest.result(i)["stats"]["steps"] == 400 for i in ids)


def _settled_blocks(server) -> float:
    """The engine's live block counter once it stops moving (bounded wait)."""
    value = server.metric("ditserve_engine_block_evaluations")
    for _ in range(20):
        time.sleep(0.25)
        again = server.metric("ditserve_engine_block_evaluations")
        if again == value:
            return value
        value = again
    raise AssertionError("the engine kept computing")


def test_cancel_stops_the_work_within_one_step_and_leaves_no_trace(server, rest):
    fresh = rest.generate(class_label=4, seed=31, format="raw")["images"][0]["data"]
    before = _settled_blocks(server)
    task = rest.submit(class_label=4, seed=32, steps=1000)
    deadline = time.monotonic() + 60
    while rest.task(task)["step"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = rest.cancel(task)
    assert answer["status"] == "cancelled" and 5 <= answer["steps_done"] < 1000
    after = _settled_blocks(server)
    blocks_per_step = 2  # the tiny DiT has 2 blocks; cond and uncond run as one call
    assert after - before == answer["steps_done"] * blocks_per_step  # nothing ran past the cancelled step
    assert rest.generate(class_label=4, seed=31, format="raw")["images"][0]["data"] == fresh


def test_a_grpc_deadline_stops_the_work_within_one_step_and_leaves_no_trace(server, grpc_client):
    """The engine's block counter, read the moment the client sees DEADLINE_EXCEEDED, is at or past where the
    engine was when the deadline passed; from there the engine may finish the step it is in, no more. Run
    several times: each request past its deadline must also give its queue place back (the queue holds 3)."""
    fresh = grpc_client.generate(class_label=6, seed=41, format="raw")["images"][0]["data"]
    blocks_per_step = 2  # the tiny DiT's 2 blocks; cond and uncond run as one call
    for seed in range(42, 47):
        before = _settled_blocks(server)
        with pytest.raises(ServerError) as rpc:
            grpc_client.generate(class_label=6, seed=seed, steps=1000, timeout=0.5)
        at_deadline = server.metric("ditserve_engine_block_evaluations")
        assert rpc.value.status == "DEADLINE_EXCEEDED"
        stopped = _settled_blocks(server)
        assert before < at_deadline <= stopped <= at_deadline + blocks_per_step, (before, at_deadline, stopped)
    assert grpc_client.generate(class_label=6, seed=41, format="raw")["images"][0]["data"] == fresh


def test_a_rest_client_that_disconnects_has_its_request_cancelled(server, rest):
    """A REST client that gives up (here: its read timeout) closes the connection; the server must notice and stop
    the work, not compute 1000 steps for nobody. Without the cancel the counter runs to 1000 steps or never
    settles."""
    fresh = rest.generate(class_label=5, seed=51, format="raw")["images"][0]["data"]
    blocks_per_step = 2  # the tiny DiT's 2 blocks; cond and uncond run as one call
    before = _settled_blocks(server)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/generate", json={"class_label": 5, "seed": 52, "steps": 1000}, headers=headers,
                   timeout=httpx.Timeout(30.0, read=1.0))  # fmt: skip
    stopped = _settled_blocks(server)
    assert before < stopped < before + 1000 * blocks_per_step, (before, stopped)
    assert rest.generate(class_label=5, seed=51, format="raw")["images"][0]["data"] == fresh


def test_a_stream_closed_by_its_client_has_its_request_cancelled(server, rest):
    """The same for `/generate/stream`: the client reads a few progress events, then closes the stream."""
    blocks_per_step = 2
    before = _settled_blocks(server)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"class_label": 5, "seed": 53, "steps": 1000}
    with httpx.stream("POST", f"{server.url}/generate/stream", json=body, headers=headers, timeout=30.0) as response:
        first_lines = itertools.islice(response.iter_lines(), 40)
        assert sum(line.startswith("event: progress") for line in first_lines) >= 5
    stopped = _settled_blocks(server)
    assert before < stopped < before + 1000 * blocks_per_step, (before, stopped)


def test_streams_report_every_step_with_previews_then_the_result(rest, grpc_client):
    events = list(rest.stream(class_label=7, seed=3, steps=6, preview_every=3))
    steps = [e["step"] for kind, e in events if kind == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6] and events[-1][0] == "result"
    assert [len(e.get("previews", [])) for kind, e in events if kind == "progress"] == [0, 0, 1, 0, 0, 1]
    grpc_events = list(grpc_client.stream(class_label=7, seed=3, steps=6, preview_every=3))
    assert [e.step for kind, e in grpc_events if kind == "progress"] == steps
    assert grpc_events[-1][1]["images"][0]["data"] == events[-1][1]["images"][0]["data"]


def test_listings_describe_the_model_and_its_strategies(rest, grpc_client):
    (model,) = rest.models()
    assert model["name"] == "tiny" and model["limits"]["max_steps"] == 1000 and model["ready"]
    (info,) = grpc_client.models()
    assert info["name"] == "tiny" and info["limits"]["max_queue"] == 3
    kinds = {(s["kind"], s["name"]) for s in rest.strategies()}
    assert ("sampler", "ddim") in kinds and ("cache", "none") in kinds
    assert any(s.get("active") and s["name"] == "ddim" for s in info["strategies"])


def test_the_openai_client_generates_images(server):
    import base64
    import io

    import openai
    from PIL import Image

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    response = client.images.generate(model="tiny", prompt="label3", n=2, size="8x8", response_format="b64_json")
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in response.data]
    assert [i.size for i in images] == [(8, 8), (8, 8)]
    with pytest.raises(openai.BadRequestError, match="size"):
        client.images.generate(model="tiny", prompt="label3", size="huge")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).images.generate(prompt="label3")


def test_request_counters_add_up(server, rest, grpc_client):
    total = "ditserve_requests_total"
    before = {s: server.metric(total, status=s) for s in ("ok", "invalid", "unauthenticated")}
    all_before = server.metric(total)
    sent = {"ok": 0, "invalid": 0, "unauthenticated": 0}
    for k in range(3):
        rest.generate(class_label=k, seed=k, steps=2)
        grpc_client.generate(class_label=k, seed=k, steps=2)
        sent["ok"] += 2
    for client in (rest, grpc_client):
        with pytest.raises(ServerError):
            client.generate(class_label=1, steps=5000)
        sent["invalid"] += 1
    with pytest.raises(ServerError):
        RestClient(server.url, "wrong").generate(class_label=1)
    with pytest.raises(ServerError):
        GrpcClient(server.grpc, "wrong").generate(class_label=1)
    sent["unauthenticated"] += 2
    for status, count in sent.items():
        assert server.metric(total, status=status) - before[status] == count, status
    assert server.metric(total) - all_before == sum(sent.values())
    assert server.metric(total, transport="grpc") > 0 and server.metric(total, transport="http") > 0


def test_grpc_reflection_lists_the_services(server):
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.grpc) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"ditserve.v1.DiffusionService", "grpc.health.v1.Health"} <= services


def test_the_client_cli_writes_the_servers_images(server, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "three.png"
    for where in (["--url", server.url], ["--grpc", server.grpc]):
        done = subprocess.run(
            [sys.executable, "-m", "ditserve.client", *where, "--api-key", API_KEY, "generate", "--class-label", "3",
             "--seed", "4", "--steps", "3", "-o", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert out.read_bytes().startswith(b"\x89PNG")
        out.unlink()
