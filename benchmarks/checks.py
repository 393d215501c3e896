"""At-rest checks: a check over 1,000,000 rows with 1,000 violating entities, against the bare
query, side by side in one run (issue 20's bar: under 2x the bare query, state updates included).

For each database (sqlite always; PostgreSQL 15 when its binaries are installed, started on
127.0.0.1 in a temporary directory), each round runs, in a shuffled order:

- ``bare``: the check's SELECT and ``fetchall()`` on the same connection, nothing else;
- ``steady``: ``ik.run_checks`` when all 1,000 entities are already known (read-only
  transaction, statement timeout, the state update of 1,000 ``last_seen`` values, the metrics
  record, the span and the log line);
- ``first``: ``ik.run_checks`` on an empty state (1,000 new entities inserted, 100 reported one
  by one through every sink, 900 counted). Their delivery to Sentry and PostHog (a discarding
  HTTP server in its own process) happens on invariantkit's worker; ``ik.flush()`` after the
  timed call waits for it, and the process CPU of the call plus that flush (every thread) is
  reported apart: the flush's wall time is the network's (Sentry's transport sends one envelope
  at a time; on loopback each waits about 40 ms for a delayed ACK), not work.

A ratio is the median over rounds of the variant's time over the bare query's time in the same
round. Every sink is real: OpenTelemetry (batch processor, discarding exporter), Prometheus,
Sentry, PostHog, JSON logs (to a NullHandler). ``--profile`` prints where a ``first`` run spends
its time.

Usage: python benchmarks/checks.py [--rounds 7] [--rows 1000000] [--no-postgres] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import run as bench  # noqa: E402 - installs the 127.0.0.1-only network guard first

import invariantkit as ik  # noqa: E402
from invariantkit import billing  # noqa: E402

SQL = (
    "SELECT subscription_id, day, max(trace_id) AS trace_id, count(*) AS charges "
    "FROM charges GROUP BY subscription_id, day HAVING count(*) > 1"
)
VIOLATING = 1000


def _rows(n: int) -> Iterator[tuple[int, str, str]]:
    """``n`` charges: ``VIOLATING`` subscriptions charged twice on one day, the rest once."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    for i in range(VIOLATING):
        yield (i, "2026-03-01", trace)
        yield (i, "2026-03-01", trace)
    for i in range(VIOLATING, n - VIOLATING):
        yield (i, "2026-03-01", trace)


def _sqlite(tmp: Path, rows: int) -> tuple[Any, Callable[[], None]]:
    conn = sqlite3.connect(tmp / "bench.db")
    conn.execute("CREATE TABLE charges (subscription_id INTEGER, day TEXT, trace_id TEXT)")
    conn.executemany("INSERT INTO charges VALUES (?, ?, ?)", _rows(rows))
    conn.commit()
    return conn, conn.close


@contextlib.contextmanager
def _postgres(rows: int) -> Iterator[tuple[Any, Callable[[], None]] | None]:
    from support.servers import PG_BIN, Postgres

    if not (PG_BIN / "initdb").exists():
        yield None
        return
    import psycopg

    with Postgres() as server:
        dsn = server.create_database("bench_checks")
        conn = psycopg.connect(dsn)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE charges (subscription_id INTEGER, day TEXT, trace_id TEXT)")
            with cur.copy("COPY charges FROM STDIN") as copy:
                for row in _rows(rows):
                    copy.write_row(row)
            cur.execute("ANALYZE charges")
        conn.commit()
        try:
            yield conn, conn.close
        finally:
            conn.close()


@contextlib.contextmanager
def _configured() -> Iterator[None]:
    import posthog
    import sentry_sdk
    from prometheus_client import CollectorRegistry

    provider, _ = bench.tracer_provider()
    logger = logging.getLogger("invariantkit.bench_checks")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with bench.discard_server() as port:
        client = sentry_sdk.Client(
            dsn=f"http://key@127.0.0.1:{port}/1",
            default_integrations=False,
            transport_queue_size=10_000,
        )
        ph_client = posthog.Posthog("phc_bench", host=f"http://127.0.0.1:{port}")
        ik.configure(
            service="bench-checks",
            sinks=[
                ik.sinks.OtelTraces(provider),
                ik.sinks.PrometheusMetrics(CollectorRegistry()),
                ik.sinks.Sentry(client),
                ik.sinks.PostHog(ph_client),
                ik.sinks.JsonLogs(logger),
            ],
        )
        try:
            yield
        finally:
            ik.shutdown(timeout=10)
            client.close(timeout=5)
            ph_client.shutdown()
            provider.shutdown()


def _bare(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute(SQL)
    rows = cur.fetchall()
    cur.close()
    conn.rollback()  # psycopg opened a transaction: end it, as run_checks ends its own
    assert len(rows) == VIOLATING, len(rows)


def _clear_state(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("DELETE FROM invariantkit_violations")
    cur.close()
    conn.commit()


def measure(name: str, conn: Any, rounds: int, profile: bool) -> dict[str, Any]:
    check = ik.Check(
        billing.NO_DOUBLE_CHARGE, name="bench_double_charges", sql=SQL, key="subscription_id",
        every=3600, timeout=600,
    )  # fmt: skip
    report = ik.run_checks(conn, check)  # warm-up; creates the state table
    assert report.new == VIOLATING, report.as_dict()
    ik.flush(timeout=30)

    def steady() -> None:
        result = ik.run_checks(conn, check)["bench_double_charges"]
        assert result.seen_again == VIOLATING, result

    def first() -> None:
        result = ik.run_checks(conn, check)["bench_double_charges"]
        assert (result.new, result.reported) == (VIOLATING, 100), result

    variants: dict[str, Callable[[], None]] = {
        "bare": lambda: _bare(conn),
        "steady": steady,
        "first": first,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    first_cpu: list[float] = []
    flush_wall: list[float] = []
    for _ in range(rounds):
        order = list(variants)
        random.shuffle(order)
        for variant in order:
            if variant == "first":
                _clear_state(conn)
            else:
                ik.run_checks(conn, check)  # every entity known (untimed)
                ik.flush(timeout=30)
            cpu = time.process_time()
            start = time.perf_counter()
            variants[variant]()
            times[variant].append(time.perf_counter() - start)
            if variant == "first":
                start = time.perf_counter()
                assert ik.flush(timeout=60)
                flush_wall.append(time.perf_counter() - start)
                first_cpu.append(time.process_time() - cpu)
    per_round = {
        k: sorted(t / b for t, b in zip(times[k], times["bare"], strict=True))
        for k in ("steady", "first")
    }
    ratios = {k: statistics.median(v) for k, v in per_round.items()}
    out = {
        "database": name,
        "bare_s": statistics.median(times["bare"]),
        "steady_s": statistics.median(times["steady"]),
        "first_s": statistics.median(times["first"]),
        "steady_ratio": ratios["steady"],
        "first_ratio": ratios["first"],
        "spread": {k: (v[0], v[-1]) for k, v in per_round.items()},
        "first_cpu_s": statistics.median(first_cpu),
        "flush_wall_s": statistics.median(flush_wall),
    }
    if profile:
        _clear_state(conn)
        prof = cProfile.Profile()
        prof.enable()
        first()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(14)
        out["profile"] = text.getvalue()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp, _configured():
        started = time.perf_counter()
        conn, close = _sqlite(Path(tmp), args.rows)
        print(f"sqlite: {args.rows:,} rows loaded in {time.perf_counter() - started:.1f} s")
        try:
            results.append(measure("sqlite", conn, args.rounds, args.profile))
        finally:
            close()
        if not args.no_postgres:
            with _postgres(args.rows) as pg:
                if pg is not None:
                    results.append(measure("postgresql 15", pg[0], args.rounds, args.profile))
    ok = True
    print(f"\n{args.rows:,} rows, {VIOLATING:,} violating entities, {args.rounds} rounds")
    print(
        f"{'database':<15}{'bare':>10}{'steady':>10}{'first':>10}{'steady/bare':>13}"
        f"{'first/bare':>12}{'first+flush CPU':>17}{'flush wall':>12}"
    )
    for r in results:
        print(
            f"{r['database']:<15}{r['bare_s'] * 1000:>8.0f}ms{r['steady_s'] * 1000:>8.0f}ms"
            f"{r['first_s'] * 1000:>8.0f}ms{r['steady_ratio']:>12.2f}x{r['first_ratio']:>11.2f}x"
            f"{r['first_cpu_s'] * 1000:>15.0f}ms{r['flush_wall_s'] * 1000:>10.0f}ms"
        )
        ok = ok and max(r["steady_ratio"], r["first_ratio"]) < 2.0
    for r in results:
        spread = ", ".join(f"{k} {lo:.2f}x-{hi:.2f}x" for k, (lo, hi) in r["spread"].items())
        print(f"per-round ratios, {r['database']}: {spread}")
    for r in results:
        if "profile" in r:
            print(f"\n-- profile of a first run, {r['database']} --\n{r['profile']}")
    if bench.BLOCKED:
        print(f"network attempts blocked: {bench.BLOCKED}")
        ok = False
    print("bar (under 2x the bare query):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
