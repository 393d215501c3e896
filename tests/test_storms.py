"""Violation storms: Sentry and PostHog get at most N events per invariant per minute."""

from __future__ import annotations

import posthog
import pytest
import sentry_sdk
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit import _dispatch
from support.receivers import PostHogReceiver, SentryReceiver


def test_a_storm_is_sampled_for_sentry_and_posthog_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``max_events_per_minute=5``, 20 violations of one invariant: the counter counts 20,
    the real Sentry and PostHog SDKs deliver 5 each to receivers on 127.0.0.1, 15 are counted
    per sink with reason "sampled", and the first event of the next minute carries
    ``suppressed_count=15``. Another invariant has its own budget."""
    clock = [1000.0]
    monkeypatch.setattr(_dispatch, "_clock", lambda: clock[0])
    with SentryReceiver() as sentry_rx, PostHogReceiver() as posthog_rx:
        client = sentry_sdk.Client(
            dsn=sentry_rx.dsn, default_integrations=False, auto_enabling_integrations=False
        )
        ph = posthog.Posthog("phc_storm", host=posthog_rx.host, sync_mode=True)
        registry = CollectorRegistry()
        storm = ik.Invariant("STORM_TEST", type="storm_test", summary="x")
        other = ik.Invariant("STORM_OTHER", type="storm_other", summary="x")
        try:
            ik.configure(
                sinks=[
                    ik.sinks.PrometheusMetrics(registry),
                    ik.sinks.Sentry(client),
                    ik.sinks.PostHog(ph),
                ],
                max_events_per_minute=5,
            )
            for _ in range(20):
                ik.assert_invariant(False, storm)
            ik.assert_invariant(False, other)
            clock[0] += 61
            ik.assert_invariant(False, storm)
            assert ik.flush(5)
            sentry_events = sentry_rx.wait_for(7, timeout=10)
            posthog_events = posthog_rx.wait_for(7, timeout=10)
        finally:
            ik.shutdown(2)
            client.close(timeout=2)
    violations = registry.get_sample_value(
        "billing_invariant_violation_total",
        {"type": "storm_test", "invariant": "STORM_TEST", "test": "false"},
    )
    assert violations == 21  # the counter counts every violation
    assert len(sentry_events) == 7
    assert len(posthog_events) == 7
    for sink in ("sentry", "posthog"):
        labels = {"sink": sink, "reason": "sampled"}
        assert registry.get_sample_value("invariantkit_sink_dropped_total", labels) == 15
    last_sentry = [e for e in sentry_events if e.get("tags", {}).get("invariant") == "STORM_TEST"]
    assert last_sentry[-1]["extra"]["suppressed_count"] == 15
    assert all("suppressed_count" not in e.get("extra", {}) for e in last_sentry[:-1])
    storm_ph = [e for e in posthog_events if e["properties"].get("invariant") == "STORM_TEST"]
    assert storm_ph[-1]["properties"]["suppressed_count"] == 15


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "60"])
def test_max_events_per_minute_is_validated(value: object) -> None:
    """A bad limit fails at configure() time with a clear message."""
    with pytest.raises(ValueError, match="max_events_per_minute"):
        ik.configure(sinks=[ik.sinks.Memory()], max_events_per_minute=value)  # type: ignore[arg-type]
