"""Content hashes of files and streams: the one sha256 helper agent, fleet and tooling share.

Model packages, TUF targets, store directories and desired states all name bytes by their
lowercase hex sha256; every file is hashed here, in bounded chunks, so a 1 GB model never
sits in memory. A caller that must hash while it copies (a download, an extraction) feeds
its own digest with `hash_stream`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Protocol

CHUNK_BYTES: Final = 1 << 20


class Digest(Protocol):
    """What `hash_stream` feeds: a `hashlib` hash object."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class FileDigest:
    """A file's sha256 (lowercase hex) and size, as a TUF target or a manifest names them."""

    sha256: str
    size: int


def hash_stream(
    digest: Digest,
    src: IO[bytes],
    *,
    sink: IO[bytes] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> int:
    """Feed every remaining byte of ``src`` into ``digest`` (and write it to ``sink``).

    Returns the number of bytes read. Raises `OSError` from reading or writing.
    """
    size = 0
    while chunk := src.read(chunk_bytes):
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        size += len(chunk)
    return size


def digest_file(path: Path) -> FileDigest:
    """The sha256 and size of the file at ``path``, from one read; raises `OSError`."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        size = hash_stream(digest, f)
    return FileDigest(digest.hexdigest(), size)


def sha256_file(path: Path) -> str:
    """The lowercase hex sha256 of the file at ``path``; raises `OSError`."""
    return digest_file(path).sha256
