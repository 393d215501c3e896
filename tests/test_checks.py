"""At-rest checks (``ik.Check``, ``ik.run_checks``) against real sqlite and PostgreSQL 15: one
report per entity across runs, resolution, trace links, error outcomes that never raise, the
read-only transaction and the statement timeout, and the per-check metrics."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

import invariantkit as ik
from invariantkit import billing
from invariantkit.testing import Signals
from test_constraints import _connect

WRITER = "4bf92f3577b34da6a3ce929d0e0e4736"
DOUBLE = (
    "SELECT subscription_id, day, max(trace_id) AS trace_id, count(*) AS charges "
    "FROM charges GROUP BY subscription_id, day HAVING count(*) > 1"
)


def _schema(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE charges (subscription_id TEXT, day TEXT, trace_id TEXT)")
    cur.close()
    conn.commit()


def _insert(conn: Any, rows: list[tuple[str, str, str | None]], mark: str = "?") -> None:
    cur = conn.cursor()
    cur.executemany(f"INSERT INTO charges VALUES ({mark}, {mark}, {mark})", rows)
    cur.close()
    conn.commit()


def _delete(conn: Any, subscription: str, mark: str = "?") -> None:
    cur = conn.cursor()
    cur.execute(f"DELETE FROM charges WHERE subscription_id = {mark}", (subscription,))
    cur.close()
    conn.commit()


def _double(**kw: Any) -> ik.Check:
    return ik.Check(
        billing.NO_DOUBLE_CHARGE,
        name=kw.pop("name", "double_charges"),
        sql=kw.pop("sql", DOUBLE),
        key="subscription_id",
        every=3600,
        **kw,
    )


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    _schema(conn)
    try:
        yield conn
    finally:
        conn.close()


class TestDeclaration:
    def test_defaults_and_catalog(self) -> None:
        """A check is registered in the catalog, named after its invariant by default."""
        check = ik.Check(billing.NO_DOUBLE_CHARGE, sql="SELECT 1 AS k", key="k", every=60)
        assert check.name == "no_double_charge"
        assert ik.get_catalog().checks["no_double_charge"] is check
        assert check.key == ("k",)
        assert check.sample == 100
        assert check.stale_after == 120

    @pytest.mark.parametrize(
        ("kw", "error", "match"),
        [
            ({"name": "Double-Charges"}, ValueError, "name='Double-Charges' must be lower_snake"),
            ({"sql": "DELETE FROM charges"}, ValueError, "sql must be a SELECT"),
            ({"sql": 42}, TypeError, "sql must be a str"),
            ({"key": []}, TypeError, "key must be a column name"),
            ({"key": ["a", "a"]}, ValueError, "given twice"),
            ({"key": "trace_id"}, ValueError, "reserved tag name"),
            ({"every": 0}, ValueError, "every=0 must be a positive"),
            ({"every": "1h"}, TypeError, "every must be seconds"),
            ({"sample": 0}, ValueError, "sample=0 must be an int >= 1"),
            ({"params": "abc"}, TypeError, "params must be a sequence or a mapping"),
        ],
    )
    def test_bad_arguments_fail_at_declaration(
        self, kw: dict[str, Any], error: type[Exception], match: str
    ) -> None:
        """Each bad argument raises at declaration, naming the field and the rule."""
        args: dict[str, Any] = {"sql": "SELECT 1 AS k", "key": "k", "every": 60, **kw}
        with pytest.raises(error, match=match):
            ik.Check(billing.NO_DOUBLE_CHARGE, **args)

    def test_invariant_must_be_declared(self) -> None:
        """An unknown invariant name or a non-invariant is rejected."""
        with pytest.raises(ValueError, match="no invariant named 'NOPE'"):
            ik.Check("NOPE", sql="SELECT 1", key="k", every=60)
        with pytest.raises(TypeError, match=r"must be an ik\.Invariant"):
            ik.Check(3, sql="SELECT 1", key="k", every=60)  # type: ignore[arg-type]

    def test_bad_connection_and_names_raise_before_running(self, db: sqlite3.Connection) -> None:
        """Programming errors raise at the call: an unsupported connection, an unknown check."""
        _double()
        with pytest.raises(TypeError, match=r"run_checks\(conn=\.\.\.\) needs a sqlite3"):
            ik.run_checks(object())
        with pytest.raises(ValueError, match="no check named 'nope'"):
            ik.run_checks(db, "nope")


class TestSqlite:
    def test_one_report_per_entity_across_runs(
        self, signals: Signals, db: sqlite3.Connection
    ) -> None:
        """A bad row reported on the first run is not reported again; a new one is."""
        ik.get_catalog().checks.clear()  # checks=None runs every declared one: only this one
        check = _double()
        _insert(db, [("sub_1", "d1", None), ("sub_1", "d1", None)])
        first = ik.run_checks(db)
        assert first["double_charges"].outcome == "violations"
        assert first.new == 1
        assert first.exit_code == 1
        for _ in range(3):
            again = ik.run_checks(db, [check])
            assert again.new == 0
            assert again.exit_code == 0
            assert again["double_charges"].seen_again == 1
        _insert(db, [("sub_2", "d1", None), ("sub_2", "d1", None)])
        later = ik.run_checks(db, check)
        assert later["double_charges"].new_keys == ["sub_2"]
        ik.flush()
        assert [v.attributes["subscription_id"] for v in signals.violations] == ["sub_1", "sub_2"]
        assert (
            signals.metric("billing_invariant_violation_total", invariant="NO_DOUBLE_CHARGE") == 2
        )
        events = signals.sentry_events
        assert len(events) == 2
        assert events[0]["fingerprint"] == [
            "invariantkit",
            "NO_DOUBLE_CHARGE",
            "check",
            "double_charges",
            "sub_1",
        ]
        assert events[0]["tags"]["subscription_id"] == "sub_1"
        assert events[0]["tags"]["check"] == "double_charges"
        assert events[0]["extra"]["charges"] == 2
        assert [e["properties"]["subscription_id"] for e in signals.posthog_events] == [
            "sub_1",
            "sub_2",
        ]
        rows = db.execute(
            "SELECT check_name, entity_key, resolved_at FROM invariantkit_violations ORDER BY 2"
        ).fetchall()
        assert rows == [("double_charges", "sub_1", None), ("double_charges", "sub_2", None)]

    def test_resolution_and_reopening(self, signals: Signals, db: sqlite3.Connection) -> None:
        """A key no longer returned is resolved (log line); when it comes back, it is new."""
        check = _double()
        _insert(db, [("sub_1", "d1", None), ("sub_1", "d1", None)])
        ik.run_checks(db, check)
        _delete(db, "sub_1")
        report = ik.run_checks(db, check)
        assert report["double_charges"].outcome == "ok"
        assert report["double_charges"].resolved_keys == ["sub_1"]
        resolved = [line for line in signals.logs if line["event"] == "invariant.resolved"]
        assert [(r["check"], r["entity_key"]) for r in resolved] == [("double_charges", "sub_1")]
        (resolved_at,) = db.execute("SELECT resolved_at FROM invariantkit_violations").fetchone()
        assert resolved_at is not None
        _insert(db, [("sub_1", "d2", None), ("sub_1", "d2", None)])
        assert ik.run_checks(db, check).new == 1
        ik.flush()
        assert len(signals.violations) == 2

    def test_writer_trace_links(self, signals: Signals, db: sqlite3.Connection) -> None:
        """A trace_id column links the violation to the writer's trace: Sentry tag and context,
        and a span link on the check's span."""
        check = _double()
        _insert(db, [("sub_1", "d1", WRITER), ("sub_1", "d1", None)])
        report = ik.run_checks(db, check)
        ik.flush()
        (event,) = signals.sentry_events
        assert event["tags"]["writer_trace_id"] == WRITER
        assert event["contexts"]["writer_trace"] == {"trace_id": WRITER}
        assert event["contexts"]["trace"]["trace_id"] == report["double_charges"].trace_id
        (span,) = [s for s in signals.spans if s.name == "check.double_charges"]
        assert format(span.context.trace_id, "032x") == report["double_charges"].trace_id
        (link,) = span.links
        assert format(link.context.trace_id, "032x") == WRITER
        assert link.attributes["invariant.entity_key"] == "sub_1"
        assert any(e.name == "invariant.violated" for e in span.events)

    def test_sample_reports_some_counts_the_rest(
        self, signals: Signals, db: sqlite3.Connection
    ) -> None:
        """At most ``sample`` new entities are reported one by one; the rest are counted."""
        check = _double(sample=2)
        _insert(db, [(f"sub_{i}", "d1", None) for i in range(5)] * 2)
        result = ik.run_checks(db, check)["double_charges"]
        assert (result.violating, result.new, result.reported, result.unreported) == (5, 5, 2, 3)
        ik.flush()
        assert len(signals.violations) == 2
        (line,) = [line for line in signals.logs if line["event"] == "check.run"]
        assert line["unreported"] == 3
        assert line["violating_entities"] == 5
        assert ik.run_checks(db, check).new == 0  # the counted ones are known too

    def test_metrics_per_run(self, signals: Signals, db: sqlite3.Connection) -> None:
        """One check record per run: runs by outcome, violating entities, last run, duration."""
        check = _double()
        assert signals.metric("invariant_check_runs_total", check="double_charges") == 0
        ik.run_checks(db, check)
        _insert(db, [("sub_1", "d1", None), ("sub_1", "d1", None)])
        ik.run_checks(db, check)
        m = signals.metric
        assert m("invariant_check_runs_total", check="double_charges", outcome="ok") == 1
        assert m("invariant_check_runs_total", check="double_charges", outcome="violations") == 1
        assert m("invariant_check_violating_entities", check="double_charges") == 1
        assert m("invariant_check_last_run_timestamp_seconds", check="double_charges") > 0
        records = [r for r in signals.records if r.kind == "check"]
        assert [r.status for r in records] == ["ok", "violations"]
        assert records[1].attributes["violating_entities"] == 1
        assert records[1].declaration is check

    def test_failing_query_is_an_error_outcome(
        self, signals: Signals, db: sqlite3.Connection
    ) -> None:
        """A failing query never raises: outcome error, metric, log line, span status."""
        broken = _double(name="broken", sql="SELECT subscription_id FROM no_such_table")
        missing_key = _double(name="no_key", sql="SELECT 1 AS other")
        good = _double()
        report = ik.run_checks(db, [broken, missing_key, good])
        assert [r.outcome for r in report] == ["error", "error", "ok"]
        assert report.exit_code == 2
        assert "no such table" in (report["broken"].error or "")
        assert "no column 'subscription_id'" in (report["no_key"].error or "")
        assert signals.metric("invariant_check_runs_total", check="broken", outcome="error") == 1
        assert signals.metric("invariant_check_last_run_timestamp_seconds", check="broken") == 0
        lines = [x for x in signals.logs if x["event"] == "check.run" and x["check"] == "broken"]
        assert lines[0]["level"] == "error"
        assert lines[0]["outcome"] == "error"
        span = next(s for s in signals.spans if s.name == "check.broken")
        assert span.status.status_code.name == "ERROR"

    def test_read_only_and_timeout(self, db: sqlite3.Connection) -> None:
        """The query cannot write, is interrupted at its timeout, and the connection is left
        as it was (query_only off, no progress handler)."""
        forever = _double(
            name="forever",
            sql="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
            "SELECT i AS subscription_id FROM n WHERE i < 0",
            timeout=0.2,
        )
        result = ik.run_checks(db, forever)["forever"]
        assert result.outcome == "error"
        assert "interrupted" in (result.error or "")
        assert db.execute("PRAGMA query_only").fetchone() == (0,)
        db.execute("INSERT INTO charges VALUES ('x', 'y', NULL)")  # still writable
        writer = _double(
            name="writer",
            sql="SELECT subscription_id FROM charges; DELETE FROM charges",
        )
        assert ik.run_checks(db, writer)["writer"].outcome == "error"
        assert db.execute("SELECT count(*) FROM charges").fetchone() == (1,)

    def test_caller_transaction_is_kept(self, db: sqlite3.Connection) -> None:
        """Inside the caller's open transaction the state joins it (a savepoint)."""
        check = _double()
        db.execute("INSERT INTO charges VALUES ('sub_1', 'd1', NULL)")
        db.execute("INSERT INTO charges VALUES ('sub_1', 'd1', NULL)")
        assert db.in_transaction
        assert ik.run_checks(db, check).new == 1
        assert db.in_transaction
        db.rollback()
        assert db.execute("SELECT count(*) FROM charges").fetchone() == (0,)

    def test_sqlalchemy_engine(self, tmp_path: Any) -> None:
        """A SQLAlchemy engine works like its DB-API connection."""
        import sqlalchemy

        path = tmp_path / "app.db"
        conn = sqlite3.connect(path)
        _schema(conn)
        _insert(conn, [("sub_1", "d1", None), ("sub_1", "d1", None)])
        conn.close()
        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        try:
            check = _double()
            assert ik.run_checks(engine, check).new == 1
            assert ik.run_checks(engine, check).new == 0
        finally:
            engine.dispose()


# -- PostgreSQL 15 --------------------------------------------------------------------------------


def _pg_writer(dsn: str) -> Any:
    import psycopg

    conn = psycopg.connect(dsn, connect_timeout=5)
    _schema(conn)
    return conn


@pytest.mark.slow
class TestPostgres:
    @pytest.mark.parametrize(
        "kind", ["psycopg", "psycopg2", "sqlalchemy+psycopg", "sqlalchemy+psycopg2"]
    )
    def test_once_per_entity_and_resolution(self, signals: Signals, pg_dsn: str, kind: str) -> None:
        """Reported once across runs, resolved when gone, on every supported driver."""
        writer = _pg_writer(pg_dsn)
        conn, close = _connect(kind, pg_dsn)
        try:
            check = _double()
            _insert(writer, [("sub_1", "d1", WRITER), ("sub_1", "d1", None)], "%s")
            first = ik.run_checks(conn, check)
            assert first.new == 1
            assert ik.run_checks(conn, check).new == 0
            _delete(writer, "sub_1", "%s")
            report = ik.run_checks(conn, check)
            assert report["double_charges"].resolved_keys == ["sub_1"]
            assert report["double_charges"].outcome == "ok"
            rows = writer.execute(
                "SELECT entity_key, resolved_at IS NOT NULL, trace_id FROM invariantkit_violations"
            ).fetchall()
            assert rows == [("sub_1", True, first["double_charges"].trace_id)]
        finally:
            close()
            writer.close()
        ik.flush()
        (event,) = signals.sentry_events
        assert event["tags"]["writer_trace_id"] == WRITER
        assert any(x["event"] == "invariant.resolved" for x in signals.logs)

    @pytest.mark.parametrize("kind", ["psycopg", "psycopg2"])
    def test_read_only_timeout_and_errors(self, signals: Signals, pg_dsn: str, kind: str) -> None:
        """The query runs read-only with its statement timeout; failures are outcomes, and the
        connection is usable (and idle, in its autocommit mode) afterwards."""
        writer = _pg_writer(pg_dsn)
        writer.execute("CREATE SEQUENCE s")
        writer.commit()
        conn, close = _connect(kind, pg_dsn)
        try:
            writes = _double(name="writes", sql="SELECT nextval('s') AS subscription_id")
            slow = _double(
                name="slow", sql="SELECT pg_sleep(5)::text AS subscription_id", timeout=0.2
            )
            broken = _double(name="broken", sql="SELECT subscription_id FROM nope")
            report = ik.run_checks(conn, [writes, slow, broken, _double()])
            assert "read-only transaction" in (report["writes"].error or "")
            assert "statement timeout" in (report["slow"].error or "")
            assert "nope" in (report["broken"].error or "")
            assert report["double_charges"].outcome == "ok"
            assert report.exit_code == 2
            cur = conn.cursor()
            cur.execute("SHOW transaction_read_only")
            assert cur.fetchone()[0] == "off"
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "0"
            conn.rollback()
        finally:
            close()
            writer.close()
        assert signals.metric("invariant_check_runs_total", outcome="error") == 3

    def test_inside_callers_transaction(self, pg_dsn: str) -> None:
        """Inside an open transaction: a read-only savepoint, then the caller's transaction is
        read-write again and holds the state until it commits."""
        import psycopg

        writer = _pg_writer(pg_dsn)
        _insert(writer, [("sub_1", "d1", None), ("sub_1", "d1", None)], "%s")
        writer.close()
        with psycopg.connect(pg_dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
            assert ik.run_checks(conn, _double()).new == 1
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("off",)
            conn.execute("INSERT INTO charges VALUES ('x', 'y', NULL)")
            conn.commit()
            assert conn.execute("SELECT count(*) FROM invariantkit_violations").fetchone() == (1,)

    def test_unreachable_engine_is_an_error_outcome(self) -> None:
        """An engine that cannot connect: every check's outcome is error, nothing raises."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            "postgresql+psycopg://u@127.0.0.1:9/db", connect_args={"connect_timeout": 1}
        )
        try:
            report = ik.run_checks(engine, _double())
        finally:
            engine.dispose()
        assert report["double_charges"].outcome == "error"


def test_error_text_is_scrubbed(signals: Signals, db: sqlite3.Connection) -> None:
    """A database error that quotes a value (an e-mail here) is scrubbed in the report."""
    check = _double(name="leaky", sql='SELECT subscription_id FROM "alice@example.com"')
    result = ik.run_checks(db, check)["leaky"]
    assert result.outcome == "error"
    assert "no such table" in (result.error or "")
    assert "alice@example.com" not in (result.error or "")
    (line,) = [x for x in signals.logs if x["event"] == "check.run"]
    assert "alice@example.com" not in str(line)
