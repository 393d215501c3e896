"""Bad input across the public API: at declaration and configuration time a clear TypeError or
ValueError naming the field; at violation time nothing raises and what can be reported is."""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import invariantkit as ik
from invariantkit.testing import capture_signals

UPPER_SNAKE = r"[A-Z][A-Z0-9_]*"
_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

not_str = st.one_of(
    st.none(), st.integers(), st.floats(), st.booleans(), st.binary(), st.lists(st.integers())
)


class Weird:
    """An object whose every conversion fails."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:  # hypothesis prints failing examples with repr
        return "<Weird>"

    def __bool__(self) -> bool:
        raise RuntimeError("no bool")

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")


def _recursive() -> dict[str, Any]:
    loop: dict[str, Any] = {"a": 1}
    loop["self"] = loop
    return loop


weird_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
    st.just(Weird()),
    st.just(_recursive()),
    st.just(math.inf),
    st.just(10**100),
    st.just("x" * 100_000),
    st.lists(st.integers(), max_size=300),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=200),
)
weird_keys = st.one_of(st.text(), st.integers(), st.none(), st.just(Weird()), st.just(("a", 1)))
weird_mappings = st.one_of(
    st.none(),
    st.dictionaries(weird_keys, weird_values, max_size=5),
    st.just([("not", "a mapping")]),
    st.just("not a mapping"),
)


def _raises_naming(exc: BaseException, field: str) -> None:
    assert isinstance(exc, (TypeError, ValueError)), repr(exc)
    assert field in str(exc), f"{exc!s} does not name {field!r}"


# -- declaration time -------------------------------------------------------------------------


@_SETTINGS
@given(
    name=st.one_of(
        not_str, st.text().filter(lambda s: not __import__("re").fullmatch(UPPER_SNAKE, s))
    )
)
def test_invariant_name_is_validated(name: Any) -> None:
    """A non-UPPER_SNAKE name fails with an error naming ``name`` and the rule."""
    with capture_signals(), pytest.raises((TypeError, ValueError)) as info:
        ik.Invariant(name, type="double_charge", summary="x")
    _raises_naming(info.value, "name")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "Double-Charge"),
        ("type", 3),
        ("severity", "fatal"),
        ("severity", None),
        ("summary", ""),
        ("summary", 1),
        ("team", "Billing Team"),
        ("domain", "Billing"),
        ("enforce", "yes"),
        ("runbook_url", "ftp://x"),
        ("description", 5),
    ],
)
def test_invariant_fields_are_validated(field: str, value: Any) -> None:
    """Each wrong field of ``ik.Invariant`` is named in the error."""
    kwargs: dict[str, Any] = {"type": "double_charge", "summary": "x", field: value}
    with capture_signals(), pytest.raises((TypeError, ValueError)) as info:
        ik.Invariant("GOOD_NAME", **kwargs)
    _raises_naming(info.value, field)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: ik.operation("Charge Card"), "name"),
        (lambda: ik.operation(None), "name"),  # type: ignore[arg-type]
        (lambda: ik.operation("charge", domain="Billing"), "domain"),
        (lambda: ik.operation("charge", user_facing="yes"), "user_facing"),  # type: ignore[arg-type]
        (lambda: ik.operation("charge", attributes=["a"]), "attributes"),  # type: ignore[arg-type]
        (lambda: ik.operation("charge", attributes={"a": object()}), "attribute"),
        (lambda: ik.billing_operation("charge")(42), "decorates"),  # type: ignore[call-overload]
        (lambda: ik.configure(service=1), "service"),  # type: ignore[arg-type]
        (lambda: ik.configure(environment=["prod"]), "environment"),  # type: ignore[arg-type]
        (lambda: ik.configure(mode="strict"), "mode"),  # type: ignore[arg-type]
        (lambda: ik.configure(test_mode="yes"), "test_mode"),  # type: ignore[arg-type]
        (lambda: ik.configure(scrub="all"), "scrub"),  # type: ignore[arg-type]
        (lambda: ik.configure(sinks="sentry"), "sinks"),  # type: ignore[arg-type]
        (lambda: ik.configure(sinks=[object()]), "sinks"),
        (lambda: ik.sinks.PrometheusMetrics(pushgateway=9091), "pushgateway"),  # type: ignore[arg-type]
        (lambda: ik.sinks.PrometheusMetrics("x"), "CollectorRegistry"),  # type: ignore[arg-type]
        (lambda: ik.sinks.OtelTraces("x"), "TracerProvider"),  # type: ignore[arg-type]
        (lambda: ik.billing_operation("charge")(type("Charge", (), {})), "class"),
        (lambda: ik.sinks.JsonLogs(logger=1), "logger"),  # type: ignore[arg-type]
        (lambda: ik.sinks.Sentry(client="https://k@o1.ingest.sentry.io/1"), "client"),
        (lambda: ik.sinks.PostHog(client=1), "client"),
        (lambda: ik.Scrubber(deny_keys="password"), "deny_keys"),  # type: ignore[arg-type]
        (lambda: ik.Scrubber(allow_keys=[1]), "allow_keys"),  # type: ignore[list-item]
        (lambda: ik.Scrubber(patterns=["("]), "patterns"),
        (lambda: ik.Scrubber(patterns="x"), "patterns"),  # type: ignore[arg-type]
        (lambda: ik.Scrubber(cards="yes"), "cards"),  # type: ignore[arg-type]
    ],
)
def test_declaration_and_configuration_errors_name_the_field(
    call: Callable[[], Any], field: str
) -> None:
    """Wrong types and values at declaration or configuration fail loudly, naming the field."""
    with capture_signals(), pytest.raises((TypeError, ValueError)) as info:
        call()
    _raises_naming(info.value, field)


def test_posthog_without_client_or_key_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PostHog()`` with no client and no key in the environment names both ways to fix it."""
    monkeypatch.delenv("POSTHOG_PROJECT_API_KEY", raising=False)
    monkeypatch.delenv("POSTHOG_API_KEY", raising=False)
    with pytest.raises(ValueError, match="POSTHOG_PROJECT_API_KEY"):
        ik.sinks.PostHog()


# -- violation time ---------------------------------------------------------------------------


@_SETTINGS
@given(condition=weird_values, tags=weird_mappings, extra=weird_mappings)
def test_assert_invariant_never_raises(condition: Any, tags: Any, extra: Any) -> None:
    """Any condition, tags and extra: ``assert_invariant`` returns a bool and, when it reports,
    every backend gets the violation."""
    # Known defect, see test_condition_error_with_non_mapping_extra.
    assume(not (isinstance(condition, Weird) and extra and not isinstance(extra, Mapping)))
    with capture_signals() as signals:
        invariant = ik.Invariant("BAD_INPUT_CHECK", type="bad_input", summary="x")
        held = ik.assert_invariant(condition, invariant, tags=tags, extra=extra)
        assert isinstance(held, bool)
        if not held:
            [record] = signals.violations
            assert record.name == "BAD_INPUT_CHECK"
            assert len(signals.sentry_events) == 1
            assert len(signals.posthog_events) == 1
            assert all(
                isinstance(k, str) and isinstance(v, str) for k, v in record.attributes.items()
            )


@_SETTINGS
@given(invariant=st.one_of(not_str, st.text(max_size=30), st.just(Weird()), st.just(ik.Invariant)))
def test_report_violation_with_a_non_invariant_still_reports(invariant: Any) -> None:
    """``report_violation`` given something that is not an ``ik.Invariant`` logs it and reports
    ``UNDECLARED_INVARIANT`` rather than dropping the violation or raising."""
    with capture_signals() as signals:
        ik.report_violation(invariant, tags={"subscription_id": "sub_1"})
        [record] = signals.violations
        assert record.name in ("UNDECLARED_INVARIANT", *ik.get_catalog().invariants)


@_SETTINGS
@given(
    event=st.one_of(not_str, st.text(), st.just(Weird())),
    properties=st.dictionaries(
        st.text(string.ascii_letters + "_", min_size=1, max_size=10), weird_values, max_size=5
    ),
)
def test_track_never_raises(event: Any, properties: dict[str, Any]) -> None:
    """``track`` with any event name and any property values never raises."""
    with capture_signals():
        ik.track(event, **properties)


@_SETTINGS
@given(user=st.one_of(st.text(min_size=1, max_size=200), st.integers()))
def test_identify_accepts_any_str_or_int_id(user: str | int) -> None:
    """Any str (1 to 200 characters) or int user id binds and reaches the signals as a str
    (a PII-shaped one as its pseudonym)."""
    from invariantkit._context import _pii_form

    with capture_signals() as signals:
        invariant = ik.Invariant("BAD_INPUT_USER", type="bad_input", summary="x")
        with ik.identify(user):
            ik.report_violation(invariant)
        [record] = signals.violations
        if _pii_form(str(user)) is None:
            assert record.user_id == str(user)
        else:
            assert (record.user_id or "").startswith("pseudonym:")
            assert str(user) not in (record.user_id or "")


@_SETTINGS
@given(key=weird_values, value=weird_values)
def test_operation_run_set_attribute_never_raises(key: Any, value: Any) -> None:
    """``OperationRun.set_attribute`` with any key and value never raises; the operation's
    result is unchanged."""
    with capture_signals() as signals:
        with ik.billing_operation("bad_input_op") as run:
            run.set_attribute(key, value)
        [op] = [r for r in signals.records if r.kind == "operation"]
        assert op.status == "success"


def test_tags_and_extra_whose_truth_value_raises() -> None:
    """Tags or extra that are not even truth-testable still let the violation through."""
    with capture_signals() as signals:
        invariant = ik.Invariant("BAD_INPUT_TRUTH", type="bad_input", summary="x")
        ik.assert_invariant(False, invariant, tags=Weird(), extra=Weird())  # type: ignore[arg-type]
        assert len(signals.violations) == 1


def test_condition_error_with_non_mapping_extra() -> None:
    """A condition that cannot be evaluated, with an ``extra`` that is not a mapping."""
    with capture_signals() as signals:
        invariant = ik.Invariant("BAD_INPUT_MERGE", type="bad_input", summary="x")
        assert ik.assert_invariant(Weird(), invariant, extra=[("a", 1)]) is False  # type: ignore[arg-type]
        assert len(signals.violations) == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALERT_TEST_DELAY_SECONDS", "soon"),
        ("ALERT_TEST_DELAY_SECONDS", "-5"),
        ("ALERT_TEST_DELAY_SECONDS", "nan"),
        ("INVARIANTKIT_EXIT_TIMEOUT", "two"),
        ("INVARIANTKIT_EXIT_TIMEOUT", "1e9"),
        ("INVARIANTKIT_PSEUDONYM_KEY", "short"),
    ],
)
def test_bad_environment_fails_configure_before_anything_is_installed(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A bad value in a variable read later (at exit, in the test-alert timer, at identify())
    fails ``configure()`` at once, naming the variable; the configuration in place stays."""
    from invariantkit._config import STATE

    with capture_signals():
        before = STATE.config
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=name):
            ik.configure(sinks=[ik.sinks.Memory()])
        assert STATE.config is before
