"""Single sign-on: bearer JWTs from the configured OIDC issuer become principals.

`OidcVerifier` implements `edgefleet.fleet.api.principals.BearerJwtVerifier`. A token is
accepted only if all of these hold, else it is refused with an `AuthenticationError`
that names the reason:

- its ``alg`` is one of ``OidcConfig.algorithms`` (asymmetric only: never ``none`` or an
  HMAC, so a public key cannot be used as a shared secret) and matches the key's own
  ``alg`` when the JWK states one;
- its signature verifies with the issuer's key of its ``kid`` (`edgefleet.fleet.
  governance.jwks`: discovered, cached, refetched when an unknown ``kid`` appears);
- ``exp``, ``iss``, ``aud`` and ``sub`` are present; ``exp`` is not past, ``nbf`` and
  ``iat`` (when present) are not in the future, each within ``leeway_s``; ``iss`` equals
  the configured issuer exactly; ``aud`` is, or contains, the configured audience.

The principal (kind ``oidc``) is ``<sub>@<issuer>`` (hashed when longer than an audit
actor id may be), named by the first of ``name_claim``, ``email``, ``sub`` present. Its
roles come from ``roles_claim`` through ``role_map``. A valid token whose claim maps to
no role still authenticates, with no grants: it is who it says it is, and every route
answers 403 naming the permission it lacks (and the audit log records the attempt), which
tells an operator more than a 401 would. `principal_from_claims` is that mapping, pure.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from edgefleet.fleet.errors import AuthenticationError
from edgefleet.fleet.governance.grants import Grant, RoleName, resolve
from edgefleet.fleet.governance.jwks import JwksCache, is_acceptable_url
from edgefleet.fleet.governance.permissions import BUILTIN_ROLES, Permission
from edgefleet.fleet.governance.principal import Principal, PrincipalKind

if TYPE_CHECKING:
    from edgefleet.fleet.settings import FleetSettings

logger = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16 * 1024
MAX_SUB_CHARS = 255  # OpenID Connect Core §2: sub is at most 255 ASCII characters
MAX_ID_CHARS = 200  # edgefleet.fleet.audit.entry.AuditActor.id
MAX_NAME_CHARS = 200
MAX_ROLE_VALUES = 256
Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
ClaimPath = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_:/-]{1,64}(\.[A-Za-z0-9_:/-]{1,64}){0,7}$")
]
ClaimValue = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class OidcConfig(BaseModel):
    """Which issuer's tokens the fleet accepts, and how their claims become roles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(
        min_length=8, max_length=1024, description="the iss every token must carry, exactly"
    )
    audience: str = Field(
        min_length=1, max_length=256, description="a token's aud must be or contain this"
    )
    jwks_url: str | None = Field(
        default=None,
        max_length=2048,
        description="the issuer's JWKS; default: jwks_uri of"
        " <issuer>/.well-known/openid-configuration",
    )
    roles_claim: ClaimPath = Field(
        default="roles", description="claim holding role values; dots descend: realm_access.roles"
    )
    role_map: dict[ClaimValue, RoleName] = Field(
        default_factory=dict,
        max_length=256,
        description="claim value -> edgefleet role; empty: values that are role names count",
    )
    name_claim: ClaimPath = Field(
        default="preferred_username", description="display name; falls back to email, then sub"
    )
    algorithms: tuple[Algorithm, ...] = Field(
        default=("RS256", "ES256", "EdDSA"), min_length=1, max_length=10
    )
    leeway_s: float = Field(default=30.0, ge=0, le=300, description="clock skew allowed")
    jwks_cache_s: float = Field(
        default=600.0, ge=1, le=86_400, description="how long fetched keys are used"
    )
    jwks_min_refetch_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="least time between two key fetches (an unknown kid asks for one)",
    )
    http_timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _secure_url(cls, value: str | None) -> str | None:
        if value is not None and not is_acceptable_url(value):
            raise ValueError(
                f"must be an https:// URL (http:// only to a loopback host), found {value!r}"
            )
        return value

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of ``claims``, else None.

    A claim whose own name holds the dots (``"https://example.com/roles"`` is common) wins
    over descending.
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def mapped_roles(
    claims: Mapping[str, Any], config: OidcConfig, custom_roles: Mapping[str, object]
) -> tuple[str, ...]:
    """The edgefleet roles ``claims`` carry: a list of strings or a space-separated string
    at ``roles_claim``, through ``role_map`` (or, with no map, those that name a role)."""
    raw = claim_at(claims, config.roles_claim)
    if isinstance(raw, str):
        values = raw.split()
    elif isinstance(raw, list):
        values = [v for v in raw if isinstance(v, str)]
    else:
        values = []
    roles: dict[str, None] = {}  # ordered, unique
    for value in values[:MAX_ROLE_VALUES]:
        if config.role_map:
            role = config.role_map.get(value)
        else:
            role = value if value in BUILTIN_ROLES or value in custom_roles else None
        if role is not None:
            roles[role] = None
    return tuple(roles)


def principal_id(sub: str, issuer: str) -> str:
    """``<sub>@<issuer>``, or its head and a hash when longer than an audit id may be."""
    ident = f"{sub}@{issuer}"
    if len(ident) <= MAX_ID_CHARS:
        return ident
    digest = hashlib.sha256(ident.encode()).hexdigest()[:40]
    return f"{ident[: MAX_ID_CHARS - len(digest) - 1]}~{digest}"


def principal_from_claims(
    claims: Mapping[str, Any],
    config: OidcConfig,
    custom_roles: Mapping[str, frozenset[Permission]],
) -> Principal:
    """The principal of verified ``claims``.

    Raises `AuthenticationError` when ``sub`` is not a 1-255 character string.
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUB_CHARS:
        raise AuthenticationError("OIDC token refused: its sub claim is not a 1-255 char string")
    name = next(
        (
            v
            for v in (claim_at(claims, config.name_claim), claims.get("email"), sub)
            if isinstance(v, str) and v
        ),
        sub,
    )
    roles = mapped_roles(claims, config, custom_roles)
    if not roles:
        logger.debug("OIDC user %s carries no mapped role in %s", sub, config.roles_claim)
    return Principal(
        kind=PrincipalKind.OIDC,
        id=principal_id(sub, config.issuer),
        name=name[:MAX_NAME_CHARS],
        grants=resolve([Grant(role=r) for r in roles], custom_roles),
    )


class OidcVerifier:
    """Verifies bearer JWTs of one issuer (see the module docstring for what it checks)."""

    def __init__(self, config: OidcConfig, *, jwks: JwksCache | None = None) -> None:
        self.config = config
        self.jwks = jwks or JwksCache(
            issuer=config.issuer,
            jwks_url=config.jwks_url,
            discovery_url=config.discovery_url,
            ttl_s=config.jwks_cache_s,
            min_refetch_s=config.jwks_min_refetch_s,
            timeout_s=config.http_timeout_s,
        )

    def principal(self, token: str, custom_roles: dict[str, frozenset[Permission]]) -> Principal:
        """The principal of a valid ``token``; raises `AuthenticationError` naming why not."""
        return principal_from_claims(self.claims(token), self.config, custom_roles)

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; raises `AuthenticationError` naming why not."""
        if len(token) > MAX_TOKEN_CHARS:
            raise _refused(f"it is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("it is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            raise _refused(
                f"algorithm {str(alg)[:20]!r} is not allowed"
                f" (allowed: {', '.join(self.config.algorithms)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refused("its kid header is not a string")
        try:
            jwk = self.jwks.key(kid)
        except AuthenticationError as error:
            raise _refused(str(error)) from None
        if jwk.get("alg") not in (None, alg):
            raise _refused(f"it is signed with {alg}, but key {kid!r} is for {jwk.get('alg')}")
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=alg)
        except jwt.PyJWTError:
            raise _refused(f"key {kid!r} ({jwk.get('kty')}) cannot verify {alg}") from None
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise _refused(self._reason(error, token)) from None

    def _reason(self, error: jwt.PyJWTError, token: str) -> str:
        # The signature verified before any claim was checked, so the claims quoted in
        # these messages are the issuer's.
        if isinstance(error, jwt.InvalidSignatureError):
            return "bad signature: it was not signed by the issuer's key of its kid"
        if isinstance(error, jwt.MissingRequiredClaimError):
            return f"it has no {error.claim} claim"
        return self._claim_reason(error, _unverified(token))

    def _claim_reason(self, error: jwt.PyJWTError, claims: dict[str, Any]) -> str:
        if isinstance(error, jwt.ExpiredSignatureError):
            return f"it expired at {_when(claims.get('exp'))}"
        if isinstance(error, jwt.ImmatureSignatureError):
            claim = "iat" if "(iat)" in str(error) else "nbf"
            return f"it is not valid yet: its {claim} is {_when(claims.get(claim))}"
        if isinstance(error, jwt.InvalidAudienceError):
            return (
                f"wrong audience: it is for {str(claims.get('aud'))[:200]!r},"
                f" not {self.config.audience!r}"
            )
        if isinstance(error, jwt.InvalidIssuerError):
            return (
                f"wrong issuer: it is from {str(claims.get('iss'))[:200]!r},"
                f" not {self.config.issuer!r}"
            )
        return f"{type(error).__name__}: {error}"


def oidc_verifier(settings: FleetSettings) -> OidcVerifier | None:
    """The verifier the settings configure, or None when no OIDC issuer is set."""
    config = settings.oidc_config()
    return OidcVerifier(config) if config is not None else None


def _refused(reason: str) -> AuthenticationError:
    return AuthenticationError(f"OIDC token refused: {reason}")


def _unverified(token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims


def _when(timestamp: object) -> str:
    if isinstance(timestamp, int | float):
        try:
            return datetime.fromtimestamp(timestamp, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            pass
    return repr(timestamp)[:40]
