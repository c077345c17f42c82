"""https webhooks: the POST goes to the checked address, the certificate is still
verified against the webhook's name (SNI and hostname check use the name, not the IP).

A test CA and a certificate for ``hooks.test`` are made here; a TLS server on loopback
presents it, and a fake `Resolver` maps the names to 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.fleet.webhooks.policy import DestinationPolicy, IPAddress
from edgefleet.fleet.webhooks.transport import post_checked

LOOPBACK_ALLOWED = DestinationPolicy.of([], ["127.0.0.0/8"])


class LoopbackResolver:
    def resolve(self, host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]


def _cert(
    subject: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: x509.Name | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return key, builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext, list[str]]]:
    """(port, a client context trusting the test CA, SNI names the server saw)."""
    ca_key, ca = _cert("edgefleet test CA", None, None)
    leaf_key, leaf = _cert("hooks.test", ca_key, ca.subject)
    cert_file, key_file = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    seen: list[str] = []
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    server_context.sni_callback = lambda _sock, name, _ctx: seen.append(name or "")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(
        cadata=ca.public_bytes(serialization.Encoding.PEM).decode()
    )
    yield int(server.server_address[1]), client_context, seen
    server.shutdown()
    server.server_close()
    thread.join(5)


def _post(url: str, context: ssl.SSLContext) -> int:
    with httpx.Client(verify=context, trust_env=False) as client:
        return post_checked(
            client,
            url,
            b"{}",
            {},
            destinations=LOOPBACK_ALLOWED,
            resolver=LoopbackResolver(),
            timeout_s=5,
        )


def test_https_to_a_checked_address_verifies_the_certificate_of_the_name(
    tls_receiver: tuple[int, ssl.SSLContext, list[str]],
) -> None:
    port, context, seen = tls_receiver
    assert _post(f"https://hooks.test:{port}/alerts", context) == 204
    assert seen == ["hooks.test"]  # SNI carried the name, though we connected to the IP


def test_https_to_a_name_the_certificate_does_not_cover_fails(
    tls_receiver: tuple[int, ssl.SSLContext, list[str]],
) -> None:
    port, context, seen = tls_receiver
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        _post(f"https://evil.test:{port}/alerts", context)
    assert seen == ["evil.test"]
