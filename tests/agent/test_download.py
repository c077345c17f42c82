"""Artifact downloads: resumable, capped at the signed length, checked against the signed hash."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.download import download
from edgefleet.shared.signing.errors import (
    DigestMismatch,
    LengthMismatch,
    TargetNotFound,
    TransportError,
)
from tests.shared.signing.repo_server import RepoServer

SIZE = 512 * 1024


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[RepoServer, bytes]]:
    data = os.urandom(SIZE)
    (tmp_path / "www" / "targets").mkdir(parents=True)
    (tmp_path / "www" / "targets" / "model.efpkg").write_bytes(data)
    server = RepoServer(tmp_path / "www")
    yield server, data
    server.stop()


def fetch(server: RepoServer, dest: Path, data: bytes, path: str = "targets/model.efpkg"):
    return download(
        server.url + path,
        dest,
        expected_sha256=hashlib.sha256(data).hexdigest(),
        expected_length=len(data),
        timeout_s=5,
    )


def test_complete_download_is_verified_and_renamed(served, tmp_path: Path):
    server, data = served
    result = fetch(server, tmp_path / "out" / "model.efpkg", data)

    assert result.path.read_bytes() == data
    assert (result.fetched_bytes, result.resumed_from) == (SIZE, 0)
    assert not (tmp_path / "out" / "model.efpkg.part").exists()


def test_interrupted_download_resumes_and_fetches_under_one_and_a_half_times_the_size(
    served, tmp_path: Path
):
    server, data = served
    server.faults.cut_after["/targets/model.efpkg"] = SIZE // 3
    dest = tmp_path / "model.efpkg"

    with pytest.raises(TransportError, match=r"call again to resume|failed at byte"):
        fetch(server, dest, data)
    partial = dest.with_name("model.efpkg.part").stat().st_size
    assert 0 < partial <= SIZE // 3
    result = fetch(server, dest, data)

    assert result.path.read_bytes() == data
    assert result.resumed_from == partial
    assert server.bytes_sent["/targets/model.efpkg"] < 1.5 * SIZE
    ranges = [h.get("Range") for p, h in server.requests if p == "/targets/model.efpkg"]
    assert ranges == [None, f"bytes={partial}-"]


def test_file_changed_between_attempts_restarts_instead_of_splicing(served, tmp_path: Path):
    server, data = served
    server.faults.cut_after["/targets/model.efpkg"] = SIZE // 4
    dest = tmp_path / "model.efpkg"
    with pytest.raises(TransportError):
        fetch(server, dest, data)
    new = os.urandom(SIZE)
    (server.root / "targets" / "model.efpkg").write_bytes(new)  # new ETag: If-Range fails

    result = fetch(server, dest, new)

    assert result.path.read_bytes() == new
    assert result.fetched_bytes == SIZE


def test_flipped_bit_in_artifact_is_rejected_and_partial_discarded(served, tmp_path: Path):
    server, data = served
    tampered = bytearray(data)
    tampered[SIZE // 2] ^= 0x01
    server.faults.replace_body["/targets/model.efpkg"] = bytes(tampered)
    dest = tmp_path / "model.efpkg"

    with pytest.raises(DigestMismatch, match=hashlib.sha256(data).hexdigest()):
        fetch(server, dest, data)
    assert not dest.exists()
    assert not dest.with_name("model.efpkg.part").exists()


def test_endless_download_stops_at_the_limit(served, tmp_path: Path):
    server, data = served
    server.faults.endless.add("/targets/endless.efpkg")
    dest = tmp_path / "endless.efpkg"

    with pytest.raises(LengthMismatch, match=f"more than the expected {SIZE} bytes"):
        fetch(server, dest, data, path="targets/endless.efpkg")
    assert not dest.exists()
    assert not dest.with_name("endless.efpkg.part").exists()


def test_oversized_announced_length_is_refused_before_reading(served, tmp_path: Path):
    server, data = served
    server.faults.lie_length["/targets/model.efpkg"] = SIZE * 100

    with pytest.raises(LengthMismatch, match=f"announces {SIZE * 100} bytes, expected {SIZE}"):
        fetch(server, tmp_path / "model.efpkg", data)


def test_artifact_longer_than_signed_is_cut_at_the_limit(served, tmp_path: Path):
    server, data = served
    server.faults.replace_body["/targets/model.efpkg"] = data + b"trailing"

    with pytest.raises(LengthMismatch):
        fetch(server, tmp_path / "model.efpkg", data)


def test_unreachable_server_is_a_transport_error(served, tmp_path: Path):
    server, _ = served
    url = server.url
    server.stop()

    with pytest.raises(TransportError, match="failed at byte 0"):
        download(
            url + "targets/model.efpkg",
            tmp_path / "m",
            expected_sha256="0" * 64,
            expected_length=10,
            timeout_s=2,
        )


def test_missing_artifact_is_rejected_naming_the_status(served, tmp_path: Path):
    server, data = served
    with pytest.raises(TargetNotFound, match="HTTP 404"):
        fetch(server, tmp_path / "m", data, path="targets/nope.efpkg")


def test_partial_longer_than_expected_is_discarded(served, tmp_path: Path):
    server, data = served
    dest = tmp_path / "model.efpkg"
    dest.with_name("model.efpkg.part").write_bytes(b"x" * (SIZE + 1))

    result = fetch(server, dest, data)

    assert result.resumed_from == 0
    assert result.path.read_bytes() == data
