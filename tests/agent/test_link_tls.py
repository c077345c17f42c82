"""The link over mqtts:// with mutual TLS and a username/password, on a real Mosquitto."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent.daemon import Agent
from tests.support.agent import agent_config
from tests.support.mosquitto import MosquittoBroker, free_port

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd (package mosquitto) missing"
)


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, int, Path]]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgefleet test CA", ca_key, None, ca=True)
    _write(pki / "ca", ca, ca_key)
    for name in ("server", "device"):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(
            pki / name,
            _cert(name if name != "server" else "localhost", key, (ca.subject, ca_key), ca=False),
            key,
        )
    passwords = pki / "passwd"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "dev1", "s3cret"], check=True)
    os.chmod(passwords, 0o644)
    for path in pki.iterdir():
        path.chmod(0o644)
    pki.chmod(0o755)
    tls_port = free_port()
    extra = (
        f"password_file {passwords}\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
    )
    if os.geteuid() == 0:
        extra += "user root\n"
    broker = MosquittoBroker(tmp_path / "mosquitto", extra_config=extra)
    broker.start()
    yield broker, tls_port, pki
    broker.stop()


def _connects(agent: Agent, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if agent.connected:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(("password", "expected"), [("s3cret", True), ("wrong", False)])
def test_mutual_tls_with_username_and_password(
    tmp_path: Path,
    tls_broker: tuple[MosquittoBroker, int, Path],
    unique_id: str,
    password: str,
    expected: bool,
) -> None:
    broker, tls_port, pki = tls_broker
    config = agent_config(
        tmp_path,
        broker,
        f"tls-{unique_id}",
        broker={
            "url": f"mqtts://localhost:{tls_port}",
            "ca_file": str(pki / "ca.pem"),
            "cert_file": str(pki / "device.pem"),
            "key_file": str(pki / "device.key"),
            "username": "dev1",
            "password": password,
            "protocol": "5",
        },
    )
    agent = Agent(config)
    agent.start()
    try:
        assert _connects(agent, 3.0 if expected else 1.5) is expected
    finally:
        agent.stop(2)
