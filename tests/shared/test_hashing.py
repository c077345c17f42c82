"""File and stream hashes: the same digest as hashlib over the whole content, in chunks."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from edgefleet.shared.hashing import FileDigest, digest_file, hash_stream, sha256_file


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 7])
def test_file_digest_matches_hashlib_across_chunk_boundaries(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert digest_file(path) == FileDigest(sha256=expected, size=size)


def test_hash_stream_continues_a_digest_and_copies_into_the_sink() -> None:
    digest = hashlib.sha256(b"prefix-")
    sink = io.BytesIO()
    assert hash_stream(digest, io.BytesIO(b"rest" * 1000), sink=sink, chunk_bytes=7) == 4000
    assert sink.getvalue() == b"rest" * 1000
    assert digest.hexdigest() == hashlib.sha256(b"prefix-" + b"rest" * 1000).hexdigest()


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")
