"""The rules for API tokens and for who may manage them: pure, no database.

Rules (checked by `edgefleet.fleet.people`, which loads what they compare):

- **Self-service.** Any authenticated user or service account may create, list and
  revoke its own tokens: no permission beyond being authenticated. Tokens of another
  user need ``token:manage``. An OIDC principal owns no stored user, so it owns no API
  token (make a service account for a pipeline instead).
- **Never wider.** A new token reaches nothing its *owner* does not hold (its
  ``permissions`` narrow the owner's grants, never add to them; naming a permission the
  owner lacks is refused, naming it) and nothing the *credential that creates it* does not
  reach, scopes included: a token narrowed to ``model:upload`` cannot mint a full-power
  token of its owner, and a ``token:manage`` holder cannot mint an admin's token to act as
  the admin. The one exception is a creator holding ``user:manage``: it could give itself
  any grant anyway, so the creator check would only add a step.
- **Expiry.** A token expires `DEFAULT_TTL` (90 days) after its creation unless asked
  otherwise, at most `MAX_TTL` (2 years) after. A token that never expires is refused
  unless the fleet's ``api_token_allow_no_expiry`` setting is on (for the bootstrap-style
  break-glass token of an air-gapped site); the bootstrap admin's own token is made by
  `edgefleet.fleet.api.auth` and never expires, which is why it should be retired.
- **Grants.** Changing grants and roles needs ``user:manage``, and ``user:manage`` is
  the keys to the fleet: its holder may grant anything, itself included. So no rule caps
  the grants it gives; instead the fleet refuses to lose its last *active* holder of
  ``user:manage`` (an enabled stored user with a live token that reaches ``user:manage``):
  disabling it, revoking that token, taking the grant away, or changing a role so that
  nobody holds it any more is refused (409). OIDC principals do not count: an issuer
  outage must not lock the fleet out.

Raises `PermissionDeniedError` (403, naming the permission) for a token wider than allowed,
and `InvalidRequestError` (422) for an expiry out of bounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from edgefleet.fleet.errors import InvalidRequestError, PermissionDeniedError
from edgefleet.fleet.governance.grants import ResolvedGrant
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.governance.principal import Principal, PrincipalKind

DEFAULT_TTL = timedelta(days=90)
MAX_TTL = timedelta(days=730)
# The principal kinds that are stored users and so may own tokens.
OWNER_KINDS = frozenset({PrincipalKind.USER, PrincipalKind.SERVICE})


@dataclass(frozen=True)
class ExpiryPolicy:
    """The bounds of a token's life."""

    default_ttl: timedelta = DEFAULT_TTL
    max_ttl: timedelta = MAX_TTL
    allow_no_expiry: bool = False


def token_expiry(
    now: datetime,
    *,
    expires_in: timedelta | None,
    never: bool = False,
    policy: ExpiryPolicy = ExpiryPolicy(),
) -> datetime | None:
    """When a token created at ``now`` expires (None: never).

    ``expires_in`` None means the policy's default. Raises `InvalidRequestError` for both
    ``never`` and ``expires_in``, a non-positive or too long life, or ``never`` when the
    policy forbids it.
    """
    if never:
        if expires_in is not None:
            raise InvalidRequestError("a token either never expires or expires in some time")
        if not policy.allow_no_expiry:
            raise InvalidRequestError(
                "tokens that never expire are off on this fleet"
                " (setting api_token_allow_no_expiry); give an expiry instead"
            )
        return None
    life = policy.default_ttl if expires_in is None else expires_in
    if life <= timedelta(0):
        raise InvalidRequestError("a token's expiry must be in the future")
    if life > policy.max_ttl:
        raise InvalidRequestError(
            f"a token lives at most {policy.max_ttl.days} days; asked for {life.days}"
        )
    return now + life


def token_grants(
    owner: tuple[ResolvedGrant, ...], requested: frozenset[Permission] | None
) -> tuple[ResolvedGrant, ...]:
    """The owner's grants narrowed to ``requested`` (None: all of them).

    Raises `PermissionDeniedError` naming a requested permission the owner does not hold.
    """
    held: set[Permission] = set()
    for grant in owner:
        held |= grant.permissions
    if requested is None:
        return owner
    for permission in sorted(requested - held):
        raise PermissionDeniedError(
            f"the token's owner does not hold {permission.value}: a token narrows its"
            " owner's permissions, never widens them",
            permission=permission,
        )
    return tuple(
        ResolvedGrant(g.role, g.permissions & requested, g.device_tags, g.model_names)
        for g in owner
    )


def check_token_creation(
    creator: Principal,
    *,
    owner_id: str,
    owner_grants: tuple[ResolvedGrant, ...],
    requested: frozenset[Permission] | None,
) -> None:
    """Whether ``creator`` may make a token of user ``owner_id`` with ``requested``.

    Raises `PermissionDeniedError` naming the permission: ``token:manage`` for another
    user's token, or the first permission the token would hold (or hold more widely)
    than the creator's credential; and `InvalidRequestError` for a token of its own asked
    by a principal that is not a stored user (OIDC, device). An OIDC principal holding
    ``token:manage`` may make tokens of stored users (a service account, say).
    """
    if creator.id == owner_id and creator.kind not in OWNER_KINDS:
        raise InvalidRequestError(not_an_owner(creator))
    if creator.id != owner_id:
        creator.require(Permission.TOKEN_MANAGE, what="another user's tokens")
    candidate = token_grants(owner_grants, requested)
    if creator.has(Permission.USER_MANAGE):
        return
    too_wide = first_uncovered(creator.grants, candidate)
    if too_wide is not None:
        raise PermissionDeniedError(
            f"the token would hold {too_wide.value} beyond what {creator.describe()}"
            " reaches; name narrower permissions",
            permission=too_wide,
        )


def not_an_owner(principal: Principal) -> str:
    """Why ``principal`` (OIDC, a device) cannot have tokens of its own."""
    return (
        f"{principal.describe()} is not a stored user of this fleet and owns no API"
        " tokens; create a service account for a pipeline"
    )


def first_uncovered(
    have: tuple[ResolvedGrant, ...], want: tuple[ResolvedGrant, ...]
) -> Permission | None:
    """The first permission some grant of ``want`` holds in a scope no grant of ``have``
    holding it covers; None when ``have`` reaches everything ``want`` does."""
    for grant in want:
        for permission in sorted(grant.permissions):
            if not any(permission in h.permissions and _covers(h, grant) for h in have):
                return permission
    return None


def _covers(outer: ResolvedGrant, inner: ResolvedGrant) -> bool:
    return _scope_covers(outer.device_tags, inner.device_tags) and _scope_covers(
        outer.model_names, inner.model_names
    )


def _scope_covers(outer: frozenset[str] | None, inner: frozenset[str] | None) -> bool:
    # None is "everything": only an unscoped grant covers an unscoped one.
    if outer is None:
        return True
    return inner is not None and inner <= outer


def reaches_user_manage(grants: Iterable[ResolvedGrant]) -> bool:
    """Whether these (a token's) grants hold ``user:manage``."""
    return any(Permission.USER_MANAGE in g.permissions for g in grants)


def lockout_refusal(before: Iterable[str], after: Iterable[str], what: str) -> str | None:
    """The reason to refuse a change that leaves no active ``user:manage`` holder, given
    the holders' ids before and after it; None when the change may go ahead (someone
    still holds it, or nobody did before: nothing to protect)."""
    before_set, after_set = set(before), set(after)
    if before_set and not after_set:
        return (
            f"{what} would leave no enabled user with a live token holding user:manage,"
            " and nobody could manage users and tokens any more; make another admin first"
        )
    return None
