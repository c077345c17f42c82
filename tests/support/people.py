"""Users and tokens for tests: one call makes a user with grants and returns a token."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.api.auth import hash_token, new_token
from edgefleet.fleet.store.governance_tables import TokenRow, UserRow


def add_user(
    engine: Engine,
    name: str,
    *,
    role: str | None = None,
    grants: list[dict[str, Any]] | None = None,
    kind: str = "user",
) -> str:
    """A new user with ``grants`` (or one unscoped grant of ``role``); returns its id."""
    user_id = f"u-{secrets.token_hex(6)}"
    with Session(engine) as session:
        session.add(
            UserRow(
                id=user_id,
                name=name,
                kind=kind,
                grants=grants if grants is not None else ([{"role": role}] if role else []),
            )
        )
        session.commit()
    return user_id


def add_token(
    engine: Engine, user_id: str, *, label: str = "test", permissions: list[str] | None = None
) -> str:
    """A new token of ``user_id`` (narrowed to ``permissions``); returns its plaintext."""
    token, prefix = new_token()
    with Session(engine) as session:
        session.add(
            TokenRow(
                id=secrets.token_hex(8),
                prefix=prefix,
                token_sha256=hash_token(token),
                user_id=user_id,
                label=label,
                permissions=permissions,
            )
        )
        session.commit()
    return token


def user_token(engine: Engine, name: str, role: str) -> str:
    """A token of a new user ``name`` holding ``role`` everywhere."""
    return add_token(engine, add_user(engine, name, role=role))
