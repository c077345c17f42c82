"""Reading and extracting untrusted packages: each test is an attack or a corruption."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.shared.package.format import (
    ManifestError,
    PackageError,
    PackageFormatError,
    UnsafeMemberError,
)
from edgefleet.shared.package.read import extract_package, read_package
from edgefleet.shared.signing.errors import DigestMismatch

Entry = tuple[tarfile.TarInfo, bytes]


def _entries(package: Path) -> list[Entry]:
    with tarfile.open(package) as tar:
        out = []
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            out.append((info, f.read()))
        return out


def _file(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def _rewrite(package: Path, mutate: Callable[[list[Entry]], list[Entry]]) -> Path:
    entries = mutate(_entries(package))
    with tarfile.open(package, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return package


def _replace(name: str, entry: Entry) -> Callable[[list[Entry]], list[Entry]]:
    return lambda es: [entry if info.name == name else (info, d) for info, d in es]


def _add(*extra: Entry) -> Callable[[list[Entry]], list[Entry]]:
    return lambda es: [*extra, *es]


def _manifest_edit(**changes: object) -> Callable[[list[Entry]], list[Entry]]:
    def mutate(es: list[Entry]) -> list[Entry]:
        out = []
        for info, data in es:
            if info.name == "manifest.json":
                out.append(_file("manifest.json", json.dumps(json.loads(data) | changes).encode()))
            else:
                out.append((info, data))
        return out

    return mutate


def _assert_rejected_without_trace(
    package: Path, tmp_path: Path, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        read_package(package)
    dest = tmp_path / "dest"
    with pytest.raises(error, match=match):
        extract_package(package, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_a_flipped_bit_in_the_model_is_rejected(package_copy: Path, tmp_path: Path) -> None:
    with tarfile.open(package_copy) as tar:
        offset = tar.getmember("model.onnx").offset_data
    raw = bytearray(package_copy.read_bytes())
    raw[offset + 100] ^= 0x01
    package_copy.write_bytes(bytes(raw))
    _assert_rejected_without_trace(
        package_copy, tmp_path, DigestMismatch, r"model\.onnx: sha256 [0-9a-f]{64} differs"
    )


def test_a_model_of_another_size_is_rejected(package_copy: Path, tmp_path: Path) -> None:
    _rewrite(package_copy, _replace("model.onnx", _file("model.onnx", b"\x08\x07")))
    _assert_rejected_without_trace(
        package_copy, tmp_path, DigestMismatch, r"model\.onnx: manifest says \d+ bytes"
    )


def test_swapped_golden_samples_are_rejected(package_copy: Path, tmp_path: Path) -> None:
    golden = dict((i.name, d) for i, d in _entries(package_copy))["golden.npz"]
    forged = golden[:-30] + bytes(30)
    _rewrite(package_copy, _replace("golden.npz", _file("golden.npz", forged)))
    _assert_rejected_without_trace(package_copy, tmp_path, DigestMismatch, r"golden\.npz")


ATTACKS = {
    "parent traversal": (_add(_file("../evil", b"x")), "'../evil' is not a plain file name"),
    "absolute path": (_add(_file("/tmp/evil", b"x")), "'/tmp/evil' is not a plain file name"),
    "nested path": (_add(_file("sub/evil", b"x")), "'sub/evil' is not a plain file name"),
    "dot dot name": (_add(_file("a..b", b"x")), "'a..b' is not a plain file name"),
    "symlink model": (
        _replace("model.onnx", _special("model.onnx", tarfile.SYMTYPE, "/etc/passwd")),
        "'model.onnx' is a link",
    ),
    "hard link": (_add(_special("evil", tarfile.LNKTYPE, "/etc/passwd")), "'evil' is a link"),
    "char device": (_add(_special("evil", tarfile.CHRTYPE)), "'evil' is a device or fifo"),
    "fifo": (_add(_special("evil", tarfile.FIFOTYPE)), "'evil' is a device or fifo"),
    "directory": (_add(_special("evil", tarfile.DIRTYPE)), "'evil' is a directory"),
    "duplicate manifest": (
        _add(_file("manifest.json", b"{}")),
        "'manifest.json' appears twice",
    ),
    "member bomb": (
        _add(*(_file(f"f{i}", b"") for i in range(20))),
        "more than 16 members",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_unsafe_members_are_refused(package_copy: Path, tmp_path: Path, attack: str) -> None:
    mutate, match = ATTACKS[attack]
    _rewrite(package_copy, mutate)
    _assert_rejected_without_trace(package_copy, tmp_path, UnsafeMemberError, match)


def test_oversized_member_is_refused_before_reading_it(package_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(
        UnsafeMemberError, match=r"member '[a-z.]+' is \d+ bytes, over the 100-byte"
    ):
        read_package(package_copy, max_member_bytes=100)
    with pytest.raises(UnsafeMemberError):
        extract_package(package_copy, tmp_path / "dest", max_member_bytes=100)
    assert list((tmp_path / "dest").iterdir()) == []


BROKEN = {
    "extra member": (
        PackageFormatError,
        _add(_file("notes.txt", b"hi")),
        r"expected members \['golden.npz', 'manifest.json', 'model.onnx'\], found",
    ),
    "no manifest": (
        PackageFormatError,
        lambda es: [(i, d) for i, d in es if i.name != "manifest.json"],
        "no manifest.json",
    ),
    "manifest not json": (
        ManifestError,
        _replace("manifest.json", _file("manifest.json", b"{not json")),
        "invalid manifest.json",
    ),
    "manifest with a bad version": (
        ManifestError,
        _manifest_edit(version="one"),
        "version: Value error, version 'one' is not a semantic version",
    ),
    "manifest naming a traversal model": (
        ManifestError,
        _manifest_edit(model_file="../model.onnx"),
        "model_file: Value error, file name '../model.onnx'",
    ),
    "newer package format": (ManifestError, _manifest_edit(format_version=2), "format 2 is newer"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_packages_are_refused(package_copy: Path, tmp_path: Path, case: str) -> None:
    error, mutate, match = BROKEN[case]
    _rewrite(package_copy, mutate)
    _assert_rejected_without_trace(package_copy, tmp_path, error, match)


def test_a_file_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.efpkg"
    bogus.write_bytes(b"PK\x03\x04 definitely not a tar" * 40)
    _assert_rejected_without_trace(bogus, tmp_path, PackageFormatError, "not a model package")


def test_a_compressed_package_is_refused(package_copy: Path, tmp_path: Path) -> None:
    package_copy.write_bytes(gzip.compress(package_copy.read_bytes()))
    _assert_rejected_without_trace(package_copy, tmp_path, PackageFormatError, "not a model")


def test_a_truncated_package_is_refused(package_copy: Path, tmp_path: Path) -> None:
    with tarfile.open(package_copy) as tar:
        offset = tar.getmember("model.onnx").offset_data
    package_copy.write_bytes(package_copy.read_bytes()[: offset + 10])
    with pytest.raises(PackageFormatError):
        read_package(package_copy)
    with pytest.raises(PackageFormatError):
        extract_package(package_copy, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_missing_package_is_named(tmp_path: Path) -> None:
    with pytest.raises(PackageFormatError, match=r"nope\.efpkg: cannot open"):
        read_package(tmp_path / "nope.efpkg")


def test_extraction_refuses_a_directory_that_is_not_empty(
    built_package: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "model.onnx").write_bytes(b"old")
    with pytest.raises(PackageError, match="extraction directory is not empty"):
        extract_package(built_package, dest)
    assert (dest / "model.onnx").read_bytes() == b"old"
