"""The dashboards see what the alerts see, in a real Prometheus (1 s scrape and evaluation) on
127.0.0.1: a process whose first violation happened before Prometheus's first scrape fires the
generated alert, and every panel and annotation that counts violations shows it."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit import billing
from invariantkit._record import Record
from invariantkit.alerts import grafana_dashboards, prometheus_rules
from invariantkit.alerts._common import VIOLATIONS
from invariantkit.alerts._grafana import panel_queries
from support.catalogs import with_guarantees
from support.servers import Prometheus, serve_metrics, wait_until

pytestmark = pytest.mark.slow

#: Grafana's variables as Grafana expands them for a "last 5 minutes" range on a narrow panel.
GRAFANA_VARS = {"$__rate_interval": "4s", "$__range": "5m"}


def violation(test: bool) -> Record:
    return Record(
        "violation",
        billing.NO_DOUBLE_CHARGE.name,
        "violated",
        "ab" * 16,
        "cd" * 8,
        None,
        time.time(),
        declaration=billing.NO_DOUBLE_CHARGE,
        test=test,
    )


def peak(prom: Prometheus, expr: str, start: float) -> float:
    """The largest value ``expr`` takes from ``start`` to now, as Grafana's range query sees
    it (one point a second)."""
    answer = prom._api(
        "/api/v1/query_range",
        query=expr,
        start=f"{start:.3f}",
        end=f"{time.time():.3f}",
        step="1",
    )
    assert answer.get("status") == "success", answer
    return max(
        (float(v) for series in answer["data"]["result"] for _, v in series["values"]),
        default=0.0,
    )


def test_a_violation_before_the_first_scrape_shows_where_the_alert_fires() -> None:
    """The counter is born at 1 (no sample at 0 ever): the alert fires, and each violation
    panel, the annotation and the test-run stat read above zero."""
    catalog = with_guarantees()
    registry = CollectorRegistry()
    sink = ik.sinks.PrometheusMetrics(registry=registry)
    # What a process that violated before its first scrape exposes: the series already at 1.
    sink.emit(violation(test=False))
    sink.emit(violation(test=True))
    boards = grafana_dashboards(catalog, updated="2024-01-15")
    queries: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []  # the panels of invariants that were not violated
    for board in boards.values():
        for where, expr in panel_queries(board):
            if VIOLATIONS not in expr:
                continue
            about = f"{board['title']} / {where}"
            other = 'invariant="' in expr and billing.NO_DOUBLE_CHARGE.name not in expr
            (others if other else queries).append((about, expr))
    # The double-charge stat, the time series, the test-run stat and the annotation.
    assert len(queries) >= 4
    assert others
    with (
        serve_metrics(registry) as port,
        Prometheus(
            rule_files={"rules.yml": prometheus_rules(catalog)},
            scrape_targets=[f"127.0.0.1:{port}"],
        ) as prom,
    ):
        prom.wait_for_targets_up(30.0)
        started = time.time() - 1
        prom.wait_for_alert("NoDoubleChargeViolated", timeout=15.0)
        # Plain increase() misses it: the trap the dashboards used to fall into.
        assert not prom.query(f"sum(increase({VIOLATIONS}[5m])) > 0")
        readings: dict[str, float] = {}
        for where, query in queries:
            expr = query
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            readings[where] = wait_until(
                lambda expr=expr: peak(prom, expr, started) or None,  # type: ignore[misc]
                10.0,
                message=f"{where} above zero: {expr}",
            )
        no_double = [w for w in readings if "Double charge count" in w]
        assert no_double
        assert all(readings[w] >= 1 for w in no_double)
        for _, query in others:  # stays at zero
            assert peak(prom, query.replace("$__range", "5m"), started) == 0, query
