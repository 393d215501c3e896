"""``ik.verify_constraints``: the database constraints that protect guarantees still exist.

Layer 3 (database constraints) can silently disappear: a migration that recreates a table, a
restore from a dump taken with ``--no-indexes``, a ``CREATE UNIQUE INDEX CONCURRENTLY`` that
failed and left an INVALID index behind. ``verify_constraints`` looks each one up by name in the
database's catalog and reports what it found: ``pg_constraint_exists{constraint}`` 1 or 0, a
Sentry error for a missing one, a JSON log line for each.

Supported connections: sqlite3, psycopg (3) and psycopg2, and SQLAlchemy ``Connection`` or
``Engine`` objects on one of them. The driver is recognised by the connection's class; no
driver is imported here.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from invariantkit._catalog import Constraint, get_catalog
from invariantkit._config import STATE, dispatcher
from invariantkit._context import USER, current_ids, new_span_id, new_trace_id
from invariantkit._record import Record

__all__ = ["verify_constraints"]

logger = logging.getLogger("invariantkit")

_PG_KINDS = {
    "p": "primary key",
    "u": "unique constraint",
    "x": "exclusion constraint",
    "c": "check constraint",
    "f": "foreign key",
    "t": "constraint trigger",
    "n": "not-null constraint",
}

# One round trip for every name: unique (and other) indexes from pg_index, constraints from
# pg_constraint, each with its schema and whether that schema is on the search path.
_PG_SQL = """
SELECT n.nspname, c.relname, 'index', i.indisunique, i.indisvalid AND i.indisready,
       i.indpred IS NOT NULL, n.nspname = ANY (current_schemas(false))
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname = ANY (%s)
UNION ALL
SELECT n.nspname, con.conname, con.contype::text, true, con.convalidated,
       false, n.nspname = ANY (current_schemas(false))
  FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_namespace n ON n.oid = con.connamespace
 WHERE con.conname = ANY (%s)
"""


@dataclass
class _Found:
    """What the catalog says about one name."""

    present: bool = False
    kind: str = ""
    reason: str = "not found"
    partial: bool = False
    schema: str = ""

    def to_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.kind:
            attrs["found"] = self.kind
        if self.schema:
            attrs["schema"] = self.schema
        if self.kind.endswith("index"):
            attrs["partial"] = self.partial
        if not self.present:
            attrs["reason"] = self.reason
        return attrs


# -- which constraints --------------------------------------------------------------------------


def _resolve(names: object) -> list[Constraint]:
    """The constraints to check, declaring names that are not in the catalog yet."""
    catalog = get_catalog()
    if names is None:
        return list(catalog.constraints.values())
    items: Iterable[object]
    if isinstance(names, (str, Constraint)):
        items = [names]
    elif isinstance(names, Iterable) and not isinstance(names, (bytes, bytearray)):
        items = names
    else:
        raise TypeError(
            "verify_constraints(names=...) must be a constraint name, an ik.Constraint, or a "
            f"list of them, not {type(names).__name__}"
        )
    out: dict[str, Constraint] = {}
    for item in items:
        if isinstance(item, Constraint):
            constraint = item
        elif isinstance(item, str):
            declared = catalog.constraints.get(item)
            constraint = declared if declared is not None else Constraint(item)
        else:
            raise TypeError(
                "verify_constraints(names=...): each name must be a str or an ik.Constraint, "
                f"not {type(item).__name__}"
            )
        out.setdefault(constraint.name, constraint)
    return list(out.values())


def _split(name: str) -> tuple[str | None, str]:
    schema, dot, bare = name.rpartition(".")
    return (schema, bare) if dot else (None, name)


# -- which driver -------------------------------------------------------------------------------


def _roots(obj: object) -> set[str]:
    """Top-level package names of the classes ``obj`` is an instance of (subclasses included)."""
    return {(getattr(k, "__module__", None) or "").split(".")[0] for k in type(obj).__mro__}


def _dialect(conn: object) -> str | None:
    roots = _roots(conn)
    if "sqlite3" in roots:
        return "sqlite"
    if "psycopg" in roots:
        if "Async" in type(conn).__name__:
            raise TypeError(
                "verify_constraints() needs a synchronous connection; got a psycopg "
                "AsyncConnection. Open a psycopg.Connection for the check (at start-up, or in "
                "the weekly job)"
            )
        return "psycopg"
    if "psycopg2" in roots:
        return "psycopg2"
    return None


@contextmanager
def _dbapi(conn: object) -> Iterator[tuple[str, Any]]:
    """Yield ``(dialect, DB-API connection)``; unwraps SQLAlchemy connections and engines."""
    dialect = _dialect(conn)
    if dialect is not None:
        yield dialect, conn
        return
    if "sqlalchemy" in _roots(conn):
        if hasattr(conn, "raw_connection") and hasattr(conn, "connect"):  # an Engine
            with conn.connect() as sa_conn, _dbapi(sa_conn) as found:
                yield found
            return
        fairy = getattr(conn, "connection", None)  # Connection -> pool's proxied connection
        raw = getattr(fairy, "dbapi_connection", None) or getattr(fairy, "connection", None)
        dialect = _dialect(raw) if raw is not None else None
        if dialect is not None:
            yield dialect, raw
            return
    raise TypeError(
        "verify_constraints(conn=...) needs a sqlite3, psycopg (3) or psycopg2 connection, or a "
        f"SQLAlchemy Connection or Engine on one of them; got {type(conn).__module__}."
        f"{type(conn).__qualname__}"
    )


_SQLALCHEMY_DRIVERS = frozenset({"psycopg", "psycopg2", "pysqlite"})


def _check_connection(conn: object) -> None:
    """Raise ``TypeError`` for a connection we cannot check, before anything is reported."""
    if _dialect(conn) is not None:
        return
    if "sqlalchemy" in _roots(conn):
        driver = getattr(getattr(conn, "dialect", None), "driver", None)
        if driver in _SQLALCHEMY_DRIVERS:
            return
        raise TypeError(
            f"verify_constraints(conn=...): SQLAlchemy driver {driver!r} is not supported; use a "
            "synchronous psycopg, psycopg2 or sqlite (pysqlite) engine for the check"
        )
    raise TypeError(
        "verify_constraints(conn=...) needs a sqlite3, psycopg (3) or psycopg2 connection, or a "
        f"SQLAlchemy Connection or Engine on one of them; got {type(conn).__module__}."
        f"{type(conn).__qualname__}"
    )


# -- lookups ------------------------------------------------------------------------------------


def _pg_rows(dialect: str, conn: Any, names: list[str]) -> list[tuple[Any, ...]]:
    def query() -> list[tuple[Any, ...]]:
        cur = conn.cursor()
        try:
            cur.execute(_PG_SQL, (names, names))
            return list(cur.fetchall())
        finally:
            cur.close()

    if dialect == "psycopg":
        # A transaction block: BEGIN/COMMIT when idle, a savepoint inside the caller's
        # transaction, so a failure here never aborts the caller's work.
        with conn.transaction():
            return query()
    # psycopg2: 0 idle, 1 active, 2 in transaction, 3 in a failed transaction.
    if conn.autocommit:
        return query()
    status = conn.get_transaction_status()
    if status == 3:
        raise RuntimeError(
            "the psycopg2 connection is in a failed transaction: roll it back before checking"
        )
    if status == 2:
        cur = conn.cursor()
        try:
            cur.execute("SAVEPOINT invariantkit_verify")
            try:
                rows = query()
            except BaseException:
                cur.execute("ROLLBACK TO SAVEPOINT invariantkit_verify")
                raise
            cur.execute("RELEASE SAVEPOINT invariantkit_verify")
            return rows
        finally:
            cur.close()
    try:
        return query()
    finally:
        conn.rollback()  # end the read-only transaction our SELECT began


def _pg_lookup(dialect: str, conn: Any, constraints: Sequence[Constraint]) -> dict[str, _Found]:
    wanted: set[str] = set()
    for c in constraints:
        bare = _split(c.name)[1]
        wanted.update((bare, bare.lower()))
    rows = _pg_rows(dialect, conn, sorted(wanted))
    results: dict[str, _Found] = {}
    for c in constraints:
        schema, bare = _split(c.name)

        def matches(row: tuple[Any, ...], name: str, schema: str | None = schema) -> bool:
            return bool(row[1] == name and (row[0] == schema if schema else row[6]))

        hits = [r for r in rows if matches(r, bare)] or [
            r for r in rows if matches(r, bare.lower())
        ]
        results[c.name] = _pg_judge(hits)
    return results


def _pg_judge(hits: list[tuple[Any, ...]]) -> _Found:
    if not hits:
        return _Found(reason="not found")
    constraints = [h for h in hits if h[2] != "index"]
    indexes = [h for h in hits if h[2] == "index"]
    for h in constraints:
        if h[4]:
            return _Found(True, _PG_KINDS.get(h[2], "constraint"), "", False, h[0])
    for h in indexes:
        if h[3] and h[4]:
            kind = "partial unique index" if h[5] else "unique index"
            return _Found(True, kind, "", bool(h[5]), h[0])
    if constraints:
        h = constraints[0]
        return _Found(
            False, _PG_KINDS.get(h[2], "constraint"), "constraint is NOT VALID", False, h[0]
        )
    h = indexes[0]
    if not h[3]:
        return _Found(False, "index", "index is not unique", bool(h[5]), h[0])
    return _Found(
        False,
        "unique index",
        "index is INVALID (a failed CREATE INDEX CONCURRENTLY?): drop and recreate it",
        bool(h[5]),
        h[0],
    )


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


_SQLITE_KINDS = {
    "UNIQUE": "unique constraint",
    "PRIMARY": "primary key",
    "CHECK": "check constraint",
    "FOREIGN": "foreign key",
}


def _sqlite_lookup(conn: Any, constraints: Sequence[Constraint]) -> dict[str, _Found]:
    schemas = [str(row[1]) for row in conn.execute("PRAGMA database_list").fetchall()]
    results: dict[str, _Found] = {}
    for c in constraints:
        schema, bare = _split(c.name)
        found = _Found()
        for s in [schema] if schema else schemas:
            found = _sqlite_find(conn, s, bare)
            if found.present or found.kind:
                break
        results[c.name] = found
    return results


def _sqlite_find(conn: Any, schema: str, name: str) -> _Found:
    master = f"{_quote(schema)}.sqlite_master"
    rows = conn.execute(
        f"SELECT name, tbl_name FROM {master} WHERE type = 'index' AND name = ? COLLATE NOCASE",  # noqa: S608 - quoted identifier
        (name,),
    ).fetchall()
    for index_name, table in rows:
        for entry in conn.execute(f"PRAGMA {_quote(schema)}.index_list({_quote(table)})"):
            # seq, name, unique, origin, partial
            if str(entry[1]).lower() != str(index_name).lower():
                continue
            partial = bool(entry[4])
            if entry[2]:
                kind = "partial unique index" if partial else "unique index"
                return _Found(True, kind, "", partial, schema)
            return _Found(False, "index", "index is not unique", partial, schema)
    # Named table constraints (CONSTRAINT name UNIQUE (...)) keep their name only in the SQL.
    pattern = re.compile(
        r"\bCONSTRAINT\s+(?:\"" + re.escape(name) + r"\"|`" + re.escape(name) + r"`|\["
        + re.escape(name) + r"\]|'" + re.escape(name) + r"'|" + re.escape(name)
        + r"\b)\s+(UNIQUE|PRIMARY|CHECK|FOREIGN)\b",
        re.IGNORECASE,
    )  # fmt: skip
    for (sql,) in conn.execute(
        f"SELECT sql FROM {master} WHERE type = 'table' AND sql IS NOT NULL"  # noqa: S608 - quoted identifier
    ):
        match = pattern.search(str(sql))
        if match:
            return _Found(True, _SQLITE_KINDS[match.group(1).upper()], "", False, schema)
    return _Found()


# -- the public function ------------------------------------------------------------------------


def _emit(constraint: Constraint, found: _Found) -> None:
    d = STATE.dispatcher or dispatcher()
    ids = current_ids() or (new_trace_id(), new_span_id())
    d.emit(
        Record(
            "constraint",
            constraint.name,
            "present" if found.present else "missing",
            format(ids[0], "032x"),
            format(ids[1], "016x"),
            USER.get(),
            time.time(),
            attributes=found.to_attributes(),
            declaration=constraint,
        )
    )


def verify_constraints(
    conn: object,
    names: str | Constraint | Iterable[str | Constraint] | None = None,
) -> dict[str, bool]:
    """Check that each named unique index or constraint exists; return ``{name: present}``.

    A name is present when the database has a constraint by that name (unique, primary key,
    exclusion, check, foreign key), validated, or a unique index by that name, partial ones
    included, that is valid. A non-unique index, an INVALID index (left by a failed
    ``CREATE UNIQUE INDEX CONCURRENTLY``) and a ``NOT VALID`` constraint count as missing: they do
    not guarantee the existing rows. Unqualified names are looked up in the schemas on the
    search path (PostgreSQL) or in every attached database (sqlite); ``schema.name`` narrows it.

    Each result sets ``pg_constraint_exists{constraint}`` to 1 or 0 and writes a JSON log line;
    a missing one is also a Sentry error naming the constraint. Names not yet declared are
    declared as :class:`~invariantkit.Constraint` (so alert rules cover them).

    A driver error never escapes: the check runs as the operation ``verify_constraints``
    (domain ``platform``), whose failure goes to Sentry and the logs with the exception, and every
    name of that call is reported False (not verified) without touching the gauge. A connection
    of an unsupported type is a programming error and raises ``TypeError``.

    Args:
        conn: a sqlite3, psycopg 3 or psycopg2 connection, or a SQLAlchemy Connection/Engine.
            Inside an open transaction the lookup runs in a savepoint; an idle connection is
            left idle.
        names: a name, an :class:`~invariantkit.Constraint`, or a list of them; None checks every
            constraint declared in the catalog.

    Example:
        >>> import sqlite3
        >>> import invariantkit as ik
        >>> db = sqlite3.connect(":memory:")
        >>> _ = db.execute("CREATE TABLE payment_events (idempotency_key TEXT)")
        >>> _ = db.execute(
        ...     "CREATE UNIQUE INDEX payment_events_idempotency_idx ON payment_events (idempotency_key)"
        ... )
        >>> ik.verify_constraints(db, ["payment_events_idempotency_idx", "payment_events_amount_chk"])
        {'payment_events_idempotency_idx': True, 'payment_events_amount_chk': False}
    """
    from invariantkit._operation import operation

    constraints = _resolve(names)
    _check_connection(conn)
    results = dict.fromkeys((c.name for c in constraints), False)
    if not constraints:
        return results
    try:
        with operation("verify_constraints", domain="platform"), _dbapi(conn) as (dialect, raw):
            if dialect == "sqlite":
                found = _sqlite_lookup(raw, constraints)
            else:
                found = _pg_lookup(dialect, raw, constraints)
            for constraint in constraints:
                item = found[constraint.name]
                results[constraint.name] = item.present
                _emit(constraint, item)
    except Exception:
        # Reported by the operation (Sentry exception, ERROR log line, failure counter).
        return dict.fromkeys(results, False)
    return results
