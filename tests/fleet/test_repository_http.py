"""The image repository over HTTP: device auth, metadata, ranged artifact downloads, and
the cache that serves a rollout wave's identical requests."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edgefleet.fleet.api import repository as repository_api
from edgefleet.fleet.api.repository import CachedFile, ImmutableFileCache
from edgefleet.fleet.http_range import plan
from edgefleet.fleet.service import FleetService
from tests.support.fleet_fixtures import DEVICE_TOKEN, MakeFleet, admin_client, upload

ETAG = '"abc"'


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """HTTP behaviour does not depend on the database: SQLite only."""
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.mark.parametrize(
    ("range_header", "if_range", "size", "expected"),
    [
        (None, None, 100, (200, 0, 99)),
        ("bytes=10-", None, 100, (206, 10, 99)),
        ("bytes=10-19", None, 100, (206, 10, 19)),
        ("bytes=90-500", None, 100, (206, 90, 99)),
        ("bytes=-30", None, 100, (206, 70, 99)),
        ("bytes=-300", None, 100, (206, 0, 99)),
        ("bytes=100-", None, 100, (416, 0, -1)),
        ("bytes=-0", None, 100, (416, 0, -1)),
        ("bytes=0-", None, 0, (416, 0, -1)),
        ("bytes=20-10", None, 100, (200, 0, 99)),  # invalid: ignored
        ("bytes=0-1,5-6", None, 100, (200, 0, 99)),  # multi-range: whole file
        ("items=0-1", None, 100, (200, 0, 99)),
        ("bytes=10-", ETAG, 100, (206, 10, 99)),
        ("bytes=10-", '"other"', 100, (200, 0, 99)),  # file changed: start over
    ],
)
def test_range_plan(
    range_header: str | None, if_range: str | None, size: int, expected: tuple[int, int, int]
) -> None:
    decision = plan(range_header, if_range, ETAG, size)
    assert (decision.status, decision.first, decision.last) == expected


@pytest.fixture
def artifact(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path]
) -> tuple[str, bytes]:
    """The URL path and bytes of a published artifact."""
    assert upload(api, wine_packages["1.0.0"]).status_code == 201
    assert api.post("/v1/models/wine/1.0.0/publish").status_code == 200
    data = wine_packages["1.0.0"].read_bytes()
    return f"/v1/repository/targets/{hashlib.sha256(data).hexdigest()}.wine-1.0.0.efpkg", data


@pytest.fixture
def device(fleet: FleetService) -> httpx.Client:
    """An HTTP client that authenticates as a device does (the fleet's device token)."""
    return httpx.Client(
        base_url=fleet.base_url, headers={"Authorization": f"Bearer {DEVICE_TOKEN}"}, timeout=20
    )


def test_repository_refuses_callers_without_a_valid_token(
    fleet: FleetService, artifact: tuple[str, bytes]
) -> None:
    path, _ = artifact
    for url in (
        "/v1/repository/metadata/1.root.json",
        "/v1/repository/metadata/timestamp.json",
        path,
    ):
        assert httpx.get(fleet.base_url + url).status_code == 401
        wrong = httpx.get(fleet.base_url + url, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert wrong.headers["WWW-Authenticate"] == "Bearer"


def test_device_token_and_api_tokens_fetch_metadata(
    device: httpx.Client, api: httpx.Client, fleet: FleetService
) -> None:
    root = device.get("/v1/repository/metadata/1.root.json")
    assert root.status_code == 200
    repo_dir = fleet.settings.resolved_repository_dir
    assert repo_dir is not None
    assert root.content == (repo_dir / "metadata" / "1.root.json").read_bytes()
    assert root.headers["ETag"] == f'"{hashlib.sha256(root.content).hexdigest()}"'
    assert api.get("/v1/repository/metadata/timestamp.json").status_code == 200
    for name in ("2.root.json", "../keys/root.key.pem", "root.key.pem", "1.mirrors.json"):
        assert device.get(f"/v1/repository/metadata/{name}").status_code == 404


def test_artifact_is_served_whole_with_its_sha256_as_etag(
    device: httpx.Client, artifact: tuple[str, bytes]
) -> None:
    path, data = artifact
    response = device.get(path)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert response.headers["Accept-Ranges"] == "bytes"
    assert int(response.headers["Content-Length"]) == len(data)


def test_range_request_resumes_and_if_range_mismatch_restarts(
    device: httpx.Client, artifact: tuple[str, bytes]
) -> None:
    path, data = artifact
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    offset = len(data) // 3
    part = device.get(path, headers={"Range": f"bytes={offset}-", "If-Range": etag})
    assert part.status_code == 206
    assert part.content == data[offset:]
    assert part.headers["Content-Range"] == f"bytes {offset}-{len(data) - 1}/{len(data)}"
    middle = device.get(path, headers={"Range": "bytes=5-9"})
    assert (middle.status_code, middle.content) == (206, data[5:10])
    changed = device.get(path, headers={"Range": f"bytes={offset}-", "If-Range": '"stale"'})
    assert changed.status_code == 200
    assert changed.content == data


def test_unsatisfiable_range_is_416_with_the_size(
    device: httpx.Client, artifact: tuple[str, bytes]
) -> None:
    path, data = artifact
    response = device.get(path, headers={"Range": f"bytes={len(data)}-"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(data)}"


def test_unknown_or_malformed_target_names_are_404(
    device: httpx.Client, artifact: tuple[str, bytes]
) -> None:
    path, _ = artifact
    digest = path.rsplit("/", 1)[1].split(".", 1)[0]
    for name in (f"{'0' * 64}.wine-1.0.0.efpkg", "wine-1.0.0.efpkg", f"{digest}...%2Fx"):
        assert device.get(f"/v1/repository/targets/{name}").status_code == 404


def test_timestamp_is_read_anew_while_versioned_metadata_is_immutable(
    device: httpx.Client, api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    """Publishing changes timestamp.json in place; a device must never get the old one."""
    before = device.get("/v1/repository/metadata/timestamp.json")
    root = device.get("/v1/repository/metadata/1.root.json")
    assert before.headers["Cache-Control"] == "no-cache"
    assert root.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert upload(api, wine_packages["1.0.0"]).status_code == 201
    assert api.post("/v1/models/wine/1.0.0/publish").status_code == 200
    after = device.get("/v1/repository/metadata/timestamp.json")
    assert after.status_code == 200
    assert after.content != before.content
    assert after.headers["ETag"] == f'"{hashlib.sha256(after.content).hexdigest()}"'
    assert device.get("/v1/repository/metadata/1.root.json").content == root.content


def test_public_repository_serves_metadata_and_artifacts_without_a_token(
    make_fleet: MakeFleet, wine_packages: dict[str, Path]
) -> None:
    fleet = make_fleet(repository_public=True)
    with admin_client(fleet) as api:
        assert upload(api, wine_packages["1.0.0"]).status_code == 201
        assert api.post("/v1/models/wine/1.0.0/publish").status_code == 200
    data = wine_packages["1.0.0"].read_bytes()
    name = f"{hashlib.sha256(data).hexdigest()}.wine-1.0.0.efpkg"
    assert httpx.get(f"{fleet.base_url}/v1/repository/metadata/1.root.json").status_code == 200
    response = httpx.get(f"{fleet.base_url}/v1/repository/targets/{name}")
    assert (response.status_code, response.content) == (200, data)


def test_a_wave_of_concurrent_downloads_all_get_the_artifact(
    fleet: FleetService, artifact: tuple[str, bytes]
) -> None:
    """Devices of a wave fetch the same artifact at once, the first ones before it is cached."""
    path, data = artifact
    results: list[tuple[int, bytes]] = []

    def fetch(_: int) -> tuple[int, bytes]:
        response = httpx.get(
            fleet.base_url + path, headers={"Authorization": f"Bearer {DEVICE_TOKEN}"}, timeout=60
        )
        return response.status_code, response.content

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(fetch, range(64)))
    assert results == [(200, data)] * 64


def test_an_artifact_too_big_to_cache_is_streamed_with_ranges(
    device: httpx.Client, artifact: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository_api, "MAX_CACHED_FILE_BYTES", 100)
    monkeypatch.setattr(repository_api, "CHUNK_BYTES", 1000)
    path, data = artifact
    whole = device.get(path)
    assert (whole.status_code, whole.content) == (200, data)
    assert int(whole.headers["Content-Length"]) == len(data)
    offset = len(data) // 2 + 7
    part = device.get(path, headers={"Range": f"bytes={offset}-"})
    assert (part.status_code, part.content) == (206, data[offset:])
    assert part.headers["Content-Range"] == f"bytes {offset}-{len(data) - 1}/{len(data)}"
    restart = device.get(path, headers={"Range": f"bytes={offset}-", "If-Range": '"stale"'})
    assert (restart.status_code, restart.content) == (200, data)


def _cached(data: bytes) -> CachedFile:
    return CachedFile(data, f'"{hashlib.sha256(data).hexdigest()}"')


def test_file_cache_reads_a_file_once_however_many_miss_it_together() -> None:
    cache = ImmutableFileCache(budget_bytes=1000, max_file_bytes=100)
    reads: list[int] = []
    release = threading.Event()

    def read() -> CachedFile:
        reads.append(1)
        release.wait(5)
        return _cached(b"x" * 10)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.load, "targets/a", read) for _ in range(8)]
        time.sleep(0.2)  # every caller is blocked on the first read by now
        release.set()
        loaded = [f.result() for f in futures]
    assert len(reads) == 1
    assert all(found is loaded[0] for found in loaded)
    assert cache.get("targets/a") is loaded[0]


def test_file_cache_keeps_no_failed_read_and_no_file_over_its_limit() -> None:
    cache = ImmutableFileCache(budget_bytes=1000, max_file_bytes=100)

    def missing() -> CachedFile:
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        cache.load("metadata/2.root.json", missing)
    assert cache.get("metadata/2.root.json") is None
    big = cache.load("targets/big", lambda: _cached(b"b" * 101))
    assert big.data == b"b" * 101
    assert cache.get("targets/big") is None


def test_file_cache_evicts_the_least_recently_used_past_its_budget() -> None:
    cache = ImmutableFileCache(budget_bytes=250, max_file_bytes=100)
    for key in ("a", "b"):
        cache.load(key, lambda: _cached(b"." * 100))
    assert cache.get("a") is not None  # now "b" is the least recently used
    cache.load("c", lambda: _cached(b"." * 100))
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None
