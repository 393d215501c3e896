"""The guide's subscription lifecycle events and business health gauges (issue 11)."""

from __future__ import annotations

from collections.abc import Iterator

import posthog
import pytest
from prometheus_client import CollectorRegistry, start_http_server

import invariantkit as ik
from invariantkit import _lifecycle as lifecycle
from invariantkit.testing import Signals, capture_signals
from support.receivers import PostHogReceiver
from support.servers import Prometheus


@pytest.fixture
def captured() -> Iterator[Signals]:
    with capture_signals() as signals:
        yield signals


class TestLifecycleEvents:
    def test_the_guides_four_events_with_its_property_names(self, captured: Signals) -> None:
        """Each helper sends the guide's PostHog event with the guide's property names."""
        with ik.identify("user_7"), ik.billing_operation("renewal"):
            lifecycle.subscription_started("sub_1", tier="horoscope-plus", amount=5.0)
            lifecycle.renewal_succeeded("sub_1", period_number=2)
            lifecycle.renewal_failed("sub_1", reason="insufficient_funds")
            lifecycle.subscription_canceled("sub_1", reason="user_requested", periods_completed=3)
        events = {m["event"]: m for m in captured.posthog_events}
        assert set(events) == {
            "subscription_started",
            "subscription_renewal_success",
            "subscription_renewal_failed",
            "subscription_canceled",
        }
        assert events["subscription_started"]["properties"]["subscriptionId"] == "sub_1"
        assert events["subscription_started"]["properties"]["tier"] == "horoscope-plus"
        assert events["subscription_started"]["properties"]["amount"] == 5.0
        assert events["subscription_renewal_success"]["properties"]["periodNumber"] == 2
        assert (
            events["subscription_renewal_failed"]["properties"]["failureReason"]
            == "insufficient_funds"
        )
        assert events["subscription_canceled"]["properties"]["reason"] == "user_requested"
        assert events["subscription_canceled"]["properties"]["periodsCompleted"] == 3

    def test_one_user_and_one_trace_id_across_events_and_span(self, captured: Signals) -> None:
        """Events of one unit of work carry its trace id and user, and land on its span."""
        with ik.identify("user_7"), ik.billing_operation("renewal") as run:
            lifecycle.renewal_succeeded("sub_1", period_number=2)
            lifecycle.renewal_failed("sub_2", reason="card_declined")
        trace_id = run.correlation_id
        assert {m["distinct_id"] for m in captured.posthog_events} == {"user_7"}
        assert {m["properties"]["trace_id"] for m in captured.posthog_events} == {trace_id}
        [span] = [s for s in captured.spans if s.name == "billing.renewal"]
        assert format(span.context.trace_id, "032x") == trace_id
        assert [e.name for e in span.events] == [
            "subscription_renewal_success",
            "subscription_renewal_failed",
        ]

    def test_counters_with_bounded_reasons(self, captured: Signals) -> None:
        """Events are counted by name; unknown failure reasons fold into ``other``."""
        lifecycle.subscription_started("sub_1")
        lifecycle.renewal_failed("sub_1", reason="insufficient_funds")
        lifecycle.renewal_failed("sub_2", reason="insufficient_funds")
        for i in range(50):
            lifecycle.renewal_failed(f"sub_{i}", reason=f"weird provider code {i}")
        assert (
            captured.metric("billing_subscription_events_total", event="subscription_started") == 1
        )
        assert (
            captured.metric(
                "billing_subscription_events_total", event="subscription_renewal_failed"
            )
            == 52
        )
        assert captured.metric("billing_renewal_failures_total", reason="insufficient_funds") == 2
        assert captured.metric("billing_renewal_failures_total", reason="other") == 50
        reasons = {
            s.labels["reason"]
            for family in captured.registry.collect()  # type: ignore[union-attr]
            for s in family.samples
            if s.name == "billing_renewal_failures_total"
        }
        assert reasons <= lifecycle.RENEWAL_FAILURE_REASONS
        # The exact reason still reaches PostHog, where it is a property, not a label.
        assert "weird provider code 3" in {
            m["properties"].get("failureReason") for m in captured.posthog_events
        }

    def test_counters_exist_at_zero_before_the_first_event(self, captured: Signals) -> None:
        """A spike alert on increase() needs every series present before its first increment."""
        names = {
            (s.name, s.labels.get("event") or s.labels.get("reason"))
            for family in captured.registry.collect()  # type: ignore[union-attr]
            for s in family.samples
            if s.value == 0
        }
        for event in lifecycle.LIFECYCLE_EVENTS:
            assert ("billing_subscription_events_total", event) in names
        assert ("billing_renewal_failures_total", "insufficient_funds") in names

    def test_events_reach_a_posthog_server_over_http(self) -> None:
        """The real PostHog client posts the guide's events to /batch/ on 127.0.0.1."""
        with PostHogReceiver() as receiver:
            client = posthog.Posthog("phc_test", host=receiver.host, max_retries=0, timeout=2)
            try:
                ik.configure(sinks=[ik.sinks.PostHog(client)])
                with ik.identify("user_9"):
                    lifecycle.subscription_started("sub_9", tier="plus", amount=5.0)
                    lifecycle.subscription_canceled("sub_9", reason="too_expensive")
                assert ik.flush(timeout=5)
                events = receiver.wait_for(2)
            finally:
                ik.shutdown(timeout=2)
                client.shutdown()
        assert [e["event"] for e in events] == ["subscription_started", "subscription_canceled"]
        assert {e["distinct_id"] for e in events} == {"user_9"}


class TestHealthGauges:
    def test_gauges_read_at_scrape_time(self) -> None:
        """The callables run when the registry is collected, not before."""
        registry = CollectorRegistry()
        calls: list[str] = []

        def active() -> int:
            calls.append("active")
            return 1234

        lifecycle.register_health(
            active_subscriptions=active,
            mrr=lambda: {"eur": 120000, "USD": 99000},
            registry=registry,
        )
        assert calls == []
        assert registry.get_sample_value("billing_active_subscriptions") == 1234
        assert registry.get_sample_value("billing_mrr", {"currency": "EUR"}) == 120000
        assert registry.get_sample_value("billing_mrr", {"currency": "USD"}) == 99000
        assert calls == ["active"] * 3  # once per collection, never cached

    def test_a_failing_callable_leaves_its_gauge_out(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A broken business query never breaks the scrape of everything else."""
        registry = CollectorRegistry()

        def broken() -> int:
            raise RuntimeError("database down")

        lifecycle.register_health(active_subscriptions=broken, mrr=lambda: 500, registry=registry)
        assert registry.get_sample_value("billing_active_subscriptions") is None
        assert registry.get_sample_value("billing_mrr", {"currency": "USD"}) == 500
        registry.get_sample_value("billing_mrr", {"currency": "USD"})
        assert sum("billing_active_subscriptions" in r.getMessage() for r in caplog.records) == 1

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({}, ValueError),
            ({"active_subscriptions": 5}, TypeError),
            ({"mrr": lambda: 1, "currency": "dollars"}, ValueError),
        ],
    )
    def test_bad_arguments_fail_at_registration(self, kwargs: dict, error: type) -> None:
        """Mistakes are reported when the gauges are registered, not at scrape time."""
        with pytest.raises(error, match="register_health"):
            lifecycle.register_health(registry=CollectorRegistry(), **kwargs)

    def test_unregister(self) -> None:
        registry = CollectorRegistry()
        health = lifecycle.register_health(active_subscriptions=lambda: 1, registry=registry)
        health.unregister()
        assert registry.get_sample_value("billing_active_subscriptions") is None

    @pytest.mark.slow
    def test_a_real_prometheus_scrapes_the_gauges(self, prometheus_factory) -> None:
        """Prometheus sees active subscriptions and MRR from a scrape of the collector."""
        registry = CollectorRegistry()
        count = {"value": 10}
        lifecycle.register_health(
            active_subscriptions=lambda: count["value"], mrr=lambda: 617000, registry=registry
        )
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        try:
            port = server.server_address[1]
            prom: Prometheus = prometheus_factory(scrape_targets=[f"127.0.0.1:{port}"])
            prom.wait_for_targets_up()
            count["value"] = 42
            prom.wait_for(
                lambda: prom.query_value("billing_active_subscriptions") == 42, timeout=15
            )
            assert prom.query_value('billing_mrr{currency="USD"}') == 617000
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        assert not thread.is_alive()
