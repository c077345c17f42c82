"""Alembic's environment: run the revisions on the connection the caller opened.

Online only (no ``--sql`` scripts): `edgefleet.fleet.store.migrate` opens the
connection, holds the migration lock on it and passes it in ``config.attributes``.
SQLite gets batch mode, because it alters a table by copying it.
"""

from __future__ import annotations

from alembic import context

from edgefleet.fleet.store.migrate import render_item, target_metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover  (only the alembic command line gets here)
    raise RuntimeError("run the fleet's migrations with `edgefleet fleet migrate`")

context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    render_as_batch=True,
    compare_type=True,
    render_item=render_item,
    on_version_apply=context.config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
