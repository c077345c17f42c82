"""Reading, verifying and extracting model packages: what a device runs at install.

Invariants: reading trusts nothing in the archive: only plain-named regular files, no
links, devices, directories, duplicates or oversized members, exactly the members the
manifest names, and the model and golden files must match the manifest's sha256 and size
before anything is reported as valid or left extracted. Needs neither numpy nor a runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from edgefleet.shared.durable import fsync_dir
from edgefleet.shared.hashing import digest_file, hash_stream
from edgefleet.shared.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    ModelManifest,
)
from edgefleet.shared.package.format import (
    DEFAULT_MAX_MEMBER_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_MEMBERS,
    MEMBER_NAME,
    ManifestError,
    PackageError,
    PackageFormatError,
    PackageMember,
    UnsafeMemberError,
    manifest_problem,
)
from edgefleet.shared.signing.errors import DigestMismatch


def _safe_infos(tar: tarfile.TarFile, source: str, max_member_bytes: int) -> list[tarfile.TarInfo]:
    """Every header, checked before any content is read; raises `UnsafeMemberError`."""
    infos: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    for info in tar:
        if len(infos) >= MAX_MEMBERS:
            raise UnsafeMemberError(f"{source}: more than {MAX_MEMBERS} members")
        name = info.name
        if not MEMBER_NAME.match(name) or ".." in name:
            raise UnsafeMemberError(
                f"{source}: member {name!r} is not a plain file name "
                "(absolute path, directory part or '..')"
            )
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = (
                "a link"
                if info.issym() or info.islnk()
                else "a directory"
                if info.isdir()
                else "a device or fifo"
                if info.isdev()
                else f"of tar type {info.type!r}"
            )
            raise UnsafeMemberError(f"{source}: member {name!r} is {kind}, not a regular file")
        if name in seen:
            raise UnsafeMemberError(f"{source}: member {name!r} appears twice")
        limit = MAX_MANIFEST_BYTES if name == MANIFEST_FILE else max_member_bytes
        if info.size > limit:
            raise UnsafeMemberError(
                f"{source}: member {name!r} is {info.size} bytes, over the {limit}-byte limit"
            )
        seen.add(name)
        infos.append(info)
    return infos


@dataclass(frozen=True)
class _Opened:
    manifest: ModelManifest
    infos: dict[str, tarfile.TarInfo]


def _open_manifest(tar: tarfile.TarFile, source: str, max_member_bytes: int) -> _Opened:
    infos = {i.name: i for i in _safe_infos(tar, source, max_member_bytes)}
    if MANIFEST_FILE not in infos:
        raise PackageFormatError(f"{source}: no {MANIFEST_FILE}; found {sorted(infos)}")
    raw = _read_member(tar, infos[MANIFEST_FILE])
    try:
        data = json.loads(raw)
        found_format = data.get("format_version") if isinstance(data, dict) else None
        if isinstance(found_format, int) and found_format > FORMAT_VERSION:
            raise ManifestError(
                f"{source}: package format {found_format} is newer than the "
                f"supported {FORMAT_VERSION}; upgrade edgefleet"
            )
        manifest = ModelManifest.model_validate(data)
    except (ValueError, ValidationError) as e:
        if isinstance(e, ManifestError):
            raise
        detail = manifest_problem(e) if isinstance(e, ValidationError) else str(e)
        raise ManifestError(f"{source}: invalid {MANIFEST_FILE}: {detail}") from e
    expected, found = manifest.member_names, sorted(infos)
    if expected != found:
        raise PackageFormatError(f"{source}: expected members {expected}, found {found}")
    return _Opened(manifest, infos)


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    if f is None:  # pragma: no cover - _safe_infos admits regular files only
        raise UnsafeMemberError(f"member {info.name!r} has no content")
    with f:
        return f.read()


def _expected_digest(manifest: ModelManifest, name: str) -> tuple[str, int | None]:
    if name == manifest.model_file:
        return manifest.sha256, manifest.size_bytes
    if manifest.golden is not None and name == manifest.golden.file:
        return manifest.golden.sha256, None
    raise PackageFormatError(f"member {name!r} is not described by the manifest")


def _copy_verified(
    tar: tarfile.TarFile, info: tarfile.TarInfo, manifest: ModelManifest, sink: IO[bytes] | None
) -> PackageMember:
    """Stream a member (into ``sink`` if given), then check it; raises `DigestMismatch`."""
    want_sha, want_size = _expected_digest(manifest, info.name)
    if want_size is not None and info.size != want_size:
        raise DigestMismatch(
            f"{info.name}: manifest says {want_size} bytes, the package holds {info.size}"
        )
    digest = hashlib.sha256()
    f = tar.extractfile(info)
    assert f is not None  # regular files only, see _safe_infos
    with f:
        hash_stream(digest, f, sink=sink)
    if digest.hexdigest() != want_sha:
        raise DigestMismatch(
            f"{info.name}: sha256 {digest.hexdigest()} differs from the manifest's {want_sha}"
        )
    return PackageMember(name=info.name, size_bytes=info.size, sha256=want_sha)


@dataclass
class _TarSource:
    path: Path

    def __enter__(self) -> tarfile.TarFile:
        try:
            # "r:" = uncompressed only: what we build, and no decompression bombs.
            self._tar = tarfile.open(self.path, mode="r:")
        except OSError as e:
            raise PackageFormatError(f"{self.path}: cannot open: {e.strerror or e}") from e
        except tarfile.TarError as e:
            raise PackageFormatError(f"{self.path}: not a model package (a tar): {e}") from e
        return self._tar

    def __exit__(self, *exc: object) -> None:
        self._tar.close()


def read_package(
    path: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> tuple[ModelManifest, list[PackageMember]]:
    """Validate a package without extracting it: members, manifest, digests.

    Raises `PackageFormatError`, `UnsafeMemberError`, `ManifestError` (all
    `PackageError`) or `edgefleet.shared.signing.errors.DigestMismatch` (a member's
    sha256 or size differs from the manifest's: tampered or corrupt).
    """
    try:
        with _TarSource(path) as tar:
            opened = _open_manifest(tar, str(path), max_member_bytes)
            raw = _read_member(tar, opened.infos[MANIFEST_FILE])
            members = [
                PackageMember(MANIFEST_FILE, len(raw), hashlib.sha256(raw).hexdigest()),
                *(
                    _copy_verified(tar, info, opened.manifest, None)
                    for name, info in sorted(opened.infos.items())
                    if name != MANIFEST_FILE
                ),
            ]
    except tarfile.TarError as e:
        raise PackageFormatError(f"{path}: damaged package: {e}") from e
    return opened.manifest, sorted(members, key=lambda m: m.name)


def read_package_manifest(
    path: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> ModelManifest:
    """The manifest of a package, with its members checked for names, types and sizes.

    Unlike `read_package` it does not read or hash the members' contents: for a package
    whose bytes already matched a signed hash, which `extract_package` checks again
    member by member anyway. Raises `PackageFormatError`, `UnsafeMemberError` or
    `ManifestError`.
    """
    try:
        with _TarSource(path) as tar:
            return _open_manifest(tar, str(path), max_member_bytes).manifest
    except tarfile.TarError as e:
        raise PackageFormatError(f"{path}: damaged package: {e}") from e


def extract_package(
    path: Path, dest_dir: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> ModelManifest:
    """Extract a package into ``dest_dir`` (created; must be empty) and verify it.

    Only the members the manifest names are written, each as a new regular file; if
    anything fails, the files written so far are removed. Raises the errors of
    `read_package`, or `PackageError` if ``dest_dir`` is not empty.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    if any(dest_dir.iterdir()):
        raise PackageError(f"{dest_dir}: extraction directory is not empty")
    written: list[Path] = []
    try:
        with _TarSource(path) as tar:
            opened = _open_manifest(tar, str(path), max_member_bytes)
            for name, info in sorted(opened.infos.items()):
                target = dest_dir / name
                written.append(target)
                with target.open("xb") as sink:
                    if name == MANIFEST_FILE:
                        sink.write(_read_member(tar, info))
                    else:
                        _copy_verified(tar, info, opened.manifest, sink)
                    sink.flush()
                    os.fsync(sink.fileno())
        fsync_dir(dest_dir)
    except tarfile.TarError as e:
        _remove(written)
        raise PackageFormatError(f"{path}: damaged package: {e}") from e
    except BaseException:
        _remove(written)
        raise
    return opened.manifest


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def package_digest(path: Path) -> tuple[str, int]:
    """The package file's sha256 and size: what a TUF target and a desired state name."""
    found = digest_file(path)
    return found.sha256, found.size
