"""Hypothesis strategies for hostile payloads of a device's ``desired`` topic.

Every payload drawn here must be refused by a device that has taken no desired state yet:
garbage bytes, JSON of any shape, envelopes of the right shape with hostile values,
nesting and sizes beyond the bounds, non-finite and huge numbers, bodies for another
device, signatures by a stranger or forged under the director's key id, and bodies the
director really signed that are nonetheless invalid, or expired. (A validly signed body
for this device always carries an expiry in the past, so nothing here may be taken.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from edgefleet.shared.signing.canonical import canonical_bytes
from edgefleet.shared.signing.errors import Malformed
from edgefleet.shared.signing.tufapi import CryptoSigner

PAST = datetime(2020, 1, 1, tzinfo=UTC)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


def _with_hostile_fields(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A valid dict with up to two of its fields (or the whole of it) hostile."""

    def spoil(doc: dict[str, Any]) -> st.SearchStrategy[Any]:
        changes = st.dictionaries(st.sampled_from(sorted(doc)), json_values, max_size=2)
        return st.one_of(changes.map(lambda c: {**doc, **c}), json_values)

    return valid.flatmap(spoil)


def bodies(device_id: str) -> st.SearchStrategy[Any]:
    """Body-shaped values with hostile fields; any one that validates has expired."""
    past = st.integers(min_value=1, max_value=10**6).map(
        lambda s: (PAST - timedelta(seconds=s)).isoformat()
    )
    # No positive numbers: pydantic reads a number as a Unix time, maybe in the future.
    expiries = st.one_of(
        past,
        st.none(),
        st.text(max_size=30),
        st.integers(max_value=-1),
        st.floats(max_value=-1.0) | st.just(float("nan")) | st.just(float("inf")),
        st.lists(_scalars, max_size=3),
    )
    target = st.fixed_dictionaries(
        {
            "name": st.just("wine-1.1.0.efpkg"),
            "sha256": _hex64,
            "length": st.integers(min_value=0, max_value=2**70),
            "version": st.sampled_from(["1.1.0", "0.0.1", "99999.0.0", "x"]),
        }
    )
    body = st.fixed_dictionaries(
        {
            "schema": st.just("edgefleet/v1/desired-state"),
            "device_id": st.sampled_from([device_id, f"{device_id}-neighbour"]),
            "seq": st.integers(min_value=0, max_value=2**70),
            "target": st.one_of(target, _with_hostile_fields(target)),
            "issued_at": past,
        },
        optional={"rollout_id": json_values, "rollback": st.booleans(), "extra": json_values},
    )
    # The expiry is drawn apart, so no spoiling of other fields can make it valid.
    spoiled = st.one_of(body, _with_hostile_fields(body))
    return st.tuples(spoiled, expiries).map(
        lambda t: {**t[0], "expires_at": t[1]} if isinstance(t[0], dict) else t[0]
    )


def _signature(signer: CryptoSigner, body: Any) -> dict[str, Any]:
    try:
        payload = canonical_bytes(body)
    except (Malformed, UnicodeEncodeError):
        return {"keyid": signer.public_key.keyid, "sig": "00" * 64}
    signature = signer.sign(payload)
    return {"keyid": signature.keyid, "sig": signature.signature}


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


def envelopes(director: CryptoSigner, device_id: str) -> st.SearchStrategy[bytes]:
    """Envelope-shaped payloads: signed by the director, a stranger, or forged."""
    signed_by_director = bodies(device_id).map(
        lambda b: _dumps({"signed": b, "signatures": [_signature(director, b)]})
    )
    forged = st.tuples(bodies(device_id), _hex64).map(
        lambda t: _dumps(
            {"signed": t[0], "signatures": [{"keyid": director.public_key.keyid, "sig": t[1]}]}
        )
    )
    strangers = st.tuples(bodies(device_id), json_values).map(
        lambda t: _dumps({"signed": t[0], "signatures": t[1]})
    )
    return st.one_of(signed_by_director, forged, strangers)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def hostile_payloads(director: CryptoSigner, device_id: str) -> st.SearchStrategy[bytes]:
    """Any payload a device must refuse (see the module docstring)."""
    return st.one_of(
        st.binary(max_size=300),
        json_values.map(_dumps),
        envelopes(director, device_id),
        st.integers(min_value=17, max_value=40_000).map(_nested),
        st.integers(min_value=17, max_value=3000).map(
            lambda d: b'{"signed":{"seq":1,"x":' + _nested(d) + b'},"signatures":[]}'
        ),
        st.integers(min_value=64 * 1024 - 100, max_value=200_000).map(
            lambda n: b'{"signed":{"seq":2},"pad":"' + b"x" * n + b'"}'
        ),
        st.sampled_from(
            [
                b'{"signed":{"seq":NaN},"signatures":[]}',
                b'{"signed":{"seq":1e400},"signatures":[]}',
                b'{"signed":{"x":"\\ud800"},"signatures":[{"keyid":"k","sig":"00"}]}',
                b'{"signed":{"seq":' + b"9" * 5000 + b"}}",
                b"\xef\xbb\xbf{}",
                b"\x00" * 64,
            ]
        ),
    )
