"""invariantkit.testing: capture_signals() isolates real SDK pipelines; Signals asserts on them."""

from __future__ import annotations

import logging
import sys
from typing import Any, ClassVar

import pytest
import sentry_sdk
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import Gauge

import invariantkit as ik
from invariantkit import billing
from invariantkit._config import STATE
from invariantkit._context import CORRELATION, USER
from invariantkit.sinks import Memory, SinkUnavailable
from invariantkit.testing import Signals, SinkError, capture_signals

VIOLATIONS = "billing_invariant_violation_total"


@ik.billing_operation("renewal", user_facing=True)
def renew(subscription_id: str, charges_today: int) -> str:
    ik.assert_invariant(
        charges_today <= 1,
        billing.NO_DOUBLE_CHARGE,
        tags={"subscription_id": subscription_id, "charges_today": charges_today},
    )
    return "renewed"


@ik.billing_operation("refund", user_facing=True)
def refund(amount: int) -> int:
    if amount < 0:
        raise ValueError("negative refund")
    return amount


class Raising:
    """A sink that raises on every record, to prove isolation and error reporting."""

    name: ClassVar[str] = "raising"
    deferred: ClassVar[bool] = False

    def emit(self, record: Any) -> None:
        if record.kind != "declare":
            raise RuntimeError("sink bug")

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True


def _outer_state() -> tuple[Any, Any]:
    return STATE.config, STATE.dispatcher


# --- restoring global state ----------------------------------------------------------------------


class TestRestore:
    def test_configuration_is_restored_and_outer_sinks_see_nothing(self) -> None:
        """The user's configuration is back after the block, and never saw the block's signals."""
        outer = Memory()
        ik.configure(sinks=[outer])
        before = _outer_state()
        with capture_signals() as signals:
            assert STATE.dispatcher is not before[1]
            renew("sub_1", 2)
        assert _outer_state() == before
        assert [r for r in outer.records if r.kind == "violation"] == []
        assert len(signals.violations) == 1
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        assert [r.name for r in outer.records if r.kind == "violation"] == ["NO_DOUBLE_CHARGE"]

    def test_restored_when_the_body_raises(self) -> None:
        """An exception in the body propagates unchanged, and the state is restored anyway."""
        before = _outer_state()
        error = KeyError("boom")
        with pytest.raises(KeyError) as info, capture_signals():
            ik.identify("leaky_user")
            raise error
        assert info.value is error
        assert _outer_state() == before
        assert USER.get() is None

    def test_configure_inside_the_block_is_undone(self) -> None:
        """ik.configure() inside replaces the capture until the exit, which restores the
        outer configuration; failure messages say what happened."""
        before = _outer_state()
        inner = Memory()
        with capture_signals() as signals:
            ik.configure(sinks=[inner])
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            with pytest.raises(AssertionError, match="configured again inside this capture"):
                signals.assert_violation("NO_DOUBLE_CHARGE")
        assert _outer_state() == before
        assert [r.name for r in inner.records if r.kind == "violation"] == ["NO_DOUBLE_CHARGE"]

    def test_declarations_made_inside_are_forgotten(self) -> None:
        """An invariant declared inside exists at zero in the capture's registry, and neither
        the catalog nor the outer registry keeps it."""
        from prometheus_client import CollectorRegistry

        outer_registry = CollectorRegistry()
        ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry=outer_registry)])
        with capture_signals() as signals:
            ik.Invariant("CAPTURE_ONLY", type="capture_only", summary="Declared in a test")
            assert "CAPTURE_ONLY" in ik.get_catalog().invariants
            assert signals.metric(VIOLATIONS, invariant="CAPTURE_ONLY") == 0.0
            labels = {
                s.labels.get("invariant") for f in signals.registry.collect() for s in f.samples
            }
            assert "CAPTURE_ONLY" in labels
        assert "CAPTURE_ONLY" not in ik.get_catalog().invariants
        outer_labels = {
            s.labels.get("invariant") for f in outer_registry.collect() for s in f.samples
        }
        assert "CAPTURE_ONLY" not in outer_labels
        assert "NO_DOUBLE_CHARGE" in outer_labels

    def test_context_bound_and_not_unbound_inside_is_dropped(self) -> None:
        """identify() and extract() left bound inside (no ``with``) do not survive the block:
        user, correlation and OpenTelemetry context are as they were."""
        remote = "ab" * 16
        ctx_before = otel_context.get_current()
        with capture_signals():
            ik.identify("leaky_user")
            ik.extract({"traceparent": f"00-{remote}-{'cd' * 8}-01"})
            CORRELATION.set((1, 1))
            assert ik.correlation_id() == remote
        assert USER.get() is None
        assert CORRELATION.get() is None
        assert otel_context.get_current() == ctx_before
        assert not trace.get_current_span().get_span_context().is_valid
        assert ik.correlation_id() != remote

    def test_bound_user_at_entry_is_kept(self) -> None:
        """A user bound around the block applies inside (a fixture may log a user in first)."""
        with ik.identify("user_7"), capture_signals() as signals:
            renew("sub_1", 2)
            assert USER.get() == "user_7"
        assert signals.assert_violation("NO_DOUBLE_CHARGE").user_id == "user_7"
        assert USER.get() is None

    def test_sentry_client_and_scopes_are_restored(self) -> None:
        """The global client is the one from before; tags and user set inside do not leak into
        the next capture's events."""
        global_scope = sentry_sdk.get_global_scope()
        client_before = global_scope.client
        with capture_signals():
            assert global_scope.client is not client_before
            sentry_sdk.set_tag("leaked_tag", "yes")
            sentry_sdk.set_user({"id": "leaked_user"})
        assert global_scope.client is client_before
        with capture_signals() as signals:
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        (event,) = signals.sentry_events
        assert "leaked_tag" not in event["tags"]
        assert event.get("user", {}).get("id") != "leaked_user"

    def test_sentry_events_from_threads_are_captured(self) -> None:
        """A thread started by the code under test has no scope of its own: its events reach the
        capture through the global client."""
        import threading

        with capture_signals() as signals:
            thread = threading.Thread(
                target=ik.assert_invariant, args=(False, billing.NO_DOUBLE_CHARGE)
            )
            thread.start()
            thread.join()
        assert [e["message"] for e in signals.sentry_events] == ["NO_DOUBLE_CHARGE"]

    def test_logger_is_left_alone_and_every_line_is_captured(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The ``invariantkit`` logger's level, handlers and flags are untouched; debug lines are
        captured anyway; lines its level allows still reach its handlers (caplog)."""
        logger = logging.getLogger("invariantkit")
        caplog.set_level(logging.ERROR, logger="invariantkit")
        before = (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        with capture_signals() as signals:
            renew("sub_1", 2)
            assert refund(5) == 5
        after = (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        assert after == before
        events = [line["event"] for line in signals.logs]
        assert events.count("operation.start") == 2
        assert "invariant.violated" in events
        forwarded = [r.levelname for r in caplog.records if r.name == "invariantkit"]
        assert forwarded == ["CRITICAL"]  # the violation; info and debug lines are below ERROR

    def test_log_once_memory_is_restored(self) -> None:
        """invariantkit logs an internal error once per place; inside a capture that memory is
        fresh (so the error is seen), and it is put back after."""
        from invariantkit import _operation

        _operation._internal_errors_logged.add("somewhere")
        before = set(_operation._internal_errors_logged)  # earlier tests may have logged some
        try:
            with capture_signals():
                assert "somewhere" not in _operation._internal_errors_logged
                _operation._internal_errors_logged.add("inside")
            assert _operation._internal_errors_logged == before
        finally:
            _operation._internal_errors_logged.discard("somewhere")

    def test_nested_captures(self) -> None:
        """The inner capture sees only what happens inside it; the outer one sees the rest and
        works again after the inner one exits."""
        with capture_signals() as outer:
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"at": "before"})
            with capture_signals() as inner:
                ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"at": "inner"})
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"at": "after"})
            assert [r.attributes["at"] for r in outer.violations] == ["before", "after"]
            assert outer.metric(VIOLATIONS) == 2.0
            assert len(outer.sentry_events) == 2
            assert len(outer.posthog_events) == 2
            assert len([x for x in outer.logs if x["event"] == "invariant.violated"]) == 2
        assert [r.attributes["at"] for r in inner.violations] == ["inner"]
        assert inner.metric(VIOLATIONS) == 1.0
        assert [e["tags"]["at"] for e in inner.sentry_events] == ["inner"]
        assert [m["properties"]["at"] for m in inner.posthog_events] == ["inner"]

    def test_state_after_exit_is_readable(self) -> None:
        """What was captured stays readable once the block has exited."""
        with capture_signals() as signals:
            renew("sub_1", 2)
        assert signals.assert_operation("renewal", "success").name == "renewal"
        assert len(signals.spans) == 1
        assert signals.metric(VIOLATIONS, invariant="NO_DOUBLE_CHARGE") == 1.0
        signals.assert_correlated()


# --- hypothesis ----------------------------------------------------------------------------------


class TestHypothesis:
    def test_one_capture_per_example_and_nothing_leaks_between_examples(self) -> None:
        """30 examples, each with its own capture: every example starts from zero and sees only
        its own violations, user, tags and declarations."""
        seen: list[int] = []

        @settings(max_examples=30, deadline=None, database=None)
        @given(
            user=st.text(alphabet="abcdefghij", min_size=1, max_size=8),
            count=st.integers(min_value=0, max_value=4),
            declare=st.booleans(),
        )
        def example(user: str, count: int, declare: bool) -> None:
            before = _outer_state()
            number = len(seen)
            seen.append(number)
            with capture_signals() as signals:
                assert signals.records == []
                assert signals.metric(VIOLATIONS) == 0.0
                assert "EXAMPLE_ONLY" not in ik.get_catalog().invariants
                sentry_sdk.set_tag("example", str(number))  # left set on purpose
                ik.identify(user)  # left bound on purpose
                if declare:
                    ik.Invariant("EXAMPLE_ONLY", type="example_only", summary="Per example")
                for i in range(count):
                    renew(f"sub_{number}_{i}", 2)
                signals.assert_correlated() if count else signals.assert_no_violations()
                assert signals.metric(VIOLATIONS, invariant="NO_DOUBLE_CHARGE") == count
                assert len(signals.sentry_events) == count
                assert {e["tags"]["example"] for e in signals.sentry_events} <= {str(number)}
                assert {e["user"]["id"] for e in signals.sentry_events} <= {user}
                ph = [m for m in signals.posthog_events if m["event"] == "invariant_violated"]
                assert [m["distinct_id"] for m in ph] == [user] * count
                assert len(signals.spans) == count
            assert _outer_state() == before
            assert USER.get() is None
            assert "EXAMPLE_ONLY" not in ik.get_catalog().invariants
            assert "example" not in sentry_sdk.get_isolation_scope()._tags

        example()
        assert len(seen) >= 25


# --- options and backends ------------------------------------------------------------------------

BACKEND_MODULES = {
    "traces": ("opentelemetry.sdk.trace", "opentelemetry-sdk", "spans"),
    "metrics": ("prometheus_client", "prometheus-client", "registry"),
    "sentry": ("sentry_sdk", "sentry-sdk", "sentry_events"),
    "posthog": ("posthog", "posthog", "posthog_events"),
}


class TestBackends:
    @pytest.mark.parametrize("backend", sorted(BACKEND_MODULES))
    def test_missing_sdk_is_skipped_by_default_and_reading_it_says_why(
        self, backend: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the SDK the capture still works; reading that backend raises a clear error
        instead of an empty list that would pass an assertion for the wrong reason."""
        module, package, attribute = BACKEND_MODULES[backend]
        monkeypatch.setitem(sys.modules, module, None)
        with capture_signals() as signals:
            renew("sub_1", 2)
        signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_1")
        with pytest.raises(RuntimeError, match=f"{package} is not installed") as info:
            getattr(signals, attribute)
        assert "invariantkit[" in str(info.value)
        signals.assert_correlated()  # checks the backends that are captured

    @pytest.mark.parametrize("backend", sorted(BACKEND_MODULES))
    def test_missing_sdk_is_an_error_when_asked_for(
        self, backend: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``<backend>=True`` with the SDK missing fails at once, naming the package to install,
        and leaves nothing half set up."""
        module, package, _ = BACKEND_MODULES[backend]
        monkeypatch.setitem(sys.modules, module, None)
        before = _outer_state()
        with pytest.raises(SinkUnavailable, match=f"{backend}=True.*{package}.*pip install"):
            with capture_signals(**{backend: True}):
                pass  # pragma: no cover - never entered
        assert _outer_state() == before

    def test_every_backend_off(self) -> None:
        """With every SDK backend off, records and log lines are still captured."""
        with capture_signals(traces=False, metrics=False, sentry=False, posthog=False) as signals:
            renew("sub_1", 2)
        signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_1")
        assert any(line["event"] == "invariant.violated" for line in signals.logs)
        signals.assert_correlated()
        with pytest.raises(RuntimeError, match="sentry=False was passed"):
            _ = signals.sentry_events
        with pytest.raises(RuntimeError, match="metrics=False was passed"):
            signals.metric(VIOLATIONS)
        assert "sentry: not captured (sentry=False was passed)" in signals._summary()

    @pytest.mark.parametrize(
        ("options", "error", "message"),
        [
            ({"mode": "enforced"}, ValueError, "mode='enforced'"),
            ({"test_mode": "yes"}, TypeError, "test_mode"),
            ({"traces": "on"}, TypeError, "traces"),
            ({"scrub": "yes"}, TypeError, "scrub"),
            ({"service": ""}, TypeError, "service"),
            ({"environment": 3}, TypeError, "environment"),
            ({"extra_sinks": [object()]}, TypeError, "not a sink"),
            ({"sentry_options": ["x"]}, TypeError, "sentry_options"),
            ({"fail_on_sink_error": 1}, TypeError, "fail_on_sink_error"),
        ],
    )
    def test_bad_options_fail_clearly(
        self, options: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        """A wrong option is an error naming it, before anything is set up."""
        before = _outer_state()
        with pytest.raises(error, match=message):
            with capture_signals(**options):
                pass  # pragma: no cover - never entered
        assert _outer_state() == before

    def test_enforce_mode(self) -> None:
        """mode="enforce": a violation is reported everywhere, then raises."""
        with capture_signals(mode="enforce") as signals:
            with pytest.raises(ik.InvariantViolation):
                renew("sub_1", 2)
        signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_1")
        signals.assert_operation("renewal", "failure")
        assert (
            signals.metric("billing_operation_errors_total", error_type="InvariantViolation") == 1
        )

    def test_scrub_off_and_custom(self) -> None:
        """scrub=False sends values as they are; a Scrubber is used as given."""
        with capture_signals(scrub=False) as raw:
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"email": "a@example.com"})
        raw.assert_violation("NO_DOUBLE_CHARGE", email="a@example.com")
        with capture_signals(scrub=ik.Scrubber(emails=False)) as custom:
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"email": "a@example.com"})
        custom.assert_violation("NO_DOUBLE_CHARGE", email="a@example.com")
        with capture_signals() as default:
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"email": "a@example.com"})
        default.assert_violation("NO_DOUBLE_CHARGE", email="[redacted]")

    def test_service_and_environment(self) -> None:
        """service and environment reach log lines, the span resource and Sentry."""
        with capture_signals(service="billing-api", environment="staging") as signals:
            renew("sub_1", 2)
        line = next(x for x in signals.logs if x["event"] == "invariant.violated")
        assert (line["service"], line["environment"]) == ("billing-api", "staging")
        assert signals.spans[0].resource.attributes["service.name"] == "billing-api"
        assert signals.sentry_events[0]["environment"] == "staging"

    def test_test_mode(self) -> None:
        """test_mode=True is the configuration's test mode: every declared invariant is announced
        for its test="true" series at zero, and no delayed test alert fires."""
        from invariantkit._config import current_config
        from invariantkit._invariant import fire_test_alert

        class Declarations:
            name: ClassVar[str] = "declarations"
            deferred: ClassVar[bool] = False

            def __init__(self) -> None:
                self.test: list[str] = []

            def emit(self, record: Any) -> None:
                if record.kind == "declare" and record.test:
                    self.test.append(record.name)

            def flush(self, timeout: float) -> bool:
                return True

            def shutdown(self, timeout: float) -> bool:
                return True

        plain, announced = Declarations(), Declarations()
        with capture_signals(extra_sinks=[plain]):
            assert current_config().test_mode is False
        with capture_signals(test_mode=True, extra_sinks=[announced]) as signals:
            assert current_config().test_mode is True
            assert signals.records == []
            fire_test_alert(billing.NO_DOUBLE_CHARGE)
            assert signals.metric(VIOLATIONS, invariant="NO_DOUBLE_CHARGE", test="true") == 1.0
            assert signals.metric(VIOLATIONS, invariant="NO_DOUBLE_CHARGE", test="false") == 0.0
        assert plain.test == []
        assert "NO_DOUBLE_CHARGE" in announced.test

    def test_sentry_options_reach_the_client(self) -> None:
        """sentry_options configure the real client: here a before_send that drops events."""
        with capture_signals(sentry_options={"before_send": lambda event, hint: None}) as dropped:
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        assert dropped.sentry_events == []
        with capture_signals(sentry_options={"dsn": "https://k@example.com/1"}) as kept:
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        assert len(kept.sentry_envelopes) == 1  # the DSN and transport stay the capture's


# --- swallowed errors ----------------------------------------------------------------------------


class TestSinkErrors:
    def test_a_raising_sink_is_isolated_and_recorded(self) -> None:
        """A sink that raises does not reach the code under test; the error is kept with its
        exception and counted in the metric."""
        with capture_signals(extra_sinks=[Raising()], fail_on_sink_error=False) as signals:
            assert renew("sub_1", 2) == "renewed"
        errors = signals.sink_errors
        assert errors
        assert all(isinstance(e, SinkError) for e in errors)
        assert {e.sink for e in errors} == {"raising"}
        assert isinstance(errors[0].exception, RuntimeError)
        assert signals.metric("invariantkit_sink_errors_total", sink="raising") == len(errors)
        signals.assert_violation("NO_DOUBLE_CHARGE")

    def test_assert_no_sink_errors_shows_the_traceback(self) -> None:
        """The message names the sink and shows where it raised."""
        with capture_signals(extra_sinks=[Raising()]) as signals:
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            with pytest.raises(AssertionError) as info:
                signals.assert_no_sink_errors()
        message = str(info.value)
        assert "invariantkit swallowed" in message
        assert "raising: sink 'raising' raised RuntimeError: sink bug" in message
        assert 'raise RuntimeError("sink bug")' in message
        assert isinstance(info.value.__cause__, RuntimeError)

    def test_fail_on_sink_error_raises_at_exit(self) -> None:
        """fail_on_sink_error=True turns a swallowed error into a failure when the block exits."""
        with pytest.raises(AssertionError, match="sink 'raising' raised"):
            with capture_signals(extra_sinks=[Raising()], fail_on_sink_error=True):
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)

    def test_fail_on_sink_error_does_not_mask_the_body_exception(self) -> None:
        """When the body raised, that exception is what propagates."""
        with pytest.raises(KeyError):
            with capture_signals(extra_sinks=[Raising()], fail_on_sink_error=True):
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
                raise KeyError("body")

    def test_fail_on_sink_error_reports_each_error_once(self) -> None:
        """Errors already asserted on are not raised again at exit."""
        with capture_signals(extra_sinks=[Raising()], fail_on_sink_error=True) as signals:
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            with pytest.raises(AssertionError):
                signals.assert_no_sink_errors()

    def test_internal_errors_are_recorded(self) -> None:
        """An error invariantkit logs with its traceback on its logger is an internal error."""
        with capture_signals() as signals:
            try:
                raise ZeroDivisionError("internal")
            except ZeroDivisionError:
                logging.getLogger("invariantkit").exception("invariantkit: internal error in x")
        (error,) = signals.sink_errors
        assert error.sink == "invariantkit"
        assert error.message == "invariantkit: internal error in x"
        assert isinstance(error.exception, ZeroDivisionError)

    def test_healthy_capture_has_no_errors(self) -> None:
        """Every real pipeline handles operations, violations and events without an error."""
        with capture_signals(fail_on_sink_error=True) as signals:
            with ik.identify("user_1"):
                renew("sub_1", 2)
                with pytest.raises(ValueError):
                    refund(-1)
                ik.track("subscription_started", subscription_id="sub_1")
        assert signals.sink_errors == []
        signals.assert_no_sink_errors()


# --- Signals -------------------------------------------------------------------------------------


class TestMetric:
    def test_declared_series_exist_at_zero(self) -> None:
        """A declared invariant's series exists at zero before any violation."""
        with capture_signals() as signals:
            assert signals.metric(VIOLATIONS, invariant="NO_DOUBLE_CHARGE") == 0.0
            renew("sub_1", 2)
            renew("sub_2", 3)
            assert signals.metric(VIOLATIONS, invariant="NO_DOUBLE_CHARGE") == 2.0
            assert signals.metric(VIOLATIONS, type="double_charge", test="false") == 2.0
            assert signals.metric(VIOLATIONS, invariant="PERIOD_MUST_ADVANCE") == 0.0

    def test_sum_over_series_and_name_without_total(self) -> None:
        """Without labels it sums every series; a counter may be named without ``_total``."""
        with capture_signals() as signals:
            renew("sub_1", 2)
            ik.report_violation(billing.PERIOD_MUST_ADVANCE)
            assert signals.metric(VIOLATIONS) == 2.0
            assert signals.metric("billing_invariant_violation") == 2.0
            assert signals.metric("billing_operation_total", operation="renewal") == 1.0
            assert signals.metric("billing_operation_duration_seconds_count") == 1.0

    def test_children_created_on_first_use_read_zero(self) -> None:
        """A label value with no series yet (an error type never seen) reads 0."""
        with capture_signals() as signals:
            assert signals.metric("billing_operation_errors_total", error_type="KeyError") == 0.0
            with pytest.raises(ValueError):
                refund(-1)
            assert signals.metric("billing_operation_errors_total", error_type="ValueError") == 1
            assert signals.metric("billing_operation_errors_total", error_type="KeyError") == 0.0

    def test_typos_raise(self) -> None:
        """An unknown metric, an unknown label or a histogram without suffix is an error."""
        with capture_signals() as signals:
            renew("sub_1", 1)
            with pytest.raises(ValueError, match="did you mean billing_invariant_violation_total"):
                signals.metric("billing_invariant_violations_total")
            with pytest.raises(ValueError, match="no label named invariant_name"):
                signals.metric(VIOLATIONS, invariant_name="NO_DOUBLE_CHARGE")
            with pytest.raises(ValueError, match="is a histogram: read"):
                signals.metric("billing_operation_duration_seconds")

    def test_clear_resets_counters_not_gauges(self) -> None:
        """After clear(), counters and histograms count from zero; gauges keep their value."""
        with capture_signals() as signals:
            gauge = Gauge("app_backlog", "A gauge of the app", registry=signals.registry)
            gauge.set(5)
            renew("sub_1", 2)
            signals.clear()
            assert signals.metric(VIOLATIONS) == 0.0
            assert signals.metric("billing_operation_duration_seconds_count") == 0.0
            assert signals.metric("app_backlog") == 5.0
            renew("sub_1", 2)
            assert signals.metric(VIOLATIONS) == 1.0


class TestSentryCheckins:
    def test_cron_checkins_are_captured(self) -> None:
        """Sentry Crons check-ins are read as posted; the cron gauges read like any metric."""
        with capture_signals() as signals:
            with ik.monitor_cron("nightly_renewals", every=3600, max_runtime=600) as run:
                run.processed += 3
        statuses = [(c["monitor_slug"], c["status"]) for c in signals.sentry_checkins]
        assert statuses == [("nightly-renewals", "in_progress"), ("nightly-renewals", "ok")]
        assert signals.sentry_events == []
        assert signals.metric("cron_nightly_renewals_processed") == 3.0
        assert "nightly_renewals" not in ik.get_catalog().crons


class TestAssertions:
    def test_assert_violation_matches_tags_as_text(self) -> None:
        """Tags match after the conversion to text that reporting applies."""
        with capture_signals() as signals:
            renew("sub_1", 2)
            record = signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_1")
            assert record.attributes["charges_today"] == "2"
            signals.assert_violation(billing.NO_DOUBLE_CHARGE, charges_today=2, count=1)
            ik.report_violation(billing.PERIOD_MUST_ADVANCE, tags={"renewed": True})
            signals.assert_violation("PERIOD_MUST_ADVANCE", renewed=True)

    def test_assert_violation_message_lists_what_was_reported(self) -> None:
        """A wrong tag: the message shows the tags that were reported, and everything else."""
        with capture_signals() as signals:
            with ik.identify("user_1"):
                renew("sub_1", 2)
                renew("sub_1", 3)
            with pytest.raises(AssertionError) as info:
                signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_2")
        message = str(info.value)
        assert message.startswith(
            "expected a violation of NO_DOUBLE_CHARGE with tags {subscription_id='sub_2'}, found 0."
        )
        assert "NO_DOUBLE_CHARGE was reported 2 time(s), with tags:" in message
        assert "{subscription_id='sub_1', charges_today='2'}" in message
        assert "violations (2):" in message
        assert "operations (2): renewal success x2" in message
        assert "sentry events (2): 'NO_DOUBLE_CHARGE' (fatal) x2" in message
        assert "posthog events (4): invariant_violated x2, billing_renewal_success x2" in message
        assert "spans (2): billing.renewal [ERROR] x2" in message

    def test_assert_violation_count(self) -> None:
        """With count, the number must be exact; the message gives the number found."""
        with capture_signals() as signals:
            renew("sub_1", 2)
            renew("sub_1", 2)
            signals.assert_violation("NO_DOUBLE_CHARGE", count=2, subscription_id="sub_1")
            with pytest.raises(AssertionError, match=r"expected 1 violation\(s\) .* found 2"):
                signals.assert_violation("NO_DOUBLE_CHARGE", count=1)

    def test_assert_violation_suggests_a_name(self) -> None:
        """A misspelt invariant name gets a suggestion."""
        with capture_signals() as signals:
            with pytest.raises(AssertionError, match="did you mean NO_DOUBLE_CHARGE"):
                signals.assert_violation("NO_DOUBLE_CHARGES")

    def test_assert_no_violations(self) -> None:
        """Passes when nothing was reported; otherwise names what was."""
        with capture_signals() as signals:
            renew("sub_1", 1)
            signals.assert_no_violations()
            renew("sub_1", 2)
            with pytest.raises(AssertionError, match="found 1: NO_DOUBLE_CHARGE x1"):
                signals.assert_no_violations()

    def test_assert_operation(self) -> None:
        """Outcome and count are checked; the message lists the outcomes seen."""
        with capture_signals() as signals:
            refund(1)
            with pytest.raises(ValueError):
                refund(-1)
            assert signals.assert_operation("refund", "failure").exception is not None
            signals.assert_operation("refund", count=2)
            with pytest.raises(AssertionError, match="refund ended 2 time"):
                signals.assert_operation("refund", "success", count=2)
            with pytest.raises(AssertionError, match="did you mean refund"):
                signals.assert_operation("refnd")
            with pytest.raises(ValueError, match="'success', 'failure' or 'cancelled'"):
                signals.assert_operation("refund", "ok")

    def test_clear_forgets_everything(self) -> None:
        """clear() empties every list."""
        with capture_signals(extra_sinks=[Raising()]) as signals:
            renew("sub_1", 2)
            signals.clear()
            assert signals.records == []
            assert signals.spans == []
            assert signals.sentry_envelopes == []
            assert signals.posthog_events == []
            assert signals.logs == []
            assert signals.sink_errors == []
            signals.assert_no_violations()

    def test_repr(self) -> None:
        """The repr counts records by kind."""
        with capture_signals() as signals:
            renew("sub_1", 2)
        assert repr(signals) == "<Signals 3 record(s): operation=1, operation_start=1, violation=1>"


class TestCorrelation:
    def test_operations_violations_and_events_are_correlated(self) -> None:
        """With and without a bound user, every signal carries the same trace id and user."""
        with capture_signals() as signals:
            with ik.identify("user_1"):
                renew("sub_1", 2)
                with pytest.raises(ValueError):
                    refund(-1)
                ik.track("subscription_started", subscription_id="sub_1")
            renew("sub_2", 2)  # no user: personless PostHog events keyed by the trace id
            ik.report_violation(billing.PERIOD_MUST_ADVANCE)  # outside any operation
        signals.assert_correlated()
        trace_ids = {r.trace_id for r in signals.records if r.kind != "event"}
        assert len(trace_ids) == 4

    def test_operations_sharing_a_trace_are_paired_one_to_one(self) -> None:
        """Nested operations of several users in one trace: each signal is paired with its own
        operation (by span where the backend records it), not with a neighbour's."""
        with capture_signals() as signals:
            with ik.billing_operation("renewal_run"):
                for user in ("user_1", "user_2", "user_3"):
                    with ik.identify(user):
                        renew(f"sub_{user}", 2)
        assert len({r.trace_id for r in signals.records}) == 1
        signals.assert_correlated()
        event = signals._sentry_transport.envelopes[1].items[0].payload.json
        event["contexts"]["trace"]["span_id"] = "0" * 16
        signals._sentry_transport.envelopes[1].items[0].payload.bytes = None
        with pytest.raises(AssertionError, match=r"found it in this trace with span_id 0{16}"):
            signals.assert_correlated()

    def test_nothing_to_correlate_fails(self) -> None:
        """An empty capture cannot pass assert_correlated()."""
        with capture_signals() as signals:
            with pytest.raises(AssertionError, match="nothing to correlate"):
                signals.assert_correlated()

    @pytest.mark.parametrize(
        ("tamper", "problem"),
        [
            (
                lambda s: s._span_exporter.clear(),
                "violation NO_DOUBLE_CHARGE (trace_id={tid}): no span with span_id",
            ),
            (
                lambda s: s._sentry_transport.envelopes.clear(),
                "violation NO_DOUBLE_CHARGE (trace_id={tid}): no Sentry message 'NO_DOUBLE_CHARGE'",
            ),
            (
                lambda s: s._posthog_messages[0].update(distinct_id="someone_else"),
                "PostHog event 'invariant_violated' has distinct_id 'someone_else', expected 'user_1'",
            ),
            (
                lambda s: s._posthog_messages[0]["properties"].update(trace_id="0" * 32),
                (
                    "no PostHog event 'invariant_violated' with this trace id (found it with "
                    "trace_id 00000000000000000000000000000000)"
                ),
            ),
            (
                lambda s: s._logs.lines[1].update(user_id="someone_else"),
                "log line invariant.violated has user_id 'someone_else', expected 'user_1'",
            ),
        ],
    )
    def test_a_mismatch_is_named(self, tamper: Any, problem: str) -> None:
        """Each kind of broken correlation is reported with the signal at fault."""
        with capture_signals() as signals:
            with ik.identify("user_1"):
                renew("sub_1", 2)
        tid = signals.violations[0].trace_id
        tamper(signals)
        with pytest.raises(AssertionError, match="signals are not correlated") as info:
            signals.assert_correlated()
        assert problem.format(tid=tid) in str(info.value)

    def test_sentry_user_and_tag_mismatch(self) -> None:
        """A Sentry event whose user or trace_id tag differs is named."""
        with capture_signals() as signals:
            with ik.identify("user_1"):
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        envelope = signals._sentry_transport.envelopes[0]
        event = envelope.items[0].payload.json
        event["user"] = {"id": "someone_else"}
        event["tags"]["trace_id"] = "f" * 32
        envelope.items[0].payload.bytes = None
        with pytest.raises(AssertionError) as info:
            signals.assert_correlated()
        assert "has user 'someone_else', expected 'user_1'" in str(info.value)
        assert f"has tag trace_id='{'f' * 32}'" in str(info.value)


class TestNotLeaked:
    def test_scrubbed_values_do_not_leak(self) -> None:
        """With the default scrubbing, e-mails and card numbers in tags and extra stay in."""
        with capture_signals() as signals:
            with ik.identify("user_1"):
                ik.report_violation(
                    billing.NO_DOUBLE_CHARGE,
                    tags={"customer": "alice@example.com", "card": "4242 4242 4242 4242"},
                    extra={"note": "card 4242424242424242 of alice@example.com"},
                )
                ik.track("subscription_started", contact="alice@example.com")
        signals.assert_not_leaked("alice@example.com", "4242 4242 4242 4242", "4242424242424242")

    def test_a_leak_is_found_everywhere_it_went(self) -> None:
        """Without scrubbing the value is found in each backend, with the path to it."""
        with capture_signals(scrub=False) as signals:
            renew("josé@exämple.com", 2)  # non-ASCII: JSON escaping must not hide it
        with pytest.raises(AssertionError) as info:
            signals.assert_not_leaked("josé@exämple.com")
        message = str(info.value)
        assert "sensitive values left the process" in message
        assert "in Sentry event" in message
        assert "at tags.subscription_id" in message
        assert "in PostHog event 'invariant_violated' at properties.subscription_id" in message
        assert "in span 'billing.renewal' at events[0].attributes" in message
        assert "in log line" in message

    def test_metric_labels_are_searched(self) -> None:
        """A value in a metric label is found too."""
        with capture_signals() as signals:
            ik.operation("charge_alice_example_com")(lambda: None)()
        with pytest.raises(AssertionError, match="in metric billing_operation_total"):
            signals.assert_not_leaked("charge_alice_example_com")

    def test_values_are_required(self) -> None:
        """No value, or an empty or non-str one, is a usage error."""
        with capture_signals() as signals:
            with pytest.raises(TypeError, match="at least one value"):
                signals.assert_not_leaked()
            with pytest.raises(TypeError, match="non-empty str"):
                signals.assert_not_leaked("")
            with pytest.raises(TypeError, match="non-empty str"):
                signals.assert_not_leaked(4242)  # type: ignore[arg-type]


def test_signals_type_is_public() -> None:
    """The fixture's type is importable for annotations."""
    with capture_signals() as signals:
        assert isinstance(signals, Signals)
