"""Serving overhead, throughput and latency under load, written to benchmarks/results/serving.md.

Every server runs the deployed Bento's config (bentos/digits/model.yaml: the embedded digits DiT, DDIM,
guidance 4, continuous batching of up to 16 images, unpadded), changed only where a row says so. Requests ask
for fewer steps than the plan's 50 where only ratios matter, to keep the run short.

1. Per-request overhead of REST and gRPC on the Bento's config (2-step requests, one at a time): p50 and p99
   of (server call − the engine time the server reports for that call), measured again before each
   throughput round and reported as the median over rounds; beside it, call for call, the same figure for
   the bare transports around the same engine call (serving_floor.py): what this machine charges anyway.
2. Throughput (requests/s) at 1, 4 and 16 concurrent REST clients against four servers: unbatched
   (`batch_images: 1`, static), the Bento's config (continuous), static batching (the same plan's requests
   run to their end together) and continuous with padding (bit-identical across batch-mates); median of
   `--repeats` rounds that visit the servers in turn, the ratio to the unbatched run of the same round, and
   the request images per model call at 16 clients. The 1-client column is a lone request's latency.
3. Open-loop load: Poisson arrivals at 30/60/90% of the continuous server's measured capacity (16 closed-loop
   clients on the same step mix), each request drawing 20, 28 or 50 steps; p50/p99 latency and throughput
   of static against continuous batching on the same arrival times.
4. Why batching gains what it gains: `Engine.generate_batch` of n images in-process, per-image time
   against n = 1 (a batched forward is only cheaper per image while per-call overhead dominates).
5. Fidelity: the largest pixel difference between each server's image and the unbatched one.

Goals printed as pass/fail (issue 18): a lone request on the Bento's config ≤ 1.1× the unbatched server's
latency; throughput at 16 clients ≥ 2× unbatched (5× on a GPU); at 60% load with mixed steps, continuous p50
≤ 0.7× static and p99 ≤ 0.8×; paired overhead p50 REST ≤ 3 ms, gRPC ≤ 1.7 ms.
Servers bind 127.0.0.1 on free ports; every wait is bounded; each server gets SIGTERM at the end.
On a machine with a GPU the servers and the engine run on it and the table goes to serving-cuda.md.

    python benchmarks/serving.py [--repeats 3] [--steps 20] [--load-requests 60] [--threads 1]
    python benchmarks/serving.py --engine-only   # part 4 alone (no serving stack needed), e.g. on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from cpu_load import other_cpu_use

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # starting and stopping a server: the end-to-end tests' helpers
from server_process import free_port, stop_server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENTO_CONFIG = ROOT / "bentos" / "digits" / "model.yaml"
CLIENTS = (1, 4, 16)
SCALING = (1, 4, 8, 16)
"""Images per `generate_batch` call in the engine's batch scaling (part 4)."""
REQUESTS = {1: 8, 4: 16, 16: 32}
"""Requests per throughput run at each client count (a lone client against a padded server is slow)."""
OVERHEAD_STEPS = 2
STEP_MIX = (20, 28, 50)
"""Steps of the requests of the load test, drawn uniformly."""
LOADS = (0.3, 0.6, 0.9)
"""Arrival rates of the load test, as fractions of the measured capacity."""
GOAL_OVERHEAD_MS = {"rest": 3.0, "grpc": 1.7}
FLOOR = {"rest": "bare rest", "grpc": "bare grpc"}
"""The rows of serving_floor.py's transports in the overhead table."""
GOAL_LONE = 1.1
GOAL_BATCH_SPEEDUP = {"cpu": 2.0, "cuda": 5.0}
GOAL_P50, GOAL_P99 = 0.7, 0.8
UNBATCHED = "unbatched (batch_images: 1)"
BENTO = "the Bento's config (continuous)"
STATIC = "static batching"
PADDED = "continuous, padded (bit-identical)"


def write_config(tmp: Path, name: str, threads: int, **limits) -> Path:
    """The Bento's config with some limits changed, room for the benchmark's queue, and `threads` torch threads
    (0: torch's default, every core, as the Bento runs)."""
    config = yaml.safe_load(BENTO_CONFIG.read_text())
    config["model"]["threads"] = threads
    config["limits"].update({"max_queue": 256}, **limits)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Server:
    """`ditserve serve` on free loopback ports, in its own process group."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        self.url, self.grpc = f"http://127.0.0.1:{self.port}", f"127.0.0.1:{self.grpc_port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1", BENTOML_DO_NOT_TRACK="True")
        env.pop("DITSERVE_API_KEY", None)
        env["BENTOML_HOME"] = str(log.with_suffix(".home"))  # BentoML wipes its home's metrics dir at every start
        command = [sys.executable, "-m", "ditserve.cli", "serve", "--config", str(config), "--port", str(self.port),
                   "--grpc-port", str(self.grpc_port)]  # fmt: skip
        self.log = log
        self.proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log.read_text()[-2000:]}")

    def metric(self, name: str) -> float:
        """Sum of a Prometheus sample over all its series."""
        import httpx

        lines = httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith((name + "{", name + " ")))

    def stop(self) -> None:
        """SIGTERM; after 60 s SIGKILL the server and its workers (the end-to-end tests' way)."""
        stop_server(self)


class FloorServer(Server):
    """serving_floor.py: the bare transports around the same engine, in one BentoML process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        self.url, self.grpc = f"http://127.0.0.1:{self.port}", f"127.0.0.1:{self.grpc_port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1", BENTOML_DO_NOT_TRACK="True", DITSERVE_CONFIG=str(config),
                   FLOOR_GRPC_PORT=str(self.grpc_port), BENTOML_HOME=str(log.with_suffix(".home")))  # fmt: skip
        command = [sys.executable, "-m", "bentoml", "serve", "serving_floor:Floor", "--host", "127.0.0.1",
                   "--port", str(self.port)]  # fmt: skip
        self.log = log
        self.proc = subprocess.Popen(command, env=env, cwd=Path(__file__).parent, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def overhead(server: Server, floor: FloorServer, engine, n: int) -> dict[str, dict[str, float]]:
    """The same request in-process, over REST and gRPC, and over the bare transports of `floor` (ms).

    Two measures of each transport's overhead: `paired`, each call's latency minus the engine time the
    server reported for that very call (`stats.seconds.total`), which no drift or neighbour affects; and
    `vs in-process`, the latency p50 minus the p50 of `Engine.generate` here, which carries any drift of the
    engine's own time between the two phases. The in-process calls run before any client exists, so no client
    thread shares this process's GIL with them. The four paths take turns call by call, in an order reversed
    every other round."""
    from ditserve.client import GrpcClient, RestClient
    from ditserve.request import GenerationRequest

    fields = {"class_label": 3, "seed": 0, "steps": OVERHEAD_STEPS}
    request = GenerationRequest(**fields)
    local = []
    for k in range(n + 3):
        started = time.perf_counter()
        engine.generate(request)
        if k >= 3:  # the first calls warm up
            local.append((time.perf_counter() - started) * 1000)
    clients = {
        "rest": RestClient(server.url),
        "grpc": GrpcClient(server.grpc),
        FLOOR["rest"]: RestClient(floor.url),
        FLOOR["grpc"]: GrpcClient(floor.grpc),
    }
    latency: dict[str, list[float]] = {name: [] for name in clients}
    paired: dict[str, list[float]] = {name: [] for name in clients}
    for k in range(n + 3):
        for name, client in list(clients.items())[:: 1 if k % 2 else -1]:  # interleaved, alternating order
            started = time.perf_counter()
            answer = client.generate(**fields)
            elapsed = (time.perf_counter() - started) * 1000
            if k >= 3:
                latency[name].append(elapsed)
                paired[name].append(elapsed - answer["stats"]["seconds"]["total"] * 1000)
    for client in clients.values():
        client.close()
    out = {"in-process": dict(zip(("p50", "p99"), percentiles(local), strict=True))}
    for name in clients:
        p50, p99 = percentiles(paired[name])
        lat50 = percentiles(latency[name])[0]
        out[name] = {"latency": lat50, "p50": p50, "p99": p99, "vs in-process": lat50 - out["in-process"]["p50"]}
    return out


def throughput(server: Server, clients: int, steps: tuple[int, ...], requests: int = 0) -> tuple[float, float]:
    """Requests per second with `clients` threads sharing `requests` requests (default `REQUESTS[clients]`;
    distinct seeds, steps taken in turn from `steps`), and the mean number of request images per model call."""
    from ditserve.client import RestClient

    per = max(1, (requests or REQUESTS[clients]) // clients)
    errors: list[BaseException] = []

    def client(k: int) -> None:
        rest = RestClient(server.url, timeout=600)
        try:
            for j in range(per):
                rest.generate(class_label=(k + j) % 10, seed=k * 1000 + j, steps=steps[(k + j) % len(steps)])
        except BaseException as err:  # surfaced below
            errors.append(err)
        finally:
            rest.close()

    images, batches = server.metric("ditserve_batch_images_sum"), server.metric("ditserve_batch_images_count")
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    elapsed = time.perf_counter() - started
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"throughput run failed: {errors[:1] or 'a client hung'}")
    done = server.metric("ditserve_batch_images_count") - batches
    fill = (server.metric("ditserve_batch_images_sum") - images) / done if done else float("nan")
    return per * clients / elapsed, fill


def engine_scaling(engine, steps: int, repeats: int) -> dict[int, float]:
    """Seconds per image of `generate_batch` with n one-image requests, median of `repeats` rounds that visit
    every n in turn (so a drift of the machine's speed hits every n alike)."""
    from ditserve.request import GenerationRequest

    calls = {n: [GenerationRequest(class_label=k % 10, seed=k, steps=steps) for k in range(n)] for n in SCALING}
    runs: dict[int, list[float]] = {n: [] for n in SCALING}
    for requests in calls.values():
        engine.generate_batch(requests)  # warm this shape
    for _ in range(repeats):
        for n, requests in calls.items():
            started = time.perf_counter()
            engine.generate_batch(requests)
            runs[n].append(time.perf_counter() - started)
    return {n: statistics.median(r) / n for n, r in runs.items()}


def scaling_lines(scaling: dict[int, float], steps: int, device: str) -> list[str]:
    return [
        f"## Why: the engine's per-image cost against batch size (in-process, {device}, {steps} steps)",
        "",
        "`Engine.generate_batch` with n one-image requests (2n rows with guidance), median of runs.",
        "",
        "| images per call | ms per image | speedup per image vs 1 |",
        "|---|---|---|",
        *(f"| {n} | {s * 1000:.1f} | {scaling[1] / s:.2f}× |" for n, s in scaling.items()),
    ]


def raw_image(server: Server, steps: int) -> np.ndarray:
    from ditserve.client import RestClient

    rest = RestClient(server.url)
    data = rest.generate(class_label=7, seed=123, steps=steps, format="raw")["images"][0]["data"]
    rest.close()
    return np.frombuffer(data, dtype="<f4")


def machine(before: float | None = None, after: float | None = None) -> str:
    """The device; on a CPU, how many cores other processes used just before the run (measured now unless
    given) and, given, just after it."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    threads = torch.get_num_threads()
    before = other_cpu_use() if before is None else before
    late = "" if after is None else f", {after:.2f} in the 2 s after it"
    return (
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, {threads} torch threads; other processes used "
        f"{before:.2f} cores in the 2 s before the run{late})"
    )


def engine_only(args) -> int:
    """Part 3 alone, written to serving-engine-<device>.md."""
    from ditserve.engine import Engine

    where = machine()
    engine = Engine.from_config(BENTO_CONFIG)
    lines = ["# Serving: batch scaling of the engine alone", "", "Generated by `python benchmarks/serving.py "
             "--engine-only` on the Bento's config (bentos/digits/model.yaml).", ""]  # fmt: skip
    lines += scaling_lines(engine_scaling(engine, args.steps, args.repeats), args.steps, where)
    device = "cuda" if engine.model.device.type == "cuda" else "cpu"
    (RESULTS / f"serving-engine-{device}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def open_loop(server: Server, rate: float, n: int, seed: int) -> dict[str, float]:
    """`n` requests arriving as a Poisson process of `rate` per second (the same times for every server given
    the same `seed`), each with steps drawn from `STEP_MIX`, sent whether or not earlier ones were answered:
    latency p50/p99 (s) and throughput (answers per second from the first arrival to the last answer)."""
    from ditserve.client import RestClient

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    steps = rng.choice(STEP_MIX, n)
    latencies: list[float] = [float("nan")] * n
    errors: list[BaseException] = []
    start = time.perf_counter() + 0.5  # every thread started before the first arrival

    def one(k: int) -> None:
        rest = RestClient(server.url, timeout=600)
        try:
            time.sleep(max(0.0, start + arrivals[k] - time.perf_counter()))
            sent = time.perf_counter()
            rest.generate(class_label=k % 10, seed=seed * 1000 + k, steps=int(steps[k]))
            latencies[k] = time.perf_counter() - sent
        except BaseException as err:  # surfaced below
            errors.append(err)
        finally:
            rest.close()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"load run failed: {errors[:1] or 'a client hung'}")
    ends = [start + arrivals[k] + latencies[k] for k in range(n)]
    p50, p99 = percentiles(latencies)
    return {"p50": p50, "p99": p99, "throughput": n / (max(ends) - start - arrivals[0])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per setting (median reported)")
    parser.add_argument("--overhead-n", type=int, default=60, help="sequential requests per path for overhead")
    parser.add_argument("--steps", type=int, default=20, help="steps per throughput request")
    parser.add_argument("--load-requests", type=int, default=60, help="requests per open-loop load run")
    parser.add_argument("--engine-only", action="store_true", help="only the in-process batch scaling")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per server and in-process (default 0: every core, as the Bento runs; "
        "on a machine shared with other jobs pass 1, since threads beyond the free cores stall)",
    )
    args = parser.parse_args()
    if args.engine_only:
        return engine_only(args)
    import torch

    from ditserve.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    busy_before = other_cpu_use()  # before the servers start: what else ran on the machine
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tmp = Path(tempfile.mkdtemp(prefix="ditserve-bench-"))
    configs = {
        UNBATCHED: write_config(tmp, "unbatched", args.threads, batch_images=1, batching="static"),
        BENTO: write_config(tmp, "bento", args.threads),
        STATIC: write_config(tmp, "static", args.threads, batching="static", batch_wait_ms=10),
        PADDED: write_config(tmp, "padded", args.threads, pad_batches=True),
    }
    servers = {name: Server(path, tmp / f"{path.stem}.log") for name, path in configs.items()}
    floor = FloorServer(configs[BENTO], tmp / "floor.log")
    try:
        for server in [*servers.values(), floor]:
            server.wait_ready()
        engine = Engine.from_config(configs[UNBATCHED])
        scaling = engine_scaling(engine, args.steps, args.repeats)
        rounds = []
        runs = {name: {clients: [] for clients in CLIENTS} for name in servers}
        for _ in range(args.repeats):  # round-robin over the servers, so drift in machine load hits all alike
            rounds.append(overhead(servers[BENTO], floor, engine, args.overhead_n))
            last = rounds[-1]
            print(", ".join(f"{name} {last[name]['p50']:.2f} ms" for name in list(last)[1:]), flush=True)
            for clients in CLIENTS:
                for name, server in servers.items():
                    runs[name][clients].append(throughput(server, clients, (args.steps,)))
                    print(f"{name:40s} {clients:2d} clients: {runs[name][clients][-1][0]:.2f} req/s", flush=True)
        capacity = throughput(servers[BENTO], 16, STEP_MIX, requests=2 * args.load_requests // 3)[0]
        print(f"capacity on the step mix {STEP_MIX}: {capacity:.2f} req/s", flush=True)
        load = {name: {} for name in (STATIC, BENTO)}
        for k, share in enumerate(LOADS):
            order = (STATIC, BENTO) if k % 2 == 0 else (BENTO, STATIC)  # alternate which runs first
            for name in order:
                load[name][share] = open_loop(servers[name], share * capacity, args.load_requests, seed=k)
                got = load[name][share]
                print(f"{name:40s} {share:.0%} load: p50 {got['p50']:.2f} s, p99 {got['p99']:.2f} s", flush=True)
        rates = {name: {c: statistics.median(r for r, _ in runs[name][c]) for c in CLIENTS} for name in servers}
        ratios = {  # each run against the unbatched run of the same round, then the median
            name: {
                c: statistics.median(r / u for (r, _), (u, _) in zip(runs[name][c], runs[UNBATCHED][c], strict=True))
                for c in CLIENTS
            }
            for name in servers
        }
        fills = {name: statistics.median(f for _, f in runs[name][CLIENTS[-1]]) for name in servers}
        lat = {path: {k: statistics.median(r[path][k] for r in rounds) for k in rounds[0][path]} for path in rounds[0]}
        reference = raw_image(servers[UNBATCHED], args.steps)
        fidelity = {name: float(np.abs(raw_image(s, args.steps) - reference).max()) for name, s in servers.items()}
    finally:
        for server in [*servers.values(), floor]:
            server.stop()
    where = machine(busy_before, other_cpu_use())

    lines = report(args, where, device, lat, rounds, rates, ratios, fills, fidelity, scaling, capacity, load)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("serving-cuda.md" if device == "cuda" else "serving.md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def report(args, where, device, lat, rounds, rates, ratios, fills, fidelity, scaling, capacity, load) -> list[str]:
    """The results page: tables, then the issue's goals as pass/fail."""
    paths = list(rounds[0])[1:]
    per_round = {name: ", ".join(f"{r[name]['p50']:.2f}" for r in rounds) for name in paths}
    lone = 1 / ratios[BENTO][1]
    speedup, goal_speedup = ratios[BENTO][16], GOAL_BATCH_SPEEDUP[device]
    mid = LOADS[1]
    p50_ratio = load[BENTO][mid]["p50"] / load[STATIC][mid]["p50"]
    p99_ratio = load[BENTO][mid]["p99"] / load[STATIC][mid]["p99"]
    goals = [
        (f"lone request on the Bento's config ≤ {GOAL_LONE}× the unbatched server's latency", lone <= GOAL_LONE,
         f"{lone:.2f}× (1-client throughput ratio, {args.steps} steps)"),
        (f"throughput at 16 clients ≥ {goal_speedup}× unbatched ({device})", speedup >= goal_speedup,
         f"{speedup:.2f}×; the engine alone gains {scaling[1] / scaling[CLIENTS[-1]]:.2f}× per image from a "
         f"{CLIENTS[-1]}-image call ({scaling[1] / min(scaling.values()):.2f}× at its best size), and the server's "
         f"calls held {fills[BENTO]:.1f} request images of {CLIENTS[-1]} (a closed-loop client is between answer "
         "and next request for a step): about the most batching can give on this device"),
        (f"{mid:.0%} load, steps {'/'.join(map(str, STEP_MIX))}: continuous p50 ≤ {GOAL_P50}× static",
         p50_ratio <= GOAL_P50, f"{p50_ratio:.2f}×"),
        (f"{mid:.0%} load, steps {'/'.join(map(str, STEP_MIX))}: continuous p99 ≤ {GOAL_P99}× static",
         p99_ratio <= GOAL_P99, f"{p99_ratio:.2f}×"),
        *((f"{name} overhead p50 ≤ {GOAL_OVERHEAD_MS[name]} ms (paired)", lat[name]["p50"] <= GOAL_OVERHEAD_MS[name],
           f"{lat[name]['p50']:.2f} ms; the bare transport around the same engine call: "
           f"{lat[FLOOR[name]]['p50']:.2f} ms") for name in ("rest", "grpc")),
    ]  # fmt: skip
    threads = f" --threads {args.threads}" if args.threads else ""
    lines = [
        "# Serving: overhead, throughput and latency under load",
        "",
        f"Model: the embedded digits DiT served with the Bento's config (bentos/digits/model.yaml), guidance 4 "
        f"(classifier-free: each image is 2 rows of the model batch), one 16×16 image per request, REST clients. "
        f"Machine: {where}. Timings are noisy on a shared machine; ratios are within one run. "
        f"Generated by `python benchmarks/serving.py --repeats {args.repeats} --steps {args.steps} --overhead-n "
        f"{args.overhead_n} --load-requests {args.load_requests}{threads}`.",
        "",
        "## Per-request overhead on the Bento's config (ms)",
        "",
        f"The same {OVERHEAD_STEPS}-step request, {args.overhead_n} times in-process, then {args.overhead_n} times "
        f"per transport (interleaved, one at a time) against the Bento's config; repeated before each of the "
        f"{args.repeats} throughput rounds, each figure the median over the rounds (per-round paired p50s in the "
        f"last column). In-process `Engine.generate` p50 {lat['in-process']['p50']:.1f} ms, p99 "
        f"{lat['in-process']['p99']:.1f} ms. Paired overhead: each call's latency minus the engine time the server "
        "reported for that call (client, HTTP/gRPC, validation, queue, encoding, thread hand-offs); the goal uses "
        "it. vs in-process: latency p50 minus the in-process p50, measured minutes apart, so it also carries the "
        "drift of the engine's own time between the two phases. The bare rows are benchmarks/serving_floor.py, "
        "call for call with the server: a trivial Starlette app in a BentoML service and a grpc.aio server on a "
        "thread of it, running `Engine.generate` on a worker thread and answering its PNG — no validation, "
        "scheduler or metrics; what the transports cost here when the answer takes the engine's time.",
        "",
        "| transport | latency p50 | paired overhead p50 | paired overhead p99 | latency p50 − in-process p50 "
        "| paired p50 per round |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {lat[name]['latency']:.2f} | {lat[name]['p50']:.2f} | {lat[name]['p99']:.2f} "
          f"| {lat[name]['vs in-process']:.2f} | {per_round[name]} |"
          for name in paths),
        "",
        f"## Throughput (requests/s, {args.steps} steps each, median of {args.repeats} rounds over the servers in "
        "turn; × = median ratio to the unbatched run of the same round)",
        "",
        "| server | " + " | ".join(f"{c} clients" for c in CLIENTS) + " | request images per model call at 16 "
        "clients | max pixel diff vs unbatched |",
        "|---|" + "---|" * (len(CLIENTS) + 2),
    ]  # fmt: skip
    for name in rates:
        cells = [f"{rates[name][c]:.2f} ({ratios[name][c]:.2f}×)" for c in CLIENTS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fills[name]:.1f} | {fidelity[name]:.2e} |")
    lines += [
        "",
        f"## Open-loop load: Poisson arrivals, steps drawn from {'/'.join(map(str, STEP_MIX))}",
        "",
        f"Capacity: {capacity:.2f} requests/s (16 closed-loop clients on the same step mix, the Bento's config). "
        f"{args.load_requests} requests per run; static and continuous get the same arrival times and steps, "
        "and take turns running first.",
        "",
        "| load | static p50 / p99 (s) | continuous p50 / p99 (s) | p50 ratio | p99 ratio "
        "| static / continuous throughput (req/s) |",
        "|---|---|---|---|---|---|",
        *(f"| {share:.0%} ({share * capacity:.2f} req/s) | {load[STATIC][share]['p50']:.2f} / "
          f"{load[STATIC][share]['p99']:.2f} | {load[BENTO][share]['p50']:.2f} / {load[BENTO][share]['p99']:.2f} "
          f"| {load[BENTO][share]['p50'] / load[STATIC][share]['p50']:.2f}× "
          f"| {load[BENTO][share]['p99'] / load[STATIC][share]['p99']:.2f}× "
          f"| {load[STATIC][share]['throughput']:.2f} / {load[BENTO][share]['throughput']:.2f} |"
          for share in LOADS),
        "",
        *scaling_lines(scaling, args.steps, where),
        "",
        "## Goals",
        "",
        "| goal | result | measured |",
        "|---|---|---|",
        *(f"| {goal} | {'PASS' if ok else 'FAIL'} | {value} |" for goal, ok, value in goals),
        "",
        "Modes: continuous batching (the Bento's default) runs each model call at the rows its requests need, so a "
        "lone request pays for no batch-mates, and an image may differ in the last float bits (≤ 1e-5, "
        "tests/serving/test_continuous.py) with its batch-mates. `pad_batches: true` pads every call to 2 × "
        "`batch_images` rows: bit-identical whatever the batch-mates, at the price of a full batch per call (its "
        "1-client column). The last column compares one request with the unbatched server's answer, whose model "
        "calls have another shape: there even the padded server may differ in the last bits.",
    ]  # fmt: skip
    return lines


if __name__ == "__main__":
    sys.exit(main())
