"""Repository serving benchmark: many devices fetch a 1 MB target and the TUF metadata at once.

    .venv/bin/python -m tests.benchmarks.repo_serve_bench [--clients 50] [--rounds 5]
        [--variants before,after] [--target-requests 300] [--metadata-refreshes 300]

Starts Mosquitto, then one fleet replica per variant, each in its OWN process (the real
`edgefleet.fleet.service.FleetService`, lab keys, SQLite shared by all, ingest off), uploads and
publishes a ~1 MB model package once, and in every round, for each variant in turn
(the order alternates between rounds so drift in the machine's load hits both alike):

- *target*: ``--target-requests`` GETs of ``/v1/repository/targets/<sha256>.<name>`` by
  ``--clients`` threads (split over ``--client-procs`` processes so the client is not one
  GIL), each on a NEW connection with ``Connection: close`` and the device token, read in
  64 KiB chunks and hashed, as `edgefleet.agent.download.download` (urllib) does;
- *metadata*: ``--metadata-refreshes`` TUF refreshes, each the four GETs python-tuf makes
  (``N+1.root.json`` -> 404, ``timestamp.json``, ``S.snapshot.json``, ``T.targets.json``),
  over one kept-alive urllib3 connection per thread, as `edgefleet.agent.trust.HeaderFetcher` does.

It prints, per variant, the medians over the rounds (and the min..max spread) of MB/s,
requests/s, the fleet process's CPU milliseconds per MB and per request, client latency
p50/p95, the client processes' CPU, and errors; then the ratio of each variant to the
first one.

Variants, and why they live here and not in the product: the product has exactly one
way of serving the repository, so the pre-optimisation path ("before") is re-created
inside the server process this script starts, by `_install_before`: the old handlers
and the old auth dependency are kept below verbatim (``_before_*``) and put in place of
the product's GET routes on ``edgefleet.fleet.api.repository.router`` before the app is built, and
``edgefleet.fleet.service.uvicorn_config`` is swapped for the old server options (`_old_server`:
h11, the asyncio loop, uvicorn's 2048 backlog and 5 s keep-alive, access log on: what
ran before httptools and uvloop were dependencies).

- ``before``: old handlers, old auth dependency, old server options;
- ``after``: the product as it is;
- ``after-h11``: the product's handlers and auth with the old server options, to
  separate what the handlers gained from what the server options gained.

``--pause-s 5 --clients 500`` makes every client idle about uvicorn's old keep-alive
timeout between refreshes, which with the old server options reproduces the resets
devices saw ("Connection reset by peer", "closed connection without response").

Figures are noisy on a shared 2-core machine: the fleet's CPU per request is the
steadiest; throughput and latency move with whatever else runs (the load average is
printed at the start and the end).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import urllib3
import uvicorn
from fastapi import Depends, Header, Response
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import edgefleet.fleet.service as fleet_service
from edgefleet.fleet.api import repository as repo_api
from edgefleet.fleet.api.auth import authenticate
from edgefleet.fleet.api.deps import SessionDep, SettingsDep
from edgefleet.fleet.api.update_deps import DEVICE_TOKEN_NAME, UpdatesDep
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.http_range import RangePlan, plan
from edgefleet.fleet.repository import NotFoundError as RepoNotFoundError

TOKEN = "bench-admin-token-0123456789abcdef"
DEVICE_TOKEN = "bench-device-token-0123456789abcdef"
READ_CHUNK_BYTES = 64 * 1024
VARIANTS = ("before", "after", "after-h11")


# -- the pre-optimisation handlers, verbatim (see the module docstring) --------------------


_before_bearer = HTTPBearer(auto_error=False)


def _before_repository_client(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_before_bearer)],
) -> str:
    if settings.repository_public:
        return "public"
    token = credentials.credentials if credentials else None
    device_token = settings.repository_device_token
    if (
        token
        and device_token is not None
        and hmac.compare_digest(token.encode(), device_token.get_secret_value().encode())
    ):
        return DEVICE_TOKEN_NAME
    return authenticate(session, token).name


_BeforeClient = Annotated[str, Depends(_before_repository_client)]


def _before_metadata(file_name: str, updates: UpdatesDep, _client: _BeforeClient) -> Response:
    try:
        data = updates.require_repository().metadata_file(file_name)
    except RepoNotFoundError as e:
        raise NotFoundError(str(e)) from e
    versioned = file_name[0].isdigit()
    return Response(
        data,
        media_type="application/json",
        headers={
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Cache-Control": "public, max-age=31536000, immutable" if versioned else "no-cache",
        },
    )


def _before_target(
    hash_prefixed_name: str,
    updates: UpdatesDep,
    client: _BeforeClient,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    try:
        path = updates.require_repository().target_path(hash_prefixed_name)
    except RepoNotFoundError as e:
        raise NotFoundError(str(e)) from e
    size = path.stat().st_size
    etag = f'"{hash_prefixed_name.split(".", 1)[0]}"'
    decision = plan(range_header, if_range, etag, size)
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    if decision.content_range:
        headers["Content-Range"] = decision.content_range
    if decision.status == 416:
        return Response(status_code=416, headers=headers)
    headers["Content-Length"] = str(decision.length)
    return StreamingResponse(
        _before_read(path, decision),
        status_code=decision.status,
        media_type="application/octet-stream",
        headers=headers,
    )


def _before_read(path: Path, decision: RangePlan) -> Iterator[bytes]:
    remaining = decision.length
    with path.open("rb") as f:
        f.seek(decision.first)
        while remaining > 0:
            chunk = f.read(min(256 * 1024, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def _install_before() -> None:
    """Put the old repository GET handlers and the old uvicorn options in place."""
    router = repo_api.router
    router.routes[:] = [
        r for r in router.routes if not (isinstance(r, APIRoute) and "GET" in (r.methods or ()))
    ]
    router.add_api_route("/metadata/{file_name}", _before_metadata, methods=["GET"])
    router.add_api_route("/targets/{hash_prefixed_name}", _before_target, methods=["GET"])
    _old_server()


def _old_server() -> None:
    """Serve with uvicorn's pure-Python stack and all its defaults, as before."""

    def config(app: Any, settings: Any) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            lifespan="off",
            http="h11",
            loop="asyncio",
        )

    fleet_service.uvicorn_config = config  # type: ignore[assignment]


def _serve(variant: str, base: Path, port: int, broker_url: str, keys_dir: Path) -> int:
    """The server process: one fleet replica in ``variant`` until SIGTERM."""
    from edgefleet.fleet.service import FleetService
    from edgefleet.fleet.settings import FleetSettings

    if variant == "before":
        _install_before()
    elif variant == "after-h11":
        _old_server()
    settings = FleetSettings(
        database_url=f"sqlite:///{base / 'fleet.db'}",
        migrate_at_start=True,
        broker_url=broker_url,
        api_port=port,
        data_dir=base / "fleet",
        keys_dir=keys_dir,
        lab_mode=True,
        admin_token=TOKEN,
        repository_device_token=DEVICE_TOKEN,
    )
    service = FleetService(settings, ingest=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    service.start(timeout_s=60)
    try:
        stop.wait()
    finally:
        service.stop()
    return 0


# -- the clients ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One client process's share of a phase."""

    kind: str  # "target" or "metadata"
    port: int
    paths: tuple[str, ...]  # target: one path; metadata: one refresh's paths
    threads: int
    requests: int  # targets fetched, or refreshes made, by this process
    sha256: str = ""
    length: int = 0
    pause_s: float = 0.0  # metadata: idle time between one thread's refreshes


@dataclass
class BatchResult:
    """What one client process saw."""

    requests: int = 0
    body_bytes: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0


def _fetch_target(job: Job, result: BatchResult, lock: threading.Lock) -> None:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", job.port, timeout=60)
    try:
        conn.request(
            "GET",
            job.paths[0],
            headers={"Authorization": f"Bearer {DEVICE_TOKEN}", "Connection": "close"},
        )
        response = conn.getresponse()
        digest = hashlib.sha256()
        size = 0
        while chunk := response.read(READ_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
        if response.status != 200 or size != job.length or digest.hexdigest() != job.sha256:
            raise RuntimeError(f"HTTP {response.status}, {size} bytes")
    except Exception as e:
        with lock:
            result.errors[_error_name(e)] += 1
        return
    finally:
        conn.close()
    with lock:
        result.requests += 1
        result.body_bytes += size
        result.latencies_s.append(time.perf_counter() - started)


def _refresh(
    job: Job, pool: urllib3.HTTPConnectionPool, result: BatchResult, lock: threading.Lock
) -> None:
    for path in job.paths:
        started = time.perf_counter()
        try:
            response = pool.request("GET", path, retries=False)
            expected = 404 if path.endswith(".root.json") else 200
            if response.status != expected:
                raise RuntimeError(f"{path}: HTTP {response.status}")
        except Exception as e:
            with lock:
                result.errors[_error_name(e)] += 1
            continue
        with lock:
            result.requests += 1
            result.body_bytes += len(response.data)
            result.latencies_s.append(time.perf_counter() - started)


def _error_name(e: Exception) -> str:
    """The exception's type, and for urllib3's wrappers the cause's (a reset, a close)."""
    cause = e.args[1] if isinstance(e, urllib3.exceptions.ProtocolError) else e.__cause__
    return type(e).__name__ + (f"({type(cause).__name__})" if cause is not None else "")


def _run_job(job: Job) -> BatchResult:
    """Run ``job`` on ``job.threads`` threads (in a client process)."""
    result = BatchResult()
    lock = threading.Lock()
    remaining = [job.requests]
    cpu_before = time.process_time()

    def worker() -> None:
        pool = urllib3.HTTPConnectionPool(
            "127.0.0.1",
            job.port,
            maxsize=1,
            headers={"Authorization": f"Bearer {DEVICE_TOKEN}"},
            timeout=urllib3.Timeout(connect=60, read=60),
        )
        while True:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            if job.kind == "target":
                _fetch_target(job, result, lock)
            else:
                _refresh(job, pool, result, lock)
                if job.pause_s:
                    # Jittered around the pause, so some requests land as the server
                    # times the idle connection out.
                    time.sleep(random.uniform(0.8 * job.pause_s, 1.2 * job.pause_s))
        pool.close()

    threads = [threading.Thread(target=worker) for _ in range(job.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.cpu_s = time.process_time() - cpu_before
    return result


# -- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One phase of one round against one variant."""

    mb_per_s: float
    requests_per_s: float
    server_cpu_ms_per_mb: float
    server_cpu_ms_per_request: float
    client_cpu_s: float
    p50_ms: float
    p95_ms: float
    errors: int
    error_kinds: str


def _phase(pool: ProcessPoolExecutor, server: psutil.Process, jobs: list[Job]) -> Sample:
    """Run ``jobs`` (one per client process) to the end; the fleet's CPU meanwhile."""
    cpu = server.cpu_times()
    started = time.perf_counter()
    results = list(pool.map(_run_job, jobs))
    wall_s = time.perf_counter() - started
    after = server.cpu_times()
    server_cpu_s = (after.user + after.system) - (cpu.user + cpu.system)
    merged = BatchResult()
    for r in results:
        merged.requests += r.requests
        merged.body_bytes += r.body_bytes
        merged.latencies_s += r.latencies_s
        merged.errors += r.errors
        merged.cpu_s += r.cpu_s
    mb = merged.body_bytes / 1e6
    lat = sorted(merged.latencies_s) or [float("nan")]
    return Sample(
        mb_per_s=mb / wall_s,
        requests_per_s=merged.requests / wall_s,
        server_cpu_ms_per_mb=1000 * server_cpu_s / mb if mb else float("nan"),
        server_cpu_ms_per_request=1000 * server_cpu_s / max(merged.requests, 1),
        client_cpu_s=merged.cpu_s,
        p50_ms=1000 * lat[len(lat) // 2],
        p95_ms=1000 * lat[min(len(lat) - 1, int(len(lat) * 0.95))],
        errors=sum(merged.errors.values()),
        error_kinds=", ".join(f"{k} x{n}" for k, n in merged.errors.most_common()),
    )


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _start_server(
    variant: str, base: Path, broker_url: str, keys_dir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    from tests.support.mosquitto import free_port, wait_for_port

    port = free_port()
    log = (base / f"fleet-{variant}.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.repo_serve_bench",
            "--serve",
            variant,
            "--base",
            str(base),
            "--port",
            str(port),
            "--broker",
            broker_url,
            "--keys-dir",
            str(keys_dir),
        ],
        stdout=log,
        stderr=log,
    )
    wait_for_port(port, timeout_s=60)
    return process, port


def _build_package(base: Path, model_bytes: int) -> Path:
    from edgefleet.shared.modeltools.builder import build_package
    from edgefleet.simulators.models import train_wine_classifier
    from tests.e2e.updates.support import padded_model

    model = train_wine_classifier(base / "wine.onnx")
    big = padded_model(model.path, base / "wine-big.onnx", model_bytes)
    return build_package(big, name="wine", version="1.1.0", out_dir=base / "pk")


def _metadata_paths(port: int) -> tuple[str, ...]:
    """One python-tuf refresh: the next root (404), timestamp, snapshot, targets."""
    headers = {"Authorization": f"Bearer {DEVICE_TOKEN}"}
    base = f"http://127.0.0.1:{port}/v1/repository/metadata/"
    response = httpx.get(base + "timestamp.json", headers=headers)
    response.raise_for_status()
    timestamp = response.json()
    snapshot_version = timestamp["signed"]["meta"]["snapshot.json"]["version"]
    snapshot = httpx.get(f"{base}{snapshot_version}.snapshot.json", headers=headers).json()
    targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
    root_version = 1
    while httpx.get(f"{base}{root_version + 1}.root.json", headers=headers).status_code == 200:
        root_version += 1
    prefix = "/v1/repository/metadata/"
    return (
        f"{prefix}{root_version + 1}.root.json",
        f"{prefix}timestamp.json",
        f"{prefix}{snapshot_version}.snapshot.json",
        f"{prefix}{targets_version}.targets.json",
    )


def _report(title: str, variants: list[str], samples: dict[str, list[Sample]]) -> None:
    print(f"\n== {title}: medians over {len(samples[variants[0]])} rounds (min..max)")
    columns = [
        ("MB/s", "mb_per_s", "{:.1f}"),
        ("req/s", "requests_per_s", "{:.0f}"),
        ("fleet CPU ms/MB", "server_cpu_ms_per_mb", "{:.1f}"),
        ("fleet CPU ms/req", "server_cpu_ms_per_request", "{:.2f}"),
        ("p50 ms", "p50_ms", "{:.1f}"),
        ("p95 ms", "p95_ms", "{:.1f}"),
        ("client CPU s", "client_cpu_s", "{:.1f}"),
    ]
    medians: dict[str, dict[str, float]] = {}
    for v in variants:
        rows = samples[v]
        medians[v] = {}
        parts = []
        for label, attr, fmt in columns:
            values = [getattr(s, attr) for s in rows]
            m = statistics.median(values)
            medians[v][attr] = m
            parts.append(
                f"{label} {fmt.format(m)} ({fmt.format(min(values))}..{fmt.format(max(values))})"
            )
        errors = sum(s.errors for s in rows)
        kinds = "; ".join(s.error_kinds for s in rows if s.error_kinds)
        print(f"  {v:10s} " + " | ".join(parts) + f" | errors {errors} {kinds}")
    first = medians[variants[0]]
    for v in variants[1:]:
        ratio = {attr: medians[v][attr] / first[attr] for attr in medians[v]}
        print(
            f"  {v} / {variants[0]}: MB/s x{ratio['mb_per_s']:.2f}, req/s"
            f" x{ratio['requests_per_s']:.2f}, fleet CPU per request"
            f" x{ratio['server_cpu_ms_per_request']:.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent client threads")
    parser.add_argument("--client-procs", type=int, default=2, help="processes they run in")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target-requests", type=int, default=300, help="per round")
    parser.add_argument("--metadata-refreshes", type=int, default=300, help="per round (x4 GETs)")
    parser.add_argument("--model-bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--pause-s",
        type=float,
        default=0.0,
        help="idle time (+-20 %%) between one client's refreshes, e.g. uvicorn's old 5 s"
        " keep-alive timeout to provoke resets",
    )
    parser.add_argument("--variants", default="before,after", help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--keys-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args.serve, args.base, args.port, args.broker, args.keys_dir)

    from edgefleet.fleet.keys import create_lab_setup
    from edgefleet.simulators.fleet import raise_open_file_limit
    from tests.support.mosquitto import MosquittoBroker

    variants = [v.strip() for v in args.variants.split(",")]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}")
    raise_open_file_limit()
    base = Path(tempfile.mkdtemp(prefix="edgefleet-repo-bench-"))
    broker = MosquittoBroker(base / "mosquitto")
    broker.start()
    keys_dir = create_lab_setup(base / "lab").keys_dir
    package = _build_package(base, args.model_bytes)
    data = package.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    target_path = f"/v1/repository/targets/{sha256}.{package.name}"
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for v in variants:
            servers[v] = _start_server(v, base, broker.url, keys_dir)
            if len(servers) == 1:
                api = httpx.Client(
                    base_url=f"http://127.0.0.1:{servers[v][1]}",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=60,
                )
                response = api.post(
                    "/v1/models",
                    content=data,
                    headers={"Content-Type": "application/octet-stream"},
                )
                response.raise_for_status()
                api.post("/v1/models/wine/1.1.0/publish").raise_for_status()
        metadata_paths = _metadata_paths(servers[variants[0]][1])
        procs = args.client_procs
        threads = _split(args.clients, procs)
        print(
            f"package {len(data) / 1e6:.2f} MB; {args.clients} clients in {args.client_procs}"
            f" processes; {args.target_requests} target GETs and {args.metadata_refreshes}"
            f" refreshes ({4 * args.metadata_refreshes} GETs) per round; {os.cpu_count()} CPUs,"
            f" load average {os.getloadavg()[0]:.1f} at start",
            flush=True,
        )
        phases = {
            "target (1 MB, new connection each)": [
                Job("target", 0, (target_path,), t, n, sha256, len(data))
                for t, n in zip(threads, _split(args.target_requests, procs), strict=True)
            ],
            "metadata (kept-alive connections)": [
                Job("metadata", 0, metadata_paths, t, n, pause_s=args.pause_s)
                for t, n in zip(threads, _split(args.metadata_refreshes, procs), strict=True)
            ],
        }
        phases = {k: jobs for k, jobs in phases.items() if sum(j.requests for j in jobs)}
        samples: dict[str, dict[str, list[Sample]]] = {
            phase: {v: [] for v in variants} for phase in phases
        }
        with ProcessPoolExecutor(procs) as pool:
            for round_no in range(args.rounds):
                order = variants if round_no % 2 == 0 else variants[::-1]
                for v in order:
                    process, port = servers[v]
                    server = psutil.Process(process.pid)
                    line = [f"round {round_no + 1} {v:10s}"]
                    for phase, jobs in phases.items():
                        sample = _phase(pool, server, [replace(j, port=port) for j in jobs])
                        samples[phase][v].append(sample)
                        line.append(
                            f"{phase.split()[0]} {sample.mb_per_s:6.1f} MB/s"
                            f" {sample.requests_per_s:5.0f} req/s"
                            f" {sample.server_cpu_ms_per_request:5.2f} fleet CPU ms/req"
                            f" (errors {sample.errors})"
                        )
                    print(" | ".join(line), flush=True)
        for phase, by_variant in samples.items():
            _report(phase, variants, by_variant)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        broker.stop()
    shutil.rmtree(base, ignore_errors=True)  # kept, with the servers' logs, on a failure
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
