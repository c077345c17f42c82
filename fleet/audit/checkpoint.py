"""Signed audit checkpoints: what they say, their key, and the file they are kept in.

A checkpoint says "the log had ``count`` entries, the last of hash ``head_hash``", signed
with Ed25519 by the fleet's ``audit-checkpoint`` key: its own key, not the director's,
so that neither a database administrator nor a leaked director key can make one. The
signature covers the OLPC canonical JSON of every field but ``signature``
(`edgefleet.shared.signing.canonical`, the encoding TUF signatures cover).

Checkpoints are kept outside the database, one JSON object a line in a file that only
grows; each line is written with one ``write`` to a file opened for appending and
fsync'd before `append_checkpoint` returns.

The key lives as ``audit-checkpoint.key.pem`` (encrypted with
``$EDGEFLEET_KEY_PASSPHRASE``, as every key of `edgefleet.shared.signing.keys`) beside
``audit-checkpoint.pub.json``, the public key a verifier is given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    KeySerializationEncryption,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from edgefleet.fleet.audit.verify import CheckpointClaim
from edgefleet.shared.durable import atomic_write_bytes, fsync_dir, temp_path_for
from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.canonical import canonical_bytes
from edgefleet.shared.signing.errors import KeyFileError
from edgefleet.shared.signing.tufapi import CryptoSigner, Signature, Signer, SSlibKey

logger = logging.getLogger(__name__)

SCHEMA = "edgefleet/v1/audit-checkpoint"
KEY_NAME = "audit-checkpoint"
HEX64 = r"^[0-9a-f]{64}$"
MAX_LINE_BYTES = 4096  # a checkpoint is ~500 bytes; a longer line is not one


class CheckpointError(ValueError):
    """A checkpoint (or the checkpoint file) is malformed or its signature does not verify."""


class CheckpointBody(BaseModel):
    """What a checkpoint says, without its signature."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["edgefleet/v1/audit-checkpoint"] = Field(
        default="edgefleet/v1/audit-checkpoint", alias="schema"
    )
    fleet_id: str = Field(min_length=1, max_length=100)
    key_id: str = Field(pattern=HEX64)
    count: int = Field(ge=0, le=MAX_INT64)
    head_hash: str = Field(pattern=HEX64)
    signed_at: AwareDatetime

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return canonical_bytes(self.model_dump(mode="json", by_alias=True))


class SignedCheckpoint(CheckpointBody):
    """A checkpoint as kept in the file and posted to the webhook."""

    signature: str = Field(pattern=r"^[0-9a-f]{128}$")

    def body(self) -> CheckpointBody:
        return CheckpointBody.model_validate(self.model_dump(exclude={"signature"}))

    def claim(self) -> CheckpointClaim:
        return CheckpointClaim(count=self.count, head_hash=self.head_hash, signed_at=self.signed_at)

    def line(self) -> bytes:
        """The checkpoint as one line of the checkpoint file."""
        return self.model_dump_json(by_alias=True).encode() + b"\n"


def sign_checkpoint(
    signer: Signer, *, fleet_id: str, count: int, head_hash: str, signed_at: datetime
) -> SignedCheckpoint:
    """A checkpoint of (``count``, ``head_hash``) signed by ``signer``."""
    body = CheckpointBody(
        fleet_id=fleet_id,
        key_id=signer.public_key.keyid,
        count=count,
        head_hash=head_hash,
        signed_at=signed_at,
    )
    signature = signer.sign(body.signed_bytes())
    return SignedCheckpoint(**body.model_dump(), signature=signature.signature)


def verify_checkpoint(checkpoint: SignedCheckpoint, public_keys: Iterable[SSlibKey]) -> None:
    """Raise `CheckpointError` unless one of ``public_keys`` (matched by key id) signed
    ``checkpoint``."""
    key = next((k for k in public_keys if k.keyid == checkpoint.key_id), None)
    if key is None:
        raise CheckpointError(f"signed by key {checkpoint.key_id[:12]}..., which is not trusted")
    try:
        key.verify_signature(
            Signature(keyid=key.keyid, sig=checkpoint.signature), checkpoint.body().signed_bytes()
        )
    except Exception as e:  # securesystemslib raises its own UnverifiedSignatureError
        raise CheckpointError(
            f"the signature does not verify with key {key.keyid[:12]}...: {e}"
        ) from None


def parse_line(line: bytes) -> SignedCheckpoint:
    """One line of a checkpoint file; raises `CheckpointError` if it is not a checkpoint."""
    if len(line) > MAX_LINE_BYTES:
        raise CheckpointError(f"a line of {len(line)} bytes is not a checkpoint")
    try:
        return SignedCheckpoint.model_validate_json(line)
    except ValidationError as e:
        raise CheckpointError(f"not a checkpoint: {e.errors()[0]['msg']}") from None


def read_checkpoints(path: Path, public_keys: Iterable[SSlibKey]) -> list[SignedCheckpoint]:
    """Every checkpoint in ``path``, each signature verified.

    Blank lines are skipped (none are written). Raises `CheckpointError` naming the line
    of the first checkpoint that does not parse or verify (a forged or damaged line is a
    finding, not something to skip), and `OSError` if the file cannot be read.
    """
    trusted = list(public_keys)
    out = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                checkpoint = parse_line(line)
                verify_checkpoint(checkpoint, trusted)
            except CheckpointError as e:
                raise CheckpointError(f"{path} line {number}: {e}") from None
            out.append(checkpoint)
    return out


def last_checkpoint(path: Path, public_key: SSlibKey) -> SignedCheckpoint | None:
    """The newest checkpoint in ``path`` signed by ``public_key``, or None.

    Reads only the file's end. A last line that does not verify is skipped with a
    warning: the checkpointer then starts again from the beginning of the log.
    """
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16 * MAX_LINE_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return None
    for raw in reversed(tail.splitlines()):
        line = raw.strip()
        if not line:
            continue
        try:
            checkpoint = parse_line(line)
        except CheckpointError:
            break  # a partial first line of the tail, or damage
        if checkpoint.key_id != public_key.keyid:
            continue
        try:
            verify_checkpoint(checkpoint, [public_key])
        except CheckpointError as e:
            logger.warning("the last checkpoint in %s does not verify: %s", path, e)
            return None
        return checkpoint
    return None


def append_checkpoint(path: Path, checkpoint: SignedCheckpoint) -> None:
    """Append ``checkpoint`` to ``path`` as one line, durably (created if missing, with
    its directory fsync'd). Raises `OSError`."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # A line torn by a crash mid-write stays a line of its own (verify names it)
        # rather than running into this one.
        torn = not created and _ends_without_newline(fd)
        # One write of a short line: two replicas appending to one file do not interleave.
        os.write(fd, (b"\n" if torn else b"") + checkpoint.line())
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def _ends_without_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def load_or_create_key(key_dir: Path, passphrase: bytes | None) -> CryptoSigner:
    """The ``audit-checkpoint`` key from ``key_dir``, made there if it does not exist.

    Made with ``passphrase`` (unencrypted, with a warning, without one). Two replicas
    starting at once on one directory both end up with the same key: the private key
    is linked into place, which fails for the second, who then loads the first's.
    The public key file is (re)written from the private key, so it always matches.

    Raises `KeyFileError` for a key that cannot be loaded (wrong passphrase, ...) and
    `OSError` if the directory cannot be written.
    """
    private = keys.private_key_path(key_dir, KEY_NAME)
    if not private.exists():
        _create_key(key_dir, private, passphrase)
    signer = keys.load_signer(private, passphrase)
    public = keys.public_key_path(key_dir, KEY_NAME)
    try:
        current = keys.load_public_key(public)
    except KeyFileError:
        current = None
    if current is None or current.keyid != signer.public_key.keyid:
        keys.save_public_key(signer.public_key, public)
    return signer


def _create_key(key_dir: Path, private: Path, passphrase: bytes | None) -> None:
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if passphrase is None:
        logger.warning(
            "no %s: the audit checkpoint key %s is stored unencrypted",
            keys.PASSPHRASE_ENV,
            private,
        )
    signer = keys.generate_signer()
    key = load_pem_private_key(signer.private_bytes, None)
    encryption: KeySerializationEncryption = (
        BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    )
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    tmp = temp_path_for(private)
    atomic_write_bytes(tmp, pem, mode=0o600)
    try:
        os.link(tmp, private)  # fails if another replica made the key first
    except FileExistsError:
        logger.info("another replica made the audit checkpoint key %s first", private)
    else:
        fsync_dir(key_dir)
        logger.info("made the audit checkpoint key %s", private)
    finally:
        tmp.unlink(missing_ok=True)
