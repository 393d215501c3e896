"""``ik.idempotent_write``: unique-constraint violations are expected retries, not alerts.

The guide's ``recordPaymentEvent`` by hand: a retry of the renewal cron inserts the same
idempotency key again, the database's unique constraint refuses it, and that refusal is the
constraint doing its job. It is counted (``billing_idempotent_retry_total{operation}``), logged
at info, and suppressed. Any other database error is unexpected: it goes to Sentry with tag
``operation`` and is raised as :class:`DbError`, chained to the original.

Drivers are recognised without importing them: an exception is examined by its SQLSTATE
(``sqlstate``/``pgcode``), its sqlite error name, and SQLAlchemy's ``.orig``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any

from invariantkit._catalog import LOWER_SNAKE, IdempotentDecl, check_name, get_catalog
from invariantkit._config import STATE, current_config, dispatcher
from invariantkit._context import USER, current_ids, new_span_id, new_trace_id
from invariantkit._record import Record
from invariantkit._safe import TAG_VALUE_LIMIT, safe_str

__all__ = ["DbError", "IdempotentWrite", "idempotent_write"]

logger = logging.getLogger("invariantkit")

#: SQLSTATE of a unique violation (PostgreSQL and every server that follows the standard).
UNIQUE_VIOLATION = "23505"
_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_SQLITE_UNIQUE_MESSAGES = ("UNIQUE constraint failed", "PRIMARY KEY must be unique")
#: Class names that mark a database error in every DB-API 2.0 driver (PEP 249 requires them in
#: the hierarchy), SQLAlchemy's wrapper, and asyncpg's base class.
_DB_ERROR_BASES = frozenset({"DatabaseError", "InterfaceError", "DBAPIError", "PostgresError"})
_WRAPPER_DEPTH = 4


class DbError(Exception):
    """An unexpected database error inside :func:`idempotent_write`, chained to the original
    (``__cause__``) after it was reported to Sentry with tag ``operation``.

    Attributes:
        operation: the idempotent write's operation name.
        key: the idempotency key given to :func:`idempotent_write` (None if none was).
        trace_id: the correlation id of the Sentry event and log line.

    Example:
        >>> import sqlite3, invariantkit as ik
        >>> conn = sqlite3.connect(":memory:")
        >>> try:
        ...     with ik.idempotent_write("record_payment_event", key="k1"):
        ...         conn.execute("INSERT INTO missing_table VALUES (1)")
        ... except ik.DbError as exc:
        ...     print(exc.operation, type(exc.__cause__).__name__)
        record_payment_event OperationalError
    """

    def __init__(self, operation: str, key: object = None, *, trace_id: str = "") -> None:
        self.operation = operation
        self.key = key
        self.trace_id = trace_id
        super().__init__(operation, key, trace_id)

    def __str__(self) -> str:
        cause = self.__cause__
        what = f"{type(cause).__name__}: {safe_str(cause, 500)}" if cause else "database error"
        key = f" (key {safe_str(self.key, 100)})" if self.key is not None else ""
        return f"{self.operation}{key}: {what}"


def _sqlite_unique(exc: BaseException) -> bool | None:
    """True/False for a sqlite3 ``IntegrityError``; None when ``exc`` is not a sqlite3 error."""
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None or not isinstance(exc, sqlite3.IntegrityError):
        return None
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    if isinstance(name, str):
        return name in _SQLITE_UNIQUE
    message = safe_str(exc, 200)
    return any(m in message for m in _SQLITE_UNIQUE_MESSAGES) or message.endswith("is not unique")


def _wrapped(exc: BaseException) -> BaseException | None:
    """The driver exception that a framework wrapper carries, if ``exc`` is such a wrapper."""
    module = type(exc).__module__ or ""
    if module.startswith("sqlalchemy"):
        orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError
        return orig if isinstance(orig, BaseException) else None
    if module.startswith("django.db"):
        return exc.__cause__  # django.db.utils wraps with "raise ... from driver_error"
    return None


def is_unique_violation(exc: BaseException) -> bool:
    """True when ``exc`` is a unique (or primary key) constraint violation from sqlite3,
    psycopg 3, psycopg2, asyncpg, or SQLAlchemy/Django wrapping one of those.

    Example:
        >>> import sqlite3
        >>> conn = sqlite3.connect(":memory:")
        >>> _ = conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
        >>> _ = conn.execute("INSERT INTO t VALUES ('a')")
        >>> try:
        ...     conn.execute("INSERT INTO t VALUES ('a')")
        ... except sqlite3.IntegrityError as exc:
        ...     is_unique_violation(exc)
        True
    """
    current: BaseException | None = exc
    for _ in range(_WRAPPER_DEPTH):
        if current is None:
            return False
        try:
            sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
            if sqlstate == UNIQUE_VIOLATION:
                return True
            sqlite = _sqlite_unique(current)
            if sqlite is not None:
                return sqlite
            current = _wrapped(current)
        except Exception:  # an exotic exception whose attributes raise: not ours to judge
            return False
    return False


def is_database_error(exc: BaseException) -> bool:
    """True when ``exc`` comes from a database driver or SQLAlchemy: its class hierarchy holds a
    DB-API ``DatabaseError`` or ``InterfaceError``, SQLAlchemy's ``DBAPIError`` or asyncpg's
    ``PostgresError``. ``ValueError``, ``KeyError`` and other application errors are not.

    Example:
        >>> import sqlite3
        >>> is_database_error(sqlite3.OperationalError("database is locked"))
        True
        >>> is_database_error(ValueError("bad amount"))
        False
    """
    return any(cls.__name__ in _DB_ERROR_BASES for cls in type(exc).__mro__)


_DECLARED: set[str] = set()
_DECLARED_LOCK = threading.Lock()


def _declare(operation: object) -> str:
    if (
        isinstance(operation, str)
        and operation in _DECLARED
        and operation in get_catalog().idempotent
    ):
        return operation
    name = check_name(
        f"idempotent_write({operation!r})",
        "operation",
        operation,
        LOWER_SNAKE,
        "lower_snake: [a-z][a-z0-9_]*",
    )
    with _DECLARED_LOCK:
        get_catalog().add(IdempotentDecl(name))
        _DECLARED.add(name)
    return name


class IdempotentWrite:
    """One idempotent write: the object ``with ik.idempotent_write(...) as w`` gives.

    Attributes:
        operation: the operation name (the metric's ``operation`` label).
        key: the idempotency key, as given (logs, Sentry and span only; never a metric label).
        duplicate: True after the block hit a unique constraint (an expected retry).
        trace_id: the correlation id of the retry or error report ("" when neither happened).

    Example:
        >>> import sqlite3
        >>> import invariantkit as ik
        >>> db = sqlite3.connect(":memory:")
        >>> _ = db.execute("CREATE TABLE events (key TEXT PRIMARY KEY)")
        >>> for attempt in range(2):
        ...     with ik.idempotent_write("record_payment_event", key="evt_1") as write, db:
        ...         _ = db.execute("INSERT INTO events VALUES ('evt_1')")
        >>> isinstance(write, ik.IdempotentWrite), write.duplicate
        (True, True)
    """

    __slots__ = ("duplicate", "key", "operation", "trace_id")

    def __init__(self, operation: str, key: object = None) -> None:
        self.operation = operation
        self.key = key
        self.duplicate = False
        self.trace_id = ""

    def __repr__(self) -> str:
        return (
            f"IdempotentWrite(operation={self.operation!r}, key={safe_str(self.key, 100)!r}, "
            f"duplicate={self.duplicate})"
        )

    def __enter__(self) -> IdempotentWrite:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False  # success, or KeyboardInterrupt/CancelledError: not ours
        if is_unique_violation(exc):
            self.duplicate = True
            self.trace_id = self._report("retry", "duplicate", None)
            return True
        if is_database_error(exc):
            self.trace_id = self._report("db_error", "error", exc)
            raise DbError(self.operation, self.key, trace_id=self.trace_id) from exc
        return False  # an application error: propagates unchanged

    async def __aenter__(self) -> IdempotentWrite:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def _report(self, kind: str, status: str, exc: BaseException | None) -> str:
        """Emit the retry or db_error record; never raises. Returns its trace id."""
        try:
            d = STATE.dispatcher or dispatcher()
            attributes: dict[str, Any] = {}
            if self.key is not None:
                scrubber = current_config().scrubber
                attributes["idempotency_key"] = safe_str(
                    scrubber.scrub_text(safe_str(self.key, 1000)), TAG_VALUE_LIMIT
                )
            ids = current_ids() or (new_trace_id(), new_span_id())
            trace_id = format(ids[0], "032x")
            d.emit(
                Record(
                    kind,  # type: ignore[arg-type]
                    self.operation,
                    status,
                    trace_id,
                    format(ids[1], "016x"),
                    USER.get(),
                    time.time(),
                    None,
                    attributes,
                    exception=exc,
                    declaration=get_catalog().idempotent.get(self.operation),
                )
            )
            return trace_id
        except Exception:
            logger.exception("invariantkit: could not report the %s of %s", kind, self.operation)
            return ""


class _IdempotentWriteFunction:
    """``ik.idempotent_write(operation, *, key=None)``: a context manager for one write whose
    unique-constraint violation is an expected retry.

    Inside the block, run the insert (or upsert-free write) guarded by a unique constraint:

    - a unique violation (sqlite3, psycopg 3, psycopg2 and asyncpg SQLSTATE 23505, SQLAlchemy's
      or Django's ``IntegrityError`` wrapping one) is suppressed: ``w.duplicate`` becomes True,
      ``billing_idempotent_retry_total{operation}`` is incremented, an INFO log line and a span
      event ``idempotent.retry`` are written; no Sentry event, no alert;
    - any other database error (DB-API ``DatabaseError``/``InterfaceError`` subclasses,
      SQLAlchemy ``DBAPIError``) is sent to Sentry with tag ``operation`` and raised as
      :class:`DbError` chained to the original;
    - any other exception (``ValueError``, your own errors) propagates unchanged.

    The key goes to the log line, Sentry and span; never to a metric label. The retry counter
    of ``operation`` exists at zero from its first use; call ``ik.idempotent_write.declare(op)``
    at import time to have it from process start (so the first retry after a deploy is seen by
    ``rate()``).

    With PostgreSQL, a failed statement aborts the transaction: open a transaction (or a
    savepoint) *inside* the block, so it is rolled back before the error reaches
    ``idempotent_write``.

    Example:
        >>> import sqlite3, invariantkit as ik
        >>> conn = sqlite3.connect(":memory:")
        >>> _ = conn.execute("CREATE TABLE events (idempotency_key TEXT PRIMARY KEY)")
        >>> for attempt in range(2):
        ...     with ik.idempotent_write("record_payment_event", key="renewal:sub_1:1") as w:
        ...         with conn:
        ...             _ = conn.execute("INSERT INTO events VALUES ('renewal:sub_1:1')")
        >>> w.duplicate
        True
    """

    def __call__(self, operation: str, *, key: object = None) -> IdempotentWrite:
        return IdempotentWrite(_declare(operation), key)

    def declare(self, operation: str) -> None:
        """Declare ``operation`` now: its retry counter exists at zero from process start.

        Example:
            >>> import invariantkit as ik
            >>> ik.idempotent_write.declare("record_payment_event")
        """
        _declare(operation)

    def __repr__(self) -> str:
        return "<function invariantkit.idempotent_write>"


idempotent_write = _IdempotentWriteFunction()
"""Guard one write whose unique-constraint violation is an expected retry.

``with ik.idempotent_write(operation, key=k) as w:`` runs the block; a unique violation
(sqlite3, psycopg 3, psycopg2, asyncpg, or SQLAlchemy/Django wrapping one) is suppressed and
counted (``w.duplicate`` is True, ``billing_idempotent_retry_total{operation}`` +1, an INFO log
line, a span event; no alert). Any other database error is sent to Sentry with tag ``operation``
and raised as :class:`DbError` chained to the original; other exceptions propagate unchanged.
``ik.idempotent_write.declare(operation)`` creates the retry counter at zero ahead of the first
use (call it at import time).

Example:
    >>> import sqlite3, invariantkit as ik
    >>> ik.idempotent_write.declare("record_payment_event")
    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE events (idempotency_key TEXT PRIMARY KEY)")
    >>> for attempt in range(2):
    ...     with ik.idempotent_write("record_payment_event", key="renewal:sub_1:1") as w:
    ...         with conn:
    ...             _ = conn.execute("INSERT INTO events VALUES ('renewal:sub_1:1')")
    >>> w.duplicate
    True
"""
