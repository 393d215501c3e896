"""``ik.verify_constraints``: unique indexes and constraints looked up by name in sqlite3 and in a
real PostgreSQL (psycopg 3, psycopg2, SQLAlchemy), the gauge, the Sentry error for a missing one,
and driver errors that are reported instead of raised."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

import invariantkit as ik
from invariantkit.testing import Signals

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def _constraint_records(signals: Signals) -> dict[str, ik.Record]:
    return {r.name: r for r in signals.records if r.kind == "constraint"}


def _gauge_series(signals: Signals) -> dict[str, float]:
    assert signals.registry is not None
    signals.records  # noqa: B018 - drains the dispatcher
    return {
        s.labels["constraint"]: s.value
        for family in signals.registry.collect()
        for s in family.samples
        if s.name == "pg_constraint_exists"
    }


def _missing_messages(signals: Signals) -> list[str]:
    return [str(e.get("message")) for e in signals.sentry_events if e.get("message")]


def _operation_failures(signals: Signals) -> list[dict[str, Any]]:
    return [
        e
        for e in signals.sentry_events
        if e.get("exception") and e.get("tags", {}).get("operation") == "verify_constraints"
    ]


# --- sqlite3 -------------------------------------------------------------------------------------

SQLITE_SCHEMA = """
CREATE TABLE subscription_payment_events (
    id INTEGER CONSTRAINT payment_events_pk PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    idempotency_key TEXT,
    status TEXT,
    amount_cents INTEGER,
    CONSTRAINT payment_events_key_uq UNIQUE (subscription_id, idempotency_key),
    CONSTRAINT "payment_events_amount_chk" CHECK (amount_cents >= 0)
);
CREATE UNIQUE INDEX subscription_payment_events_idempotency_idx
    ON subscription_payment_events (idempotency_key);
CREATE UNIQUE INDEX one_success_per_day_idx
    ON subscription_payment_events (subscription_id) WHERE status = 'succeeded';
CREATE INDEX payment_events_subscription_idx ON subscription_payment_events (subscription_id);
"""


@pytest.fixture
def sqlite_db() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:")
    db.executescript(SQLITE_SCHEMA)
    try:
        yield db
    finally:
        db.close()


class TestSqlite:
    @pytest.mark.parametrize(
        ("name", "present", "found"),
        [
            ("subscription_payment_events_idempotency_idx", True, "unique index"),
            ("one_success_per_day_idx", True, "partial unique index"),
            ("payment_events_key_uq", True, "unique constraint"),
            ("payment_events_amount_chk", True, "check constraint"),
            ("payment_events_pk", True, "primary key"),
            ("SUBSCRIPTION_PAYMENT_EVENTS_IDEMPOTENCY_IDX", True, "unique index"),
            ("main.one_success_per_day_idx", True, "partial unique index"),
            ("payment_events_subscription_idx", False, "index"),
            ("subscription_payment_events_refund_idx", False, None),
            ("temp.subscription_payment_events_idempotency_idx", False, None),
        ],
    )
    def test_lookup_by_name(
        self,
        signals: Signals,
        sqlite_db: sqlite3.Connection,
        name: str,
        present: bool,
        found: str | None,
    ) -> None:
        """Unique indexes (partial too) and named constraints are present; a non-unique index or
        an unknown name is missing; identifiers match case-insensitively as sqlite does."""
        assert ik.verify_constraints(sqlite_db, name) == {name: present}
        record = _constraint_records(signals)[name]
        assert record.status == ("present" if present else "missing")
        assert record.attributes.get("found") == found
        assert _gauge_series(signals) == {name: 1.0 if present else 0.0}

    def test_missing_ones_are_sentry_errors_naming_the_constraint(
        self, signals: Signals, sqlite_db: sqlite3.Connection
    ) -> None:
        """Only the missing constraint becomes a Sentry error, with its name and tag."""
        result = ik.verify_constraints(
            sqlite_db,
            ["subscription_payment_events_idempotency_idx", "payment_events_refund_uq"],
        )
        assert result == {
            "subscription_payment_events_idempotency_idx": True,
            "payment_events_refund_uq": False,
        }
        [event] = [e for e in signals.sentry_events if e.get("message")]
        assert event["message"] == "Database constraint missing: payment_events_refund_uq"
        assert event["level"] == "error"
        assert event["tags"]["constraint"] == "payment_events_refund_uq"
        lines = {
            line["constraint"]: line
            for line in signals.logs
            if line.get("event") == "constraint.checked"
        }
        assert lines["payment_events_refund_uq"]["level"] == "error"
        assert lines["payment_events_refund_uq"]["attributes"]["reason"] == "not found"
        assert lines["subscription_payment_events_idempotency_idx"]["level"] == "info"

    def test_a_dropped_index_turns_the_gauge_to_0(
        self, signals: Signals, sqlite_db: sqlite3.Connection
    ) -> None:
        """The weekly check after a migration dropped the index: 1, then 0."""
        name = "subscription_payment_events_idempotency_idx"
        assert ik.verify_constraints(sqlite_db, [name]) == {name: True}
        sqlite_db.execute(f"DROP INDEX {name}")
        assert ik.verify_constraints(sqlite_db, [name]) == {name: False}
        assert _gauge_series(signals) == {name: 0.0}

    def test_attached_databases_are_searched(
        self, signals: Signals, sqlite_db: sqlite3.Connection, tmp_path: Path
    ) -> None:
        """An unqualified name is found in any attached database; ``schema.name`` narrows it."""
        sqlite_db.execute(f"ATTACH DATABASE '{tmp_path / 'ledger.db'}' AS ledger")
        sqlite_db.execute("CREATE TABLE ledger.entries (ref TEXT)")
        sqlite_db.execute("CREATE UNIQUE INDEX ledger.entries_ref_idx ON entries (ref)")
        result = ik.verify_constraints(
            sqlite_db, ["entries_ref_idx", "ledger.entries_ref_idx", "main.entries_ref_idx"]
        )
        assert result == {
            "entries_ref_idx": True,
            "ledger.entries_ref_idx": True,
            "main.entries_ref_idx": False,
        }
        assert _constraint_records(signals)["entries_ref_idx"].attributes["schema"] == "ledger"

    def test_names_are_declared_and_declarations_are_kept(
        self, signals: Signals, sqlite_db: sqlite3.Connection
    ) -> None:
        """A plain name becomes a declared Constraint; a given Constraint is used as it is."""
        declared = ik.Constraint("one_success_per_day_idx", team="billing")
        result = ik.verify_constraints(
            sqlite_db, [declared, "payment_events_key_uq", "payment_events_key_uq"]
        )
        assert result == {"one_success_per_day_idx": True, "payment_events_key_uq": True}
        catalog = ik.get_catalog().constraints
        assert catalog["one_success_per_day_idx"] is declared
        assert catalog["payment_events_key_uq"].team == "platform"
        assert _constraint_records(signals)["one_success_per_day_idx"].declaration is declared

    def test_no_names_checks_every_declared_constraint(
        self, signals: Signals, sqlite_db: sqlite3.Connection
    ) -> None:
        """``names=None`` checks the catalog's constraints (the start-up check and the CLI)."""
        ik.Constraint("subscription_payment_events_idempotency_idx")
        ik.Constraint("payment_events_refund_uq")
        assert ik.verify_constraints(sqlite_db) == {
            "subscription_payment_events_idempotency_idx": True,
            "payment_events_refund_uq": False,
        }

    def test_an_empty_list_checks_nothing(
        self, signals: Signals, sqlite_db: sqlite3.Connection
    ) -> None:
        """No names: no query, no record."""
        assert ik.verify_constraints(sqlite_db, []) == {}
        assert _constraint_records(signals) == {}

    def test_the_check_runs_in_one_operation_span(
        self, signals: Signals, sqlite_db: sqlite3.Connection
    ) -> None:
        """One ``platform.verify_constraints`` span; every record of the call has its trace id."""
        ik.verify_constraints(sqlite_db, ["one_success_per_day_idx", "payment_events_refund_uq"])
        [span] = [s for s in signals.spans if s.name == "platform.verify_constraints"]
        trace_id = format(span.context.trace_id, "032x")
        assert {r.trace_id for r in _constraint_records(signals).values()} == {trace_id}

    def test_a_closed_connection_is_reported_not_raised(
        self, signals: Signals, sqlite_db: sqlite3.Connection
    ) -> None:
        """A driver error: every name is False (not verified), the gauge is untouched, the error
        goes to Sentry as the failed ``verify_constraints`` operation."""
        sqlite_db.close()
        result = ik.verify_constraints(sqlite_db, ["one_success_per_day_idx"])
        assert result == {"one_success_per_day_idx": False}
        assert _gauge_series(signals) == {}
        assert _constraint_records(signals) == {}
        [event] = _operation_failures(signals)
        assert event["exception"]["values"][-1]["type"] == "ProgrammingError"
        assert (
            signals.metric(
                "billing_operation_total", operation="verify_constraints", outcome="failure"
            )
            == 1
        )

    @pytest.mark.parametrize(
        ("names", "error", "message"),
        [
            (42, TypeError, "must be a constraint name, an ik.Constraint, or a list"),
            ([b"idx"], TypeError, "each name must be a str or an ik.Constraint, not bytes"),
            (["drop table x; --"], ValueError, "must be an SQL identifier"),
        ],
    )
    def test_bad_names_fail_loudly(
        self, sqlite_db: sqlite3.Connection, names: Any, error: type[Exception], message: str
    ) -> None:
        """Bad names are a programming error: raised before the database is touched."""
        with pytest.raises(error, match=message):
            ik.verify_constraints(sqlite_db, names)

    @pytest.mark.parametrize("conn", [object(), "sqlite:///billing.db", None])
    def test_unsupported_connections_fail_loudly(self, conn: Any) -> None:
        """Something that is not a supported connection raises ``TypeError`` naming its type."""
        with pytest.raises(TypeError, match="needs a sqlite3, psycopg \\(3\\) or psycopg2"):
            ik.verify_constraints(conn, ["one_success_per_day_idx"])

    def test_sqlalchemy_engine_and_connection_on_sqlite(
        self, signals: Signals, tmp_path: Path
    ) -> None:
        """A SQLAlchemy Engine or Connection is unwrapped to its DB-API connection."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'billing.db'}")
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE t (k TEXT)")
                conn.exec_driver_sql("CREATE UNIQUE INDEX t_k_idx ON t (k)")
            assert ik.verify_constraints(engine, ["t_k_idx", "t_x_idx"]) == {
                "t_k_idx": True,
                "t_x_idx": False,
            }
            with engine.connect() as conn:
                assert ik.verify_constraints(conn, "t_k_idx") == {"t_k_idx": True}
        finally:
            engine.dispose()


# --- PostgreSQL ----------------------------------------------------------------------------------

PG_SCHEMA = """
CREATE TABLE subscription_payment_events (
    id bigserial PRIMARY KEY,
    subscription_id text NOT NULL,
    idempotency_key text,
    status text,
    amount_cents integer,
    CONSTRAINT subscription_payment_events_amount_chk CHECK (amount_cents >= 0)
);
CREATE UNIQUE INDEX subscription_payment_events_idempotency_idx
    ON subscription_payment_events (idempotency_key);
CREATE UNIQUE INDEX one_success_per_day_idx
    ON subscription_payment_events (subscription_id) WHERE status = 'succeeded';
ALTER TABLE subscription_payment_events
    ADD CONSTRAINT subscription_payment_events_key_uq UNIQUE (subscription_id, idempotency_key);
CREATE INDEX subscription_payment_events_subscription_idx
    ON subscription_payment_events (subscription_id);
ALTER TABLE subscription_payment_events
    ADD CONSTRAINT positive_amount_chk CHECK (amount_cents > 0) NOT VALID;
CREATE TABLE "Refunds" (ref text);
CREATE UNIQUE INDEX "Refunds_Ref_Idx" ON "Refunds" (ref);
CREATE SCHEMA audit;
CREATE TABLE audit.events (k text);
CREATE UNIQUE INDEX audit_events_k_idx ON audit.events (k);
CREATE TABLE legacy_charges (charge_ref text);
INSERT INTO legacy_charges VALUES ('ch_1'), ('ch_1');
"""

PG_EXPECTED: dict[str, tuple[bool, str | None]] = {
    "subscription_payment_events_idempotency_idx": (True, "unique index"),
    "one_success_per_day_idx": (True, "partial unique index"),
    "subscription_payment_events_key_uq": (True, "unique constraint"),
    "subscription_payment_events_pkey": (True, "primary key"),
    "subscription_payment_events_amount_chk": (True, "check constraint"),
    "Subscription_Payment_Events_Idempotency_Idx": (True, "unique index"),  # unquoted: folded
    "Refunds_Ref_Idx": (True, "unique index"),  # quoted: exact
    "audit.audit_events_k_idx": (True, "unique index"),
    "public.one_success_per_day_idx": (True, "partial unique index"),
    "audit_events_k_idx": (False, None),  # not on the search path
    "subscription_payment_events_subscription_idx": (False, "index"),
    "positive_amount_chk": (False, "check constraint"),  # NOT VALID
    "legacy_charges_ref_idx": (False, "unique index"),  # INVALID: CONCURRENTLY failed
    "subscription_payment_events_refund_idx": (False, None),
}


def _pg_setup(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(PG_SCHEMA.encode())
        # A unique index built CONCURRENTLY over duplicates fails and stays behind, INVALID.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                b"CREATE UNIQUE INDEX CONCURRENTLY legacy_charges_ref_idx"
                b" ON legacy_charges (charge_ref)"
            )


def _connect(kind: str, dsn: str) -> tuple[Any, Callable[[], None]]:
    if kind == "psycopg":
        import psycopg

        conn: Any = psycopg.connect(dsn, connect_timeout=5)
        return conn, conn.close
    if kind == "psycopg2":
        import psycopg2

        conn = psycopg2.connect(dsn, connect_timeout=5)
        return conn, conn.close
    import sqlalchemy

    driver = kind.split("+")[1]
    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", f"postgresql+{driver}://"))
    return engine, engine.dispose


@pytest.mark.slow
class TestPostgres:
    @pytest.mark.parametrize(
        "kind", ["psycopg", "psycopg2", "sqlalchemy+psycopg", "sqlalchemy+psycopg2"]
    )
    def test_present_missing_and_partial(self, signals: Signals, pg_dsn: str, kind: str) -> None:
        """Every case in one round trip, for each driver: unique indexes (partial too) and
        constraints are present; a non-unique index, a NOT VALID constraint, an INVALID index,
        a name off the search path and an unknown name are missing, each with its reason."""
        _pg_setup(pg_dsn)
        conn, close = _connect(kind, pg_dsn)
        try:
            result = ik.verify_constraints(conn, list(PG_EXPECTED))
        finally:
            close()
        assert result == {name: present for name, (present, _) in PG_EXPECTED.items()}
        records = _constraint_records(signals)
        for name, (present, found) in PG_EXPECTED.items():
            assert records[name].status == ("present" if present else "missing"), name
            assert records[name].attributes.get("found") == found, name
        assert records["one_success_per_day_idx"].attributes["partial"] is True
        assert records["legacy_charges_ref_idx"].attributes["reason"].startswith("index is INVALID")
        assert records["positive_amount_chk"].attributes["reason"] == "constraint is NOT VALID"
        assert _gauge_series(signals) == {
            name: 1.0 if present else 0.0 for name, (present, _) in PG_EXPECTED.items()
        }
        missing = sorted(f"Database constraint missing: {n}" for n, (p, _) in PG_EXPECTED.items() if not p)  # fmt: skip
        assert sorted(_missing_messages(signals)) == missing
        assert _operation_failures(signals) == []

    @pytest.mark.parametrize("kind", ["psycopg", "psycopg2"])
    def test_an_idle_connection_is_left_idle(
        self, signals: Signals, pg_dsn: str, kind: str
    ) -> None:
        """A start-up check on a fresh connection leaves no transaction open behind it."""
        _pg_setup(pg_dsn)
        conn, close = _connect(kind, pg_dsn)
        try:
            assert ik.verify_constraints(conn, "one_success_per_day_idx") == {
                "one_success_per_day_idx": True
            }
            assert _transaction_status(kind, conn) == "idle"
        finally:
            close()

    @pytest.mark.parametrize("kind", ["psycopg", "psycopg2"])
    def test_inside_a_transaction_the_callers_work_survives(
        self, signals: Signals, pg_dsn: str, kind: str
    ) -> None:
        """Inside the caller's transaction the lookup uses a savepoint: the uncommitted insert is
        still there, the transaction still open, and it commits."""
        _pg_setup(pg_dsn)
        conn, close = _connect(kind, pg_dsn)
        try:
            cur = conn.cursor()
            cur.execute("INSERT INTO legacy_charges VALUES ('ch_2')")
            assert ik.verify_constraints(conn, ["one_success_per_day_idx"]) == {
                "one_success_per_day_idx": True
            }
            assert _transaction_status(kind, conn) == "in transaction"
            cur.execute("SELECT count(*) FROM legacy_charges WHERE charge_ref = 'ch_2'")
            assert cur.fetchone()[0] == 1
            conn.commit()
        finally:
            close()

    @pytest.mark.parametrize("kind", ["psycopg", "psycopg2"])
    def test_a_failed_transaction_is_reported_not_raised(
        self, signals: Signals, pg_dsn: str, kind: str
    ) -> None:
        """The caller's transaction already failed: no raise, False, the error in Sentry; the
        connection is left for the caller to roll back."""
        _pg_setup(pg_dsn)
        conn, close = _connect(kind, pg_dsn)
        try:
            cur = conn.cursor()
            with pytest.raises(Exception, match="division by zero"):
                cur.execute("SELECT 1 / 0")
            assert ik.verify_constraints(conn, ["one_success_per_day_idx"]) == {
                "one_success_per_day_idx": False
            }
            assert _transaction_status(kind, conn) == "in error"
            conn.rollback()
            assert ik.verify_constraints(conn, ["one_success_per_day_idx"]) == {
                "one_success_per_day_idx": True
            }
        finally:
            close()
        [failure] = _operation_failures(signals)
        assert failure["tags"]["domain"] == "platform"
        assert _gauge_series(signals) == {"one_success_per_day_idx": 1.0}

    def test_server_gone_is_reported_not_raised(self, signals: Signals, pg_dsn: str) -> None:
        """A connection whose backend was terminated: False and reported, never an exception."""
        import psycopg

        conn = psycopg.connect(pg_dsn, autocommit=True, connect_timeout=5)
        try:
            with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=5) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,)
                ).fetchall()
            assert ik.verify_constraints(conn, ["one_success_per_day_idx"]) == {
                "one_success_per_day_idx": False
            }
        finally:
            conn.close()
        [failure] = _operation_failures(signals)
        assert failure["exception"]["values"][-1]["type"] == "AdminShutdown"  # an OperationalError

    async def test_async_connections_are_refused_with_a_hint(self, pg_dsn: str) -> None:
        """A psycopg AsyncConnection raises ``TypeError`` saying to use a sync connection."""
        import psycopg

        conn = await psycopg.AsyncConnection.connect(pg_dsn, connect_timeout=5)
        try:
            with pytest.raises(TypeError, match="needs a synchronous connection"):
                ik.verify_constraints(conn, ["one_success_per_day_idx"])
        finally:
            await conn.close()


def _transaction_status(kind: str, conn: Any) -> str:
    if kind == "psycopg":
        status = conn.info.transaction_status.name  # IDLE, INTRANS, INERROR
    else:
        status = {0: "IDLE", 2: "INTRANS", 3: "INERROR"}[conn.get_transaction_status()]
    return {"IDLE": "idle", "INTRANS": "in transaction", "INERROR": "in error"}[status]
