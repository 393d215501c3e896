"""Alert test mode: a synthetic violation labelled ``test="true"`` through every sink, so the
routing of each alert can be proven without paging anyone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

import invariantkit as ik
from invariantkit import billing
from invariantkit._catalog import get_catalog
from invariantkit._invariant import (
    DEFAULT_TEST_ALERT_DELAY,
    alert_test_delay,
    fire_test_alert,
    start_test_mode,
)
from invariantkit._record import Record
from invariantkit.testing import Signals, capture_signals

VIOLATIONS = "billing_invariant_violation_total"


class Declarations:
    """A sink that keeps the declaration records (the Memory sink drops them)."""

    name = "declarations"
    deferred = False

    def __init__(self) -> None:
        self.records: list[Record] = []

    def emit(self, record: Record) -> None:
        if record.kind == "declare":
            self.records.append(record)

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True

    def test_children(self) -> set[str]:
        return {r.name for r in self.records if r.test}


@pytest.fixture
def signals() -> Iterator[Signals]:
    with capture_signals() as captured:
        yield captured


class TestFireTestAlert:
    """``fire_test_alert(invariant)`` sends one clearly labelled test violation."""

    def test_metric_is_the_test_series(self, signals: Signals) -> None:
        """``{type="test_double_charge",test="true"}`` +1; the real series stays at 0."""
        fire_test_alert(billing.NO_DOUBLE_CHARGE)
        assert (
            signals.metric(
                VIOLATIONS, type="test_double_charge", invariant="NO_DOUBLE_CHARGE", test="true"
            )
            == 1
        )
        assert signals.metric(VIOLATIONS, type="double_charge", test="false") == 0

    def test_sentry_warning_tagged_test(self, signals: Signals) -> None:
        """Sentry gets the message at level warning with tag ``test=true`` and a note saying so."""
        fire_test_alert(billing.NO_DOUBLE_CHARGE)
        [event] = signals.sentry_events
        assert event["level"] == "warning"
        assert event["tags"]["test"] == "true"
        assert event["tags"]["invariant"] == "NO_DOUBLE_CHARGE"
        assert "Nothing is wrong" in event["extra"]["invariantkit.test_alert"]

    def test_log_line_is_a_warning(self, signals: Signals) -> None:
        """The JSON log line is a WARNING (never CRITICAL) with ``test: true``."""
        fire_test_alert(billing.NO_DOUBLE_CHARGE)
        [line] = signals.logs
        assert (line["level"], line["test"], line["invariant"]) == (
            "warning",
            True,
            "NO_DOUBLE_CHARGE",
        )

    def test_posthog_personless_with_test_property(self, signals: Signals) -> None:
        """PostHog gets a personless ``invariant_violated`` with ``test``, even with a user bound."""
        with ik.identify("user_42"):
            sent = fire_test_alert(billing.NO_DOUBLE_CHARGE)
        [message] = signals.posthog_events
        assert message["event"] == "invariant_violated"
        assert message["properties"]["test"] is True
        assert message["distinct_id"] == sent["NO_DOUBLE_CHARGE"]
        assert message["properties"]["$process_person_profile"] is False

    def test_span_in_its_own_trace(self, signals: Signals) -> None:
        """The test alert has its own span and trace, and leaves the caller's span alone."""
        with ik.billing_operation("renewal") as run:
            sent = fire_test_alert(billing.NO_DOUBLE_CHARGE)
        trace_id = sent["NO_DOUBLE_CHARGE"]
        assert trace_id != run.correlation_id
        spans = {s.name: s for s in signals.spans}
        test_span = spans["invariant.NO_DOUBLE_CHARGE"]
        assert format(test_span.context.trace_id, "032x") == trace_id
        [event] = test_span.events
        assert event.attributes is not None
        assert event.attributes["invariant.test"] is True
        assert spans["billing.renewal"].status.status_code is not StatusCode.ERROR
        assert spans["billing.renewal"].events == ()
        signals.assert_correlated()

    def test_never_raises_in_enforce_mode(self) -> None:
        """A test alert is not a violation: enforce mode does not raise."""
        with capture_signals(mode="enforce") as signals:
            strict = ik.Invariant(
                "LEDGER_BALANCED", type="ledger_unbalanced", summary="s", enforce=True
            )
            fire_test_alert(strict)
            assert [r.test for r in signals.violations] == [True]

    def test_returns_name_to_trace_id(self, signals: Signals) -> None:
        """The result maps each invariant to the trace id to search for."""
        sent = fire_test_alert("PERIOD_MUST_ADVANCE")
        [violation] = signals.violations
        assert sent == {"PERIOD_MUST_ADVANCE": violation.trace_id}
        assert violation.test is True


class TestWhichInvariants:
    """With no argument, every declared invariant's route is proven."""

    def test_all_declared(self, signals: Signals) -> None:
        """One test alert per declared invariant, each in its own trace."""
        extra = ik.Invariant(
            "LEDGER_BALANCED", type="ledger_unbalanced", summary="s", team="finance"
        )
        sent = fire_test_alert()
        assert set(sent) == set(get_catalog().invariants) >= {"NO_DOUBLE_CHARGE", extra.name}
        assert len(set(sent.values())) == len(sent)
        assert signals.metric(VIOLATIONS, test="true") == len(sent)
        assert {e["tags"]["team"] for e in signals.sentry_events} >= {"billing", "finance"}

    def test_builtin_when_none_is_declared(self, signals: Signals) -> None:
        """With an empty catalog the built-in TEST_INVARIANT_VIOLATION is sent (never nothing)."""
        get_catalog().restore(({}, {}, {}, {}, {}))
        sent = fire_test_alert()
        assert list(sent) == ["TEST_INVARIANT_VIOLATION"]
        [event] = signals.sentry_events
        assert (event["message"], event["level"]) == ("TEST_INVARIANT_VIOLATION", "warning")
        assert signals.metric(VIOLATIONS, type="test_invariant_violation", test="true") == 1

    def test_builtin_is_declared_again_after_a_reset(self) -> None:
        """The built-in is back in the catalog (for the rules) each time it is needed."""
        for _ in range(2):
            with capture_signals() as signals:
                get_catalog().restore(({}, {}, {}, {}, {}))
                fire_test_alert()
                assert "TEST_INVARIANT_VIOLATION" in get_catalog().invariants
                assert signals.metric(VIOLATIONS, test="true") == 1

    def test_unknown_name(self, signals: Signals) -> None:
        """An operator's typo fails loudly, listing what is declared."""
        with pytest.raises(
            ValueError,
            match=r"no invariant named 'NO_DOUBLE_CHARG' is declared \(declared: .*NO_DOUBLE_CHARGE",
        ):
            fire_test_alert("NO_DOUBLE_CHARG")
        signals.assert_no_violations()

    def test_wrong_type(self) -> None:
        """Anything but an Invariant, a name or None is a TypeError."""
        with pytest.raises(
            TypeError, match=r"must be an ik\.Invariant, the name of a declared one, or None"
        ):
            fire_test_alert(42)  # type: ignore[arg-type]


class TestTestMode:
    """``configure(test_mode=True)`` / ``ALERT_TEST_MODE=true``."""

    def test_declares_test_children(self) -> None:
        """Test mode announces the ``test="true"`` child of every invariant, and of each one
        declared later, to every sink."""
        declarations = Declarations()
        with capture_signals(test_mode=True, extra_sinks=(declarations,)):
            start_test_mode(delay=0)
            assert declarations.test_children() >= {"NO_DOUBLE_CHARGE", "PERIOD_MUST_ADVANCE"}
            ik.Invariant("LEDGER_BALANCED", type="ledger_unbalanced", summary="s")
            assert "LEDGER_BALANCED" in declarations.test_children()

    def test_no_test_children_outside_test_mode(self) -> None:
        """Without test mode, declarations announce only the real series."""
        declarations = Declarations()
        with capture_signals(extra_sinks=(declarations,)):
            ik.Invariant("LEDGER_BALANCED", type="ledger_unbalanced", summary="s")
            assert declarations.test_children() == set()

    def test_test_children_exist_at_zero(self) -> None:
        """The first test alert after a start is an increase Prometheus can see."""
        with capture_signals(test_mode=True) as signals:
            start_test_mode(delay=3600).cancel()  # type: ignore[union-attr]
            samples = {
                (s.labels["type"], s.labels["test"]): s.value
                for f in signals.registry.collect()  # type: ignore[union-attr]
                for s in f.samples
                if s.name == VIOLATIONS and s.labels["invariant"] == "NO_DOUBLE_CHARGE"
            }
            assert samples == {("double_charge", "false"): 0.0, ("test_double_charge", "true"): 0.0}

    def test_fires_after_the_delay(self) -> None:
        """The test alerts of every invariant go out from a daemon timer."""
        with capture_signals(test_mode=True) as signals:
            timer = start_test_mode(delay=0.01)
            assert isinstance(timer, threading.Timer)
            assert timer.daemon
            timer.join(10)
            assert {r.name for r in signals.violations} == set(get_catalog().invariants)
            assert all(r.test for r in signals.violations)

    def test_zero_delay_fires_at_once(self) -> None:
        """Delay 0 sends at once (the CLI's case)."""
        with capture_signals(test_mode=True) as signals:
            assert start_test_mode(delay=0) is None
            assert {r.name for r in signals.violations} >= {"NO_DOUBLE_CHARGE"}

    def test_timer_does_nothing_after_reconfiguration(self) -> None:
        """If invariantkit was configured again or shut down, the pending test alert is skipped."""
        with capture_signals(test_mode=True) as signals:
            timer = start_test_mode(delay=3600)
            assert timer is not None
            timer.cancel()
        with capture_signals(test_mode=True) as signals:
            timer.function(*timer.args)  # what the timer would have run
            signals.assert_no_violations()

    def test_timer_does_nothing_outside_test_mode(self) -> None:
        """Test mode switched off in between: nothing is sent."""
        with capture_signals(test_mode=False) as signals:
            assert start_test_mode(delay=0) is None
            signals.assert_no_violations()

    @pytest.mark.parametrize(
        ("value", "delay"),
        [
            (None, DEFAULT_TEST_ALERT_DELAY),
            ("", DEFAULT_TEST_ALERT_DELAY),
            ("0", 0.0),
            (" 30.5 ", 30.5),
        ],
    )
    def test_delay_from_env(
        self, monkeypatch: pytest.MonkeyPatch, value: str | None, delay: float
    ) -> None:
        """``ALERT_TEST_DELAY_SECONDS`` sets the delay; default 90 s (two scrapes of 30 s and more)."""
        if value is None:
            monkeypatch.delenv("ALERT_TEST_DELAY_SECONDS", raising=False)
        else:
            monkeypatch.setenv("ALERT_TEST_DELAY_SECONDS", value)
        assert alert_test_delay() == delay

    @pytest.mark.parametrize("value", ["-1", "soon", "nan"])
    def test_bad_delay_fails_loudly(self, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
        """A delay that is not a number of seconds >= 0 names the variable."""
        monkeypatch.setenv("ALERT_TEST_DELAY_SECONDS", value)
        with pytest.raises(
            ValueError, match=r"ALERT_TEST_DELAY_SECONDS=.* must be a number of seconds from 0"
        ):
            alert_test_delay()

    def test_configure_starts_test_mode(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``ALERT_TEST_MODE=true`` makes ``configure()`` send the test alerts."""
        monkeypatch.setenv("ALERT_TEST_MODE", "true")
        monkeypatch.setenv("ALERT_TEST_DELAY_SECONDS", "0")
        memory = ik.sinks.Memory()
        try:
            assert ik.configure(sinks=[memory]).test_mode is True
            names: Any = {r.name for r in memory.records if r.kind == "violation" and r.test}
            assert names >= {"NO_DOUBLE_CHARGE"}
        finally:
            ik.shutdown()


def test_test_alerts_group_apart_from_the_real_issue() -> None:
    """A test alert has its own Sentry fingerprint: it never joins or regresses the real issue."""
    with capture_signals() as signals:
        ik.report_violation(billing.NO_DOUBLE_CHARGE)
        fire_test_alert(billing.NO_DOUBLE_CHARGE)
        real, test = signals.sentry_events
    assert real["fingerprint"] == ["invariantkit", "NO_DOUBLE_CHARGE"]
    assert test["fingerprint"] == ["invariantkit", "test", "NO_DOUBLE_CHARGE"]
    assert test["level"] == "warning"
