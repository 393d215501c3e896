"""``ik.idempotent_write``: duplicate writes are counted retries; other database errors alert.

The PostgreSQL tests run against a real server the suite starts on 127.0.0.1 (``pg_dsn``), through
psycopg 3, psycopg2 and SQLAlchemy; sqlite3 needs no server.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.openmetrics.exposition import generate_latest

import invariantkit as ik
from invariantkit._idempotency import is_database_error, is_unique_violation
from invariantkit.testing import Signals, capture_signals

RETRIES = "billing_idempotent_retry_total"
OP = "record_payment_event"
KEY = "renewal:sub_1:2024-01-15"

DDL = [
    """CREATE TABLE subscription_payment_events (
        id INTEGER PRIMARY KEY,
        user_subscription_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        amount_cents INTEGER NOT NULL CHECK (amount_cents > 0)
    )""",
    """CREATE UNIQUE INDEX subscription_payment_events_idempotency_idx
        ON subscription_payment_events (idempotency_key)""",
]
NOT_NULL_INSERT = (
    "INSERT INTO subscription_payment_events (user_subscription_id, idempotency_key, amount_cents) "
    "VALUES (NULL, 'k', 1)"
)
PG_DDL = [DDL[0].replace("id INTEGER PRIMARY KEY", "id BIGSERIAL PRIMARY KEY"), DDL[1]]
INSERT = (
    "INSERT INTO subscription_payment_events (user_subscription_id, idempotency_key, amount_cents) "
    "VALUES ('sub_1', '{key}', {amount})"
)


@pytest.fixture
def signals() -> Iterator[Signals]:
    with capture_signals() as captured:
        yield captured


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    for statement in DDL:
        conn.execute(statement)
    yield conn
    conn.close()


def record_payment(
    conn: sqlite3.Connection, key: str = KEY, amount: int = 500
) -> ik.IdempotentWrite:
    """The guide's recordPaymentEvent, with sqlite3."""
    with ik.idempotent_write(OP, key=key) as w, conn:
        conn.execute(INSERT.format(key=key, amount=amount))
    return w


def sentry_exception_type(event: dict[str, Any]) -> str:
    return event["exception"]["values"][-1]["type"]  # type: ignore[no-any-return]


class TestExpectedRetry:
    """A unique violation is the constraint doing its job: counted, logged, not alerted."""

    def test_first_write_is_not_a_duplicate(self, signals: Signals, db: sqlite3.Connection) -> None:
        """A successful write: ``duplicate`` False, no record, the counter at 0."""
        w = record_payment(db)
        assert w.duplicate is False
        assert w.trace_id == ""
        assert signals.records == []
        assert signals.metric(RETRIES, operation=OP) == 0.0
        assert any(
            s.name == RETRIES and s.labels == {"operation": OP}
            for f in signals.registry.collect()  # type: ignore[union-attr]
            for s in f.samples
        ), "the retry counter child exists at 0 after the first use"

    def test_duplicate_is_suppressed_and_counted(
        self, signals: Signals, db: sqlite3.Connection
    ) -> None:
        """The second insert of a key: suppressed, ``w.duplicate``, counter +1, no alert."""
        record_payment(db)
        w = record_payment(db)
        assert w.duplicate is True
        assert signals.metric(RETRIES, operation=OP) == 1.0
        assert signals.sentry_events == []
        assert signals.posthog_events == []
        signals.assert_no_violations()
        assert db.execute("SELECT count(*) FROM subscription_payment_events").fetchone() == (1,)

    def test_info_log_with_the_key(self, signals: Signals, db: sqlite3.Connection) -> None:
        """One INFO log line names the operation and the key, in the write's trace."""
        record_payment(db)
        w = record_payment(db)
        [line] = signals.logs
        assert (line["event"], line["level"], line["operation"]) == ("idempotent.retry", "info", OP)
        assert line["attributes"]["idempotency_key"] == KEY
        assert line["trace_id"] == w.trace_id

    def test_span_event_in_the_operation(self, signals: Signals, db: sqlite3.Connection) -> None:
        """Inside an operation: span event ``idempotent.retry``, same trace id, span still OK."""
        record_payment(db)
        with ik.billing_operation("renewal") as run:
            w = record_payment(db)
        assert w.trace_id == run.correlation_id
        [span] = [s for s in signals.spans if s.name == "billing.renewal"]
        assert [e.name for e in span.events] == ["idempotent.retry"]
        assert span.events[0].attributes["billing.idempotency_key"] == KEY
        assert span.status.is_ok

    def test_key_is_never_a_metric_label(self, signals: Signals, db: sqlite3.Connection) -> None:
        """The key is in logs, never in the exposition."""
        record_payment(db)
        record_payment(db)
        assert KEY not in generate_latest(signals.registry).decode()

    def test_primary_key_violation_is_a_duplicate(self, signals: Signals) -> None:
        """A primary key (not only a unique index) is an idempotency guard too."""
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE events (idempotency_key TEXT PRIMARY KEY)")
        for _ in range(3):
            with ik.idempotent_write(OP, key="k") as w, conn:
                conn.execute("INSERT INTO events VALUES ('k')")
        assert w.duplicate
        assert signals.metric(RETRIES, operation=OP) == 2.0

    def test_sqlalchemy_over_sqlite(self, signals: Signals) -> None:
        """SQLAlchemy's IntegrityError wrapping sqlite3's is a duplicate too."""
        import sqlalchemy

        engine = sqlalchemy.create_engine("sqlite://")
        try:
            with engine.begin() as conn:
                for statement in DDL:
                    conn.execute(sqlalchemy.text(statement))
            for _ in range(2):
                with ik.idempotent_write(OP, key=KEY) as w, engine.begin() as conn:
                    conn.execute(sqlalchemy.text(INSERT.format(key=KEY, amount=500)))
            assert w.duplicate
            assert signals.metric(RETRIES, operation=OP) == 1.0
        finally:
            engine.dispose()

    async def test_async_with(self, signals: Signals, db: sqlite3.Connection) -> None:
        """``async with`` works the same."""
        record_payment(db)
        async with ik.idempotent_write(OP, key=KEY) as w:
            with db:
                db.execute(INSERT.format(key=KEY, amount=500))
        assert w.duplicate
        assert signals.metric(RETRIES, operation=OP) == 1.0

    def test_keys_are_scrubbed(self, signals: Signals, db: sqlite3.Connection) -> None:
        """A key with an e-mail address is scrubbed before it leaves."""
        key = "jane@example.com:2024-01-15"
        record_payment(db, key=key)
        record_payment(db, key=key)
        [line] = signals.logs
        assert "jane@example.com" not in line["attributes"]["idempotency_key"]


class TestDeclare:
    """The retry counter can exist at zero from process start."""

    def test_declared_before_configure(self) -> None:
        """``ik.idempotent_write.declare(op)`` at import: the child is at 0 once configured."""
        ik.idempotent_write.declare("charge_renewal")
        with capture_signals() as signals:
            assert (
                'billing_idempotent_retry_total{operation="charge_renewal"} 0.0'
                in generate_latest(signals.registry).decode()
            )

    def test_declared_after_configure(self, signals: Signals) -> None:
        """Declared while configured: the child appears at 0 at once."""
        assert "charge_renewal" not in generate_latest(signals.registry).decode()
        ik.idempotent_write.declare("charge_renewal")
        assert (
            'billing_idempotent_retry_total{operation="charge_renewal"} 0.0'
            in generate_latest(signals.registry).decode()
        )
        assert "charge_renewal" in ik.get_catalog().idempotent

    @pytest.mark.parametrize("name", ["RecordPayment", "record-payment", "", "1st"])
    def test_names_are_lower_snake(self, name: str) -> None:
        """An operation name outside ``[a-z][a-z0-9_]*`` fails loudly, at declare or first use."""
        with pytest.raises(ValueError, match=r"operation=.* must be lower_snake"):
            ik.idempotent_write.declare(name)
        with pytest.raises(ValueError, match=r"operation=.* must be lower_snake"):
            ik.idempotent_write(name)

    def test_names_are_str(self) -> None:
        """A non-str name is a TypeError."""
        with pytest.raises(TypeError, match="operation must be a str"):
            ik.idempotent_write(3)  # type: ignore[arg-type]


class TestUnexpectedDatabaseError:
    """Any other database error goes to Sentry and is raised as DbError, chained."""

    @pytest.mark.parametrize(
        ("statement", "error"),
        [
            ("INSERT INTO missing_table VALUES (1)", "OperationalError"),
            (INSERT.format(key=KEY, amount=0), "IntegrityError"),  # CHECK constraint
            (NOT_NULL_INSERT, "IntegrityError"),  # NOT NULL: an integrity error, not a retry
        ],
    )
    def test_reported_and_raised(
        self, signals: Signals, db: sqlite3.Connection, statement: str, error: str
    ) -> None:
        """Sentry exception tagged ``operation`` (and the key); DbError carries the rest."""
        with pytest.raises(ik.DbError) as info, ik.idempotent_write(OP, key=KEY) as w, db:
            db.execute(statement)
        exc = info.value
        assert type(exc.__cause__).__name__ == error
        assert isinstance(exc.__cause__, sqlite3.Error)
        assert (exc.operation, exc.key) == (OP, KEY)
        assert w.duplicate is False
        [event] = signals.sentry_events
        assert sentry_exception_type(event) == error
        assert event["tags"]["operation"] == OP
        assert event["tags"]["idempotency_key"] == KEY
        assert event["tags"]["trace_id"] == exc.trace_id == w.trace_id
        [line] = signals.logs
        assert (line["event"], line["level"], line["error_type"]) == (
            "idempotent.db_error",
            "error",
            error,
        )
        assert signals.metric(RETRIES, operation=OP) == 0.0
        assert OP in str(exc)
        assert error in str(exc)

    def test_one_sentry_event_when_the_dberror_fails_the_operation(
        self, signals: Signals, db: sqlite3.Connection
    ) -> None:
        """A DbError that also fails the enclosing operation is one Sentry event, not two."""
        with pytest.raises(ik.DbError), ik.billing_operation("renewal"):
            with ik.idempotent_write(OP, key=KEY), db:
                db.execute("INSERT INTO missing_table VALUES (1)")
        [event] = signals.sentry_events
        assert sentry_exception_type(event) == "OperationalError"
        assert (
            signals.metric(
                "billing_operation_errors_total", operation="renewal", error_type="DbError"
            )
            == 1.0
        )

    def test_dberror_without_a_key(self, signals: Signals, db: sqlite3.Connection) -> None:
        """No key: DbError.key is None and no key tag is sent."""
        with pytest.raises(ik.DbError) as info, ik.idempotent_write(OP):
            db.execute("SELECT * FROM missing_table")
        assert info.value.key is None
        assert "idempotency_key" not in signals.sentry_events[0]["tags"]

    @pytest.mark.parametrize(
        "error",
        [ValueError("bad amount"), KeyError("sub_1"), RuntimeError("payment provider said no")],
    )
    def test_application_errors_propagate_unchanged(
        self, signals: Signals, error: Exception
    ) -> None:
        """Non-database exceptions leave exactly as they came, and nothing is reported."""
        with pytest.raises(type(error)) as info, ik.idempotent_write(OP, key=KEY):
            raise error
        assert info.value is error
        assert signals.records == []

    def test_base_exceptions_propagate(self, signals: Signals) -> None:
        """KeyboardInterrupt-like exceptions are never examined."""

        class Stop(BaseException):
            sqlstate = "23505"

        with pytest.raises(Stop), ik.idempotent_write(OP):
            raise Stop
        assert signals.records == []

    def test_reporting_failure_does_not_change_the_outcome(self, db: sqlite3.Connection) -> None:
        """A backend that raises changes neither the suppression nor the DbError."""

        class Broken:
            name = "broken"
            deferred = False

            def emit(self, record: Any) -> None:
                if record.kind in ("retry", "db_error"):
                    raise RuntimeError("down")

            def flush(self, timeout: float) -> bool:
                return True

            def shutdown(self, timeout: float) -> bool:
                return True

        with capture_signals(extra_sinks=(Broken(),)) as signals:
            record_payment(db)
            assert record_payment(db).duplicate
            with pytest.raises(ik.DbError), ik.idempotent_write(OP):
                db.execute("SELECT * FROM missing_table")
            assert signals.metric(RETRIES, operation=OP) == 1.0


class TestDetection:
    """Drivers are recognised by duck typing, without importing them."""

    def test_sqlstate_and_pgcode(self) -> None:
        """SQLSTATE 23505 as ``sqlstate`` (psycopg 3, asyncpg) or ``pgcode`` (psycopg2)."""

        class UniqueViolationError(Exception):  # asyncpg's shape
            sqlstate = "23505"

        class PsycopgTwo(Exception):
            def __init__(self) -> None:
                self.pgcode = "23505"

        class Serialization(Exception):
            sqlstate = "40001"

        assert is_unique_violation(UniqueViolationError())
        assert is_unique_violation(PsycopgTwo())
        assert not is_unique_violation(Serialization())
        assert not is_unique_violation(ValueError("UNIQUE constraint failed"))

    def test_database_errors_by_hierarchy(self) -> None:
        """DB-API class names mark database errors; application errors are not."""

        class DatabaseError(Exception):
            pass

        class OperationalError(DatabaseError):
            pass

        class PostgresError(Exception):
            pass

        assert is_database_error(OperationalError())
        assert is_database_error(PostgresError())
        assert is_database_error(sqlite3.InterfaceError())
        assert not is_database_error(ValueError())

    def test_attributes_that_raise_are_not_ours(self) -> None:
        """An exception whose attributes raise is not a duplicate (and does not crash)."""

        class Weird(Exception):
            @property
            def sqlstate(self) -> str:
                raise RuntimeError("boom")

        assert not is_unique_violation(Weird())

    def test_drivers_are_not_imported(self) -> None:
        """Using idempotent_write imports neither psycopg, psycopg2 nor SQLAlchemy."""
        code = textwrap.dedent(
            """
            import sqlite3, sys
            import invariantkit as ik
            ik.configure(sinks=[ik.sinks.Memory()])
            conn = sqlite3.connect(":memory:")
            conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
            for _ in range(2):
                with ik.idempotent_write("op", key="k") as w, conn:
                    conn.execute("INSERT INTO t VALUES ('k')")
            assert w.duplicate
            try:
                with ik.idempotent_write("op"):
                    conn.execute("SELECT * FROM nope")
            except ik.DbError:
                pass
            loaded = sorted(m for m in ("psycopg", "psycopg2", "sqlalchemy", "asyncpg") if m in sys.modules)
            print(loaded)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"


# --- real PostgreSQL ----------------------------------------------------------------------------


def _pg_setup(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in PG_DDL:
            conn.execute(statement.encode())


def _rows(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(b"SELECT count(*) FROM subscription_payment_events").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
class TestPostgres:
    """Against a real PostgreSQL 15 on 127.0.0.1."""

    def test_psycopg3(self, signals: Signals, pg_dsn: str) -> None:
        """psycopg 3: UniqueViolation is a retry; the connection stays usable (the transaction
        inside the block was rolled back); other errors are DbError."""
        import psycopg
        import psycopg.errors

        _pg_setup(pg_dsn)
        with psycopg.connect(pg_dsn) as conn:
            outcomes = []
            for key in (KEY, KEY, "renewal:sub_1:2024-02-15", KEY):
                with ik.idempotent_write(OP, key=key) as w, conn.transaction():
                    conn.execute(INSERT.format(key=key, amount=500).encode())
                outcomes.append(w.duplicate)
            assert outcomes == [False, True, False, True]
            with (
                pytest.raises(ik.DbError) as info,
                ik.idempotent_write(OP, key="k"),
                conn.transaction(),
            ):
                conn.execute(b"INSERT INTO missing_table VALUES (1)")
            assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)
            with (
                pytest.raises(ik.DbError) as info,
                ik.idempotent_write(OP, key="k"),
                conn.transaction(),
            ):
                conn.execute(NOT_NULL_INSERT.encode())
            assert isinstance(info.value.__cause__, psycopg.errors.NotNullViolation)
        assert _rows(pg_dsn) == 2
        assert signals.metric(RETRIES, operation=OP) == 2.0
        assert [sentry_exception_type(e) for e in signals.sentry_events] == [
            "UndefinedTable",
            "NotNullViolation",
        ]
        assert all(e["tags"]["operation"] == OP for e in signals.sentry_events)

    def test_psycopg3_autocommit(self, signals: Signals, pg_dsn: str) -> None:
        """In autocommit mode no transaction is needed at all."""
        import psycopg

        _pg_setup(pg_dsn)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for _ in range(3):
                with ik.idempotent_write(OP, key=KEY) as w:
                    conn.execute(INSERT.format(key=KEY, amount=500).encode())
        assert w.duplicate
        assert signals.metric(RETRIES, operation=OP) == 2.0

    async def test_psycopg3_async(self, signals: Signals, pg_dsn: str) -> None:
        """psycopg 3's async connection with ``async with``."""
        import psycopg

        _pg_setup(pg_dsn)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            for _ in range(2):
                async with ik.idempotent_write(OP, key=KEY) as w, conn.transaction():
                    await conn.execute(INSERT.format(key=KEY, amount=500).encode())
        assert w.duplicate
        assert signals.metric(RETRIES, operation=OP) == 1.0

    def test_psycopg2(self, signals: Signals, pg_dsn: str) -> None:
        """psycopg2: pgcode 23505 is a retry; ``with conn:`` rolls the transaction back."""
        import psycopg2

        _pg_setup(pg_dsn)
        conn = psycopg2.connect(pg_dsn)
        try:
            for _ in range(2):
                with ik.idempotent_write(OP, key=KEY) as w, conn, conn.cursor() as cur:
                    cur.execute(INSERT.format(key=KEY, amount=500))
            assert w.duplicate
            with conn, conn.cursor() as cur:  # still usable
                cur.execute(INSERT.format(key="other", amount=500))
            with (
                pytest.raises(ik.DbError) as info,
                ik.idempotent_write(OP, key=KEY),
                conn,
                conn.cursor() as cur,
            ):
                cur.execute(INSERT.format(key="third", amount=0))
            assert info.value.__cause__.pgcode == "23514"  # type: ignore[union-attr]  # check_violation
        finally:
            conn.close()
        assert _rows(pg_dsn) == 2
        assert signals.metric(RETRIES, operation=OP) == 1.0
        [event] = signals.sentry_events
        assert sentry_exception_type(event) == "CheckViolation"
        assert event["tags"]["operation"] == OP

    @pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
    def test_sqlalchemy(self, signals: Signals, pg_dsn: str, driver: str) -> None:
        """SQLAlchemy's IntegrityError wraps the driver's (``.orig``): a retry; its other
        errors (ProgrammingError) are DbError."""
        import sqlalchemy
        import sqlalchemy.exc

        _pg_setup(pg_dsn)
        engine = sqlalchemy.create_engine(
            pg_dsn.replace("postgresql://", f"postgresql+{driver}://")
        )
        try:
            for _ in range(2):
                with ik.idempotent_write(OP, key=KEY) as w, engine.begin() as conn:
                    conn.execute(sqlalchemy.text(INSERT.format(key=KEY, amount=500)))
            assert w.duplicate
            with pytest.raises(ik.DbError) as info, ik.idempotent_write(OP), engine.begin() as conn:
                conn.execute(sqlalchemy.text("SELECT * FROM missing_table"))
            assert isinstance(info.value.__cause__, sqlalchemy.exc.ProgrammingError)
            with engine.connect() as conn:
                assert (
                    conn.execute(
                        sqlalchemy.text("SELECT count(*) FROM subscription_payment_events")
                    ).scalar()
                    == 1
                )
        finally:
            engine.dispose()
        assert signals.metric(RETRIES, operation=OP) == 1.0
        [event] = signals.sentry_events
        assert event["tags"]["operation"] == OP

    def test_sqlalchemy_orm_savepoint(self, signals: Signals, pg_dsn: str) -> None:
        """With an ORM session, a savepoint inside the block keeps the outer transaction alive."""
        import sqlalchemy
        from sqlalchemy.orm import Session

        _pg_setup(pg_dsn)
        engine = sqlalchemy.create_engine(pg_dsn.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with Session(engine) as session, session.begin():
                for key in (KEY, KEY, "other"):
                    with ik.idempotent_write(OP, key=key), session.begin_nested():
                        session.execute(sqlalchemy.text(INSERT.format(key=key, amount=500)))
        finally:
            engine.dispose()
        assert _rows(pg_dsn) == 2
        assert signals.metric(RETRIES, operation=OP) == 1.0
