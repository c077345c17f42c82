"""Signed device requests on the wire: what a device sends, and headers that are refused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.shared.device_auth import (
    MAX_AUTHORIZATION_CHARS,
    DeviceAuthFormatError,
    authorization,
    is_device_authorization,
    parse_authorization,
    request_target,
    signed_message,
)

CERT = b"\x30\x82" + bytes(range(256)) * 2  # any bytes: the format does not parse them


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "https://fleet:8443/v1/repository/metadata/1.root.json",
            "/v1/repository/metadata/1.root.json",
        ),
        (
            "http://fleet/v1/repository/targets/ab.wine%201.efpkg",
            "/v1/repository/targets/ab.wine%201.efpkg",
        ),
        ("http://fleet/a?x=1&y=2", "/a?x=1&y=2"),
        ("http://fleet", "/"),
    ],
)
def test_the_target_is_what_an_http_client_sends(url: str, target: str) -> None:
    assert request_target(url) == target


def test_a_signed_request_round_trips_and_verifies_with_the_device_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    url = "https://fleet/v1/repository/metadata/timestamp.json"
    value = authorization(key, CERT, "get", url, 1_700_000_000.9)
    assert is_device_authorization(value)
    assert len(value) < MAX_AUTHORIZATION_CHARS
    signed = parse_authorization(value)
    assert (signed.certificate_der, signed.timestamp) == (CERT, 1_700_000_000)
    message = signed_message("GET", "/v1/repository/metadata/timestamp.json", 1_700_000_000)
    key.public_key().verify(signed.signature, message, ec.ECDSA(hashes.SHA256()))


def test_method_target_and_time_are_each_in_the_signed_message() -> None:
    base = signed_message("GET", "/a", 1)
    assert (
        len(
            {
                base,
                signed_message("HEAD", "/a", 1),
                signed_message("GET", "/b", 1),
                signed_message("GET", "/a", 2),
            }
        )
        == 4
    )
    # One field cannot bleed into the next: the separator cannot occur in a method.
    assert signed_message("GET", "/a\n1", 1) != signed_message("GET", "/a", 11)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Bearer abc", "scheme"),
        ("EdgefleetDevice abc", "expected"),
        ("EdgefleetDevice a.b.c.d", "expected"),
        ("EdgefleetDevice AAAA.12x.AAAA", "timestamp"),
        ("EdgefleetDevice AAAA.-1.AAAA", "timestamp"),
        ("EdgefleetDevice AAAA.1234567890123.AAAA", "timestamp"),
        ("EdgefleetDevice AA+A.1.AAAA", "certificate"),
        ("EdgefleetDevice .1.AAAA", "certificate"),
        ("EdgefleetDevice AAAA.1." + "A" * 200, "signature"),
        ("EdgefleetDevice " + "A" * 2800 + ".1.AAAA", "certificate"),
        ("EdgefleetDevice " + "A" * MAX_AUTHORIZATION_CHARS, "over"),
        ("EdgefleetDevice A.1.AAAA", "certificate"),  # one base64 char holds no byte
    ],
)
def test_malformed_authorizations_are_refused_before_anything_is_verified(
    value: str, reason: str
) -> None:
    with pytest.raises(DeviceAuthFormatError, match=reason):
        parse_authorization(value)


def test_the_scheme_is_matched_case_insensitively_as_http_requires() -> None:
    assert is_device_authorization("edgefleetdevice x")
    assert not is_device_authorization("EdgefleetDevicex")
    assert not is_device_authorization("Bearer x")
