"""OIDC bearer JWTs against a locally made issuer: real keys, a real JWKS over HTTP.

The issuer is an `http.server` on a free port serving its openid-configuration and JWKS
from keys made here with `cryptography`; tokens are minted with PyJWT (or by hand, for
the forgeries PyJWT refuses to make). Each refusal test checks the reason in the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlmodel import Session, col, select

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.errors import AuthenticationError
from edgefleet.fleet.governance.jwks import JwksCache
from edgefleet.fleet.governance.oidc import (
    MAX_ID_CHARS,
    OidcConfig,
    OidcVerifier,
    oidc_verifier,
    principal_from_claims,
)
from edgefleet.fleet.governance.permissions import BUILTIN_ROLES, Permission
from edgefleet.fleet.governance.principal import PrincipalKind
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.governance_tables import AuditRow
from edgefleet.fleet.store.migrate import create_all

AUDIENCE = "edgefleet-console"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _new_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def _alg_of(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "EdDSA"


def _public_jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(_alg_of(key))
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return jwk | {"kid": kid, "use": "sig"}


@dataclass
class Issuer:
    """A local OIDC issuer: its keys by kid, served as a JWKS; counts JWKS fetches."""

    url: str = ""
    keys: dict[str, PrivateKey] = field(default_factory=dict)
    jwks_fetches: int = 0
    advertised_issuer: str | None = None  # what its openid-configuration says; default url
    server: ThreadingHTTPServer | None = None

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks.json"

    def add_key(self, kid: str, kind: str = "rsa") -> PrivateKey:
        key = _new_key(kind)
        self.keys[kid] = key
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(key, kid) for kid, key in self.keys.items()]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "u-1234",
            "preferred_username": "alice",
            "email": "alice@example.com",
            "iat": now,
            "exp": now + 300,
            "roles": ["viewer"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str = "k1", *, key: PrivateKey | None = None, **overrides: Any) -> str:
        key = key or self.keys[kid]
        claims = self.claims(**overrides)
        return jwt.encode(claims, key, algorithm=_alg_of(key), headers={"kid": kid})

    def config(self, **overrides: Any) -> OidcConfig:
        values: dict[str, Any] = {"issuer": self.url, "audience": AUDIENCE} | overrides
        return OidcConfig(**values)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    state = Issuer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                body = {
                    "issuer": state.advertised_issuer or state.url,
                    "jwks_uri": state.jwks_url,
                }
            elif self.path == "/jwks.json":
                state.jwks_fetches += 1
                body = state.jwks()
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.server = server
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    state.add_key("k1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.stop()
    thread.join(5)


def _refused(verifier: OidcVerifier, token: str, reason: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        verifier.principal(token, {})
    assert str(caught.value).startswith("OIDC token refused: "), str(caught.value)
    assert reason in str(caught.value), str(caught.value)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(signature)}"


# Accepted


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_a_token_of_the_issuer_becomes_a_principal_with_its_roles(
    issuer: Issuer, kind: str
) -> None:
    issuer.add_key("k-" + kind, kind)
    verifier = OidcVerifier(issuer.config())
    principal = verifier.principal(issuer.token("k-" + kind, roles=["operator"]), {})
    assert principal.kind is PrincipalKind.OIDC
    assert principal.id == f"u-1234@{issuer.url}"
    assert principal.name == "alice"
    assert principal.permissions() == BUILTIN_ROLES["operator"]
    assert principal.has(Permission.ROLLOUT_CREATE)
    assert not principal.has(Permission.MODEL_APPROVE)


def test_keys_are_discovered_from_the_openid_configuration_or_taken_from_jwks_url(
    issuer: Issuer,
) -> None:
    discovered = OidcVerifier(issuer.config())
    configured = OidcVerifier(issuer.config(jwks_url=issuer.jwks_url))
    for verifier in (discovered, configured):
        assert verifier.principal(issuer.token(), {}).has(Permission.DEVICE_READ)


def test_a_claim_path_and_a_role_map_give_the_mapped_and_custom_roles(issuer: Issuer) -> None:
    config = issuer.config(
        roles_claim="realm_access.roles",
        role_map={"fleet-readers": "viewer", "ml-release": "releaser"},
    )
    releaser = frozenset({Permission.MODEL_APPROVE})
    token = issuer.token(
        roles=None, realm_access={"roles": ["fleet-readers", "ml-release", "admin", "other"]}
    )
    principal = OidcVerifier(config).principal(token, {"releaser": releaser})
    assert [g.role for g in principal.grants] == ["viewer", "releaser"]
    assert principal.permissions() == BUILTIN_ROLES["viewer"] | releaser
    assert not principal.has(Permission.USER_MANAGE)  # "admin" is not in the map


def test_without_a_role_map_only_values_naming_a_role_count(issuer: Issuer) -> None:
    token = issuer.token(roles="viewer offline_access auditor")  # a space-separated string
    principal = OidcVerifier(issuer.config()).principal(
        token, {"auditor": frozenset({Permission.AUDIT_READ})}
    )
    assert [g.role for g in principal.grants] == ["viewer", "auditor"]


def test_a_token_mapping_to_no_role_authenticates_with_no_permission(issuer: Issuer) -> None:
    principal = OidcVerifier(issuer.config()).principal(issuer.token(roles=["nobody"]), {})
    assert principal.grants == ()
    assert principal.permissions() == frozenset()


def test_the_name_falls_back_to_email_then_sub(issuer: Issuer) -> None:
    verifier = OidcVerifier(issuer.config())
    assert verifier.principal(issuer.token(preferred_username=None), {}).name == (
        "alice@example.com"
    )
    no_name = issuer.token(preferred_username=None, email=None)
    assert verifier.principal(no_name, {}).name == "u-1234"


def test_an_audience_list_containing_ours_and_skew_within_leeway_are_accepted(
    issuer: Issuer,
) -> None:
    now = int(time.time())
    verifier = OidcVerifier(issuer.config(leeway_s=30))
    token = issuer.token(aud=["other-api", AUDIENCE], exp=now - 10, nbf=now + 10, iat=now + 10)
    assert verifier.principal(token, {}).name == "alice"


def test_a_long_subject_gives_a_bounded_distinct_id() -> None:
    config = OidcConfig(issuer="https://login.example.com/realms/" + "r" * 120, audience="a")
    ids = {
        principal_from_claims({"sub": sub}, config, {}).id for sub in ("x" * 200, "x" * 199 + "y")
    }
    assert len(ids) == 2
    assert all(len(i) <= MAX_ID_CHARS for i in ids)


# Refused, each for its reason


def test_an_expired_token_is_refused(issuer: Issuer) -> None:
    now = int(time.time())
    _refused(OidcVerifier(issuer.config()), issuer.token(exp=now - 120), "expired at")


def test_a_token_for_another_audience_is_refused(issuer: Issuer) -> None:
    _refused(OidcVerifier(issuer.config()), issuer.token(aud="other-api"), "wrong audience")


def test_a_token_of_another_issuer_is_refused(issuer: Issuer) -> None:
    token = issuer.token(iss="https://evil.example.com")
    _refused(OidcVerifier(issuer.config()), token, "wrong issuer")


def test_an_issuer_that_differs_only_by_a_trailing_slash_is_refused(issuer: Issuer) -> None:
    _refused(OidcVerifier(issuer.config()), issuer.token(iss=issuer.url + "/"), "wrong issuer")


def test_a_token_signed_by_another_key_under_a_known_kid_is_refused(issuer: Issuer) -> None:
    forged = issuer.token("k1", key=_new_key("rsa"))
    _refused(OidcVerifier(issuer.config()), forged, "bad signature")


def test_a_token_signed_by_a_key_of_an_unknown_kid_is_refused(issuer: Issuer) -> None:
    forged = issuer.token("k-attacker", key=_new_key("rsa"))
    _refused(OidcVerifier(issuer.config()), forged, "unknown key id 'k-attacker'")


def test_an_unsigned_alg_none_token_is_refused(issuer: Issuer) -> None:
    token = _hand_made({"alg": "none", "kid": "k1", "typ": "JWT"}, issuer.claims())
    _refused(OidcVerifier(issuer.config()), token, "algorithm 'none' is not allowed")


def test_hs256_signed_with_the_public_key_as_secret_is_refused(issuer: Issuer) -> None:
    # The classic key confusion: a verifier that lets the token pick HMAC would check
    # this signature with the issuer's public key as the shared secret, and pass it.
    public_pem = (
        issuer.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    unsigned = _hand_made(header, issuer.claims()).rsplit(".", 1)[0]
    signature = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    token = f"{unsigned}.{_b64(signature)}"
    _refused(OidcVerifier(issuer.config()), token, "algorithm 'HS256' is not allowed")


def test_an_algorithm_other_than_the_one_the_jwk_states_is_refused(issuer: Issuer) -> None:
    key = issuer.keys["k1"]
    token = jwt.encode(issuer.claims(), key, algorithm="PS256", headers={"kid": "k1"})
    # A JWK without "alg" verifies any allowed algorithm of its key type; one that states
    # its "alg" verifies only that one.
    config = issuer.config(algorithms=("RS256", "PS256"))
    assert OidcVerifier(config).principal(token, {}).name == "alice"
    original = issuer.jwks

    def with_alg() -> dict[str, Any]:
        return {"keys": [k | {"alg": "RS256"} for k in original()["keys"]]}

    issuer.jwks = with_alg  # type: ignore[method-assign]
    _refused(OidcVerifier(config), token, "signed with PS256, but key 'k1' is for RS256")


def test_a_token_without_exp_is_refused(issuer: Issuer) -> None:
    _refused(OidcVerifier(issuer.config()), issuer.token(exp=None), "it has no exp claim")


def test_a_token_without_sub_is_refused(issuer: Issuer) -> None:
    _refused(OidcVerifier(issuer.config()), issuer.token(sub=None), "it has no sub claim")


def test_a_token_not_valid_before_a_future_time_is_refused(issuer: Issuer) -> None:
    now = int(time.time())
    _refused(
        OidcVerifier(issuer.config()), issuer.token(nbf=now + 600), "not valid yet: its nbf is 20"
    )


def test_a_token_issued_in_the_future_is_refused(issuer: Issuer) -> None:
    now = int(time.time())
    _refused(
        OidcVerifier(issuer.config()), issuer.token(iat=now + 600), "not valid yet: its iat is 20"
    )


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        ("a.b.c", "it is not a well-formed JWT"),
        ("not-a-jwt", "it is not a well-formed JWT"),
        ("eyJhbGciOiJSUzI1NiJ9..", "bad signature"),  # {"alg":"RS256"}, nothing else
        ("x" * 20000, "it is longer than 16384 characters"),
    ],
)
def test_garbage_is_refused(issuer: Issuer, garbage: str, reason: str) -> None:
    _refused(OidcVerifier(issuer.config()), garbage, reason)


def test_a_token_is_refused_while_the_jwks_server_is_down(issuer: Issuer) -> None:
    token = issuer.token()
    issuer.stop()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    for verifier in (
        OidcVerifier(issuer.config()),
        OidcVerifier(issuer.config(jwks_url=f"{dead}/jwks.json")),
    ):
        with pytest.raises(
            AuthenticationError,
            match=r"refused: the OIDC issuer's keys are unavailable: .* is unreachable",
        ):
            verifier.principal(token, {})


def test_keys_of_a_discovery_document_naming_another_issuer_are_not_used(
    issuer: Issuer,
) -> None:
    # OpenID Connect Discovery §4.3: the configuration must be the configured issuer's.
    issuer.advertised_issuer = "https://evil.example.com"
    _refused(
        OidcVerifier(issuer.config()),
        issuer.token(),
        "names issuer 'https://evil.example.com', not the configured",
    )


def test_an_issuer_without_a_discovery_document_is_named_in_the_refusal(issuer: Issuer) -> None:
    config = OidcConfig(issuer=issuer.url + "/realms/x", audience=AUDIENCE)
    token = issuer.token(iss=issuer.url + "/realms/x")
    _refused(OidcVerifier(config), token, "openid-configuration answered HTTP 404")


# Key rotation and the cache


def test_a_rotated_in_key_is_accepted_after_a_refetch(issuer: Issuer) -> None:
    verifier = OidcVerifier(issuer.config(jwks_min_refetch_s=0))
    assert verifier.principal(issuer.token("k1"), {}).name == "alice"
    assert issuer.jwks_fetches == 1
    issuer.add_key("k2", "ed25519")
    del issuer.keys["k1"]
    assert verifier.principal(issuer.token("k2"), {}).name == "alice"
    assert issuer.jwks_fetches == 2
    assert verifier.principal(issuer.token("k2"), {}).name == "alice"
    assert issuer.jwks_fetches == 2  # cached


def test_unknown_kids_refetch_at_most_once_per_interval(issuer: Issuer) -> None:
    now = [1000.0]
    config = issuer.config(jwks_min_refetch_s=30)
    cache = JwksCache(
        issuer=config.issuer,
        jwks_url=None,
        discovery_url=config.discovery_url,
        ttl_s=config.jwks_cache_s,
        min_refetch_s=config.jwks_min_refetch_s,
        timeout_s=5,
        clock=lambda: now[0],
    )
    verifier = OidcVerifier(config, jwks=cache)
    verifier.principal(issuer.token("k1"), {})
    for i in range(5):
        forged = issuer.token(f"made-up-{i}", key=issuer.keys["k1"])
        _refused(verifier, forged, "unknown key id")
    assert issuer.jwks_fetches == 1  # none of the made-up kids made the fleet ask again
    issuer.add_key("k2")
    _refused(verifier, issuer.token("k2"), "unknown key id 'k2'")
    now[0] += 31
    assert verifier.principal(issuer.token("k2"), {}).name == "alice"
    assert issuer.jwks_fetches == 2


def test_keys_older_than_the_cache_time_are_fetched_again_and_never_used_stale(
    issuer: Issuer,
) -> None:
    now = [1000.0]
    cache = JwksCache(
        issuer=issuer.url,
        jwks_url=issuer.jwks_url,
        discovery_url="",
        ttl_s=600,
        min_refetch_s=30,
        timeout_s=5,
        clock=lambda: now[0],
    )
    verifier = OidcVerifier(issuer.config(), jwks=cache)
    token = issuer.token("k1")
    verifier.principal(token, {})
    now[0] += 601
    verifier.principal(token, {})
    assert issuer.jwks_fetches == 2
    issuer.stop()
    now[0] += 601
    with pytest.raises(AuthenticationError, match="keys are unavailable"):
        verifier.principal(token, {})


# Settings


def test_settings_build_the_config_from_the_environment(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_FLEET_OIDC_ISSUER", issuer.url)
    monkeypatch.setenv("EDGEFLEET_FLEET_OIDC_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("EDGEFLEET_FLEET_OIDC_ROLES_CLAIM", "groups")
    monkeypatch.setenv("EDGEFLEET_FLEET_OIDC_ROLE_MAP", '{"fleet-ops": "operator"}')
    config = FleetSettings().oidc_config()
    assert config is not None
    assert (config.issuer, config.audience, config.roles_claim) == (issuer.url, AUDIENCE, "groups")
    assert config.role_map == {"fleet-ops": "operator"}
    verifier = oidc_verifier(FleetSettings())
    assert verifier is not None
    token = issuer.token(roles=None, groups=["fleet-ops"])
    assert verifier.principal(token, {}).has(Permission.ROLLOUT_CREATE)


def test_no_issuer_means_no_verifier() -> None:
    assert FleetSettings().oidc_config() is None
    assert oidc_verifier(FleetSettings()) is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"oidc_issuer": "https://login.example.com"}, "without oidc_audience"),
        ({"oidc_audience": AUDIENCE}, "need oidc_issuer"),
        ({"oidc_issuer": "http://login.example.com", "oidc_audience": "a"}, "https://"),
        (
            {"oidc_issuer": "https://l.example.com", "oidc_audience": "a", "oidc_roles_claim": ""},
            "oidc_roles_claim",
        ),
        (
            {
                "oidc_issuer": "https://l.example.com",
                "oidc_audience": "a",
                "oidc_role_map": {"g": "Not A Role"},
            },
            "oidc_role_map",
        ),
    ],
)
def test_incomplete_or_unsafe_oidc_settings_are_refused(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        FleetSettings(**values)


def test_the_config_refuses_hmac_and_none_algorithms() -> None:
    for alg in ("HS256", "none"):
        with pytest.raises(ValidationError):
            OidcConfig(issuer="https://l.example.com", audience="a", algorithms=(alg,))  # type: ignore[arg-type]


# Through the REST API


def test_rest_routes_take_a_jwt_of_the_issuer(issuer: Issuer, tmp_path: Path) -> None:
    settings = FleetSettings(
        data_dir=tmp_path,
        oidc_issuer=issuer.url,
        oidc_audience=AUDIENCE,
        oidc_role_map={"fleet-viewers": "viewer"},
    )
    engine = make_engine(settings.database_url)
    create_all(engine)
    viewer = issuer.token(roles=["fleet-viewers"])
    expired = issuer.token(roles=["fleet-viewers"], exp=int(time.time()) - 120)
    with TestClient(create_app(settings, engine=engine)) as client:
        listed = client.get("/v1/devices", headers={"Authorization": f"Bearer {viewer}"})
        assert listed.status_code == 200, listed.text
        refused = client.get("/v1/devices", headers={"Authorization": f"Bearer {expired}"})
        assert refused.status_code == 401
        assert "expired" in refused.json()["error"]["message"]
        write = client.delete("/v1/devices/dev-1", headers={"Authorization": f"Bearer {viewer}"})
        assert write.status_code == 403, write.text
        assert "lacks permission device:delete" in write.json()["error"]["message"]
        # A body-carrying request is checked by the guard before its body is read.
        body = client.post(
            "/v1/rollouts",
            json={"model": "wine", "version": "1"},
            headers={"Authorization": f"Bearer {expired}"},
        )
        assert body.status_code == 401
    with Session(engine) as session:
        denied = session.exec(select(AuditRow).where(col(AuditRow.action) == "permission.denied"))
        actors = [(row.actor_kind, row.actor_id, row.actor_name) for row in denied]
    assert actors == [("oidc", f"u-1234@{issuer.url}", "alice")]
    engine.dispose()
