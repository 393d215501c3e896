"""At-rest checks: the same invariants, proven against the data (``ik.Check``, ``ik.run_checks``).

Runtime assertions only see the code paths that call them; a migration, a manual SQL fix or a
second service can write a bad row that no ``assert_invariant`` ever sees. A :class:`Check` is a
SELECT that returns the rows violating an invariant. :func:`run_checks` runs it read-only, with a
statement timeout, and keeps what it found in the user's own database
(``invariantkit_violations``), so that one bad entity is reported once, not on every run:

- a key seen for the first time is a new violation, reported like ``ik.report_violation`` (Sentry
  event fingerprinted by check and key, PostHog, log line, the violation counter);
- a key seen again only updates ``last_seen``;
- a key no longer returned is resolved (log line ``invariant.resolved``).

Each run is one ``check`` record (outcome ``ok``, ``violations`` or ``error``) for the metrics
sinks, one span ``check.<name>`` (linked to the writers' traces) and one log line ``check.run``.
Nothing here raises into the caller once the arguments are valid: a failing query is outcome
``error``, reported.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from invariantkit._catalog import LOWER_SNAKE, Invariant, check_name, get_catalog
from invariantkit._config import STATE, dispatcher
from invariantkit._context import CORRELATION, new_span_id, new_trace_id
from invariantkit._cron import _seconds
from invariantkit._record import Record

__all__ = ["STATE_TABLE", "Check", "CheckReport", "CheckResult", "failed_runs", "run_checks"]

logger = logging.getLogger("invariantkit")

#: The table in the user's database that remembers which entities were already reported.
STATE_TABLE = "invariantkit_violations"
#: Default statement timeout of a check's query (seconds).
DEFAULT_TIMEOUT = 60.0
#: Tags that run_checks sets itself: a key column may not take these names.
RESERVED_TAGS = frozenset({"check", "entity_key", "writer_trace_id", "trace_id", "invariant"})
_HEX32 = re.compile(r"[0-9a-fA-F]{32}\Z")
_READ = re.compile(r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*\(?\s*(select|with|values)\b", re.I | re.S)

Outcome = Literal["ok", "violations", "error"]


def _default_name(invariant: Invariant) -> str:
    return invariant.name.lower()


@dataclass(frozen=True, eq=False)
class Check:
    """An at-rest check: a SELECT returning the rows that violate ``invariant``.

    Declaring one registers it in the catalog: the rule generator adds ``<Check>Stale`` (no
    successful run in twice ``every``) and ``<Check>Failing`` (the query fails), the dashboards
    a panel, the playbooks an entry, and ``invariantkit check`` / :func:`run_checks` run it.
    Every argument is validated here, with a clear error.

    Args:
        invariant: the :class:`~invariantkit.Invariant` the rows violate (or a declared one's name).
        sql: a SELECT (or WITH/VALUES) returning the violating rows; zero rows: the invariant
            holds. It runs in a read-only transaction with a statement timeout.
        key: the column (or columns) that identify one violating entity; they become the
            violation's tags. Every other column goes to the event's ``extra``; a ``trace_id``
            column (32 hex, stored with the row from ``ik.correlation_id()``) links the
            violation to the trace of the operation that wrote the row.
        every: how often it runs (seconds or ``timedelta``); ``<Check>Stale`` fires after 2x.
        name: lower_snake name (metric label ``check``); default the invariant's name, lowered.
        params: query parameters, in the driver's style (``?`` for sqlite3, ``%s`` for psycopg).
        sample: at most this many new entities are reported one by one per run; the rest are
            counted (in the report and the ``check.run`` log line).
        timeout: the query's statement timeout, seconds (default 60).

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> check = ik.Check(
        ...     billing.NO_DOUBLE_CHARGE,
        ...     sql="SELECT subscription_id, count(*) AS charges FROM charges "
        ...         "GROUP BY subscription_id, date(charged_at) HAVING count(*) > 1",
        ...     key="subscription_id",
        ...     every=3600,
        ... )
        >>> check.name, check.key
        ('no_double_charge', ('subscription_id',))
    """

    invariant: Invariant
    sql: str
    key: tuple[str, ...]
    every: float
    name: str
    params: Sequence[Any] | Mapping[str, Any] | None = None
    sample: int = 100
    timeout: float = DEFAULT_TIMEOUT
    kind: Literal["check"] = field(default="check", init=False, repr=False)

    def __init__(
        self,
        invariant: Invariant | str,
        *,
        sql: str,
        key: str | Sequence[str],
        every: float | dt.timedelta,
        name: str | None = None,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        sample: int = 100,
        timeout: float | dt.timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        inv = _invariant(invariant)
        owner = f"Check({name or _default_name(inv)!r})"
        set_ = object.__setattr__
        set_(self, "invariant", inv)
        set_(
            self,
            "name",
            check_name(
                owner,
                "name",
                _default_name(inv) if name is None else name,
                LOWER_SNAKE,
                "lower_snake: [a-z][a-z0-9_]*",
            ),
        )
        if not isinstance(sql, str):
            raise TypeError(f"{owner}: sql must be a str, not {type(sql).__name__}")
        if not _READ.match(sql):
            raise ValueError(
                f"{owner}: sql must be a SELECT (or WITH ... SELECT) returning the violating "
                f"rows, got {sql.strip()[:40]!r}"
            )
        set_(self, "sql", sql)
        set_(self, "key", _key(owner, key))
        set_(self, "every", _seconds(owner, "every", every))
        if params is not None and (
            isinstance(params, (str, bytes)) or not isinstance(params, (Sequence, Mapping))
        ):
            raise TypeError(
                f"{owner}: params must be a sequence or a mapping of query parameters, "
                f"not {type(params).__name__}"
            )
        set_(self, "params", params)
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
            raise ValueError(
                f"{owner}: sample={sample!r} must be an int >= 1 (new entities reported one by "
                "one per run; the rest are counted)"
            )
        set_(self, "sample", sample)
        set_(self, "timeout", _seconds(owner, "timeout", timeout))
        set_(self, "kind", "check")
        get_catalog().add(self)

    @property
    def stale_after(self) -> float:
        """Seconds without a successful run after which ``<Check>Stale`` fires: 2x ``every``."""
        return 2 * self.every

    def __repr__(self) -> str:
        return f"Check({self.name!r}, invariant={self.invariant.name!r}, key={self.key!r})"


def _invariant(value: object) -> Invariant:
    if isinstance(value, Invariant):
        return value
    if isinstance(value, str):
        found = get_catalog().invariants.get(value)
        if found is not None:
            return found
        raise ValueError(
            f"Check: no invariant named {value!r} is declared; pass the ik.Invariant itself"
        )
    raise TypeError(f"Check: invariant must be an ik.Invariant, not {type(value).__name__}")


def _key(owner: str, key: object) -> tuple[str, ...]:
    items = (key,) if isinstance(key, str) else key
    if not isinstance(items, Sequence) or not items:
        raise TypeError(f"{owner}: key must be a column name or a non-empty list of them")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise TypeError(f"{owner}: key must hold column names (non-empty str), got {item!r}")
        if item in RESERVED_TAGS:
            raise ValueError(
                f"{owner}: key column {item!r} is a reserved tag name "
                f"({', '.join(sorted(RESERVED_TAGS))}); alias it in the SELECT"
            )
        if item in out:
            raise ValueError(f"{owner}: key column {item!r} is given twice")
        out.append(item)
    return tuple(out)


# -- results --------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """What one check found in one run.

    ``outcome`` is ``ok`` (no violating rows), ``violations`` (some; ``new`` of them first seen
    this run) or ``error`` (``error`` says why). ``new_keys`` are the entity keys first seen,
    in query order; ``reported`` of them were reported one by one, ``unreported`` only counted.

    Example:
        >>> import invariantkit as ik
        >>> result = ik.CheckResult("double_charges", "NO_DOUBLE_CHARGE", "violations", violating=2)
        >>> result.outcome, result.violating
        ('violations', 2)
    """

    check: str
    invariant: str
    outcome: Outcome = "ok"
    violating: int = 0
    new: int = 0
    seen_again: int = 0
    resolved: int = 0
    reported: int = 0
    unreported: int = 0
    duration: float = 0.0
    query_duration: float = 0.0
    trace_id: str = ""
    error: str | None = None
    new_keys: list[str] = field(default_factory=list)
    resolved_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class CheckReport:
    """The results of one :func:`run_checks` call, one :class:`CheckResult` per check.

    ``exit_code`` is what ``invariantkit check`` exits with: 2 when a check failed to run, else
    1 when any found new violating entities, else 0.

    Example:
        >>> import invariantkit as ik
        >>> report = ik.CheckReport([ik.CheckResult("double_charges", "NO_DOUBLE_CHARGE")])
        >>> report.exit_code, report["double_charges"].outcome
        (0, 'ok')
    """

    results: list[CheckResult] = field(default_factory=list)

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, name: str) -> CheckResult:
        for result in self.results:
            if result.check == name:
                return result
        raise KeyError(name)

    @property
    def new(self) -> int:
        """New violating entities over every check."""
        return sum(r.new for r in self.results)

    @property
    def errors(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "error"]

    @property
    def ok(self) -> bool:
        """True when every check ran (violations or not)."""
        return not self.errors

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.new else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "new": self.new,
            "checks": [r.as_dict() for r in self.results],
        }


# -- the database ---------------------------------------------------------------------------------


def _dbapi_context(conn: object) -> Any:
    """``_constraints``' driver detection, with this function's name in its errors."""
    from invariantkit._constraints import _check_connection, _dbapi

    try:
        _check_connection(conn)
    except TypeError as exc:
        raise TypeError(str(exc).replace("verify_constraints", "run_checks")) from None
    return _dbapi(conn)


def _pg_status(dialect: str, conn: Any) -> int:
    """0 idle, 1 active, 2 in a transaction, 3 in a failed transaction (libpq's numbers)."""
    if dialect == "psycopg":
        return int(conn.info.transaction_status)
    return int(conn.get_transaction_status())


@contextmanager
def _pg_transaction(dialect: str, conn: Any, *, read_only: bool, timeout: float) -> Iterator[Any]:
    """A cursor in a transaction of our own (idle connection: read-only or committed at the end)
    or in a savepoint inside the caller's transaction (rolled back when read-only)."""
    status = _pg_status(dialect, conn)
    if status == 3:
        raise RuntimeError("the connection is in a failed transaction: roll it back first")
    cur = conn.cursor()
    if status == 0:
        autocommit = conn.autocommit
        if autocommit:
            conn.autocommit = False
        try:
            if read_only:
                cur.execute("SET TRANSACTION READ ONLY")  # the transaction's first statement
            cur.execute("SELECT set_config('statement_timeout', %s, true)", (_ms(timeout),))
            try:
                yield cur
            except BaseException:
                conn.rollback()
                raise
            if read_only:
                conn.rollback()
            else:
                conn.commit()
        finally:
            cur.close()
            if autocommit:
                conn.autocommit = True
        return
    cur.execute("SAVEPOINT invariantkit_check")
    try:
        if read_only:
            cur.execute("SET LOCAL transaction_read_only = on")
        cur.execute("SELECT set_config('statement_timeout', %s, true)", (_ms(timeout),))
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK TO SAVEPOINT invariantkit_check")
            raise
        if read_only:  # also puts back the caller's read-write mode and timeout
            cur.execute("ROLLBACK TO SAVEPOINT invariantkit_check")
        cur.execute("RELEASE SAVEPOINT invariantkit_check")
    finally:
        cur.close()


def _ms(seconds: float) -> str:
    return str(max(1, math.ceil(seconds * 1000)))


@contextmanager
def _sqlite_read_only(conn: Any, timeout: float) -> Iterator[Any]:
    """``PRAGMA query_only`` and a progress handler that interrupts the query at the deadline."""
    previous = conn.execute("PRAGMA query_only").fetchone()[0]
    conn.execute("PRAGMA query_only = ON")
    deadline = time.monotonic() + timeout
    clock = time.monotonic

    def interrupt() -> int:
        return 1 if clock() > deadline else 0

    conn.set_progress_handler(interrupt, 10_000)
    try:
        yield conn
    finally:
        conn.set_progress_handler(None, 0)
        conn.execute(f"PRAGMA query_only = {1 if previous else 0}")


@contextmanager
def _sqlite_write(conn: Any) -> Iterator[Any]:
    """A savepoint: committed on release when no transaction was open, else part of it."""
    conn.execute("SAVEPOINT invariantkit_state")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK TO SAVEPOINT invariantkit_state")
        conn.execute("RELEASE SAVEPOINT invariantkit_state")
        raise
    conn.execute("RELEASE SAVEPOINT invariantkit_state")


def _query(dialect: str, conn: Any, check: Check) -> tuple[list[str], list[Sequence[Any]]]:
    """Run the check's SQL read-only with its timeout: ``(column names, rows)``."""

    def fetch(cur: Any) -> tuple[list[str], list[Sequence[Any]]]:
        if check.params is None:
            cur.execute(check.sql)
        else:
            cur.execute(check.sql, check.params)
        if cur.description is None:
            raise ValueError("the check's SQL returned no rows to read (is it a SELECT?)")
        columns = [str(d[0]) for d in cur.description]
        return columns, list(cur.fetchall())

    if dialect == "sqlite":
        with _sqlite_read_only(conn, check.timeout):
            cur = conn.cursor()
            try:
                return fetch(cur)
            finally:
                cur.close()
    with _pg_transaction(dialect, conn, read_only=True, timeout=check.timeout) as cur:
        return fetch(cur)


def _ddl(dialect: str) -> str:
    ts = "TEXT" if dialect == "sqlite" else "TIMESTAMPTZ"
    return (
        f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} ("
        "check_name VARCHAR(100) NOT NULL, "
        "entity_key TEXT NOT NULL, "
        f"first_seen {ts} NOT NULL, "
        f"last_seen {ts} NOT NULL, "
        f"resolved_at {ts}, "
        "trace_id CHAR(32), "
        "PRIMARY KEY (check_name, entity_key))"
    )


_OPEN = f"SELECT entity_key FROM {STATE_TABLE} WHERE check_name = ? AND resolved_at IS NULL"  # noqa: S608 - constant
_RESOLVE = (
    f"UPDATE {STATE_TABLE} SET resolved_at = ? "  # noqa: S608 - constant
    "WHERE check_name = ? AND entity_key = ? AND resolved_at IS NULL"
)
_SEEN = f"UPDATE {STATE_TABLE} SET last_seen = ? WHERE check_name = ? AND resolved_at IS NULL"  # noqa: S608 - constant
_INSERT = (
    f"INSERT INTO {STATE_TABLE} "  # noqa: S608 - constant
    "(check_name, entity_key, first_seen, last_seen, resolved_at, trace_id) "
    "VALUES (?, ?, ?, ?, NULL, ?) "
    "ON CONFLICT (check_name, entity_key) DO UPDATE SET first_seen = excluded.first_seen, "
    "last_seen = excluded.last_seen, resolved_at = NULL, trace_id = excluded.trace_id"
)


@dataclass
class _Diff:
    new: list[str]
    seen_again: int
    resolved: list[str]


def _update_state(
    conn_info: tuple[str, Any], check: Check, keys: Iterable[str], trace_id: str
) -> _Diff:
    """One write transaction: create the table if needed, then record new, seen-again and
    resolved entities of ``check``. ``keys`` is every entity the query returned, in order."""
    dialect, conn = conn_info
    now_dt = dt.datetime.now(dt.timezone.utc)
    now: Any = now_dt.isoformat() if dialect == "sqlite" else now_dt

    def apply(cur: Any, sql: Any) -> _Diff:
        cur.execute(_ddl(dialect))
        cur.execute(sql(_OPEN), (check.name,))
        open_keys = {str(row[0]) for row in cur.fetchall()}
        current = dict.fromkeys(keys)
        new = [k for k in current if k not in open_keys]
        gone = sorted(open_keys.difference(current))
        if gone:
            cur.executemany(sql(_RESOLVE), [(now, check.name, k) for k in gone])
        seen_again = len(open_keys) - len(gone)
        if seen_again:
            cur.execute(sql(_SEEN), (now, check.name))
        if new:
            cur.executemany(sql(_INSERT), [(check.name, k, now, now, trace_id) for k in new])
        return _Diff(new, seen_again, gone)

    if dialect == "sqlite":
        with _sqlite_write(conn):
            cur = conn.cursor()
            try:
                return apply(cur, lambda s: s)
            finally:
                cur.close()
    with _pg_transaction(dialect, conn, read_only=False, timeout=check.timeout) as cur:
        return apply(cur, lambda s: s.replace("?", "%s"))


# -- one run --------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def entity_key(values: Sequence[Any]) -> str:
    """The stored key of one entity: the key column's value, or a JSON list for several."""
    if len(values) == 1:
        return _text(values[0])
    return json.dumps([_text(v) for v in values], ensure_ascii=False, separators=(",", ":"))


def _writer(value: Any) -> str | None:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).hex()
    text = str(value).replace("-", "") if value is not None else ""
    return text.lower() if _HEX32.match(text) and text.strip("0") else None


class _Run:
    """One check's run: its span (or bound correlation), the report, the records it emits."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.result = CheckResult(check.name, check.invariant.name)
        self.d = STATE.dispatcher or dispatcher()
        self.span: trace.Span | None = None
        self._otel_token: Any = None
        self._corr_token: Any = None
        self.start = time.perf_counter()
        traces = self.d.traces
        if traces is not None:
            span = traces.tracer.start_span(
                f"check.{check.name}",
                attributes={
                    "invariant.check": check.name,
                    "invariant.name": check.invariant.name,
                    "invariant.type": check.invariant.type,
                },
            )
            self.span = span
            self._otel_token = otel_context.attach(trace.set_span_in_context(span))
            ctx = span.get_span_context()
            ids = (ctx.trace_id, ctx.span_id)
        else:
            ids = (new_trace_id(), new_span_id())
            self._corr_token = CORRELATION.set(ids)
        self.trace_id = format(ids[0], "032x")
        self.span_id = format(ids[1], "016x")
        self.result.trace_id = self.trace_id

    def report(
        self, columns: list[str], rows: list[Sequence[Any]], conn_info: tuple[str, Any]
    ) -> None:
        check = self.check
        index = {c: i for i, c in enumerate(columns)}
        missing = [k for k in check.key if k not in index]
        if missing:
            raise ValueError(
                f"the query returned no column {', '.join(map(repr, missing))} named in key= "
                f"(columns: {', '.join(columns)})"
            )
        key_at = [index[k] for k in check.key]
        trace_at = index.get("trace_id")
        entities: dict[str, Sequence[Any]] = {}
        for row in rows:
            k = entity_key([row[i] for i in key_at])
            if k not in entities:
                entities[k] = row
        result = self.result
        result.violating = len(entities)
        diff = _update_state(conn_info, check, entities, self.trace_id)
        result.new, result.seen_again, result.resolved = (
            len(diff.new),
            diff.seen_again,
            len(diff.resolved),
        )
        result.new_keys, result.resolved_keys = diff.new, diff.resolved
        extra_at = [(c, i) for c, i in index.items() if c not in check.key and c != "trace_id"]
        for k in diff.new[: check.sample]:
            row = entities[k]
            writer = _writer(row[trace_at]) if trace_at is not None else None
            self._violation(k, row, key_at, extra_at, writer)
        result.reported = min(len(diff.new), check.sample)
        result.unreported = len(diff.new) - result.reported
        for k in diff.resolved:
            self.log("invariant.resolved", logging.INFO, {"entity_key": k})

    def _violation(
        self,
        key: str,
        row: Sequence[Any],
        key_at: list[int],
        extra_at: list[tuple[str, int]],
        writer: str | None,
    ) -> None:
        from invariantkit._invariant import emit_violation

        check = self.check
        tags: dict[str, Any] = {c: row[i] for c, i in zip(check.key, key_at, strict=True)}
        tags["check"] = check.name
        tags["entity_key"] = key
        if writer is not None:
            tags["writer_trace_id"] = writer
            if self.span is not None:
                self.span.add_link(
                    SpanContext(int(writer, 16), 0, is_remote=True, trace_flags=TraceFlags(1)),
                    {"invariant.check": check.name, "invariant.entity_key": key},
                )
        extra = {c: row[i] for c, i in extra_at}
        try:
            emit_violation(check.invariant, tags, extra)
        except Exception:
            logger.exception("invariantkit: could not report a violation of check %s", check.name)

    def log(self, event: str, level: int, fields: Mapping[str, Any]) -> None:
        """One JSON log line through each configured JsonLogs sink's logger, shaped like the
        sink's own lines (written here: a check runs in a batch job, not on a request path)."""
        try:
            from invariantkit.sinks._logs import _ENCODER, JsonLogs, record_fields

            loggers = [s.logger for s in self.d.sinks if isinstance(s, JsonLogs)]
            record = Record(
                "check", self.check.name, event, self.trace_id, self.span_id, None, time.time()
            )
            for target in loggers:
                if not target.isEnabledFor(level):
                    continue
                line = record_fields(record, level, event)
                line.pop("name", None)
                line["check"] = self.check.name
                line["invariant"] = self.check.invariant.name
                line.update(fields)
                target.handle(
                    target.makeRecord(
                        target.name,
                        level,
                        "invariantkit",
                        0,
                        _ENCODER.encode(line),
                        (),
                        None,
                        extra={"invariantkit": line},
                    )
                )
        except Exception:
            logger.exception("invariantkit: could not log %s of check %s", event, self.check.name)

    def finish(self, exc: BaseException | None) -> None:
        result = self.result
        result.duration = time.perf_counter() - self.start
        if exc is not None:
            from invariantkit._config import current_config
            from invariantkit._safe import scrubbed_str

            # A database error can quote row values: scrubbed like any text that leaves.
            result.outcome = "error"
            result.error = (
                f"{type(exc).__name__}: {scrubbed_str(exc, current_config().scrubber, 500)}"
            )
        else:
            result.outcome = "violations" if result.violating else "ok"
        try:
            span = self.span
            if span is not None:
                span.set_attribute("invariant.check.outcome", result.outcome)
                span.set_attribute("invariant.check.violating_entities", result.violating)
                span.set_attribute("invariant.check.new", result.new)
                span.set_attribute("invariant.check.resolved", result.resolved)
                if exc is not None:
                    span.set_status(Status(StatusCode.ERROR, result.error))
                    span.set_attribute("error.type", type(exc).__name__)
                span.end()
        finally:
            if self._otel_token is not None:
                otel_context.detach(self._otel_token)
            if self._corr_token is not None:
                CORRELATION.reset(self._corr_token)
        attributes = {
            "violating_entities": result.violating,
            "new": result.new,
            "seen_again": result.seen_again,
            "resolved": result.resolved,
            "unreported": result.unreported,
        }
        self.d.emit(
            Record(
                "check",
                self.check.name,
                result.outcome,
                self.trace_id,
                self.span_id,
                None,
                time.time(),
                result.duration,
                attributes,
                exception=exc,
                declaration=self.check,
            )
        )
        fields: dict[str, Any] = {
            "outcome": result.outcome,
            "duration_ms": round(result.duration * 1000, 3),
            **attributes,
        }
        if result.error is not None:
            fields["error"] = result.error
        level = {"ok": logging.INFO, "violations": logging.WARNING}.get(
            result.outcome, logging.ERROR
        )
        self.log("check.run", level, fields)


def _resolve(checks: object) -> list[Check]:
    catalog = get_catalog()
    if checks is None:
        return list(catalog.checks.values())
    items: Iterable[object] = [checks] if isinstance(checks, (str, Check)) else checks  # type: ignore[assignment]
    if not isinstance(items, Iterable):
        raise TypeError(
            f"run_checks(checks=...) must be a Check, a check's name or a list of them, "
            f"not {type(checks).__name__}"
        )
    out: list[Check] = []
    for item in items:
        if isinstance(item, Check):
            out.append(item)
        elif isinstance(item, str):
            found = catalog.checks.get(item)
            if found is None:
                known = ", ".join(sorted(catalog.checks)) or "none"
                raise ValueError(f"run_checks(): no check named {item!r} (declared: {known})")
            out.append(found)
        else:
            raise TypeError(
                f"run_checks(checks=...): each item must be a Check or a name, "
                f"not {type(item).__name__}"
            )
    return out


def run_checks(
    conn: object, checks: Check | str | Iterable[Check | str] | None = None
) -> CheckReport:
    """Run at-rest checks against the database; return what each found.

    Each check's SQL runs in a read-only transaction (PostgreSQL ``SET TRANSACTION READ ONLY``,
    or a savepoint with ``transaction_read_only`` inside an open transaction; sqlite
    ``PRAGMA query_only``) with its statement timeout (PostgreSQL ``statement_timeout``; sqlite a
    progress handler). Then, in a separate write transaction, ``invariantkit_violations``
    (created on first use) records what was found: new entities are reported like
    :func:`~invariantkit.report_violation` (at most ``sample`` per check and run; the rest are
    counted), entities seen again only update ``last_seen``, vanished ones are resolved.

    A failing query, a missing key column or a failing state update is outcome ``error`` (span
    status ERROR, ``check.run`` log line at ERROR, the ``check`` record for the metrics) and
    never raises. Give it a connection of its own: inside an open transaction it works in
    savepoints, and the state is committed with your transaction.

    Args:
        conn: a sqlite3, psycopg (3) or psycopg2 connection, or a SQLAlchemy Connection/Engine.
        checks: a :class:`Check`, a check's name, or a list of them; None runs every declared one.

    Raises:
        TypeError, ValueError: for a connection of an unsupported type or an unknown check name
            (programming errors, raised before anything runs).

    Example:
        >>> import sqlite3
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> db = sqlite3.connect(":memory:")
        >>> _ = db.execute("CREATE TABLE charges (subscription_id TEXT, day TEXT)")
        >>> _ = db.executemany("INSERT INTO charges VALUES (?, ?)",
        ...                    [("sub_1", "2026-01-01"), ("sub_1", "2026-01-01")])
        >>> check = ik.Check(billing.NO_DOUBLE_CHARGE, name="doc_double_charges", every=3600,
        ...     sql="SELECT subscription_id, day FROM charges GROUP BY 1, 2 HAVING count(*) > 1",
        ...     key="subscription_id")
        >>> report = ik.run_checks(db, [check])
        >>> report["doc_double_charges"].new, ik.run_checks(db, [check]).new
        (1, 0)
    """
    selected = _resolve(checks)
    context = _dbapi_context(conn)
    report = CheckReport()
    if not selected:
        return report
    try:
        with context as conn_info:
            for check in selected:
                report.results.append(_run_one(check, conn_info))
    except Exception as exc:  # connecting (an Engine) failed: every check that did not run
        done = {r.check for r in report.results}
        report.results += failed_runs([c for c in selected if c.name not in done], exc)
    return report


def failed_runs(checks: Iterable[Check], exc: Exception) -> list[CheckResult]:
    """Report each check as a run with outcome ``error`` caused by ``exc`` (the database could
    not be reached): its span, ``check`` record and log line, like any failed run."""
    results = []
    for check in checks:
        run = _Run(check)
        run.finish(exc)
        results.append(run.result)
    return results


def _run_one(check: Check, conn_info: tuple[str, Any]) -> CheckResult:
    try:
        run = _Run(check)
    except Exception:  # tracing trouble: reported as the check's error, never raised
        logger.exception("invariantkit: could not start check %s", check.name)
        return CheckResult(check.name, check.invariant.name, "error", error="internal error")
    error: BaseException | None = None
    try:
        started = time.perf_counter()
        columns, rows = _query(*conn_info, check)
        run.result.query_duration = time.perf_counter() - started
        run.report(columns, rows, conn_info)
    except Exception as exc:
        error = exc
    try:
        run.finish(error)
    except Exception:
        logger.exception("invariantkit: could not report the run of check %s", check.name)
    return run.result
