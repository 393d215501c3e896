"""``invariantkit.billing.checks``: the ready-made at-rest checks find the right entities on
sqlite and PostgreSQL 15, and table/column names are quoted as identifiers, never pasted."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import invariantkit as ik
from invariantkit.billing import checks

WRITER = "0af7651916cd43dd8448eb211c80319c"

SCHEMA = [
    "CREATE TABLE subscriptions (id TEXT PRIMARY KEY, status TEXT, canceled_at TIMESTAMP)",
    (
        "CREATE TABLE charges (id TEXT PRIMARY KEY, subscription_id TEXT, status TEXT, "
        "charged_at TIMESTAMP, trace_id TEXT)"
    ),
    (
        "CREATE TABLE ledger_entries (transaction_id TEXT, account_id TEXT, amount INTEGER, "
        "trace_id TEXT)"
    ),
    "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER)",
]
ROWS: dict[str, list[tuple[Any, ...]]] = {
    "subscriptions": [
        ("sub_ok", "active", None),
        ("sub_gone", "canceled", "2026-03-01 00:00:00"),
    ],
    "charges": [
        ("ch_1", "sub_ok", "succeeded", "2026-03-02 10:00:00", None),
        ("ch_2", "sub_ok", "succeeded", "2026-03-02 18:00:00", WRITER),  # double charge
        ("ch_3", "sub_ok", "failed", "2026-03-03 10:00:00", None),
        ("ch_4", "sub_ok", "succeeded", "2026-03-03 11:00:00", None),  # one success + a failure
        ("ch_5", "sub_gone", "succeeded", "2026-02-20 10:00:00", None),  # before cancel
        ("ch_6", "sub_gone", "succeeded", "2026-03-05 10:00:00", WRITER),  # after cancel
    ],
    "ledger_entries": [
        ("tx_1", "acc_1", -500, None),
        ("tx_1", "acc_2", 500, None),
        ("tx_2", "acc_1", -300, WRITER),
        ("tx_2", "acc_2", 200, None),  # unbalanced by -100
    ],
    "accounts": [("acc_1", -800), ("acc_2", 600), ("acc_3", 0), ("acc_4", 5)],
}


def _invariants() -> tuple[ik.Invariant, ik.Invariant]:
    return (
        ik.Invariant("LEDGER_BALANCED", type="ledger_unbalanced", summary="Ledger unbalanced"),
        ik.Invariant("BALANCE_MATCHES_LEDGER", type="balance_mismatch", summary="Balance mismatch"),
    )


def _all_checks() -> list[ik.Check]:
    ledger, balance = _invariants()
    return [
        checks.double_charges(
            table="charges",
            subscription="subscription_id",
            charged_at="charged_at",
            status="status",
            trace_id="trace_id",
            every=3600,
        ),
        checks.charges_on_canceled(
            charges="charges", subscriptions="subscriptions", trace_id="trace_id", every=3600
        ),
        checks.ledger_unbalanced(
            ledger,
            table="ledger_entries",
            transaction="transaction_id",
            amount="amount",
            trace_id="trace_id",
            every=3600,
        ),
        checks.balance_mismatch(balance, accounts="accounts", entries="ledger_entries", every=3600),
    ]


def _load(conn: Any, mark: str) -> None:
    cur = conn.cursor()
    for statement in SCHEMA:
        cur.execute(statement)
    for table, rows in ROWS.items():
        marks = ", ".join([mark] * len(rows[0]))
        cur.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    cur.close()
    conn.commit()


EXPECTED = {
    "double_charges": ['["sub_ok","2026-03-02"]'],
    "charges_on_canceled": ['["sub_gone","ch_6"]'],
    "ledger_unbalanced": ["tx_2"],
    "balance_mismatch": ["acc_2", "acc_4"],
}


def _assert_found(signals: Any, report: ik.CheckReport) -> None:
    assert {r.check: sorted(r.new_keys) for r in report} == EXPECTED
    assert report.exit_code == 1
    ik.flush()
    tags = {v.attributes["check"]: v.attributes for v in signals.violations}
    assert tags["double_charges"]["subscription_id"] == "sub_ok"
    assert tags["double_charges"]["writer_trace_id"] == WRITER
    assert tags["charges_on_canceled"]["charge_id"] == "ch_6"
    assert tags["charges_on_canceled"]["writer_trace_id"] == WRITER
    assert tags["ledger_unbalanced"]["transaction_id"] == "tx_2"
    assert tags["ledger_unbalanced"]["writer_trace_id"] == WRITER
    ledger = next(v for v in signals.violations if v.attributes["check"] == "ledger_unbalanced")
    assert int(ledger.extra["imbalance"]) == -100


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    _load(conn, "?")
    try:
        yield conn
    finally:
        conn.close()


class TestSqlite:
    def test_each_check_finds_its_entities(self, signals: Any, db: sqlite3.Connection) -> None:
        """Every ready-made check finds exactly the violating entities, tagged by column name."""
        declared = _all_checks()
        report = ik.run_checks(db, declared)
        _assert_found(signals, report)
        assert ik.run_checks(db, declared).new == 0


class TestIdentifiers:
    @pytest.mark.parametrize(
        "hostile",
        [
            'charges"; DROP TABLE accounts; --',
            "charges; DROP TABLE accounts",
            "x' OR '1'='1",
        ],
    )
    def test_injection_is_quoted_not_run(self, db: sqlite3.Connection, hostile: str) -> None:
        """A hostile table name is one quoted identifier: the check fails (no such table) and
        nothing else runs."""
        check = checks.ledger_unbalanced(
            _invariants()[0],
            table=hostile,
            transaction="transaction_id",
            amount="amount",
            every=60,
        )
        assert '"' + hostile.replace('"', '""') + '"' in check.sql
        result = ik.run_checks(db, check)["ledger_unbalanced"]
        assert result.outcome == "error"
        assert "no such table" in (result.error or "")
        assert db.execute("SELECT count(*) FROM accounts").fetchone() == (4,)

    def test_hostile_literal_is_quoted(self, db: sqlite3.Connection) -> None:
        """The canceled status value is a string literal with its quotes doubled."""
        check = checks.charges_on_canceled(
            charges="charges", subscriptions="subscriptions", canceled="x' OR '1'='1", every=60
        )
        assert ik.run_checks(db, check)["charges_on_canceled"].violating == 0

    @pytest.mark.parametrize(
        ("value", "error", "match"),
        [
            ("", ValueError, "empty identifier"),
            ("a\x00b", ValueError, "control character or NUL"),
            ("line\nbreak", ValueError, "control character or NUL"),
            ("x" * 64, ValueError, "longer than 63 bytes"),
            (3, TypeError, "must be a str"),
        ],
    )
    def test_bad_identifiers_rejected(self, value: Any, error: type[Exception], match: str) -> None:
        """Names that no database would take are rejected at declaration."""
        with pytest.raises(error, match=match):
            checks.ledger_unbalanced(
                _invariants()[0], table="t", transaction=value, amount="amount", every=60
            )

    def test_schema_qualified_table(self) -> None:
        """``schema.table`` is quoted part by part (columns never are)."""
        assert checks.identifier("billing.charges", dotted=True) == '"billing"."charges"'
        assert checks.identifier("a.b") == '"a.b"'


def _pg(dsn: str) -> tuple[Any, Callable[[], None]]:
    import psycopg

    conn = psycopg.connect(dsn, connect_timeout=5)
    return conn, conn.close


@pytest.mark.slow
class TestPostgres:
    def test_each_check_finds_its_entities(self, signals: Any, pg_dsn: str) -> None:
        """The same SQL finds the same entities on PostgreSQL 15 (TIMESTAMPTZ columns)."""
        conn, close = _pg(pg_dsn)
        try:
            _load(conn, "%s")
            declared = _all_checks()
            report = ik.run_checks(conn, declared)
            _assert_found(signals, report)
            assert ik.run_checks(conn, declared).new == 0
        finally:
            close()

    def test_injection_is_quoted_not_run(self, pg_dsn: str) -> None:
        """A hostile column name is an unknown column on PostgreSQL, and nothing else runs."""
        conn, close = _pg(pg_dsn)
        try:
            _load(conn, "%s")
            check = checks.ledger_unbalanced(
                _invariants()[0],
                table="ledger_entries",
                transaction='transaction_id" FROM accounts; DROP TABLE accounts; --',
                amount="amount",
                every=60,
            )
            result = ik.run_checks(conn, check)["ledger_unbalanced"]
            assert result.outcome == "error"
            assert "does not exist" in (result.error or "")
            assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (4,)
        finally:
            close()
