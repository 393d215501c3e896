"""``ik.configure``, ``ik.flush``, ``ik.shutdown``: auto-detection, env vars, clear errors,
reconfiguration without double registration."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit import billing
from invariantkit._config import STATE

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.receivers import PostHogReceiver, SentryReceiver


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (for what is set once per process, like the global
    OpenTelemetry tracer provider)."""
    import os

    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTHOG", "INVARIANTKIT", "OTEL_", "ALERT_"))
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        check=False,
    )


def sink_names(config: ik.Config) -> list[str]:
    return [s.name for s in config.sinks]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "OTEL_SERVICE_NAME",
        "INVARIANTKIT_ENVIRONMENT",
        "INVARIANTKIT_MODE",
        "ALERT_TEST_MODE",
        "POSTHOG_PROJECT_API_KEY",
        "POSTHOG_API_KEY",
        "POSTHOG_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def configured() -> Iterator[None]:
    """Shut down whatever a test configured (the autouse fixture restores the rest)."""
    try:
        yield
    finally:
        ik.shutdown(2.0)


class TestAutoDetection:
    def test_without_any_sdk_set_up_only_metrics_and_logs(self) -> None:
        """A fresh process: no tracer provider, no Sentry client, no PostHog key (the Sentry sink
        is there because sentry-sdk is installed; it sends nothing until a client is active)."""
        result = run_python(
            """
            import invariantkit as ik
            print([s.name for s in ik.configure().sinks])
            """
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "['prometheus', 'sentry', 'json_logs']"

    def test_an_sdk_tracer_provider_turns_traces_on(self) -> None:
        """The global OpenTelemetry SDK provider is detected and its spans are used."""
        result = run_python(
            """
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            import invariantkit as ik
            print([s.name for s in ik.configure().sinks])
            @ik.billing_operation("renewal")
            def renew():
                return ik.correlation_id()
            cid = renew()
            [span] = exporter.get_finished_spans()
            print(span.name, format(span.context.trace_id, "032x") == cid)
            """
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "['otel_traces', 'prometheus', 'sentry', 'json_logs']",
            "billing.renewal True",
        ]

    def test_missing_optional_sdks_are_skipped_silently(self) -> None:
        """Auto-detection with prometheus-client, sentry-sdk and posthog not importable."""
        result = run_python(
            """
            import sys
            for name in ("prometheus_client", "sentry_sdk", "posthog"):
                sys.modules[name] = None  # makes "import name" raise ImportError
            import invariantkit as ik
            print([s.name for s in ik.configure().sinks])
            """,
            env={"POSTHOG_PROJECT_API_KEY": "phc_test", "POSTHOG_HOST": "http://127.0.0.1:9"},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "['json_logs']"
        assert result.stderr == ""

    def test_using_the_api_before_configure_configures_with_defaults(self) -> None:
        """Never a silent no-op: the first violation configures and is logged as JSON."""
        result = run_python(
            """
            import invariantkit as ik
            from invariantkit import billing
            from invariantkit._config import STATE
            assert STATE.dispatcher is None
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "s1"})
            assert STATE.dispatcher is not None
            ik.flush()
            """
        )
        assert result.returncode == 0, result.stderr
        [line] = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
        assert line["event"] == "invariant.violated"
        assert line["invariant"] == "NO_DOUBLE_CHARGE"
        assert line["tags"] == {"subscription_id": "s1"}

    def test_configure_before_sentry_init_still_reaches_sentry(
        self, sentry_receiver: SentryReceiver
    ) -> None:
        """``configure()`` before ``sentry_sdk.init()`` (an app factory): nothing is sent while
        no client is active, then the violation arrives as our event, tagged with its invariant
        (not as a raw log line through Sentry's logging integration)."""
        result = run_python(
            f"""
            import invariantkit as ik, sentry_sdk
            from invariantkit import billing
            ik.configure()
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)  # no client yet: not sent
            ik.flush()
            sentry_sdk.init(dsn={sentry_receiver.dsn!r}, shutdown_timeout=2)
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={{"sub": "s1"}})
            ik.flush()
            sentry_sdk.flush(5)
            """
        )
        assert result.returncode == 0, result.stderr
        [event] = sentry_receiver.wait_for(1)
        assert event["tags"]["invariant"] == "NO_DOUBLE_CHARGE"
        assert event["tags"]["sub"] == "s1"
        assert len(sentry_receiver.events) == 1

    def test_a_posthog_key_in_the_environment_turns_posthog_on(
        self, clean_env: pytest.MonkeyPatch, configured: Any, posthog_receiver: PostHogReceiver
    ) -> None:
        """``POSTHOG_PROJECT_API_KEY`` + ``POSTHOG_HOST``: a client is built and events arrive."""
        clean_env.setenv("POSTHOG_PROJECT_API_KEY", "phc_from_env")
        clean_env.setenv("POSTHOG_HOST", posthog_receiver.host)
        config = ik.configure()
        assert sink_names(config) == ["prometheus", "sentry", "posthog", "json_logs"]

        @ik.billing_operation("renewal", user_facing=True)
        def renew() -> None:
            return None

        with ik.identify("user_42"):
            renew()
        assert ik.flush(5.0)
        [event] = posthog_receiver.wait_for(1)
        assert event["event"] == "billing_renewal_success"
        assert event["distinct_id"] == "user_42"
        assert posthog_receiver.bodies[0]["api_key"] == "phc_from_env"

    def test_posthog_api_key_is_the_fallback_name(
        self, clean_env: pytest.MonkeyPatch, configured: Any
    ) -> None:
        """``POSTHOG_API_KEY`` is read when ``POSTHOG_PROJECT_API_KEY`` is not set."""
        from support.receivers import closed_port_url

        clean_env.setenv("POSTHOG_API_KEY", "phc_fallback")
        clean_env.setenv("POSTHOG_HOST", closed_port_url())
        [posthog_sink] = [s for s in ik.configure().sinks if s.name == "posthog"]
        assert posthog_sink.client.api_key == "phc_fallback"  # type: ignore[attr-defined]


class TestMissingSdkNamedExplicitly:
    @pytest.mark.parametrize(
        ("module", "build", "extra"),
        [
            ("sentry_sdk", ik.sinks.Sentry, "sentry"),
            ("posthog", ik.sinks.PostHog, "posthog"),
            ("prometheus_client", ik.sinks.PrometheusMetrics, "prometheus"),
        ],
    )
    def test_raises_sink_unavailable_naming_the_extra(
        self, monkeypatch: pytest.MonkeyPatch, module: str, build: Any, extra: str
    ) -> None:
        """A sink the user named whose SDK is missing: ``SinkUnavailable`` with the fix."""
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(
            ik.sinks.SinkUnavailable, match=rf"pip install 'invariantkit\[{extra}\]'"
        ):
            build()
        assert issubclass(ik.sinks.SinkUnavailable, ImportError)


class TestEnvironmentAndDefaults:
    def test_defaults(self, clean_env: Any, configured: Any) -> None:
        """Without arguments or env vars: unknown_service, production, report, not test mode."""
        config = ik.configure(sinks=[])
        assert (config.service, config.environment, config.mode, config.test_mode) == (
            "unknown_service",
            "production",
            "report",
            False,
        )

    def test_env_vars(self, clean_env: pytest.MonkeyPatch, configured: Any) -> None:
        """``OTEL_SERVICE_NAME``, ``INVARIANTKIT_ENVIRONMENT``, ``INVARIANTKIT_MODE``,
        ``ALERT_TEST_MODE``."""
        clean_env.setenv("OTEL_SERVICE_NAME", "billing-api")
        clean_env.setenv("INVARIANTKIT_ENVIRONMENT", "staging")
        clean_env.setenv("INVARIANTKIT_MODE", " Enforce ")
        clean_env.setenv("ALERT_TEST_MODE", "true")
        config = ik.configure(sinks=[])
        assert (config.service, config.environment, config.mode, config.test_mode) == (
            "billing-api",
            "staging",
            "enforce",
            True,
        )

    def test_arguments_win_over_env_vars(
        self, clean_env: pytest.MonkeyPatch, configured: Any
    ) -> None:
        """An explicit argument beats the environment."""
        clean_env.setenv("OTEL_SERVICE_NAME", "from-env")
        clean_env.setenv("INVARIANTKIT_MODE", "enforce")
        clean_env.setenv("ALERT_TEST_MODE", "1")
        config = ik.configure(service="arg", mode="report", test_mode=False, sinks=[])
        assert (config.service, config.mode, config.test_mode) == ("arg", "report", False)

    @pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
    def test_alert_test_mode_false_values(
        self, clean_env: pytest.MonkeyPatch, configured: Any, value: str
    ) -> None:
        """The usual spellings of false are false."""
        clean_env.setenv("ALERT_TEST_MODE", value)
        assert ik.configure(sinks=[]).test_mode is False

    def test_env_in_log_lines(self, clean_env: pytest.MonkeyPatch, configured: Any) -> None:
        """Service and environment are on every JSON log line."""
        memory_logger = logging.getLogger("invariantkit.test_config")
        lines: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(record.getMessage())

        handler = Keep()
        memory_logger.addHandler(handler)
        memory_logger.setLevel(logging.INFO)
        try:
            ik.configure(
                service="billing-api",
                environment="staging",
                sinks=[ik.sinks.JsonLogs(memory_logger)],
            )
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            ik.flush()
        finally:
            memory_logger.removeHandler(handler)
        [line] = [json.loads(x) for x in lines]
        assert (line["service"], line["environment"]) == ("billing-api", "staging")


class TestBadValues:
    @pytest.mark.parametrize(
        ("kwargs", "error", "fragment"),
        [
            ({"mode": "strict"}, ValueError, "mode='strict' must be 'report' or 'enforce'"),
            ({"mode": 1}, ValueError, "mode=1 must be 'report' or 'enforce'"),
            ({"service": 5}, TypeError, r"configure\(service=...\) must be a str"),
            ({"service": " "}, ValueError, r"configure\(service=...\) must not be empty"),
            ({"environment": b"prod"}, TypeError, r"configure\(environment=...\) must be a str"),
            ({"environment": ""}, ValueError, r"configure\(environment=...\) must not be empty"),
            ({"sinks": "json_logs"}, TypeError, "must be a list of sinks"),
            ({"sinks": [object()]}, TypeError, "is not a sink"),
            ({"sinks": [ik.sinks.Memory]}, TypeError, "is not a sink"),
            ({"test_mode": "true"}, TypeError, r"test_mode=...\) must be True, False or None"),
            ({"scrub": "yes"}, TypeError, r"scrub=...\) must be a Scrubber, True, False or None"),
        ],
    )
    def test_arguments(
        self, clean_env: Any, kwargs: dict[str, Any], error: type[Exception], fragment: str
    ) -> None:
        """Each bad argument is a clear error naming it, and nothing is configured."""
        before = STATE.dispatcher
        with pytest.raises(error, match=fragment):
            ik.configure(**kwargs)
        assert STATE.dispatcher is before

    @pytest.mark.parametrize(
        ("name", "value", "fragment"),
        [
            ("INVARIANTKIT_MODE", "loud", "INVARIANTKIT_MODE='loud' must be 'report' or 'enforce'"),
            ("ALERT_TEST_MODE", "maybe", "ALERT_TEST_MODE='maybe' must be true or false"),
        ],
    )
    def test_env_vars(
        self, clean_env: pytest.MonkeyPatch, name: str, value: str, fragment: str
    ) -> None:
        """A bad environment variable is named in the error."""
        clean_env.setenv(name, value)
        with pytest.raises(ValueError, match=fragment):
            ik.configure(sinks=[])

    def test_a_duplicate_sink_instance_is_refused(self) -> None:
        """The same sink object twice would count everything twice."""
        sink = ik.sinks.Memory()
        with pytest.raises(ValueError, match="more than once"):
            ik.configure(sinks=[sink, sink])


class TestReconfiguration:
    def test_configure_twice_and_after_shutdown_registers_nothing_twice(
        self, configured: Any
    ) -> None:
        """Reconfiguring with the same registry neither fails nor resets the counts."""
        registry = CollectorRegistry()

        @ik.billing_operation("renewal")
        def renew() -> None:
            return None

        for _ in range(2):
            ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry)])
            renew()
        ik.shutdown()
        ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry)])
        renew()
        names = [family.name for family in registry.collect()]
        assert len(names) == len(set(names))
        value = registry.get_sample_value(
            "billing_operation_total", {"operation": "renewal", "outcome": "success"}
        )
        assert value == 3

    def test_default_registry_twice(self, configured: Any) -> None:
        """Two sinks on prometheus-client's default registry share its families."""
        ik.configure(sinks=[ik.sinks.PrometheusMetrics()])
        ik.configure(sinks=[ik.sinks.PrometheusMetrics()])

    def test_new_sinks_get_every_declaration_at_zero(self, configured: Any) -> None:
        """Counters of operations declared before ``configure`` exist at zero in the new sink."""

        @ik.billing_operation("declared_before")
        def op() -> None:
            return None

        registry = CollectorRegistry()
        ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry)])
        assert (
            registry.get_sample_value(
                "billing_operation_total", {"operation": "declared_before", "outcome": "failure"}
            )
            == 0
        )
        assert (
            registry.get_sample_value(
                "billing_invariant_violation_total",
                {"type": "double_charge", "invariant": "NO_DOUBLE_CHARGE", "test": "false"},
            )
            == 0
        )

    def test_sink_counters_exist_at_zero_for_every_sink(self, configured: Any) -> None:
        """``invariantkit_sink_errors_total`` and ``_dropped_total`` exist at 0 for each
        configured sink, so the first error after a start is an increase an alert sees."""
        registry = CollectorRegistry()
        ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry), ik.sinks.JsonLogs()])
        for sink in ("prometheus", "json_logs"):
            assert registry.get_sample_value("invariantkit_sink_errors_total", {"sink": sink}) == 0
            for reason in ("queue_full", "shutdown", "sdk_queue_full", "error", "sampled"):
                labels = {"sink": sink, "reason": reason}
                assert registry.get_sample_value("invariantkit_sink_dropped_total", labels) == 0

    def test_old_sinks_stop_receiving(self, configured: Any) -> None:
        """After reconfiguring, signals go to the new sinks only."""
        old, new = ik.sinks.Memory(), ik.sinks.Memory()
        ik.configure(sinks=[old])
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        ik.configure(sinks=[new])
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        assert (len(old.records), len(new.records)) == (1, 1)

    def test_after_shutdown_nothing_is_sent_until_configure(
        self, configured: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After shutdown() and before the next configure(): business code runs unchanged,
        nothing reaches any sink (not even auto-detected defaults), every dropped signal is
        counted in ik.stats() with reason "shutdown", and one warning line says so."""
        memory = ik.sinks.Memory()
        ik.configure(sinks=[ik.sinks.JsonLogs(), memory])
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        assert ik.shutdown(2.0)
        seen = len(memory.records)
        before = ik.stats().dropped.get(("memory", "shutdown"), 0)

        @ik.billing_operation("after_shutdown")
        def charge(amount: int) -> int:
            return amount * 2

        with caplog.at_level(logging.WARNING, logger="invariantkit"):
            assert ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE) is False
            assert charge(21) == 42
            ik.track("after_shutdown")
        assert len(memory.records) == seen
        assert not STATE.config.sinks  # no auto-detected default was configured
        assert ik.stats().dropped.get(("memory", "shutdown"), 0) - before == 3
        warnings = [r for r in caplog.records if "after ik.shutdown()" in r.getMessage()]
        assert len(warnings) == 1
        ik.configure(sinks=[memory])
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        assert memory.records[-1].kind == "violation"

    def test_flush_and_shutdown_without_configuration(self) -> None:
        """Both are no-ops returning True when nothing is configured."""
        STATE.dispatcher, STATE.config = None, None
        assert ik.flush(0.1)
        assert ik.shutdown(0.1)
