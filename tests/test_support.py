"""The test infrastructure works against the real SDKs and the real Debian servers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

from support.receivers import (
    OTLPReceiver,
    SentryReceiver,
    WebhookReceiver,
    closed_port_url,
    parse_envelope,
)
from support.servers import run_amtool, run_promtool

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from support.receivers import PostHogReceiver
    from support.servers import Alertmanager, Postgres, Prometheus, Pushgateway

ALWAYS_FIRING_RULES = """\
groups:
  - name: support
    rules:
      - alert: SupportAlwaysFiring
        expr: vector(1)
        labels:
          severity: page
"""


def _post(url: str, body: bytes = b"{}", timeout: float = 2.0) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


class TestSentryReceiver:
    @pytest.mark.parametrize("algo", ["gzip", "br"])
    def test_real_sdk_event_and_check_in_arrive_decoded(
        self, sentry_receiver: SentryReceiver, algo: str
    ) -> None:
        """A real sentry_sdk Client's event and cron check-in are decoded for both encodings."""
        import sentry_sdk
        from sentry_sdk.crons import capture_checkin

        client = sentry_sdk.Client(
            dsn=sentry_receiver.dsn,
            default_integrations=False,
            # A plain string: the transport compares with "br"/"gzip", the Enum its type hint
            # names would switch compression off.
            _experiments={"transport_compression_algo": algo},  # type: ignore[typeddict-item]
        )
        try:
            with sentry_sdk.new_scope() as scope:
                scope.set_client(client)
                event_id = sentry_sdk.capture_message("infra works")
                capture_checkin(monitor_slug="nightly-billing", status="ok")
            client.flush(timeout=5)
        finally:
            client.close(timeout=2)

        [event] = sentry_receiver.wait_for(1)
        [check_in] = sentry_receiver.wait_for(1, item_type="check_in")
        assert event["message"] == "infra works"
        assert event["event_id"] == event_id
        assert check_in["monitor_slug"] == "nightly-billing"
        envelope = sentry_receiver.envelopes[0]
        assert envelope.content_encoding == algo
        assert envelope.project_id == "1"
        assert "sentry_key=public" in envelope.auth
        assert not sentry_receiver.errors

    def test_envelope_parser_handles_length_and_newline_items(self) -> None:
        """Items with an explicit ``length`` (binary, embedded newlines) and without both parse."""
        data = (
            b'{"event_id":"abc"}\n'
            b'{"type":"attachment","length":4}\n'
            b"a\nb\xff\n"
            b'{"type":"event"}\n'
            b'{"message":"x"}\n'
        )
        headers, items = parse_envelope(data)
        assert headers == {"event_id": "abc"}
        assert [item.type for item in items] == ["attachment", "event"]
        assert items[0].payload == b"a\nb\xff"
        assert items[1].payload == {"message": "x"}

    def test_store_endpoint_and_unknown_paths(self, sentry_receiver: SentryReceiver) -> None:
        """The legacy store endpoint records an event; other paths get 404."""
        assert _post(sentry_receiver.base_url + "/api/1/store/", b'{"message":"m"}') == 200
        assert _post(sentry_receiver.base_url + "/nope") == 404
        assert sentry_receiver.events == [{"message": "m"}]
        assert sentry_receiver.requests == 2


class TestPostHogReceiver:
    @pytest.mark.parametrize("gzip", [False, True])
    def test_real_client_capture_reaches_batch(
        self, posthog_receiver: PostHogReceiver, gzip: bool
    ) -> None:
        """posthog.Posthog capture + flush posts to /batch/, gzip or not."""
        import posthog

        client = posthog.Posthog(
            "phc_test", host=posthog_receiver.host, gzip=gzip, max_retries=0, timeout=2
        )
        try:
            client.capture(
                "invariant_violated", distinct_id="billing", properties={"invariant": "x"}
            )
            client.flush()
        finally:
            client.shutdown()

        [event] = posthog_receiver.wait_for(1)
        assert event["event"] == "invariant_violated"
        assert event["distinct_id"] == "billing"
        assert event["properties"]["invariant"] == "x"
        [request] = [r for r in posthog_receiver.received if r.route == "/batch/"]
        assert request.content_encoding == ("gzip" if gzip else "")
        assert posthog_receiver.bodies[0]["api_key"] == "phc_test"
        assert not posthog_receiver.errors


class TestOTLPReceiver:
    def test_real_exporter_spans_decode(self, otlp_receiver: OTLPReceiver) -> None:
        """OTLPSpanExporter's gzip protobuf export decodes into span dicts with parentage."""
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.trace import Status, StatusCode

        provider = TracerProvider(resource=Resource.create({"service.name": "support"}))
        exporter = OTLPSpanExporter(
            endpoint=otlp_receiver.endpoint + "/v1/traces", compression=Compression.Gzip
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("support-test")
        try:
            with tracer.start_as_current_span("parent") as parent:
                with tracer.start_as_current_span("child", attributes={"k": "v", "n": 3}) as child:
                    child.add_event("violation", {"invariant": "x"})
                    child.set_status(Status(StatusCode.ERROR, "bad"))
        finally:
            provider.shutdown()

        spans = {span["name"]: span for span in otlp_receiver.wait_for(2)}
        trace_id = format(parent.get_span_context().trace_id, "032x")
        assert spans["parent"]["trace_id"] == trace_id
        assert spans["parent"]["parent_span_id"] is None
        assert spans["child"]["parent_span_id"] == spans["parent"]["span_id"]
        assert spans["child"]["span_id"] == format(child.get_span_context().span_id, "016x")
        assert spans["child"]["attributes"] == {"k": "v", "n": 3}
        assert spans["child"]["status_code"] == 2
        assert spans["child"]["events"] == ["violation"]
        assert spans["child"]["resource"]["service.name"] == "support"
        assert otlp_receiver.received[0].content_encoding == "gzip"
        assert not otlp_receiver.errors


class TestModes:
    def test_error_mode_answers_500_and_records_nothing_parsed(self) -> None:
        """In error mode the request is counted but not parsed."""
        with OTLPReceiver(mode="error") as receiver:
            assert _post(receiver.endpoint + "/v1/traces", b"") == 500
            receiver.mode = "ok"
            assert _post(receiver.endpoint + "/v1/traces", b"") == 200
            assert receiver.requests == 2
            assert receiver.spans == []

    def test_hang_mode_hangs_and_stops_fast(self) -> None:
        """A hanging receiver times a client out and still stops within about a second."""
        receiver = WebhookReceiver(mode="hang").start()
        try:
            started = time.monotonic()
            with pytest.raises((TimeoutError, urllib.error.URLError)):
                _post(receiver.url, timeout=0.5)
            assert 0.4 < time.monotonic() - started < 2.0
            receiver.wait_until(lambda: receiver.received, 1.0)
            assert receiver.requests == 1
        finally:
            stop_started = time.monotonic()
            receiver.stop()
            assert time.monotonic() - stop_started < 1.0

    def test_closed_port_refuses(self) -> None:
        """Nothing listens at closed_port_url()."""
        with pytest.raises(urllib.error.URLError) as excinfo:
            _post(closed_port_url(), timeout=1.0)
        assert isinstance(excinfo.value.reason, ConnectionRefusedError)

    def test_wait_for_times_out_with_a_clear_message(self, sentry_receiver: SentryReceiver) -> None:
        """wait_for raises AssertionError naming what was missing."""
        with pytest.raises(AssertionError, match="1 'event' items"):
            sentry_receiver.wait_for(1, timeout=0.1)


class TestTools:
    def test_promtool_and_amtool_check_configs(self, tmp_path: Path) -> None:
        """promtool accepts our rule file; amtool accepts our Alertmanager config."""
        import yaml

        from support.servers import alertmanager_config

        rules = tmp_path / "rules.yml"
        rules.write_text(ALWAYS_FIRING_RULES)
        result = run_promtool("check", "rules", str(rules))
        assert result.returncode == 0, result.stdout + result.stderr
        config = tmp_path / "am.yml"
        config.write_text(yaml.safe_dump(alertmanager_config("http://127.0.0.1:9/hook")))
        result = run_amtool("check-config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
class TestServers:
    def test_prometheus_scrapes_itself(self, prometheus_factory: Callable[..., Prometheus]) -> None:
        """Prometheus starts and answers ``up`` for itself."""
        prom = prometheus_factory()
        value = prom.wait_for(lambda: prom.query_value('up{job="prometheus"}'), timeout=15)
        assert value == 1.0

    def test_alertmanager_starts_without_cluster(
        self, alertmanager_factory: Callable[..., Alertmanager]
    ) -> None:
        """Alertmanager starts with clustering disabled and accepts alerts."""
        am = alertmanager_factory()
        assert am.status()["cluster"]["status"] == "disabled"
        am.post_alerts([{"labels": {"alertname": "Manual"}}])
        am.wait_for(am.alerts, timeout=5)

    def test_pushgateway_accepts_push(self, pushgateway: Pushgateway) -> None:
        """prometheus_client.push_to_gateway lands and is readable at /metrics."""
        from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

        registry = CollectorRegistry()
        Gauge("ik_support_gauge", "test gauge", registry=registry).set(42)
        push_to_gateway(pushgateway.address, job="support", registry=registry, timeout=5)
        assert pushgateway.metric_value("ik_support_gauge", {"job": "support"}) == 42.0
        pushgateway.wipe()
        assert pushgateway.metric_value("ik_support_gauge") is None

    def test_postgres_fresh_database(self, postgres: Postgres, pg_dsn: str) -> None:
        """pg_dsn is a fresh database that accepts psycopg connections."""
        import psycopg

        with psycopg.connect(pg_dsn, connect_timeout=5) as conn:
            row = conn.execute("select 1, current_database()").fetchone()
        assert row is not None
        assert row[0] == 1
        assert row[1] != "postgres"
        assert pg_dsn.startswith(f"postgresql://postgres@127.0.0.1:{postgres.port}/")

    def test_alert_pipeline_reaches_webhook(
        self,
        prometheus_factory: Callable[..., Prometheus],
        alertmanager_factory: Callable[..., Alertmanager],
        pushgateway: Pushgateway,
        webhook_receiver: WebhookReceiver,
    ) -> None:
        """Pushgateway -> Prometheus (honor_labels, rules) -> Alertmanager -> webhook."""
        am = alertmanager_factory(webhook_url=webhook_receiver.url)
        prom = prometheus_factory(
            rule_files={"support.yml": ALWAYS_FIRING_RULES},
            scrape_targets=[pushgateway.address],
            alertmanagers=[am.address],
        )
        prom.wait_for_targets_up()
        prom.wait_for_alert("SupportAlwaysFiring")
        [call] = webhook_receiver.wait_for(1, timeout=15)
        assert call.body["status"] == "firing"
        assert webhook_receiver.alerts()[0]["labels"]["alertname"] == "SupportAlwaysFiring"
