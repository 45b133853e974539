"""Serving overhead and throughput, written to benchmarks/results/serving.md.

The servers run the deployed Bento's config (bentos/digits/model.yaml: the embedded digits DiT, DDIM,
guidance 4, batches of 16 images padded for bit-identity, a 10 ms wait after the last arrival, every
core), changed only where a row says so. Requests ask for fewer steps than the plan's 50 to keep the run
short: a request's cost is steps × the cost of one step, so the ratios below do not depend on it.

1. Per-request overhead of REST and gRPC over an in-process `Engine.generate` of the same request
   (2 steps, so the overhead is not lost in model time), against a server with batching off so both
   run the same shapes: p50 and p99 of (server call − the engine time the server reports for it),
   measured again before each throughput round and reported as the median over rounds.
2. Throughput (requests/s) at 1, 4 and 16 concurrent REST clients against three servers: unbatched
   (`batch_images: 1`), the Bento's config (batched, padded: bit-identical) and batched unpadded;
   median of `--repeats` rounds that visit the servers in turn (so a change in machine load hits all of
   them), the ratio to the unbatched run of the same round, and how full the batches were at 16 clients.
3. Why batching gains what it gains: `Engine.generate_batch` of n images in-process, per-image time
   against n = 1 (a batched forward is only cheaper per image while per-call overhead dominates).
4. Fidelity: the largest pixel difference between each server's image and the unbatched one.

Goals printed as pass/fail: overhead ≤ 5 ms p50; batched throughput at 16 clients ≥ 2× unbatched.
Servers bind 127.0.0.1 on free ports; every wait is bounded; each server gets SIGTERM at the end.
On a machine with a GPU the servers and the engine run on it and the table goes to serving-cuda.md.

    python benchmarks/serving.py [--repeats 3] [--steps 20]
    python benchmarks/serving.py --engine-only   # part 3 alone (no serving stack needed), e.g. on a GPU
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
REQUESTS = {1: 8, 4: 16, 16: 32}
"""Requests per throughput run at each client count (a lone client against a padded server is slow)."""
OVERHEAD_STEPS = 2
GOAL_OVERHEAD_MS = 5.0
GOAL_BATCH_SPEEDUP = 2.0
BATCHED = "batched, padded (the Bento's config)"


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


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def overhead(server: Server, engine, n: int) -> dict[str, dict[str, float]]:
    """The same request in-process and over REST and gRPC (ms).

    Two measures of each transport's overhead: `paired`, each call's latency minus the engine time the
    server reported for that very call (`stats.seconds.total`), which no drift or neighbour affects; and
    `vs in-process`, the latency p50 minus the p50 of `Engine.generate` here, which carries any drift of the
    engine's own time between the two phases. The in-process calls run before any client exists, so no client
    thread shares this process's GIL with them."""
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
    clients = {"rest": RestClient(server.url), "grpc": GrpcClient(server.grpc)}
    latency: dict[str, list[float]] = {name: [] for name in clients}
    paired: dict[str, list[float]] = {name: [] for name in clients}
    for k in range(n + 3):
        for name, client in clients.items():  # interleaved
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


def throughput(server: Server, clients: int, steps: int) -> tuple[float, float]:
    """Requests per second with `clients` threads sharing `REQUESTS[clients]` requests (distinct seeds),
    and the mean number of request images per batched model call."""
    from ditserve.client import RestClient

    per = REQUESTS[clients] // clients
    errors: list[BaseException] = []

    def client(k: int) -> None:
        rest = RestClient(server.url, timeout=600)
        try:
            for j in range(per):
                rest.generate(class_label=(k + j) % 10, seed=k * 1000 + j, steps=steps)
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

    calls = {n: [GenerationRequest(class_label=k % 10, seed=k, steps=steps) for k in range(n)] for n in CLIENTS}
    runs: dict[int, list[float]] = {n: [] for n in CLIENTS}
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


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    threads, busy = torch.get_num_threads(), other_cpu_use()
    return (
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, {threads} torch threads; other processes used "
        f"{busy:.2f} cores in the 2 s before the run)"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per setting (median reported)")
    parser.add_argument("--overhead-n", type=int, default=60, help="sequential requests per path for overhead")
    parser.add_argument("--steps", type=int, default=20, help="steps per throughput request")
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
    where = machine()  # before the servers start: what else ran on the machine

    tmp = Path(tempfile.mkdtemp(prefix="ditserve-bench-"))
    configs = {
        "unbatched": write_config(tmp, "unbatched", args.threads, batch_images=1, pad_batches=False),
        BATCHED: write_config(tmp, "padded", args.threads),
        "batched, unpadded": write_config(tmp, "unpadded", args.threads, pad_batches=False),
    }
    servers = {name: Server(path, tmp / f"{path.stem}.log") for name, path in configs.items()}
    try:
        for server in servers.values():
            server.wait_ready()
        engine = Engine.from_config(configs["unbatched"])
        scaling = engine_scaling(engine, args.steps, args.repeats)
        rounds = []
        runs = {name: {clients: [] for clients in CLIENTS} for name in servers}
        for _ in range(args.repeats):  # round-robin over the servers, so drift in machine load hits all alike
            rounds.append(overhead(servers["unbatched"], engine, args.overhead_n))
            last = rounds[-1]
            print(f"overhead p50 REST {last['rest']['p50']:.2f} ms, gRPC {last['grpc']['p50']:.2f} ms", flush=True)
            for clients in CLIENTS:
                for name, server in servers.items():
                    runs[name][clients].append(throughput(server, clients, args.steps))
                    print(f"{name:40s} {clients:2d} clients: {runs[name][clients][-1][0]:.2f} req/s", flush=True)
        rates = {name: {c: statistics.median(r for r, _ in runs[name][c]) for c in CLIENTS} for name in servers}
        ratios = {  # each run against the unbatched run of the same round, then the median
            name: {
                c: statistics.median(r / u for (r, _), (u, _) in zip(runs[name][c], runs["unbatched"][c], strict=True))
                for c in CLIENTS
            }
            for name in servers
        }
        fills = {name: statistics.median(f for _, f in runs[name][CLIENTS[-1]]) for name in servers}
        lat = {path: {k: statistics.median(r[path][k] for r in rounds) for k in rounds[0][path]} for path in rounds[0]}
        reference = raw_image(servers["unbatched"], args.steps)
        fidelity = {name: float(np.abs(raw_image(s, args.steps) - reference).max()) for name, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()

    per_round = {name: ", ".join(f"{r[name]['p50']:.2f}" for r in rounds) for name in ("rest", "grpc")}
    speedup = ratios[BATCHED][16]
    best = max(ratios[name][16] for name in servers)
    goals = [
        *((f"{name} overhead p50 ≤ {GOAL_OVERHEAD_MS} ms (paired)", lat[name]["p50"] <= GOAL_OVERHEAD_MS,
           f"{lat[name]['p50']:.2f} ms") for name in ("rest", "grpc")),
        (f"batched throughput at 16 clients ≥ {GOAL_BATCH_SPEEDUP}× unbatched", speedup >= GOAL_BATCH_SPEEDUP,
         f"{speedup:.2f}× (Bento's config); best batched server {best:.2f}×; the engine alone gains "
         f"{scaling[1] / scaling[CLIENTS[-1]]:.2f}× per image from a {CLIENTS[-1]}-image call (about the most "
         "batching can give on this device)"),
    ]  # fmt: skip
    lines = [
        "# Serving: overhead and throughput",
        "",
        f"Model: the embedded digits DiT served with the Bento's config (bentos/digits/model.yaml), guidance 4 "
        f"(classifier-free: each image is 2 rows of the model batch), one 16×16 image per request, REST clients. "
        f"Machine: {where}. Timings are noisy on a shared machine; ratios are within one run. "
        f"Generated by `python benchmarks/serving.py --repeats {args.repeats} --steps {args.steps}"
        f"{f' --threads {args.threads}' if args.threads else ''}`.",
        "",
        "## Per-request overhead over an in-process `Engine.generate` (ms)",
        "",
        f"The same {OVERHEAD_STEPS}-step request, {args.overhead_n} times in-process, then {args.overhead_n} times "
        f"per transport (interleaved) against the server with batching off; repeated before each of the "
        f"{args.repeats} throughput rounds, and each figure below is the median over the rounds (this machine's "
        "speed drifts by up to half between minutes; per-round paired p50s in the last column). "
        "In-process `Engine.generate` p50 "
        f"{lat['in-process']['p50']:.1f} ms, p99 {lat['in-process']['p99']:.1f} ms. Paired overhead: each call's "
        "latency minus the engine time the server reported for that call (client, HTTP/gRPC, validation, queue, "
        "PNG encoding, thread hand-offs); the goal uses it. vs in-process: latency p50 minus the in-process p50, "
        "measured minutes apart, so it also carries the drift of the engine's own time between the two phases "
        "(on the H200 machine the same in-process 2-step call took 14 to 24 ms from one minute to the next).",
        "",
        "| transport | latency p50 | paired overhead p50 | paired overhead p99 | latency p50 − in-process p50 "
        "| paired p50 per round |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {lat[name]['latency']:.2f} | {lat[name]['p50']:.2f} | {lat[name]['p99']:.2f} "
          f"| {lat[name]['vs in-process']:.2f} | {per_round[name]} |"
          for name in ("rest", "grpc")),
        "",
        f"## Throughput (requests/s, {args.steps} steps each, median of {args.repeats} rounds over the servers in "
        "turn; × = median ratio to the unbatched run of the same round)",
        "",
        "| server | " + " | ".join(f"{c} clients" for c in CLIENTS) + " | request images per batch at 16 clients "
        "| max pixel diff vs unbatched |",
        "|---|" + "---|" * (len(CLIENTS) + 2),
    ]  # fmt: skip
    for name in servers:
        cells = [f"{rates[name][c]:.2f} ({ratios[name][c]:.2f}×)" for c in CLIENTS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fills[name]:.1f} | {fidelity[name]:.2e} |")
    lines += ["", *scaling_lines(scaling, args.steps, where)]
    lines += ["", "## Goals", "", "| goal | result | measured |", "|---|---|---|"]
    lines += [f"| {goal} | {'PASS' if ok else 'FAIL'} | {value} |" for goal, ok, value in goals]
    lines += [
        "",
        "Padding makes every batched call the same shape (16 images), so a request's pixels never depend on its "
        "batch-mates: bit-identical whether it ran alone or with 15 others (tests/e2e and tests/serving check this). "
        "The price is the 1-client column: a lone request pays for a full batch. Unpadded batching is cheaper when "
        "lightly loaded, but a request's pixels then depend on its batch-mates in the last float bits. The last column "
        "compares one request with the unbatched server's answer, whose model calls have another shape: there even "
        "the padded server may differ in the last bits.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("serving-cuda.md" if torch.cuda.is_available() else "serving.md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
