"""One failure, one Sentry event: nested operations and the cron run around them share it."""

from __future__ import annotations

import pytest

import invariantkit as ik
from invariantkit.testing import capture_signals


class ProviderDown(Exception):
    pass


def test_nested_operations_report_one_event_tagged_by_the_innermost() -> None:
    """A charge failing inside a renewal is one Sentry event, tagged with the charge; both
    operations still count the failure."""
    with capture_signals() as signals:
        with pytest.raises(ProviderDown), ik.billing_operation("renewal"):
            with ik.billing_operation("charge"):
                raise ProviderDown("base pay is down")
        [event] = signals.sentry_events
        assert event["tags"]["operation"] == "charge"
        signals.assert_correlated()
        for operation in ("charge", "renewal"):
            assert (
                signals.metric(
                    "billing_operation_errors_total", operation=operation, error_type="ProviderDown"
                )
                == 1.0
            )


def test_a_cron_run_failing_from_an_operation_sends_it_once() -> None:
    """The cron's error check-in still goes out, without a second copy of the exception."""
    cron = ik.monitor_cron("dedupe_renewal", every=3600, max_runtime=60)
    with capture_signals() as signals:
        with pytest.raises(ProviderDown), cron, ik.billing_operation("charge"):
            raise ProviderDown("base pay is down")
        exceptions = [e for e in signals.sentry_events if "exception" in e]
        assert len(exceptions) == 1
        assert [c["status"] for c in signals.sentry_checkins] == ["in_progress", "error"]


def test_a_separate_failure_is_reported_again() -> None:
    """The mark is per exception object: a second, new failure is a second event."""
    with capture_signals() as signals:
        for _ in range(2):
            with pytest.raises(ProviderDown), ik.billing_operation("charge"):
                raise ProviderDown("again")
        assert len(signals.sentry_events) == 2


def test_an_enforced_violation_failing_its_operation_is_one_event() -> None:
    """Enforce mode: the violation's message is the event; the InvariantViolation that then
    fails the operation is counted, not sent a second time."""
    from invariantkit import billing

    with capture_signals(mode="enforce") as signals:
        with pytest.raises(ik.InvariantViolation), ik.billing_operation("renewal"):
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "s"})
        [event] = signals.sentry_events
        assert event["message"] == "NO_DOUBLE_CHARGE"
        assert (
            signals.metric(
                "billing_operation_errors_total",
                operation="renewal",
                error_type="InvariantViolation",
            )
            == 1.0
        )
        signals.assert_correlated()
