"""The billing service's own tests: what it sends to every backend, through the real SDKs.

The ``signals`` fixture (invariantkit's pytest plugin) runs each test under isolated, real
OpenTelemetry, Prometheus, Sentry and PostHog pipelines and restores everything afterwards.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

import invariantkit as ik
from billing_service.app import create_app
from billing_service.cron import ProviderDown, run_renewals
from billing_service.monitoring import IDEMPOTENCY_INDEX
from billing_service.tests.conftest import call


def subscribe(server: Any, user: str = "user_42") -> dict[str, Any]:
    status, sub = call(server, "POST", "/subscriptions", {"tier": "horoscope-plus"}, user=user)
    assert status == 201, sub
    return sub


def test_subscribe_tracks_the_start_for_the_user(server, signals):
    """A sign-up is a success span, a PostHog subscription_started as the user, no violation."""
    sub = subscribe(server)
    started = [e for e in signals.posthog_events if e["event"] == "subscription_started"]
    assert [e["distinct_id"] for e in started] == ["user_42"]
    assert started[0]["properties"]["subscriptionId"] == sub["id"]
    assert signals.metric("billing_operation_total", operation="subscribe", outcome="success") == 1
    signals.assert_no_violations()
    signals.assert_correlated()


def test_renewal_continues_its_trace_and_user_in_the_payments_endpoint(server, signals, clock):
    """inject/extract: the charge handled by /payments/charge is in the renewal's trace, for
    the renewal's user."""
    sub = subscribe(server)
    clock.advance(31)
    status, renewed = call(server, "POST", f"/subscriptions/{sub['id']}/renew", user="user_42")
    assert status == 200, renewed
    assert renewed["periods_completed"] == 2
    spans = {s.name: s for s in signals.spans}
    renewal, charge = spans["billing.renewal"], spans["billing.charge"]
    assert charge.context.trace_id == renewal.context.trace_id
    assert charge.attributes["enduser.id"] == "user_42"
    successes = [e for e in signals.posthog_events if e["event"] == "subscription_renewal_success"]
    assert successes[0]["properties"]["trace_id"] == format(renewal.context.trace_id, "032x")
    signals.assert_no_violations()


def test_a_second_charge_the_same_day_is_a_double_charge(server, app, signals, clock):
    """NO_DOUBLE_CHARGE fires when the day already has a charge (here: one recorded by a
    buggy path), with the charge events in Sentry's extra."""
    sub = subscribe(server)
    clock.advance(31)
    app.billing.record_payment_event(sub["id"], "manual:recharge", 500, "ch_manual")
    status, _ = call(server, "POST", f"/subscriptions/{sub['id']}/renew", user="user_42")
    assert status == 200  # report mode: the violation is reported, the request goes on
    violation = signals.assert_violation(
        "NO_DOUBLE_CHARGE", subscription_id=sub["id"], charges_count=2
    )
    assert violation.user_id == "user_42"
    event = next(e for e in signals.sentry_events if e.get("message") == "NO_DOUBLE_CHARGE")
    assert event["level"] == "fatal"
    assert len(event["extra"]["charge_events"]) == 2
    signals.assert_correlated()


def test_a_canceled_subscription_never_reaches_the_processor(server, signals, processor, clock):
    """CANCELED_NEVER_CHARGED: reported, the charge refused (409), the card untouched."""
    sub = subscribe(server)
    assert call(server, "POST", f"/subscriptions/{sub['id']}/cancel", {}, user="user_42")[0] == 200
    clock.advance(31)
    status, body = call(server, "POST", f"/subscriptions/{sub['id']}/renew", user="user_42")
    assert status == 409
    record = signals.assert_violation("CANCELED_NEVER_CHARGED", subscription_id=sub["id"])
    assert body["trace_id"] == record.trace_id
    assert [c[2] for c in processor.charges] == [f"signup:{sub['id']}"]
    canceled = [e for e in signals.posthog_events if e["event"] == "subscription_canceled"]
    assert canceled[0]["properties"]["reason"] == "user_requested"


def test_renewing_a_long_lapsed_subscription_leaves_the_period_in_the_past(server, signals, clock):
    """PERIOD_MUST_ADVANCE: one period charged after three months leaves period_end behind."""
    sub = subscribe(server)
    clock.advance(95)
    status, _ = call(server, "POST", f"/subscriptions/{sub['id']}/renew", user="user_42")
    assert status == 200
    record = signals.assert_violation("PERIOD_MUST_ADVANCE", subscription_id=sub["id"])
    event = next(e for e in signals.sentry_events if e.get("message") == "PERIOD_MUST_ADVANCE")
    assert event["level"] == "error"
    assert event["tags"]["trace_id"] == record.trace_id


def test_a_redelivered_webhook_is_an_expected_retry(server, signals):
    """The unique index absorbs the second delivery: counted and logged, never an alert."""
    sub = subscribe(server)
    events = {
        "events": [
            {
                "subscription_id": sub["id"],
                "idempotency_key": "evt_1",
                "amount_cents": 500,
                "charge_id": "ch_1",
            }
        ]
    }
    assert call(server, "POST", "/webhooks/payments", events)[1] == {
        "received": 1,
        "new": 1,
        "retries": 0,
    }
    assert call(server, "POST", "/webhooks/payments", events)[1] == {
        "received": 1,
        "new": 0,
        "retries": 1,
    }
    assert signals.metric("billing_idempotent_retry_total", operation="record_payment_event") == 1
    assert signals.sentry_events == []
    assert any(line["event"] == "idempotent.retry" for line in signals.logs)
    signals.assert_no_violations()


def test_the_renewal_cron_reports_each_run(server, app, signals, clock):
    """A run sets the guide's cron gauges and sends Sentry Crons check-ins."""
    subs = [subscribe(server, user=f"user_{i}") for i in range(3)]
    clock.advance(31)
    assert run_renewals(app.billing) == {"renewed": 3, "failed": 0}
    assert signals.metric("cron_subscription_renewal_last_status") == 1
    assert signals.metric("cron_subscription_renewal_processed") == 3
    assert [c["status"] for c in signals.sentry_checkins] == ["in_progress", "ok"]
    renewed = {
        e["distinct_id"]
        for e in signals.posthog_events
        if e["event"] == "subscription_renewal_success"
    }
    assert renewed == {f"user_{i}" for i in range(3)}
    assert all(s["id"] for s in subs)


def test_the_renewal_cron_fails_when_the_provider_is_down(server, app, signals, processor, clock):
    """Provider down: the run fails (status 0, error check-in) and the renewal failure is
    tracked with its reason for the PostHog spike alert."""
    subscribe(server)
    clock.advance(31)
    processor.down = True
    with pytest.raises(ProviderDown):
        run_renewals(app.billing)
    assert signals.metric("cron_subscription_renewal_last_status") == 0
    assert [c["status"] for c in signals.sentry_checkins] == ["in_progress", "error"]
    failed = [e for e in signals.posthog_events if e["event"] == "subscription_renewal_failed"]
    assert failed[0]["properties"]["failureReason"] == "provider_unavailable"


def test_the_startup_check_reports_a_dropped_index(tmp_path, signals):
    """A migration dropped the unique index: the start-up check reports it, and a service that
    requires its constraints refuses to start."""
    path = str(tmp_path / "billing.db")
    create_app(path)  # creates the schema
    assert signals.metric("pg_constraint_exists", constraint=IDEMPOTENCY_INDEX) == 1
    conn = sqlite3.connect(path)
    conn.execute(f"DROP INDEX {IDEMPOTENCY_INDEX}")
    conn.commit()
    conn.close()
    create_app(path, migrate=False)
    assert signals.metric("pg_constraint_exists", constraint=IDEMPOTENCY_INDEX) == 0
    assert any(IDEMPOTENCY_INDEX in str(e.get("message")) for e in signals.sentry_events)
    with pytest.raises(RuntimeError, match="refusing to start"):
        create_app(path, migrate=False, require_constraints=True)


@pytest.mark.invariantkit(mode="enforce")
def test_in_enforce_mode_a_double_charge_stops_the_renewal(app, signals, clock):
    """Enforce mode: the violation is reported, then raised, and the period is not advanced."""
    with ik.identify("user_42"):
        sub = app.billing.subscribe("user_42", "horoscope-plus")
        clock.advance(31)
        app.billing.record_payment_event(sub["id"], "manual:recharge", 500, "ch_manual")
        with pytest.raises(ik.InvariantViolation):
            app.billing.renew(sub["id"])
    assert app.billing.get(sub["id"])["periods_completed"] == 1
    signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id=sub["id"])
