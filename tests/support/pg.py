"""PostgreSQL for tests: its URL from EDGEFLEET_TEST_POSTGRES_URL, one fresh database a test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def admin_url() -> str:
    return os.environ.get("EDGEFLEET_TEST_POSTGRES_URL", DEFAULT_URL)


def unavailable_reason() -> str | None:
    """None when PostgreSQL answers; otherwise why the PostgreSQL tests skip."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'edgefleet[fleet]')"
    url = admin_url().replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as e:
        return f"no PostgreSQL answers at {admin_url()} (set EDGEFLEET_TEST_POSTGRES_URL): {e}"


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create a throwaway database, yield its SQLAlchemy URL, drop it afterwards."""
    import psycopg

    name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    base = admin_url()
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
