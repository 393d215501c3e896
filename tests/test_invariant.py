"""``assert_invariant`` and ``report_violation``: one call, every backend, one trace id."""

from __future__ import annotations

import json
import logging
import pickle
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.openmetrics.exposition import generate_latest

import invariantkit as ik
from invariantkit import billing
from invariantkit._config import STATE
from invariantkit._safe import STRING_LIMIT, TAG_VALUE_LIMIT
from invariantkit.testing import Signals, capture_signals

VIOLATIONS = "billing_invariant_violation_total"
CHARGE_EVENTS = [
    {"id": "evt_1", "amount": 500, "at": "2024-01-15T02:00:00Z"},
    {"id": "evt_2", "amount": 500, "at": "2024-01-15T02:00:03Z"},
]


@pytest.fixture
def signals() -> Iterator[Signals]:
    with capture_signals() as captured:
        yield captured


def double_charge_in_renewal() -> bool:
    """The issue's "Done when" call, inside an operation."""
    with ik.billing_operation("renewal"):
        return ik.assert_invariant(
            False,
            billing.NO_DOUBLE_CHARGE,
            tags={"subscription_id": "sub_1", "charges_count": 2},
            extra={"charge_events": CHARGE_EVENTS},
        )


class TestViolationReachesEveryBackend:
    """The issue's "Done when", tried as a new user would."""

    def test_returns_false_in_report_mode(self, signals: Signals) -> None:
        """Report mode: the call reports and returns False; the operation still succeeds."""
        assert double_charge_in_renewal() is False
        assert (
            signals.metric("billing_operation_total", operation="renewal", outcome="success") == 1
        )

    def test_sentry_message(self, signals: Signals) -> None:
        """Sentry gets message NO_DOUBLE_CHARGE at level fatal, with the tags and the extra."""
        double_charge_in_renewal()
        [event] = signals.sentry_events
        assert event["message"] == "NO_DOUBLE_CHARGE"
        assert event["level"] == "fatal"
        assert event["tags"]["invariant"] == "NO_DOUBLE_CHARGE"
        assert event["tags"]["subscription_id"] == "sub_1"
        assert event["tags"]["charges_count"] == "2"
        assert event["extra"]["charge_events"] == CHARGE_EVENTS

    def test_counter_goes_from_zero_to_one(self, signals: Signals) -> None:
        """The declared child is 0 before and 1 after; nothing else moves."""
        key = {"type": "double_charge", "invariant": "NO_DOUBLE_CHARGE", "test": "false"}
        assert signals.metric(VIOLATIONS, **key) == 0.0
        double_charge_in_renewal()
        assert signals.metric(VIOLATIONS, **key) == 1.0
        assert signals.metric(VIOLATIONS) == 1.0

    def test_exemplar_is_the_trace_id(self, signals: Signals) -> None:
        """The OpenMetrics exposition carries the violation's trace id as the exemplar."""
        double_charge_in_renewal()
        [violation] = signals.violations
        text = generate_latest(signals.registry).decode()
        line = next(
            line
            for line in text.splitlines()
            if line.startswith(VIOLATIONS) and 'invariant="NO_DOUBLE_CHARGE"' in line
        )
        assert re.fullmatch(
            rf'{VIOLATIONS}\{{invariant="NO_DOUBLE_CHARGE",test="false",type="double_charge"\}} 1\.0 '
            rf'# \{{trace_id="{violation.trace_id}"\}} 1\.0 \d+(\.\d+)?',
            line,
        ), line

    def test_span_event(self, signals: Signals) -> None:
        """The operation's span carries event ``invariant.violated`` with the tags."""
        double_charge_in_renewal()
        [span] = [s for s in signals.spans if s.name == "billing.renewal"]
        [event] = [e for e in span.events if e.name == "invariant.violated"]
        assert event.attributes is not None
        assert event.attributes["invariant.name"] == "NO_DOUBLE_CHARGE"
        assert event.attributes["invariant.type"] == "double_charge"
        assert event.attributes["invariant.tag.subscription_id"] == "sub_1"

    def test_operation_span_status_is_error(self, signals: Signals) -> None:
        """A violation marks the enclosing operation's span as ERROR, even when it returns."""
        double_charge_in_renewal()
        [span] = [s for s in signals.spans if s.name == "billing.renewal"]
        assert span.status.status_code is StatusCode.ERROR

    def test_critical_log_line(self, signals: Signals) -> None:
        """One CRITICAL JSON log line with the invariant, tags and extra."""
        double_charge_in_renewal()
        [line] = [line for line in signals.logs if line["event"] == "invariant.violated"]
        assert line["level"] == "critical"
        assert line["invariant"] == "NO_DOUBLE_CHARGE"
        assert line["type"] == "double_charge"
        assert line["tags"] == {"subscription_id": "sub_1", "charges_count": "2"}
        assert line["extra"] == {"charge_events": CHARGE_EVENTS}

    def test_posthog_personless_event(self, signals: Signals) -> None:
        """No user bound: a personless ``invariant_violated`` keyed by the trace id."""
        double_charge_in_renewal()
        [violation] = signals.violations
        [message] = [m for m in signals.posthog_events if m["event"] == "invariant_violated"]
        assert message["distinct_id"] == violation.trace_id
        props = message["properties"]
        assert props["$process_person_profile"] is False
        assert props["subscription_id"] == "sub_1"
        assert props["charges_count"] == "2"
        assert props["invariant"] == "NO_DOUBLE_CHARGE"
        assert props["trace_id"] == violation.trace_id

    def test_one_trace_id_everywhere(self, signals: Signals) -> None:
        """Span, Sentry, metric exemplar, log line and PostHog share the operation's trace id."""
        double_charge_in_renewal()
        [span] = [s for s in signals.spans if s.name == "billing.renewal"]
        trace_id = format(span.context.trace_id, "032x")
        [violation] = signals.violations
        [event] = signals.sentry_events
        [message] = [m for m in signals.posthog_events if m["event"] == "invariant_violated"]
        [line] = [line for line in signals.logs if line["event"] == "invariant.violated"]
        assert violation.trace_id == trace_id
        assert event["contexts"]["trace"]["trace_id"] == event["tags"]["trace_id"] == trace_id
        assert message["properties"]["trace_id"] == line["trace_id"] == trace_id
        assert f'trace_id="{trace_id}"' in generate_latest(signals.registry).decode()
        signals.assert_correlated()

    def test_ids_are_never_metric_labels(self, signals: Signals) -> None:
        """``subscription_id`` is in Sentry, logs and PostHog, never in the exposition."""
        double_charge_in_renewal()
        assert "sub_1" not in generate_latest(signals.registry).decode()
        assert signals.sentry_events[0]["tags"]["subscription_id"] == "sub_1"


class TestWithABoundUser:
    """``ik.identify()`` makes every signal of a violation that user's."""

    def test_user_everywhere(self, signals: Signals) -> None:
        """PostHog as the user (a person event), Sentry user, log user_id, span enduser.id."""
        with ik.identify("user_42"):
            double_charge_in_renewal()
        [message] = [m for m in signals.posthog_events if m["event"] == "invariant_violated"]
        assert message["distinct_id"] == "user_42"
        assert "$process_person_profile" not in message["properties"]
        assert signals.sentry_events[0]["user"]["id"] == "user_42"
        [line] = [line for line in signals.logs if line["event"] == "invariant.violated"]
        assert line["user_id"] == "user_42"
        [span] = [s for s in signals.spans if s.name == "billing.renewal"]
        assert span.attributes is not None
        assert span.attributes["enduser.id"] == "user_42"
        signals.assert_correlated()


class TestOutsideAnOperation:
    """A violation with no enclosing span still gets a span and one trace id."""

    def test_own_span_with_error_status(self, signals: Signals) -> None:
        """The violation opens ``invariant.<NAME>``: event ``invariant.violated``, status ERROR."""
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_9"})
        [span] = signals.spans
        assert span.name == "invariant.NO_DOUBLE_CHARGE"
        assert span.status.status_code is StatusCode.ERROR
        assert [e.name for e in span.events] == ["invariant.violated"]
        assert format(span.context.trace_id, "032x") == signals.violations[0].trace_id
        signals.assert_correlated()

    def test_each_violation_has_its_own_trace(self, signals: Signals) -> None:
        """Two top-level violations are two traces (never one id for a thread's life)."""
        ik.report_violation(billing.NO_DOUBLE_CHARGE)
        ik.report_violation(billing.NO_DOUBLE_CHARGE)
        first, second = signals.violations
        assert first.trace_id != second.trace_id

    def test_without_tracing(self) -> None:
        """With no traces sink, Sentry, logs, PostHog and the exemplar still share one id."""
        with capture_signals(traces=False) as signals:
            double_charge_in_renewal()
            [violation] = signals.violations
            trace_id = violation.trace_id
            assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
            [event] = signals.sentry_events
            assert event["contexts"]["trace"]["trace_id"] == trace_id
            assert f'trace_id="{trace_id}"' in generate_latest(signals.registry).decode()
            [operation] = [r for r in signals.records if r.kind == "operation"]
            assert operation.trace_id == trace_id
            signals.assert_correlated()

    def test_span_ids_time_and_user(self, signals: Signals) -> None:
        """The span is a root span with the record's ids, the report's time and the user."""
        before = time.time_ns()
        with ik.identify("user_7"):
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_3"})
        after = time.time_ns()
        [record] = signals.violations
        [span] = signals.spans
        assert span.parent is None
        assert format(span.context.span_id, "016x") == record.span_id
        assert span.attributes is not None
        assert span.attributes["enduser.id"] == "user_7"
        assert span.start_time is not None
        assert before - 1000 <= span.start_time <= after
        [event] = span.events
        assert event.attributes is not None
        assert event.attributes["invariant.tag.subscription_id"] == "sub_3"
        assert event.attributes["invariant.severity"] == "critical"

    def test_span_continues_the_extracted_trace(self, signals: Signals) -> None:
        """Under ``ik.extract()`` the violation's span is a child of the remote span."""
        headers = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
        with ik.extract(headers):
            trace_id = ik.report_violation(billing.NO_DOUBLE_CHARGE)
        assert trace_id == "ab" * 16
        [span] = signals.spans
        assert format(span.context.trace_id, "032x") == trace_id
        assert span.parent is not None
        assert format(span.parent.span_id, "016x") == "cd" * 8
        assert format(span.context.span_id, "016x") == signals.violations[0].span_id

    def test_span_is_made_off_the_call_path(self) -> None:
        """With an SDK tracer the span is started on the worker, never on the caller's thread."""
        threads: list[str] = []

        class WhereStarted(SpanProcessor):
            def on_start(self, span: Any, parent_context: Any = None) -> None:
                threads.append(threading.current_thread().name)

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(WhereStarted())
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        sink = ik.sinks.OtelTraces(provider)
        ik.configure(sinks=[sink, ik.sinks.Memory()])
        trace_id = ik.report_violation(billing.NO_DOUBLE_CHARGE)
        assert ik.flush(2)
        # The operations' tracer keeps the SDK's generator: nothing added to their path.
        assert type(getattr(sink.tracer, "id_generator", None)).__name__ == "RandomIdGenerator"
        [span] = exporter.get_finished_spans()
        assert format(span.context.trace_id, "032x") == trace_id
        assert threads
        assert threading.current_thread().name not in threads
        # Operations' spans are still made on the caller's thread, with the SDK's own ids.
        threads.clear()
        with ik.billing_operation("renewal"):
            pass
        assert threads == [threading.current_thread().name]

    def test_non_sdk_tracer_makes_the_span_inline(self) -> None:
        """A tracer that is not the SDK's (ids cannot be chosen) still gets the span, inline."""
        exporter = InMemorySpanExporter()
        sdk = TracerProvider()
        sdk.add_span_processor(SimpleSpanProcessor(exporter))

        class Wrapped(otel_trace.TracerProvider):
            def get_tracer(self, *args: Any, **kwargs: Any) -> otel_trace.Tracer:
                inner = sdk.get_tracer(*args, **kwargs)

                class Proxy(otel_trace.Tracer):
                    def start_span(self, *a: Any, **k: Any) -> otel_trace.Span:
                        return inner.start_span(*a, **k)

                    def start_as_current_span(self, *a: Any, **k: Any) -> Any:
                        return inner.start_as_current_span(*a, **k)

                return Proxy()

        sink = ik.sinks.OtelTraces(Wrapped())
        assert not sink.defers_violation_spans
        ik.configure(sinks=[sink])
        trace_id = ik.report_violation(billing.NO_DOUBLE_CHARGE)
        [span] = exporter.get_finished_spans()  # no flush: it ended before the call returned
        assert format(span.context.trace_id, "032x") == trace_id
        assert [e.name for e in span.events] == ["invariant.violated"]

    def test_nothing_is_left_bound(self, signals: Signals) -> None:
        """After a top-level violation, no span and no correlation stay current."""
        ik.report_violation(billing.NO_DOUBLE_CHARGE)
        from invariantkit._context import current_ids

        assert current_ids() is None


class TestSeverities:
    """The Sentry level follows the severity."""

    @pytest.mark.parametrize(
        ("severity", "level"), [("critical", "fatal"), ("error", "error"), ("warning", "warning")]
    )
    def test_level(self, signals: Signals, severity: str, level: str) -> None:
        """critical is fatal, error is error, warning is warning."""
        inv = ik.Invariant(
            "LEDGER_BALANCED", type="ledger_unbalanced", severity=severity, summary="s"
        )  # type: ignore[arg-type]
        ik.report_violation(inv)
        assert signals.sentry_events[0]["level"] == level

    def test_period_must_advance_is_an_error(self, signals: Signals) -> None:
        """The guide sends PERIOD_NOT_ADVANCED at level error."""
        ik.report_violation(billing.PERIOD_MUST_ADVANCE, tags={"subscription_id": "sub_1"})
        assert signals.sentry_events[0]["level"] == "error"


class TestPassingPath:
    """When the invariant holds: a branch and a return, nothing else."""

    @pytest.mark.parametrize("condition", [True, 1, "x", [0], object()])
    def test_returns_true_and_emits_nothing(self, signals: Signals, condition: object) -> None:
        """A truthy condition returns True; no record, span, event or metric change."""
        assert (
            ik.assert_invariant(condition, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "s"})
            is True
        )
        assert signals.records == []
        assert signals.spans == []
        assert signals.sentry_events == []
        assert signals.metric(VIOLATIONS) == 0

    def test_does_not_even_configure(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The passing path does not touch the configuration (it would cost a lookup)."""
        monkeypatch.setattr(STATE, "dispatcher", None)  # never configured
        monkeypatch.setattr(STATE, "config", None)
        assert ik.assert_invariant(True, billing.NO_DOUBLE_CHARGE) is True
        assert STATE.dispatcher is None

    @pytest.mark.parametrize("condition", [False, 0, "", [], None])
    def test_falsy_conditions_are_violations(self, signals: Signals, condition: object) -> None:
        """Any falsy condition is a violation, as in ``if not cond``."""
        assert ik.assert_invariant(condition, billing.NO_DOUBLE_CHARGE) is False
        signals.assert_violation("NO_DOUBLE_CHARGE", count=1)

    def test_a_condition_that_cannot_be_told_is_a_violation(self, signals: Signals) -> None:
        """A condition whose truth raises is reported as violated, with the error in extra."""

        class Ambiguous:
            def __bool__(self) -> bool:
                raise ValueError("The truth value of an array is ambiguous")

        assert ik.assert_invariant(Ambiguous(), billing.NO_DOUBLE_CHARGE) is False
        [violation] = signals.violations
        assert "ambiguous" in violation.extra["invariantkit.condition_error"]

    def test_a_callable_condition_is_called(self, signals: Signals) -> None:
        """``assert_invariant(lambda: ..., inv)`` is a lazy check: its result decides."""
        calls: list[int] = []

        def balanced() -> bool:
            calls.append(1)
            return True

        assert ik.assert_invariant(balanced, billing.NO_DOUBLE_CHARGE) is True
        assert ik.assert_invariant(lambda: 2 > 3, billing.NO_DOUBLE_CHARGE) is False
        assert calls == [1]
        signals.assert_violation("NO_DOUBLE_CHARGE", count=1)

    def test_an_exception_in_a_callable_condition_is_a_violation(self, signals: Signals) -> None:
        """The lazy check raising is reported as a violation (never raised), with the error."""

        def broken() -> bool:
            raise LookupError("ledger row missing")

        assert ik.assert_invariant(broken, billing.NO_DOUBLE_CHARGE, extra={"a": 1}) is False
        [violation] = signals.violations
        assert "ledger row missing" in violation.extra["invariantkit.condition_error"]
        assert violation.extra["a"] == 1


class TestModes:
    """Report mode returns False; enforce mode raises after reporting."""

    def test_report_mode_is_the_default(self, signals: Signals) -> None:
        """By default a violation returns False."""
        assert ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE) is False

    def test_enforce_mode_raises_after_reporting(self) -> None:
        """``mode="enforce"``: InvariantViolation carries the invariant, the tags and the trace id,
        and every backend got the report before it was raised."""
        with capture_signals(mode="enforce") as signals:
            with pytest.raises(ik.InvariantViolation) as info:
                ik.assert_invariant(
                    False,
                    billing.NO_DOUBLE_CHARGE,
                    tags={"subscription_id": "sub_1", "charges_count": 2},
                )
            exc = info.value
            [violation] = signals.violations
            assert exc.invariant is billing.NO_DOUBLE_CHARGE
            assert exc.tags == {"subscription_id": "sub_1", "charges_count": "2"}
            assert exc.trace_id == violation.trace_id
            assert signals.sentry_events[0]["message"] == "NO_DOUBLE_CHARGE"
            assert signals.metric(VIOLATIONS, invariant="NO_DOUBLE_CHARGE") == 1
            assert "NO_DOUBLE_CHARGE" in str(exc)
            assert exc.trace_id in str(exc)

    def test_enforce_mode_passing_path(self) -> None:
        """Enforce mode changes nothing when the invariant holds."""
        with capture_signals(mode="enforce"):
            assert ik.assert_invariant(True, billing.NO_DOUBLE_CHARGE) is True

    def test_report_violation_raises_in_enforce_mode(self) -> None:
        """``report_violation`` follows the mode too."""
        with capture_signals(mode="enforce"), pytest.raises(ik.InvariantViolation):
            ik.report_violation(billing.PERIOD_MUST_ADVANCE)

    def test_enforce_through_an_operation(self) -> None:
        """The violation propagates out of the operation unchanged, which records a failure."""
        with capture_signals(mode="enforce") as signals:
            with pytest.raises(ik.InvariantViolation) as info:
                double_charge_in_renewal()
            assert info.value.invariant is billing.NO_DOUBLE_CHARGE
            assert (
                signals.metric(
                    "billing_operation_errors_total",
                    operation="renewal",
                    error_type="InvariantViolation",
                )
                == 1
            )

    def test_env_var(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``INVARIANTKIT_MODE=enforce`` turns enforce mode on through ``configure()``."""
        monkeypatch.setenv("INVARIANTKIT_MODE", "enforce")
        memory = ik.sinks.Memory()
        try:
            assert ik.configure(sinks=[memory]).mode == "enforce"
            with pytest.raises(ik.InvariantViolation):
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            assert [r.name for r in memory.records if r.kind == "violation"] == ["NO_DOUBLE_CHARGE"]
        finally:
            ik.shutdown()

    def test_configure_mode(self) -> None:
        """``configure(mode="enforce")`` as well; a later ``configure()`` goes back to report."""
        try:
            ik.configure(sinks=[ik.sinks.Memory()], mode="enforce")
            with pytest.raises(ik.InvariantViolation):
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            ik.configure(sinks=[ik.sinks.Memory()], mode="report")
            assert ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE) is False
        finally:
            ik.shutdown()

    def test_invariant_can_enforce_in_report_mode(self, signals: Signals) -> None:
        """``Invariant(enforce=True)`` raises even when the process reports."""
        strict = ik.Invariant(
            "LEDGER_BALANCED", type="ledger_unbalanced", summary="s", enforce=True
        )
        with pytest.raises(ik.InvariantViolation):
            ik.assert_invariant(False, strict)
        signals.assert_violation("LEDGER_BALANCED", count=1)

    def test_invariant_can_opt_out_of_enforce_mode(self) -> None:
        """``Invariant(enforce=False)`` only reports, even when the process enforces."""
        lenient = ik.Invariant(
            "LEDGER_BALANCED", type="ledger_unbalanced", summary="s", enforce=False
        )
        with capture_signals(mode="enforce") as signals:
            assert ik.assert_invariant(False, lenient) is False
            signals.assert_violation("LEDGER_BALANCED", count=1)

    def test_violation_pickles(self) -> None:
        """InvariantViolation crosses process boundaries with its fields."""
        with capture_signals(mode="enforce"), pytest.raises(ik.InvariantViolation) as info:
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"})
        copy = pickle.loads(pickle.dumps(info.value))
        assert copy.invariant is billing.NO_DOUBLE_CHARGE
        assert copy.tags == {"subscription_id": "sub_1"}
        assert copy.trace_id == info.value.trace_id


class TestReportViolation:
    """``report_violation`` for checks computed elsewhere."""

    def test_returns_the_trace_id(self, signals: Signals) -> None:
        """The returned id is the one every backend got."""
        trace_id = ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"})
        [violation] = signals.violations
        assert trace_id == violation.trace_id
        assert signals.sentry_events[0]["tags"]["trace_id"] == trace_id

    def test_inside_an_operation_uses_its_trace(self, signals: Signals) -> None:
        """Inside an operation, the id is the operation's."""
        with ik.billing_operation("renewal") as run:
            trace_id = ik.report_violation(billing.NO_DOUBLE_CHARGE)
        assert trace_id == run.correlation_id

    def test_by_name(self, signals: Signals) -> None:
        """The name of a declared invariant works too."""
        ik.report_violation("PERIOD_MUST_ADVANCE")  # type: ignore[arg-type]
        signals.assert_violation("PERIOD_MUST_ADVANCE", count=1)

    @pytest.mark.parametrize("bad", ["NOT_DECLARED", None, 42])
    def test_something_else_is_still_reported(
        self, signals: Signals, bad: object, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A violation is never dropped: an unknown invariant is reported as UNDECLARED_INVARIANT
        and the mistake is logged."""
        with caplog.at_level(logging.ERROR, logger="invariantkit"):
            ik.report_violation(bad, tags={"subscription_id": "sub_1"})  # type: ignore[arg-type]
        signals.assert_violation("UNDECLARED_INVARIANT", count=1, subscription_id="sub_1")
        assert any("needs an ik.Invariant" in r.getMessage() for r in caplog.records)

    def test_a_failing_sink_does_not_stop_the_others(self) -> None:
        """A backend that raises is isolated: the caller gets False, the others still report."""

        class Broken:
            name = "broken"
            deferred = False

            def emit(self, record: Any) -> None:
                raise RuntimeError("backend down")

            def flush(self, timeout: float) -> bool:
                return True

            def shutdown(self, timeout: float) -> bool:
                return True

        with capture_signals(extra_sinks=(Broken(),)) as signals:
            # It also failed on the declarations announced at set-up: count from here.
            before = signals.metric("invariantkit_sink_errors_total", sink="broken")
            assert ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE) is False
            assert signals.sentry_events[0]["message"] == "NO_DOUBLE_CHARGE"
            assert signals.metric("invariantkit_sink_errors_total", sink="broken") == before + 1


# --- hypothesis: whatever the tags and extra, reporting never raises ---------------------------


class Unprintable:
    """An object whose repr and str raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


class UnprintableKey(Unprintable):
    """The same, hashable, for dict keys."""

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return self is other


class Exploding(dict):  # type: ignore[type-arg]
    """A mapping whose items() raises."""

    def items(self) -> Any:
        raise RuntimeError("no items")


MEGABYTE = "x" * (1 << 20)


def _cycle(kind: str) -> Any:
    if kind == "list":
        value: Any = []
        value.append(value)
        return value
    value = {}
    value["self"] = value
    return value


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**70, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True),
    st.text(),
    st.binary(),
    st.decimals(),
    st.datetimes(),
    st.just(MEGABYTE),
    st.just(MEGABYTE.encode()),
    st.builds(Unprintable),
    st.sampled_from(["list", "dict"]).map(_cycle),
    st.just("card 4242 4242 4242 4242 and jane@example.com"),
)
keys = st.one_of(
    st.text(),
    st.integers(),
    st.none(),
    st.binary(),
    st.tuples(st.integers(), st.text()),
    st.builds(UnprintableKey),
    st.just("k" * 10_000),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=5),
        st.frozensets(st.one_of(st.integers(), st.text()), max_size=5),
    ),
    max_leaves=12,
)
mappings = st.one_of(
    st.none(),
    st.dictionaries(keys, values, max_size=8),
    st.dictionaries(keys, values, max_size=3).map(Exploding),
    values,  # not even a mapping
)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class TestArbitraryValues:
    """Tag and extra values of any kind are reported as safe, truncated strings; never raise."""

    # No example database and a fixed seed: the strategies build objects with identity-based
    # equality, so examples replayed from another process's database can draw differently.
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
        derandomize=True,
    )
    @given(tags=mappings, extra=mappings)
    def test_never_raises_and_is_reported_safely(self, tags: Any, extra: Any) -> None:
        """Whatever is passed, the violation reaches every backend with bounded, JSON-safe values."""
        with capture_signals() as signals:
            assert (
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags=tags, extra=extra)
                is False
            )
            [violation] = signals.violations
            for key, value in violation.attributes.items():
                assert isinstance(key, str)
                assert isinstance(value, str)
                assert len(value) <= TAG_VALUE_LIMIT
            encoded = json.dumps(dict(violation.extra))  # JSON-safe without a default
            assert all(len(s) <= STRING_LIMIT for s in _strings(json.loads(encoded)))
            [event] = signals.sentry_events
            assert event["message"] == "NO_DOUBLE_CHARGE"
            assert [line["event"] for line in signals.logs] == ["invariant.violated"]
            assert signals.metric(VIOLATIONS, invariant="NO_DOUBLE_CHARGE") == 1

    @settings(max_examples=30, deadline=None)
    @given(tags=mappings)
    def test_enforce_mode_still_raises_only_the_violation(self, tags: Any) -> None:
        """In enforce mode the only exception is InvariantViolation, with str tags."""
        with capture_signals(mode="enforce"), pytest.raises(ik.InvariantViolation) as info:
            ik.report_violation(billing.NO_DOUBLE_CHARGE, tags=tags)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.value.tags.items())

    def test_secrets_are_scrubbed(self, signals: Signals) -> None:
        """Card numbers and e-mail addresses never leave in tags or extra."""
        ik.report_violation(
            billing.NO_DOUBLE_CHARGE,
            tags={"note": "card 4242 4242 4242 4242"},
            extra={"customer": {"email": "jane@example.com"}},
        )
        [event] = signals.sentry_events
        text = json.dumps(event)
        assert "4242 4242 4242 4242" not in text
        assert "jane@example.com" not in text

    def test_megabyte_values_are_truncated(self, signals: Signals) -> None:
        """A megabyte string is cut: at most 200 characters as a tag, 8 KiB in extra."""
        ik.report_violation(
            billing.NO_DOUBLE_CHARGE, tags={"blob": MEGABYTE}, extra={"blob": MEGABYTE}
        )
        [violation] = signals.violations
        assert len(violation.attributes["blob"]) <= TAG_VALUE_LIMIT
        assert len(violation.extra["blob"]) <= STRING_LIMIT


def test_shared_references_in_extra_are_bounded_by_a_node_budget() -> None:
    """``[x] * 100`` nested three deep is a million values by reference: the report visits a
    bounded number of them instead of walking all on the caller's thread."""
    from invariantkit._safe import DEPTH_LIMIT, ITEMS_LIMIT, NODES_LIMIT

    leaf = [0] * 100
    shared = [[leaf] * 100] * 100
    with capture_signals(sentry=False, posthog=False, traces=False) as signals:
        ik.report_violation(billing.NO_DOUBLE_CHARGE, extra={"charge_events": shared})
        [record] = signals.violations

    def count(value: object) -> int:
        if isinstance(value, dict):
            return 1 + sum(count(v) for v in value.values())
        if isinstance(value, list):
            return 1 + sum(count(v) for v in value)
        return 1

    # Once the budget is spent, each container still open adds at most one placeholder per item.
    assert count(record.extra) <= NODES_LIMIT + ITEMS_LIMIT * DEPTH_LIMIT
    assert "too large to report" in json.dumps(record.extra)
