"""The OIDC issuer's signing keys: discovered, fetched over HTTP, cached, refetched.

`JwksCache` is the I/O shell of `edgefleet.fleet.governance.oidc`. Its invariants:

- a key is looked up by the token's ``kid``; a token without one is accepted only when
  the key set holds exactly one key (issuers with a single key often omit it);
- the key set is fetched when the cache is empty, older than ``ttl_s``, or lacks the
  ``kid`` asked for (the issuer rotated its keys); fetch attempts, failed or not, are at
  least ``min_refetch_s`` apart, so tokens with made-up key ids cannot make the fleet
  hammer the issuer;
- a failed fetch leaves the last good keys in place: tokens signed by a known key still
  pass while those keys are younger than ``ttl_s``; older keys are never used;
- symmetric (``kty: oct``) and encryption (``use: enc``) keys are ignored: a JWKS
  publishes public signing keys only.

Every failure is an `AuthenticationError` that names the URL and the cause.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from edgefleet.fleet.errors import AuthenticationError

logger = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 512 * 1024  # a JWKS or discovery document larger than this is refused
MAX_KEYS = 100
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_acceptable_url(url: str) -> bool:
    """``https://host...``, or ``http://`` to a loopback host (a local test issuer): keys
    fetched in the clear from elsewhere could be swapped by anyone on the path."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)


@dataclass(frozen=True)
class KeySet:
    """The usable keys of one fetch, by key id (``None`` only for a lone key without one)."""

    keys: Mapping[str | None, Mapping[str, Any]]
    fetched_at: float

    def find(self, kid: str | None) -> Mapping[str, Any] | None:
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)


def parse_jwks(document: Any, *, url: str, fetched_at: float) -> KeySet:
    """The signing keys of a JWKS document.

    Raises `AuthenticationError` for a document that is not a key set or holds no
    usable key.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise AuthenticationError(f"the JWKS at {url} is not a key set (no 'keys' list)")
    keys: dict[str | None, Mapping[str, Any]] = {}
    for jwk in document["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        keys[kid] = jwk
    if None in keys and len(keys) > 1:
        del keys[None]  # a key without an id is unreachable beside others
    if not keys:
        raise AuthenticationError(f"the JWKS at {url} holds no public signing key")
    return KeySet(keys=keys, fetched_at=fetched_at)


def fetch_json(url: str, *, timeout_s: float) -> Any:
    """GET ``url`` and parse its JSON body (at most `MAX_DOCUMENT_BYTES`).

    Raises `AuthenticationError` when the server cannot be reached, answers other than
    200, sends too much, or sends something other than JSON.
    """
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=False) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise AuthenticationError(
                    f"the OIDC issuer's {url} answered HTTP {response.status_code}"
                )
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise AuthenticationError(
                        f"the OIDC issuer's {url} sent more than {MAX_DOCUMENT_BYTES} bytes"
                    )
    except httpx.HTTPError as error:
        raise AuthenticationError(
            f"the OIDC issuer's {url} is unreachable: {type(error).__name__}: {error}"
        ) from None
    try:
        return json.loads(body)
    except ValueError:
        raise AuthenticationError(f"the OIDC issuer's {url} sent no valid JSON") from None


@dataclass
class JwksCache:
    """The issuer's keys, fetched from ``jwks_url`` or discovered from ``discovery_url``.

    Thread safe: the API's sync dependencies call it from worker threads.
    """

    issuer: str
    jwks_url: str | None
    discovery_url: str
    ttl_s: float
    min_refetch_s: float
    timeout_s: float
    clock: Callable[[], float] = time.monotonic
    _keys: KeySet | None = field(default=None, init=False)
    _attempted_at: float | None = field(default=None, init=False)
    _last_error: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def key(self, kid: str | None) -> Mapping[str, Any]:
        """The JWK for ``kid``, fetching the key set when it is due.

        Raises `AuthenticationError` when no key has that id (after a refetch, if one
        was allowed), or when the key set is needed and cannot be fetched.
        """
        now = self.clock()
        keys = self._keys
        if keys is not None and now - keys.fetched_at < self.ttl_s:
            found = keys.find(kid)
            if found is not None:
                return found
        with self._lock:
            keys = self._keys  # another thread may have fetched meanwhile
            fresh = keys is not None and now - keys.fetched_at < self.ttl_s
            if not (fresh and keys is not None and keys.find(kid) is not None):
                self._fetch_if_allowed(now)
            keys = self._keys
            if keys is None or now - keys.fetched_at >= self.ttl_s:
                raise AuthenticationError(
                    f"the OIDC issuer's keys are unavailable: {self._last_error}"
                )
            found = keys.find(kid)
        if found is None:
            if kid is None:
                raise AuthenticationError(
                    f"the token names no key id (kid) and the issuer has {len(keys.keys)} keys"
                )
            raise AuthenticationError(
                f"unknown key id {kid[:64]!r}: the issuer's JWKS has no such key"
                f" (known: {', '.join(sorted(str(k) for k in keys.keys))[:300]})"
            )
        return found

    def _fetch_if_allowed(self, now: float) -> None:
        if self._attempted_at is not None and now - self._attempted_at < self.min_refetch_s:
            return
        self._attempted_at = now
        try:
            url = self.jwks_url or self._discover()
            keys = parse_jwks(fetch_json(url, timeout_s=self.timeout_s), url=url, fetched_at=now)
        except AuthenticationError as error:
            self._last_error = str(error)
            logger.warning("OIDC key set not fetched: %s", error)
            return
        self._keys = keys
        self._last_error = None
        logger.info("fetched %d OIDC signing keys from %s", len(keys.keys), url)

    def _discover(self) -> str:
        """The ``jwks_uri`` of the issuer's discovery document.

        Raises `AuthenticationError` for a document that is not the issuer's or has no
        ``jwks_uri``.
        """
        document = fetch_json(self.discovery_url, timeout_s=self.timeout_s)
        if not isinstance(document, dict):
            raise AuthenticationError(f"{self.discovery_url} is not an OpenID configuration")
        # OpenID Connect Discovery 1.0 §4.3: the document's issuer must be the one asked.
        if document.get("issuer") != self.issuer:
            raise AuthenticationError(
                f"{self.discovery_url} names issuer {str(document.get('issuer'))[:200]!r},"
                f" not the configured {self.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not is_acceptable_url(jwks_uri):
            raise AuthenticationError(
                f"{self.discovery_url} has no usable jwks_uri (an https:// URL),"
                f" found {str(jwks_uri)[:200]!r}"
            )
        return jwks_uri
