"""Device keys and CSRs for identity tests (what a device makes, made here by hand)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(key: PrivateKey, common_name: str) -> str:
    """A PEM CSR with subject CN ``common_name``, signed by ``key``."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        # _validate=False: tests send CNs a certificate could not hold, as an attacker would.
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=False)])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(Encoding.PEM).decode()
