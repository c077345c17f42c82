"""Keys are encrypted at rest; ``edgefleet keys init`` makes a working repository and bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.shared.cli import main
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.bundle import load_director_keys
from edgefleet.shared.signing.errors import KeyFileError
from edgefleet.shared.signing.tuf_metadata import parse, verify_role
from edgefleet.shared.signing.tufapi import Root


def test_keys_encrypted_at_rest_need_the_right_passphrase(tmp_path: Path):
    signer = keys.generate_signer()
    keys.save_signer(signer, tmp_path, "director", b"correct horse")
    pem = keys.private_key_path(tmp_path, "director").read_bytes()

    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert keys.private_key_path(tmp_path, "director").stat().st_mode & 0o077 == 0
    with pytest.raises(KeyFileError, match=r"wrong passphrase for private key .*director"):
        keys.load_named(tmp_path, "director", b"battery staple")
    with pytest.raises(KeyFileError, match="encrypted and no passphrase"):
        keys.load_named(tmp_path, "director", None)
    loaded = keys.load_named(tmp_path, "director", b"correct horse")
    assert loaded.public_key.keyid == signer.public_key.keyid
    assert keys.load_public_key(keys.public_key_path(tmp_path, "director")) == signer.public_key


def test_missing_key_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(KeyFileError, match=r"private key file .*targets\.key\.pem does not exist"):
        keys.load_named(tmp_path, "targets", b"x")


def test_existing_key_is_never_overwritten(tmp_path: Path):
    keys.save_signer(keys.generate_signer(), tmp_path, "root", b"pw")
    with pytest.raises(KeyFileError, match="exists already"):
        keys.save_signer(keys.generate_signer(), tmp_path, "root", b"pw")


def test_empty_passphrase_is_refused_unless_insecure_is_explicit():
    with pytest.raises(KeyFileError, match="EDGEFLEET_KEY_PASSPHRASE"):
        keys.resolve_passphrase(None, environ={})
    with pytest.raises(KeyFileError):
        keys.resolve_passphrase("", environ={keys.PASSPHRASE_ENV: ""})
    assert keys.resolve_passphrase(None, insecure_no_passphrase=True, environ={}) is None
    assert keys.resolve_passphrase(None, environ={keys.PASSPHRASE_ENV: "s3cret"}) == b"s3cret"
    assert keys.resolve_passphrase("given", environ={keys.PASSPHRASE_ENV: "env"}) == b"given"


def test_keys_init_writes_keys_a_signed_repository_and_a_device_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "lab passphrase")
    key_dir = tmp_path / "keys"

    assert main(["keys", "init", "--dir", str(key_dir)]) == 0

    root_md = parse("root", (key_dir / "bundle" / "trusted_root.json").read_bytes())
    root: Root = root_md.signed
    assert root.consistent_snapshot is True
    meta = key_dir / "repository" / "metadata"
    from datetime import UTC, datetime

    for role in ("root", "targets", "snapshot", "timestamp"):
        verify_role(
            root, role, parse(role, (meta / f"{role}.json").read_bytes()), datetime.now(UTC)
        )
    director = keys.load_named(key_dir, "director", b"lab passphrase")
    assert list(load_director_keys(key_dir / "bundle" / "director_pub.json")) == [
        director.public_key.keyid
    ]

    assert main(["keys", "init", "--dir", str(key_dir)]) == 2
    assert "exist already" in capsys.readouterr().err


def test_keys_init_without_a_passphrase_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)

    assert main(["keys", "init", "--dir", str(tmp_path / "k")]) == 2
    assert not (tmp_path / "k").exists()


def test_export_root_writes_the_current_bundle(tmp_path: Path):
    key_dir = tmp_path / "keys"
    assert main(["keys", "init", "--dir", str(key_dir), "--insecure-no-passphrase"]) == 0
    assert not keys.private_key_path(key_dir, "root").read_bytes().startswith(b"-----BEGIN ENC")

    out = tmp_path / "out"
    assert (
        main(
            [
                "keys",
                "export-root",
                "--repo-dir",
                str(key_dir / "repository"),
                "--dir",
                str(key_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )

    assert (out / "trusted_root.json").read_bytes() == (
        key_dir / "repository" / "metadata" / "root.json"
    ).read_bytes()
    assert json.loads((out / "director_pub.json").read_bytes())["schema"] == (
        "edgefleet/v1/director-keys"
    )
