"""``invariantkit check``: exit 0 nothing new, 1 new violations, 2 error, on sqlite and
PostgreSQL; the run reports itself like a cron job and pushes the check metrics."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cli import module_writer, run

APP = """
import invariantkit as ik
from invariantkit import billing
from invariantkit.billing import checks

MEMORY = ik.sinks.Memory()
ik.configure(sinks=[MEMORY])

DOUBLE = checks.double_charges(
    table="charges", subscription="subscription_id", charged_at="charged_at",
    trace_id="trace_id", every=3600,
)
BROKEN = ik.Check(billing.NO_DOUBLE_CHARGE, name="broken", sql="SELECT x FROM missing",
                  key="x", every=3600)
"""
UNCONFIGURED = """
from invariantkit.billing import checks

DOUBLE = checks.double_charges(
    table="charges", subscription="subscription_id", charged_at="charged_at", every=3600,
)
"""
SCHEMA = "CREATE TABLE charges (subscription_id TEXT, charged_at TEXT, trace_id TEXT)"
TWICE = [("sub_1", "2026-03-01 10:00", None), ("sub_1", "2026-03-01 11:00", None)]


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for var in ("SENTRY_DSN", "POSTHOG_PROJECT_API_KEY", "POSTHOG_API_KEY", "INVARIANTKIT_DSN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("PROMETHEUS_PUSHGATEWAY", raising=False)
    with module_writer(tmp_path, "checks_app") as make:
        yield make


@pytest.fixture
def sqlite_dsn(tmp_path: Path) -> str:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def _insert(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(dsn[len("sqlite:///") :])
    conn.executemany("INSERT INTO charges VALUES (?, ?, ?)", rows)
    conn.commit()
    conn.close()


class TestExitCodes:
    def test_nothing_new_new_and_error(
        self, make_module: Callable[[str], str], sqlite_dsn: str, capsys: Any
    ) -> None:
        """0 when nothing is new, 1 on new violations (once), 2 when a check cannot run."""
        module = make_module(APP)
        args = ("check", "-m", module, "--dsn", sqlite_dsn, "--check", "double_charges")
        code, out, err = run(capsys, *args)
        assert code == 0, err
        assert "double_charges: 0 violating" in out
        _insert(sqlite_dsn, TWICE)
        code, out, _ = run(capsys, *args, "--json")
        assert code == 1
        report = json.loads(out)
        assert report["checks"][0]["new_keys"] == ['["sub_1","2026-03-01"]']
        assert run(capsys, *args)[0] == 0  # seen again: nothing new
        code, out, _ = run(capsys, "check", "-m", module, "--dsn", sqlite_dsn)
        assert code == 2
        assert "no such table: missing" in out
        memory = sys.modules[module].MEMORY
        cron = [r for r in memory.records if r.kind == "cron" and r.status != "in_progress"]
        assert [r.name for r in cron] == ["invariantkit_check_double_charges"] * 3 + [
            "invariantkit_check"
        ]
        assert [r.status for r in cron] == ["ok", "ok", "ok", "error"]
        assert [r.attributes["processed"] for r in cron[:3]] == [0, 1, 1]

    def test_unreachable_database_exits_2(
        self, make_module: Callable[[str], str], capsys: Any
    ) -> None:
        """A database that cannot be opened is an error outcome for every check, exit 2."""
        module = make_module(APP)
        code, out, _ = run(
            capsys,
            "check",
            "-m",
            module,
            "--dsn",
            "postgresql://u@127.0.0.1:9/db?connect_timeout=1",
        )
        assert code == 2
        assert "error" in out
        memory = sys.modules[module].MEMORY
        assert {r.status for r in memory.records if r.kind == "check"} == {"error"}

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("--dsn", "mysql://x"), "--dsn must be sqlite:///path or postgresql://"),
            (("--dsn", "sqlite:///x.db", "--check", "nope"), "no check named 'nope'"),
            ((), "--dsn is required"),
        ],
    )
    def test_input_errors_exit_2(
        self,
        make_module: Callable[[str], str],
        capsys: Any,
        args: tuple[str, ...],
        message: str,
    ) -> None:
        """Bad input: one line on stderr, exit 2."""
        code, _, err = run(capsys, "check", "-m", make_module(APP), *args)
        assert code == 2
        assert message in " ".join(err.split())


@pytest.mark.slow
class TestPushAndPostgres:
    def test_pushes_check_metrics(
        self,
        make_module: Callable[[str], str],
        sqlite_dsn: str,
        pushgateway: Any,
        capsys: Any,
    ) -> None:
        """Without a configure() in the module, the run's metrics are pushed to the
        Pushgateway: the check's runs and violating entities, and the cron gauges."""
        _insert(sqlite_dsn, TWICE)
        code, _, err = run(
            capsys,
            "check",
            "-m",
            make_module(UNCONFIGURED),
            "--dsn",
            sqlite_dsn,
            "--pushgateway",
            pushgateway.address,
        )
        assert code == 1, err
        value = pushgateway.metric_value
        assert (
            value(
                "invariant_check_runs_total", {"check": "double_charges", "outcome": "violations"}
            )
            == 1
        )
        assert value("invariant_check_violating_entities", {"check": "double_charges"}) == 1
        assert value("invariant_check_last_run_timestamp_seconds", {"check": "double_charges"})
        assert value("cron_invariantkit_check_last_status") == 1

    def test_postgres_dsn(
        self, make_module: Callable[[str], str], pg_dsn: str, capsys: Any
    ) -> None:
        """A postgresql:// DSN runs through psycopg 3."""
        import psycopg

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(
                "INSERT INTO charges VALUES ('sub_1', '2026-03-01 10:00', NULL), "
                "('sub_1', '2026-03-01 11:00', NULL)"
            )
        module = make_module(UNCONFIGURED)
        assert run(capsys, "check", "-m", module, "--dsn", pg_dsn)[0] == 1
        assert run(capsys, "check", "-m", module, "--dsn", pg_dsn)[0] == 0
