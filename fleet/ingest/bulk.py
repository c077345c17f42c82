"""Bulk statements that run on the database driver: one SQL string, one tuple a row.

Why: profiling the writer showed three quarters of its time in SQLAlchemy's per-row
parameter handling (a dict per row, compiled parameters, a bind processor per value).
Here a statement is rendered once per writer and its rows go to the driver's
``executemany`` through `Connection.exec_driver_sql`, so SQLAlchemy still owns the
connection, the transaction and the wrapping of driver errors.

Invariant: a value stored this way is exactly what the ORM would store. Each column is
converted by SQLAlchemy's own bind processor for this dialect, looked up once, except
`UTCDateTime` on SQLite, which uses `sqlite_utc_text` (same text, without the slow
``astimezone`` on pydantic's tzinfo; tests compare the two). That matters because the
API filters SQLite's text timestamps by comparing strings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from edgefleet.fleet.store.types import UTCDateTime

Converter = Callable[[Any], Any]


def sqlite_utc_text(value: datetime | None) -> str | None:
    """``value`` as SQLAlchemy stores a `UTCDateTime` on SQLite: naive UTC text.

    A naive value is taken to be UTC already, as `edgefleet.fleet.store.types.as_utc` does.
    """
    if value is None:
        return None
    tz = value.tzinfo
    naive = value.replace(tzinfo=None)
    if tz is not None and tz is not UTC:
        offset = value.utcoffset()
        if offset:
            naive -= offset
    return naive.isoformat(" ", "microseconds")


def column_converter(column: Column[Any], dialect: Dialect) -> Converter | None:
    """How a Python value becomes a driver parameter for ``column``; None: as it is."""
    if isinstance(column.type, UTCDateTime) and dialect.name == "sqlite":
        return sqlite_utc_text
    processor: Converter | None = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor


MAX_ROWS_PER_STATEMENT = 1000
_SQL_TEXTS_KEPT = 16  # row counts whose SQL is kept; a backlog repeats one or two


class RowConverter:
    """Rows of ``columns`` values made driver-ready by their columns' converters, and the
    ``constants`` (the same for every row) converted once; both bulk paths use it."""

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        dialect: Dialect,
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        converters = [column_converter(table.c[name], dialect) for name in columns]
        self._converters = tuple((i, convert) for i, convert in enumerate(converters) if convert)
        self.constants: tuple[Any, ...] = tuple(
            convert(value) if (convert := column_converter(table.c[name], dialect)) else value
            for name, value in (constants or {}).items()
        )

    def rows(self, rows: Sequence[tuple[Any, ...]]) -> Iterator[Sequence[Any]]:
        """Each of ``rows`` with its values converted (as given when none needs it)."""
        converters = self._converters
        if not converters:
            yield from rows
            return
        for row in rows:
            values = list(row)
            for i, convert in converters:
                values[i] = convert(values[i])
            yield values


class BulkStatement:
    """A multi-row INSERT over some of a table's columns.

    ``columns`` are given per row, in order; ``constants`` are the same for every row and
    are converted once, here. ``suffix`` is appended to the SQL (an ON CONFLICT clause).

    Rows go in multi-row ``VALUES`` statements rather than ``executemany``: SQLite's
    driver releases the GIL around every statement it steps, and one statement per row
    passed the GIL to and fro with the MQTT network thread at every row (each pass can
    cost a whole switch interval). A batch goes in statements of ``max_rows`` (the
    dialect's parameter limit, at most ``MAX_ROWS_PER_STATEMENT``) plus one for the rest,
    usually a single statement.
    """

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        dialect: Dialect,
        *,
        constants: Mapping[str, Any] | None = None,
        suffix: str = "",
    ) -> None:
        constants = dict(constants or {})
        names = [*columns, *constants]
        self._convert = RowConverter(table, columns, dialect, constants)
        quote = dialect.identifier_preparer.quote
        marker = "?" if dialect.paramstyle == "qmark" else "%s"
        # Identifiers come from the table's metadata, quoted by the dialect; values are bound.
        target = (
            f"{dialect.identifier_preparer.format_table(table)} ({', '.join(map(quote, names))})"
        )
        self._head = " ".join(("INSERT INTO", target, "VALUES "))
        self._row = f"({', '.join([marker] * len(names))})"
        self._suffix = suffix
        limit = dialect.insertmanyvalues_max_parameters // len(names)
        self.max_rows = max(1, min(MAX_ROWS_PER_STATEMENT, limit))
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        """The statement for ``rows`` rows (made once per count)."""
        text = self._sql.get(rows)
        if text is None:
            if len(self._sql) >= _SQL_TEXTS_KEPT:
                self._sql.clear()
            text = self._sql[rows] = f"{self._head}{', '.join([self._row] * rows)} {self._suffix}"
        return text

    def parameters(self, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The driver parameters for ``rows`` (values of ``columns``, in order), flat."""
        constants = self._convert.constants
        flat: list[Any] = []
        extend = flat.extend
        for row in self._convert.rows(rows):
            extend(row)
            extend(constants)
        return flat

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert ``rows`` in ``conn``'s transaction; how many rows the statements changed.

        Raises what `Connection.exec_driver_sql` raises: SQLAlchemy's wrappers of driver
        errors, or the driver's own `OverflowError` / `TypeError` for a value it cannot
        bind.
        """
        changed = 0
        start = 0
        while start < len(rows):
            count = min(self.max_rows, len(rows) - start)
            chunk = rows[start : start + count]
            result = conn.exec_driver_sql(self.sql(count), tuple(self.parameters(chunk)))
            changed += result.rowcount
            start += count
        return changed


def quoted(table: Table, column: str, dialect: Dialect) -> str:
    """``table.column`` quoted for ``dialect`` (for hand-written clauses)."""
    preparer = dialect.identifier_preparer
    return f"{preparer.format_table(table)}.{preparer.quote(column)}"


class CopyInsert:
    """PostgreSQL: rows go in with ``COPY`` into a temporary staging table of this
    connection, then into ``table`` in one ``INSERT ... SELECT`` (in ``order_by`` order,
    if given, with ``constants`` for the columns every row shares) that ends with
    ``suffix`` (an ON CONFLICT clause, which ``COPY`` itself cannot have).

    Why: a multi-row ``VALUES`` statement of a whole batch is longer than psycopg's query
    cache takes, so psycopg re-parsed its thousands of placeholders in Python on every
    batch (profiled: most of the PostgreSQL writer's time). ``COPY`` sends the rows as one
    stream that psycopg's C extension formats, in three round trips a batch whatever its
    size. Values are converted by the same bind processors as `BulkStatement`, so what is
    stored is what the ORM would store.

    The staging table holds only the listed columns, has no constraints, is emptied at
    every commit, and is made once per connection (again after a rollback, see
    `forget_staging`, which the writer registers for its engine).
    """

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        dialect: Dialect,
        *,
        constants: Mapping[str, Any] | None = None,
        suffix: str = "",
        order_by: str | None = None,
    ) -> None:
        if dialect.name != "postgresql":
            raise ValueError(f"COPY is PostgreSQL's, not {dialect.name}'s")
        constants = dict(constants or {})
        self._convert = RowConverter(table, columns, dialect, constants)
        preparer = dialect.identifier_preparer
        target = preparer.format_table(table)
        names = ", ".join(preparer.quote(name) for name in columns)
        # Constants are the same for every row: bound once in the moving statement, cast
        # to their column's type (a bare parameter in a SELECT list would be text).
        casts = "".join(
            f", CAST(%s AS {table.c[name].type.compile(dialect=dialect)})" for name in constants
        )
        targets = ", ".join(preparer.quote(name) for name in (*columns, *constants))
        order = f" ORDER BY {preparer.quote(order_by)}" if order_by else ""
        stage = preparer.quote(f"edgefleet_stage_{table.name}")
        # Identifiers come from the table's metadata, quoted by the dialect; values are
        # streamed by COPY, never put in the SQL.
        self.create_sql = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS"  # noqa: S608
            f" AS SELECT {names} FROM {target} WITH NO DATA"
        )
        self.copy_sql = f"COPY {stage} ({names}) FROM STDIN"
        self.move_sql = (
            f"INSERT INTO {target} ({targets})"  # noqa: S608
            f" SELECT {names}{casts} FROM {stage}{order} {suffix}"
        )
        self.clear_sql = f"DELETE FROM {stage}"  # noqa: S608
        self._stage = stage

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert ``rows`` in ``conn``'s transaction; how many rows were inserted.

        Raises SQLAlchemy's wrappers of driver errors (`sqlalchemy.exc.DBAPIError` and
        its subclasses, also for an error inside ``COPY``), or `TypeError` /
        `ValueError` for a value the driver cannot format.
        """
        if not rows:
            return 0
        self._prepare(conn)
        driver = conn.connection.driver_connection
        error_class = conn.dialect.loaded_dbapi.Error
        try:
            with driver.cursor() as cursor, cursor.copy(self.copy_sql) as copy:  # type: ignore[union-attr]
                write_row = copy.write_row
                for row in self._convert.rows(rows):
                    write_row(row)
        except error_class as e:
            # The same exception classes as a statement through SQLAlchemy, so the writer
            # tells a lost database from a refused row the same way on both paths.
            raise DBAPIError.instance(self.copy_sql, None, e, error_class) from e
        result = conn.exec_driver_sql(self.move_sql, self._convert.constants)
        return int(result.rowcount)

    def _prepare(self, conn: Connection) -> None:
        """Make sure the staging table exists and is empty in this transaction.

        Creating it every batch cost more than the COPY (a catalog lookup and a notice),
        so the DBAPI connection remembers it (`forget_staging` after a rollback, which
        may have undone the CREATE). Commits empty it; a second run in one transaction
        deletes what the first one staged.
        """
        info = conn.connection.info
        made: set[str] = info.setdefault(_STAGED_KEY, set())
        if self._stage not in made:
            conn.exec_driver_sql(self.create_sql)
            made.add(self._stage)
        used: dict[str, Any] = info.setdefault(_USED_KEY, {})
        transaction = conn.get_transaction()
        if used.get(self._stage) is transaction:
            conn.exec_driver_sql(self.clear_sql)
        used[self._stage] = transaction


_STAGED_KEY = "edgefleet_staging_tables"  # in a DBAPI connection's info: tables it made
_USED_KEY = "edgefleet_staging_used"  # staging table -> the transaction that last filled it


def forget_staging(conn: Connection) -> None:
    """For SQLAlchemy's ``rollback`` event: the staging tables may be gone (a CREATE in the
    rolled back transaction), so they are made again before their next use."""
    with contextlib.suppress(Exception):  # an invalidated connection takes them with it
        conn.connection.info.pop(_STAGED_KEY, None)
