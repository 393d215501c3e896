"""The real SDKs over real HTTP to receivers on 127.0.0.1: one trace id and one user id reach
the OTLP collector, Sentry, PostHog and the log line.

Global SDK state is restored after each test: Sentry's global client is saved and put back,
OpenTelemetry providers are injected (the global provider is never set).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit import billing

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.receivers import OTLPReceiver, PostHogReceiver, SentryReceiver


class PaymentDeclined(Exception):
    pass


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def real_sentry(sentry_receiver: SentryReceiver) -> Iterator[SentryReceiver]:
    """``sentry_sdk.init`` with the receiver's DSN and the default integrations (logging
    included); the previous global client is restored afterwards."""
    import sentry_sdk

    scope = sentry_sdk.get_global_scope()
    previous = scope.client
    sentry_sdk.init(
        dsn=sentry_receiver.dsn,
        auto_enabling_integrations=False,
        environment="test",
        release="invariantkit-tests",
    )
    client = sentry_sdk.get_client()
    try:
        yield sentry_receiver
    finally:
        scope.set_client(previous)
        client.close(timeout=2.0)


@pytest.fixture
def pipeline(
    real_sentry: SentryReceiver,
    posthog_receiver: PostHogReceiver,
    otlp_receiver: OTLPReceiver,
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, Any]]:
    """Every sink with its real SDK: OTLP/HTTP span exporter in a batch processor, a fresh
    registry, Sentry, a real PostHog client, JSON logs on ``request.param``'s logger."""
    import posthog
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "billing-api"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_receiver.endpoint + "/v1/traces"))
    )
    client = posthog.Posthog("phc_test", host=posthog_receiver.host, flush_interval=0.1)
    logger_name = getattr(request, "param", "invariantkit")
    logger = logging.getLogger(logger_name)
    lines = _Lines()
    logger.addHandler(lines)
    previous_level = logger.level
    logger.setLevel(logging.DEBUG)
    registry = CollectorRegistry()
    try:
        ik.configure(
            service="billing-api",
            environment="test",
            sinks=[
                ik.sinks.OtelTraces(provider),
                ik.sinks.PrometheusMetrics(registry),
                ik.sinks.Sentry(),
                ik.sinks.PostHog(client),
                ik.sinks.JsonLogs(logger),
            ],
        )
        yield {
            "sentry": real_sentry,
            "posthog": posthog_receiver,
            "otlp": otlp_receiver,
            "logs": lines,
            "registry": registry,
            "provider": provider,
        }
    finally:
        ik.shutdown(5.0)
        logger.removeHandler(lines)
        logger.setLevel(previous_level)
        client.shutdown()
        provider.shutdown()


def _deliver(pipeline: dict[str, Any]) -> None:
    """Hand everything over: our worker, then each SDK's own queue."""
    assert ik.flush(10.0)
    assert pipeline["provider"].force_flush(10_000)


class TestOneTraceIdEverywhere:
    @pytest.mark.parametrize("pipeline", ["invariantkit", "billing.signals"], indirect=True)
    def test_failure_reaches_every_backend_with_one_trace_id_and_user(
        self, pipeline: dict[str, Any]
    ) -> None:
        """Span at the collector, Sentry event, PostHog event and log line: one trace id, one
        user; exactly one Sentry event (our ERROR log line is kept out of Sentry's logging
        integration whatever the logger's name)."""

        @ik.billing_operation("renewal", user_facing=True)
        def renew() -> None:
            raise PaymentDeclined("card declined")

        with ik.identify("user_42"), pytest.raises(PaymentDeclined):
            renew()
        _deliver(pipeline)

        [span] = pipeline["otlp"].wait_for(1)
        assert span["name"] == "billing.renewal"
        assert span["attributes"]["billing.operation"] == "renewal"
        assert span["attributes"]["enduser.id"] == "user_42"
        assert span["status_code"] == 2  # ERROR
        assert "exception" in span["events"]
        assert span["resource"]["service.name"] == "billing-api"
        tid = span["trace_id"]

        events = pipeline["sentry"].wait_for(1)
        assert len(events) == 1
        [event] = events
        assert event["exception"]["values"][-1]["type"] == "PaymentDeclined"
        assert event["contexts"]["trace"]["trace_id"] == tid
        assert event["tags"]["trace_id"] == tid
        assert event["tags"]["operation"] == "renewal"
        assert event["tags"]["domain"] == "billing"
        assert event["user"]["id"] == "user_42"

        [message] = pipeline["posthog"].wait_for(1)
        assert message["event"] == "billing_renewal_failure"
        assert message["distinct_id"] == "user_42"
        assert message["properties"]["trace_id"] == tid
        assert pipeline["posthog"].bodies[0]["api_key"] == "phc_test"

        start, end = pipeline["logs"].lines
        assert (start["level"], end["level"]) == ("debug", "error")
        assert {start["trace_id"], end["trace_id"]} == {tid}
        assert {start["user_id"], end["user_id"]} == {"user_42"}

        registry = pipeline["registry"]
        assert (
            registry.get_sample_value(
                "billing_operation_errors_total",
                {"operation": "renewal", "error_type": "PaymentDeclined"},
            )
            == 1
        )

    def test_violation_inside_an_operation(self, pipeline: dict[str, Any]) -> None:
        """A violation in an operation: one trace id from the span to Sentry, PostHog, log."""

        @ik.billing_operation("renewal")
        def renew() -> bool:
            return ik.assert_invariant(
                False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"}
            )

        with ik.identify("user_7"):
            assert renew() is False
        _deliver(pipeline)
        [span] = pipeline["otlp"].wait_for(1)
        assert "invariant.violated" in span["events"]
        assert span["status_code"] == 2
        tid = span["trace_id"]
        [event] = pipeline["sentry"].wait_for(1)
        assert event["message"] == "NO_DOUBLE_CHARGE" or event["logentry"]["message"] == (
            "NO_DOUBLE_CHARGE"
        )
        assert event["level"] == "fatal"
        assert event["tags"]["invariant"] == "NO_DOUBLE_CHARGE"
        assert event["tags"]["subscription_id"] == "sub_1"
        assert event["contexts"]["trace"]["trace_id"] == tid
        assert event["user"]["id"] == "user_7"
        [message] = pipeline["posthog"].wait_for(1)
        assert message["event"] == "invariant_violated"
        assert message["properties"]["trace_id"] == tid
        assert message["distinct_id"] == "user_7"
        violation_lines = [x for x in pipeline["logs"].lines if x["event"] == "invariant.violated"]
        assert [x["trace_id"] for x in violation_lines] == [tid]

    def test_success_goes_to_otlp_posthog_and_logs_but_not_sentry(
        self, pipeline: dict[str, Any]
    ) -> None:
        """A success is a span, a PostHog event and an info line; Sentry hears nothing."""

        @ik.billing_operation("renewal", user_facing=True)
        def renew() -> str:
            return "ok"

        with ik.identify("user_42"):
            assert renew() == "ok"
        _deliver(pipeline)
        [span] = pipeline["otlp"].wait_for(1)
        assert span["status_code"] == 0  # UNSET: OK is the application's to set
        [message] = pipeline["posthog"].wait_for(1)
        assert message["event"] == "billing_renewal_success"
        assert message["properties"]["trace_id"] == span["trace_id"]
        assert pipeline["logs"].lines[-1]["trace_id"] == span["trace_id"]
        assert pipeline["sentry"].events == []

    def test_context_propagated_over_http_headers(self, pipeline: dict[str, Any]) -> None:
        """Caller injects, callee extracts (as two services would over HTTP): the callee's
        Sentry event, PostHog event and log line carry the caller's trace id and user."""
        import contextvars
        import urllib.request
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        @ik.billing_operation("charge", user_facing=True)
        def charge() -> None:
            raise PaymentDeclined("declined downstream")

        class Callee(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                def handle() -> int:
                    with ik.extract(dict(self.headers.items())):
                        try:
                            charge()
                        except PaymentDeclined:
                            return 402
                    return 200

                status = contextvars.Context().run(handle)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Callee)
        thread = Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/charge"
            with ik.identify("user_42"), ik.billing_operation("checkout"):
                caller_tid = ik.correlation_id()
                request = urllib.request.Request(url, data=b"", headers=ik.inject({}))
                with pytest.raises(urllib.error.HTTPError) as info:
                    urllib.request.urlopen(request, timeout=10)
                info.value.close()
                assert info.value.code == 402
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
        _deliver(pipeline)
        spans = {s["name"]: s for s in pipeline["otlp"].wait_for(2)}
        assert spans["billing.charge"]["trace_id"] == caller_tid
        assert spans["billing.charge"]["parent_span_id"] == spans["billing.checkout"]["span_id"]
        [event] = pipeline["sentry"].wait_for(1)
        assert event["contexts"]["trace"]["trace_id"] == caller_tid
        assert event["user"]["id"] == "user_42"
        [message] = pipeline["posthog"].wait_for(1)
        assert (message["properties"]["trace_id"], message["distinct_id"]) == (
            caller_tid,
            "user_42",
        )
        charge_lines = [x for x in pipeline["logs"].lines if x.get("operation") == "charge"]
        assert {(x["trace_id"], x["user_id"]) for x in charge_lines} == {(caller_tid, "user_42")}
