"""Shutdown, reconfiguration and process exit never lose signals or reconfigure by themselves."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import posthog
import pytest
import sentry_sdk

import invariantkit as ik
from invariantkit import billing
from invariantkit._config import STATE
from support.receivers import SentryReceiver


def test_shutdown_does_not_configure_again() -> None:
    """Draining the workers in shutdown() reads the configuration, never re-creates it: the
    API is left with no sink at all until the next configure()."""
    client = posthog.Posthog("phc_test", host="http://127.0.0.1:9", send=False)
    ik.configure(sinks=[ik.sinks.PostHog(client), ik.sinks.JsonLogs()])
    with ik.identify("user_1"), ik.billing_operation("renewal", user_facing=True) as run:
        run.set_attribute("subscription_id", "sub_1")
        ik.report_violation(billing.NO_DOUBLE_CHARGE)
    assert ik.shutdown(timeout=2)
    assert STATE.dispatcher is not None
    assert not STATE.dispatcher.sinks
    assert STATE.config is not None
    assert not STATE.config.sinks


def test_a_sink_reused_after_shutdown_delivers() -> None:
    """configure() may be called again after shutdown(), with the same sink instances."""
    with SentryReceiver() as receiver:
        client = sentry_sdk.Client(dsn=receiver.dsn, default_integrations=False)
        sink = ik.sinks.Sentry(client)
        try:
            ik.configure(sinks=[sink])
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"round": "1"})
            assert ik.shutdown(timeout=5)
            ik.configure(sinks=[sink])
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"round": "2"})
            assert ik.flush(timeout=5)
            events = receiver.wait_for(2, timeout=10)
        finally:
            ik.shutdown(timeout=2)
            client.close()
    assert sorted(e["tags"]["round"] for e in events) == ["1", "2"]


@pytest.mark.parametrize(
    ("name", "value"), [("INVARIANTKIT_MODE", "enforcee"), ("ALERT_TEST_MODE", "maybe")]
)
def test_a_bad_environment_never_raises_into_business_code(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, value: str
) -> None:
    """Used before configure(), a bad variable is logged and the defaults apply: the violation
    is reported and the call returns False (report mode)."""
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(STATE, "dispatcher", None)  # never configured (the fixture restores)
    monkeypatch.setattr(STATE, "config", None)
    assert ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE) is False
    assert STATE.config is not None
    assert STATE.config.mode == "report"
    assert any(name in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    # An explicit configure() still fails loudly.
    with pytest.raises(ValueError, match=name):
        ik.configure()


def test_signals_queued_at_exit_are_delivered() -> None:
    """A short script that reports and exits without flushing still writes its log lines: the
    workers are drained (within a bound) at interpreter exit."""
    script = textwrap.dedent(
        """
        import logging, sys
        import invariantkit as ik
        from invariantkit import billing

        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(ik.JsonFormatter())
        logging.getLogger("invariantkit").addHandler(handler)
        ik.configure(sinks=[ik.sinks.JsonLogs()])
        for i in range(5):
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"n": str(i)})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(line["tags"]["n"] for line in lines) == ["0", "1", "2", "3", "4"]


def test_violation_spans_queued_at_exit_are_exported() -> None:
    """Spans of violations outside any span are made on the worker: a script that exits right
    after reporting still exports them (the exit drain runs before the provider shuts down)."""
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
        import invariantkit as ik
        from invariantkit import billing

        class Print(SpanExporter):
            def export(self, spans):
                for span in spans:
                    print("span", span.name, format(span.context.trace_id, "032x"), flush=True)
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Print()))
        trace.set_tracer_provider(provider)
        ik.configure(sinks=[ik.sinks.OtelTraces()])
        for i in range(5):
            print("reported", ik.report_violation(billing.NO_DOUBLE_CHARGE), flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    words = [line.split() for line in result.stdout.splitlines()]
    reported = sorted(w[1] for w in words if w[0] == "reported")
    exported = sorted(
        w[2] for w in words if w[0] == "span" and w[1] == "invariant.NO_DOUBLE_CHARGE"
    )
    assert len(reported) == 5
    assert exported == reported


def test_shutdown_accounts_for_every_violation_with_sentrys_default_queue() -> None:
    """3,000 violations, Sentry with its default transport queue (100) and a real receiver:
    after ``ik.shutdown(2)``, every violation either reached the receiver or is counted as
    dropped for the Sentry sink (Sentry's queue overflow as ``sdk_queue_full``, what the bound
    left in invariantkit's queue as ``shutdown``), in ``ik.stats()`` and in the metric alike."""
    from prometheus_client import CollectorRegistry

    total = 3000
    with SentryReceiver() as receiver:
        client = sentry_sdk.Client(
            dsn=receiver.dsn, default_integrations=False, auto_enabling_integrations=False
        )
        assert client.options["transport_queue_size"] == 100
        registry = CollectorRegistry()
        before = ik.stats().dropped
        try:
            ik.configure(
                sinks=[ik.sinks.PrometheusMetrics(registry), ik.sinks.Sentry(client)],
                max_events_per_minute=total,  # the burst, not the storm limit, is under test
            )
            for n in range(total):
                ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"n": str(n)})
            ik.shutdown(timeout=2)
            # Whatever Sentry's own queue still holds, its worker sends (the client stays open).
            client.flush(timeout=20)
            delivered = len(receiver.events)
        finally:
            client.close(timeout=2)
    after = ik.stats().dropped
    counted = {
        reason: after.get(("sentry", reason), 0) - before.get(("sentry", reason), 0)
        for reason in ("queue_full", "shutdown", "sdk_queue_full", "error", "sampled")
    }
    assert delivered + sum(counted.values()) == total, (delivered, counted)
    # How much is Sentry's overflow, how much the bound left behind and how much arrived
    # depends on the machine's load; that nothing is lost uncounted does not.
    metric = sum(
        s.value
        for f in registry.collect()
        for s in f.samples
        if s.name == "invariantkit_sink_dropped_total" and s.labels["sink"] == "sentry"
    )
    assert metric == sum(counted.values())
