"""A cursor for stepflows' own fixed statements: prepared once per connection on PostgreSQL.

Every step writes its row with one of a few statements that never change
(see :mod:`stepflows.store.steps`). PostgreSQL parses and plans a statement
each time it is sent, and for these writes planning takes longer than the
write: an inline step's ``INSERT ... SELECT`` took 0.4-0.6 ms sent as text
and 0.17 ms as a prepared statement, commit included.

Django turns prepared statements off on its PostgreSQL connections
(``OPTIONS["prepare_threshold"]`` is ``None`` unless set), because a pooler in
transaction mode that does not track them (PgBouncer before 1.21, or with
``max_prepared_statements = 0``) would send a statement to a server session
that never prepared it. :func:`cursor` follows that setting: with a
``prepare_threshold`` (``stepflows.celery_config.POSTGRESQL_OPTIONS``), it
prepares each statement on its first use on a connection; without one, the
statement is sent as text, as before. ``manage.py check`` says which
(``stepflows.W016``). Django's own cursors never prepare (they bind
parameters on the client), whatever the option says.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model

try:
    import psycopg
except ImportError:  # SQLite only, or psycopg2 (Django uses psycopg 3 when it is installed)
    psycopg = None  # type: ignore[assignment]

_TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid if psycopg is not None else 0


def db() -> BaseDatabaseWrapper:
    """This thread's default connection itself, not the ``django.db.connection`` proxy.

    Every attribute read through the proxy is a thread-local lookup, and
    preparing one step's parameters reads the connection dozens of times.
    """
    return connections[DEFAULT_DB_ALIAS]


def prepares(database: BaseDatabaseWrapper) -> bool:
    """Whether :func:`cursor` prepares statements on this database (see the module)."""
    return (
        psycopg is not None
        and database.vendor == "postgresql"
        and database.settings_dict.get("OPTIONS", {}).get("prepare_threshold") is not None
    )


if psycopg is not None:

    class _PreparingCursor(psycopg.Cursor[Any]):
        """Binds parameters on the server and prepares every statement on first use."""

        def execute(
            self, query: Any, params: Any = None, *, prepare: bool | None = None, **kw: Any
        ) -> Any:
            return super().execute(query, params, prepare=True, **kw)


def cursor(database: BaseDatabaseWrapper) -> Any:
    """A Django cursor (errors wrapped, queries logged) for one of stepflows' own statements.

    Prepared on PostgreSQL when the connection allows it (see the module);
    Django's ordinary cursor otherwise. Parameters are bound on the server
    then, so every placeholder must have a type PostgreSQL can infer (a
    ``CAST`` where it cannot, as in a ``SELECT`` list).
    """
    if not prepares(database):
        return database.cursor()
    # What BaseDatabaseWrapper.cursor() does, with our cursor class.
    database.close_if_health_check_failed()
    database.ensure_connection()
    database.validate_thread_sharing()
    raw: Any = _PreparingCursor(database.connection)
    _follow_timezone(database, raw)
    if database.queries_logged:
        return database.make_debug_cursor(raw)
    return database.make_cursor(raw)


def _follow_timezone(database: BaseDatabaseWrapper, raw: Any) -> None:
    """Read ``timestamptz`` in the connection's time zone, as Django's own cursors do."""
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    loader: Any = raw.adapters.get_loader(_TIMESTAMPTZ_OID, Format.TEXT)
    if database.timezone != loader.timezone:
        register_tzloader(database.timezone, raw)


class Joined:
    """A fixed SELECT of whole rows of several models, joined, and how to make instances of a row.

    ``parts`` holds, per model in the order of its columns: the model, its
    fields' attnames, and per field (its column expression, its converters),
    so values are converted as the ORM converts them (the backend's
    converters, then the field's ``from_db_value``).
    """

    def __init__(self, sql: str, parts: list[tuple[type[Model], list[str], list[Any]]]) -> None:
        self.sql = sql
        self.parts = parts

    def instances(self, alias: str, row: tuple[Any, ...]) -> list[Model]:
        found: list[Model] = []
        start = 0
        database = connections[alias]
        for model, names, columns in self.parts:
            values = list(row[start : start + len(names)])
            start += len(names)
            for i, (col, converters) in enumerate(columns):
                for convert in converters:
                    values[i] = convert(values[i], col, database)
            found.append(model.from_db(alias, names, values))
        return found
