"""End to end with a real Prometheus (1 s scrape and evaluation) and a real Alertmanager on
127.0.0.1: the first violation after a process start pages the declared team, a cron that
stops running fires its Missing alert, a test-mode violation reaches the test route and no
team, and every dashboard query parses and returns data."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit import billing
from invariantkit._catalog import Catalog, IdempotentDecl
from invariantkit._dispatch import count_dropped
from invariantkit._invariant import fire_test_alert
from invariantkit._lifecycle import (
    register_health,
    renewal_failed,
    renewal_succeeded,
    subscription_canceled,
)
from invariantkit.alerts import alertmanager_config, grafana_dashboards, prometheus_rules
from invariantkit.alerts._grafana import panel_queries
from invariantkit.testing import capture_signals
from support.receivers import WebhookCall, WebhookReceiver
from support.servers import Alertmanager, Prometheus, serve_metrics, wait_until

pytestmark = pytest.mark.slow

TEAMS = ("billing", "ledger", "platform")
#: Grafana's interval variables, as Grafana would expand them for a short time range.
GRAFANA_VARS = {"$__rate_interval": "30s", "$__range": "5m"}


class FailingSink:
    """A backend that rejects every signal (counted in invariantkit_sink_errors_total)."""

    name = "failing"
    deferred = False

    def emit(self, record: object) -> None:
        raise RuntimeError("backend rejected the signal")

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True


def delivered(
    webhook: WebhookReceiver, path: str, alertname: str, **labels: str
) -> tuple[WebhookCall, dict[str, Any]] | None:
    """The first firing ``alertname`` (with ``labels``) Alertmanager posted to ``path``."""
    for call in webhook.calls:
        if call.path != path or not isinstance(call.body, dict):
            continue
        for alert in call.body.get("alerts", []):
            got = alert.get("labels", {})
            if (
                alert.get("status") == "firing"
                and got.get("alertname") == alertname
                and all(got.get(k) == v for k, v in labels.items())
            ):
                return call, alert
    return None


def wait_delivered(
    webhook: WebhookReceiver, path: str, alertname: str, timeout: float = 15.0, **labels: str
) -> tuple[WebhookCall, dict[str, Any]]:
    return wait_until(
        lambda: delivered(webhook, path, alertname, **labels),
        timeout,
        message=f"{alertname} delivered to {path}",
    )


def active(prom: Prometheus, alertname: str) -> list[dict[str, Any]]:
    """Pending or firing alerts named ``alertname`` in Prometheus."""
    return [a for a in prom.alerts() if a["labels"].get("alertname") == alertname]


@contextlib.contextmanager
def running(job: Callable[[], None], every: float) -> Iterator[threading.Event]:
    """Run ``job`` every ``every`` seconds in a thread until the yielded event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            job()
            stop.wait(every)

    thread = threading.Thread(target=loop, name="e2e-cron", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(5)


def business_activity(registry: CollectorRegistry, db: sqlite3.Connection) -> None:
    """Renewals (some failing), cancellations, billing operations, an idempotent retry and a
    dropped signal: what the dashboards show."""
    # The real lifecycle helpers: the Prometheus sink counts what the dashboards query.
    for i in range(6):
        sub = f"sub_{i}"
        if i % 3 == 0:
            renewal_failed(sub, reason="card_declined")
        else:
            renewal_succeeded(sub, period_number=2)
    subscription_canceled("sub_9", reason="user_requested", periods_completed=3)

    @ik.billing_operation("charge")
    def charge(fail: bool) -> None:
        if fail:
            raise ConnectionError("payment provider unavailable")

    for fail in (False, False, True):
        with contextlib.suppress(ConnectionError):
            charge(fail)
    for _ in range(2):
        with ik.idempotent_write("record_payment_event", key="evt_1"):
            db.execute("INSERT INTO payment_events (idempotency_key) VALUES ('evt_1')")
    count_dropped("posthog", 1)


def test_first_violation_pages_its_team_and_everything_is_wired(
    prometheus_factory: Callable[..., Prometheus],
    alertmanager_factory: Callable[..., Alertmanager],
    webhook_receiver: WebhookReceiver,
) -> None:
    """The guide's three guarantees, a custom invariant of another team, a short cron and a
    constraint, through real Prometheus and Alertmanager."""
    ledger = ik.Invariant(
        "LEDGER_BALANCED", type="ledger_imbalance", summary="Ledger out of balance", team="ledger"
    )
    cron = ik.monitor_cron("e2e_sync", every=2, max_runtime=1, team="platform")
    constraint = ik.Constraint("e2e_idempotency_idx")
    catalog = Catalog()
    for decl in (
        billing.NO_DOUBLE_CHARGE,
        billing.CANCELED_NEVER_CHARGED,
        billing.PERIOD_MUST_ADVANCE,
        ledger,
        cron.decl,
        constraint,
        IdempotentDecl("record_payment_event"),
    ):
        catalog.add(decl)

    hook = webhook_receiver.base_url
    am = alertmanager_factory(
        alertmanager_config(
            catalog,
            receivers={team: f"{hook}/{team}" for team in TEAMS},
            test_receiver=f"{hook}/test",
            unrouted_receiver=f"{hook}/unrouted",
            group_wait="0s",
            group_interval="1s",
        )
    )
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE payment_events (idempotency_key TEXT)")
    db.execute("CREATE UNIQUE INDEX e2e_idempotency_idx ON payment_events (idempotency_key)")

    def cron_job() -> None:
        with cron as run:
            run.processed += 3

    with (
        capture_signals(sentry=False, posthog=False, extra_sinks=(FailingSink(),)) as signals,
        serve_metrics(signals.registry) as port,  # type: ignore[arg-type]
        running(cron_job, every=1.0) as stop_cron,
    ):
        assert ik.verify_constraints(db, ["e2e_idempotency_idx"]) == {"e2e_idempotency_idx": True}
        health = register_health(
            active_subscriptions=lambda: 1234, mrr=lambda: 617_000, registry=signals.registry
        )
        started = time.monotonic()
        prom = prometheus_factory(
            rule_files={"invariantkit.yml": prometheus_rules(catalog)},
            scrape_targets=[f"127.0.0.1:{port}"],
            alertmanagers=[am.address],
        )
        prom.wait_for_targets_up(timeout=20)
        # The process has started and been scraped: the violation counter child is there at 0.
        assert (
            prom.wait_for(
                lambda: prom.query(
                    'billing_invariant_violation_total{invariant="NO_DOUBLE_CHARGE"}'
                )
            )[0]["value"][1]
            == "0"
        )
        business_activity(signals.registry, db)
        assert not active(prom, "NoDoubleChargeViolated")

        # 1. The first violation after start fires and reaches its team's receiver.
        t0 = time.monotonic()
        assert not ik.assert_invariant(
            False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"}
        )
        ik.report_violation(ledger, tags={"ledger_id": "led_1"})
        call, alert = wait_delivered(webhook_receiver, "/billing", "NoDoubleChargeViolated")
        latency = call.monotonic - t0
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["invariant"] == "NO_DOUBLE_CHARGE"
        assert alert["annotations"]["runbook_url"] == "playbooks/no-double-charge.md"
        assert "invariant%3ANO_DOUBLE_CHARGE" in alert["annotations"]["sentry_url"]
        ledger_call, _ = wait_delivered(webhook_receiver, "/ledger", "LedgerBalancedViolated")
        assert delivered(webhook_receiver, "/billing", "LedgerBalancedViolated") is None

        # 2. A test-mode violation reaches the test route, and no team.
        t1 = time.monotonic()
        fire_test_alert(billing.CANCELED_NEVER_CHARGED)
        test_call, test_alert = wait_delivered(
            webhook_receiver, "/test", "InvariantTestAlert", invariant="CANCELED_NEVER_CHARGED"
        )
        assert test_alert["labels"]["severity"] == "test"

        # 3. While the cron runs it is not missing; once it stops, CronMissing fires.
        assert not active(prom, "E2eSyncCronMissing")
        stop_cron.set()
        t2 = time.monotonic()
        missing_call, _ = wait_delivered(
            webhook_receiver, "/platform", "E2eSyncCronMissing", timeout=20
        )

        # The test violation never fired the real rule, nor reached a team.
        assert not active(prom, "CanceledNeverChargedViolated")
        for team in TEAMS:
            assert delivered(webhook_receiver, f"/{team}", "InvariantTestAlert") is None
            assert delivered(webhook_receiver, f"/{team}", "CanceledNeverChargedViolated") is None
        assert delivered(webhook_receiver, "/unrouted", "InvariantTestAlert") is None

        # 4. Every dashboard query parses in Prometheus and returns data.
        empty = []
        for board in grafana_dashboards(catalog).values():
            for where, query in panel_queries(board):
                expr = query
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                result = prom.query(expr)  # raises unless Prometheus parsed and ran it
                if not result and not where.startswith("annotation"):
                    empty.append(f"{board['title']} / {where}: {expr}")
        assert not empty, "queries without data:\n" + "\n".join(empty)
        health.unregister()
        total = time.monotonic() - started
    print(
        f"\nviolation-to-webhook latency: {latency:.2f} s (ledger: {ledger_call.monotonic - t0:.2f} s, "
        f"test alert: {test_call.monotonic - t1:.2f} s); cron stopped -> CronMissing delivered: "
        f"{missing_call.monotonic - t2:.2f} s; Prometheus start to end: {total:.1f} s"
    )
