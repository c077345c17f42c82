"""The director's signed desired state: which target one device should run, signed online.

Wire format (``edgefleet/v1/desired-state``)::

    {"signed": {"schema": ..., "device_id", "seq", "target": {name, sha256, length, version},
                "expires_at", "rollout_id", "rollback", "issued_at"},
     "signatures": [{"keyid": ..., "sig": <hex Ed25519 signature>}]}

A signature covers the canonical JSON (`edgefleet.shared.signing.canonical`) of the
``signed`` object *exactly as received*, so fields a newer director adds are covered
too, and an older device that ignores them still verifies the signature.

Opening an envelope and accepting what is in it are separate steps, both pure:

- `open_desired` (bytes and the trusted keys in, a `DesiredBody` or an `UpdateRejected`
  out) is the one place that checks the envelope: shape, signature, body schema, device,
  in this order, the first failure winning. What it returns was signed by the director
  for this device, nothing more: it may be old, a replay, or expired.
- `check_fresh` is the protocol's rule for the sequence number and the expiry: a desired
  state is taken only if its ``seq`` is newer than the last one taken and it has not
  expired. The agent applies it, with its own rules for redeliveries and downgrades, in
  ``edgefleet.agent.update.acceptance``.
- `verify_desired` is both for a device that remembers nothing but its last ``seq``
  (tests, simulated devices, third-party subscribers).
- `claimed_seq` is the seq a payload that did not open claims, for the report.

Any bytes at all give a body or an `UpdateRejected`: a payload over `MAX_ENVELOPE_BYTES`
or nested deeper than `MAX_ENVELOPE_DEPTH` is `Malformed` before it is parsed further,
so nothing hostile (huge, deeply nested, non-UTF-8, lone surrogates, non-finite numbers,
wrong types) raises anything else. This module owns both limits; whoever reads a
``desired`` payload again parses it here (`claimed_seq`), never with its own ``json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.signing.canonical import canonical_bytes
from edgefleet.shared.signing.errors import (
    BadSignature,
    Expired,
    Malformed,
    ReplayedOrOlder,
    UnknownKey,
    WrongDevice,
)
from edgefleet.shared.topics import DEVICE_ID_PATTERN

if TYPE_CHECKING:
    # securesystemslib (and through it cryptography, ~11 MiB of RSS) is imported only to
    # verify an envelope: `edgefleet.shared.messages` imports this module, so every
    # agent and simulator would otherwise hold it from start.
    from edgefleet.shared.signing.tufapi import Signer, SSlibKey

logger = logging.getLogger(__name__)

DESIRED_STATE_SCHEMA: Final = "edgefleet/v1/desired-state"
# A desired state is a few hundred bytes; anything far larger is not one.
MAX_ENVELOPE_BYTES: Final = 64 * 1024
# And it nests four deep (envelope, signed, target, value). The bound keeps a hostile
# payload from the recursion of the JSON decoder and the canonical encoder, which would
# otherwise raise RecursionError rather than a rejection.
MAX_ENVELOPE_DEPTH: Final = 16
# Every integer fits the signed 64-bit columns and message fields it lands in, and every
# string the events that name it, so a signed value can always be reported.
MAX_SEQ: Final = MAX_INT64
# A rejection's reason quotes what it refused; this much of it is enough to tell.
MAX_QUOTE_CHARS: Final = 300


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class DesiredTarget(_Wire):
    """The artifact the device should run, as the director claims it (TUF must agree)."""

    name: str = Field(min_length=1, max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    length: int = Field(ge=0, le=MAX_SEQ)
    version: str = Field(min_length=1, max_length=64)


class DesiredBody(_Wire):
    """The signed part of a desired state."""

    schema_: Literal["edgefleet/v1/desired-state"] = Field(
        default=DESIRED_STATE_SCHEMA, alias="schema"
    )
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    seq: int = Field(ge=0, le=MAX_SEQ)
    target: DesiredTarget
    expires_at: AwareDatetime
    rollout_id: str | None = Field(default=None, max_length=200)
    rollback: bool = False
    issued_at: AwareDatetime


class DirectorSignature(_Wire):
    """One signature over the canonical JSON of the body."""

    keyid: str = Field(min_length=1)
    sig: str = Field(pattern=r"^[0-9a-f]+$")


class SignedDesiredState(_Wire):
    """The envelope the fleet publishes (retained) on a device's ``desired`` topic."""

    signed: DesiredBody
    signatures: list[DirectorSignature]

    def to_bytes(self) -> bytes:
        """The JSON bytes to publish."""
        return self.model_dump_json(by_alias=True).encode()

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict (to embed in another message)."""
        doc: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        return doc


def sign_desired(body: DesiredBody, signer: Signer) -> SignedDesiredState:
    """Sign ``body`` with the director key ``signer``."""
    payload = canonical_bytes(body.model_dump(mode="json", by_alias=True))
    signature = signer.sign(payload)
    return SignedDesiredState(
        signed=body,
        signatures=[DirectorSignature(keyid=signature.keyid, sig=signature.signature)],
    )


def open_desired(
    envelope_bytes: bytes,
    *,
    trusted_director_keys: Mapping[str, SSlibKey],
    device_id: str,
) -> DesiredBody:
    """The body of a desired-state envelope, once it is shown signed for this device.

    ``trusted_director_keys`` maps key id to key (from the provisioning bundle). The
    body's ``seq`` and ``expires_at`` are not judged here (see `check_fresh`).

    Raises (all `UpdateRejected`): `Malformed` (not an envelope, or a body that does not
    validate), `UnknownKey` (no signature by a trusted key), `BadSignature` (a trusted
    key's signature does not verify), `WrongDevice`.
    """
    raw_body, signatures = _split_envelope(envelope_bytes)
    try:
        payload = canonical_bytes(raw_body)
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800") has no UTF-8 form
        raise Malformed(f"desired state body is not encodable as UTF-8: {e}") from e
    except Malformed as e:  # its message quotes the whole body
        raise Malformed(f"desired state body: {_clip(str(e))}") from e
    _verify_signatures(payload, signatures, trusted_director_keys)
    try:
        body = DesiredBody.model_validate(raw_body)
    except ValidationError as e:
        raise Malformed(f"desired state body is invalid: {_describe(e)}") from e
    if body.device_id != device_id:
        raise WrongDevice(
            f"desired state is for device {body.device_id!r}, this device is {device_id!r}"
        )
    return body


def check_fresh(seq: int, expires_at: datetime, *, last_seq: int | None, now: datetime) -> None:
    """Refuse a desired state that is not newer than the last one taken, or has expired.

    ``last_seq`` is the sequence number of the last desired state the device accepted
    (None if none yet); ``now`` is the reference time for expiry.

    Raises `ReplayedOrOlder` (``seq`` ≤ ``last_seq``: a replay or a rollback of the
    director's history), then `Expired` (``expires_at`` ≤ ``now``: a freeze attack).
    """
    if last_seq is not None and seq <= last_seq:
        raise ReplayedOrOlder(
            f"desired state seq {seq} is not newer than the last accepted {last_seq}"
        )
    if expires_at <= now:
        raise Expired(
            f"desired state seq {seq} expired at {expires_at.isoformat()}, now is {now.isoformat()}"
        )


def verify_desired(
    envelope_bytes: bytes,
    *,
    trusted_director_keys: Mapping[str, SSlibKey],
    device_id: str,
    last_seq: int | None,
    now: datetime,
) -> DesiredBody:
    """`open_desired`, then `check_fresh`: the body, if the envelope is one to take now.

    Raises what those two raise: `Malformed`, `UnknownKey`, `BadSignature`,
    `WrongDevice`, `ReplayedOrOlder`, `Expired` (all `UpdateRejected`).
    """
    body = open_desired(
        envelope_bytes, trusted_director_keys=trusted_director_keys, device_id=device_id
    )
    check_fresh(body.seq, body.expires_at, last_seq=last_seq, now=now)
    return body


def trusted_keys(keys: list[SSlibKey]) -> dict[str, SSlibKey]:
    """Index director public keys by key id, as `open_desired` wants them."""
    return {key.keyid: key for key in keys}


def claimed_seq(envelope_bytes: bytes) -> int | None:
    """The ``signed.seq`` a payload claims, unverified (to report a rejection); never raises.

    None when the payload is not a bounded JSON envelope (`MAX_ENVELOPE_BYTES`,
    `MAX_ENVELOPE_DEPTH`) or claims no seq in 0..`MAX_SEQ`.
    """
    try:
        doc = _load_envelope_json(envelope_bytes)
    except Malformed:
        return None
    signed = doc.get("signed") if isinstance(doc, dict) else None
    seq = signed.get("seq") if isinstance(signed, dict) else None
    # bool is an int to Python, not a seq to anyone.
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_SEQ:
        return seq
    return None


def _load_envelope_json(envelope_bytes: bytes) -> Any:
    """The JSON document of a payload within the size and depth bounds; raises `Malformed`."""
    if len(envelope_bytes) > MAX_ENVELOPE_BYTES:
        raise Malformed(
            f"desired state is {len(envelope_bytes)} bytes, at most {MAX_ENVELOPE_BYTES} expected"
        )
    try:
        text = envelope_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed(f"desired state is not UTF-8: {e}") from e
    # The decoder recurses once per level, so the depth is checked first, on the text.
    depth = _max_depth(text)
    if depth > MAX_ENVELOPE_DEPTH:
        raise Malformed(
            f"desired state nests {depth} levels deep, at most {MAX_ENVELOPE_DEPTH} expected"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise Malformed(f"desired state is not JSON: {e}") from e


def _max_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest in ``text`` outside strings (an upper bound for JSON)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _split_envelope(envelope_bytes: bytes) -> tuple[dict[str, Any], list[DirectorSignature]]:
    doc = _load_envelope_json(envelope_bytes)
    if not isinstance(doc, dict):
        raise Malformed(f"desired state is a JSON {type(doc).__name__}, expected an object")
    raw_body = doc.get("signed")
    if not isinstance(raw_body, dict):
        raise Malformed("desired state has no 'signed' object")
    raw_sigs = doc.get("signatures")
    if not isinstance(raw_sigs, list) or not raw_sigs:
        raise Malformed("desired state has no 'signatures' list")
    try:
        signatures = [DirectorSignature.model_validate(s) for s in raw_sigs]
    except ValidationError as e:
        raise Malformed(f"desired state signature is invalid: {_describe(e)}") from e
    return raw_body, signatures


def _verify_signatures(
    payload: bytes, signatures: list[DirectorSignature], trusted: Mapping[str, SSlibKey]
) -> None:
    # One valid signature by a trusted director key suffices (threshold 1); a trusted
    # key whose signature fails is a forgery or corruption, not an unknown signer.
    known = [s for s in signatures if s.keyid in trusted]
    if not known:
        found = ", ".join(s.keyid[:12] for s in signatures)
        expected = ", ".join(k[:12] for k in trusted) or "none"
        raise UnknownKey(
            f"desired state is signed by unknown key(s) {found}; trusted director keys: {expected}"
        )
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError

    from edgefleet.shared.signing.tufapi import Signature

    failures = []
    for sig in known:
        try:
            trusted[sig.keyid].verify_signature(Signature(sig.keyid, sig.sig), payload)
        except (UnverifiedSignatureError, VerificationError) as e:
            failures.append(f"{sig.keyid[:12]}: {e}")
            continue
        return
    raise BadSignature(f"desired state signature does not verify ({'; '.join(failures)})")


def _clip(text: str) -> str:
    if len(text) <= MAX_QUOTE_CHARS:
        return text
    return f"{text[:MAX_QUOTE_CHARS]}... ({len(text)} characters)"


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
