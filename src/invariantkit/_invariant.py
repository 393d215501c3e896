"""``assert_invariant`` and ``report_violation``: one call reports to every backend."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from invariantkit._catalog import Declaration, Invariant, get_catalog
from invariantkit._config import STATE, Config, current_config, dispatcher, on_configure
from invariantkit._context import (
    CORRELATION,
    USER,
    bound_ids,
    new_span_id,
    new_trace_id,
    sampled_parent,
)
from invariantkit._dispatch import NO_SPAN
from invariantkit._record import EMPTY, Record
from invariantkit._safe import safe_mapping, safe_str, safe_tags

__all__ = ["InvariantViolation", "assert_invariant", "fire_test_alert", "report_violation"]

logger = logging.getLogger("invariantkit")

_get_current_span = trace.get_current_span
_tuple_new = tuple.__new__


class InvariantViolation(Exception):
    """Raised after reporting, when an invariant is violated in enforce mode.

    Attributes:
        invariant: the violated :class:`Invariant`.
        tags: the (scrubbed) tags it was reported with.
        trace_id: the correlation id of the report: search it in Sentry, traces and logs.

    Example:
        >>> import invariantkit as ik
        >>> STRICT = ik.Invariant("LEDGER_BALANCED", type="ledger_unbalanced",
        ...                       summary="Ledger does not balance", enforce=True)
        >>> try:
        ...     ik.assert_invariant(False, STRICT)
        ... except ik.InvariantViolation as exc:
        ...     print(exc.invariant.name)
        LEDGER_BALANCED
    """

    def __init__(self, invariant: Invariant, tags: Mapping[str, str], trace_id: str) -> None:
        self.invariant = invariant
        self.tags = dict(tags)
        self.trace_id = trace_id
        super().__init__(f"invariant {invariant.name} violated (trace_id={trace_id})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.invariant, self.tags, self.trace_id))


def _resolve(invariant: object) -> Invariant | None:
    if isinstance(invariant, Invariant):
        return invariant
    if isinstance(invariant, str):
        return get_catalog().invariants.get(invariant)
    return None


def emit_violation(
    invariant: Invariant,
    tags: Mapping[Any, Any] | None,
    extra: Mapping[Any, Any] | None,
    *,
    test: bool = False,
) -> str:
    """Report one violation to every sink; return its trace id. Never raises."""
    d = STATE.dispatcher or dispatcher()
    scrubber = (STATE.config or current_config()).scrubber
    safe = safe_tags(tags, scrubber) if tags is not None else EMPTY
    safe_extra = safe_mapping(extra, scrubber) if extra is not None else EMPTY
    span: trace.Span | None = None
    otel_token = corr_token = None
    span_parent: int | None = NO_SPAN
    # What current_ids() returns, with one lookup of the current span for both questions.
    current = _get_current_span()
    context = current.get_span_context()
    bound = (context.trace_id, context.span_id) if context.is_valid else bound_ids()
    ids: tuple[int, int] | None = bound
    traces = d.traces
    if traces is not None and not current.is_recording():
        # No span to put the event on: the violation gets a span of its own, in the trace of
        # the bound correlation if any.
        if d.spans_later:
            # Its ids are chosen here; the span itself is made on the worker.
            ids = (bound[0] if bound is not None else new_trace_id(), new_span_id())
            span_parent = bound[1] if bound is not None else None
            corr_token = CORRELATION.set(ids)
        else:
            span = _violation_span(traces.tracer, invariant, bound)
            otel_token = otel_context.attach(trace.set_span_in_context(span))
            context = span.get_span_context()
            ids = (context.trace_id, context.span_id)
    if ids is None:
        ids = (new_trace_id(), new_span_id())
        corr_token = CORRELATION.set(ids)
    trace_id = format(ids[0], "032x")
    try:
        # tuple.__new__ directly: the NamedTuple's generated __new__ costs a Python call.
        d.emit(
            _tuple_new(
                Record,
                (
                    "violation",
                    invariant.name,
                    "violated",
                    trace_id,
                    format(ids[1], "016x"),
                    USER.get(),
                    time.time(),
                    None,
                    safe,
                    safe_extra,
                    None,
                    invariant,
                    test,
                ),
            ),
            span_parent,
        )
    finally:
        if span is not None:
            span.end()
        if otel_token is not None:
            otel_context.detach(otel_token)
        if corr_token is not None:
            CORRELATION.reset(corr_token)
    return trace_id


def _violation_span(
    tracer: trace.Tracer, invariant: Invariant, bound: tuple[int, int] | None
) -> trace.Span:
    """The span of a violation outside any span, made on the caller's thread (non-SDK tracers)."""
    parent = sampled_parent(bound[0], bound[1]) if bound is not None else None
    attributes = {"invariant.name": invariant.name, "invariant.type": invariant.type}
    user = USER.get()
    if user is not None:
        attributes["enduser.id"] = user
    return tracer.start_span(f"invariant.{invariant.name}", context=parent, attributes=attributes)


def report_violation(
    invariant: Invariant,
    *,
    tags: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Report a violation of ``invariant`` found by a check computed elsewhere; return its
    trace id (32 hex characters: search it in Sentry, traces and logs).

    Sends a Sentry message (the invariant's name, at its level, tag ``invariant`` plus ``tags``,
    ``extra`` as the event's extra), increments ``billing_invariant_violation_total{type,invariant}``
    (trace id as exemplar), adds span event ``invariant.violated`` and sets the span's status to
    ERROR, writes a CRITICAL JSON log line, and sends PostHog ``invariant_violated`` with the tags
    as properties; all with one trace id and the bound user. Ids in ``tags`` never become metric
    labels. Tag and extra values of any type are reported as safe, scrubbed, truncated strings;
    reporting itself never raises. In enforce mode (``configure(mode="enforce")`` or the
    invariant's ``enforce=True``) it then raises :class:`InvariantViolation`.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> trace_id = ik.report_violation(
        ...     billing.PERIOD_MUST_ADVANCE, tags={"subscription_id": "sub_1"}
        ... )
        >>> len(trace_id)
        32
    """
    inv = _resolve(invariant)
    if inv is None:
        logger.error(
            "invariantkit: report_violation() needs an ik.Invariant (or the name of a declared "
            "one), got %s; the violation is reported as UNDECLARED_INVARIANT",
            safe_str(invariant, 100),
        )
        inv = _undeclared()
    try:
        trace_id = emit_violation(inv, tags, extra)
    except Exception:
        logger.exception("invariantkit: could not report violation of %s", inv.name)
        trace_id = ""
    try:
        enforce = inv.enforce if inv.enforce is not None else current_config().mode == "enforce"
    except Exception:  # never let configuration trouble turn a report into an exception
        enforce = False
    if enforce:
        try:
            safe = safe_tags(tags, current_config().scrubber)
        except Exception:
            safe = {}
        raise InvariantViolation(inv, safe, trace_id)
    return trace_id


def assert_invariant(
    condition: object,
    invariant: Invariant,
    *,
    tags: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bool:
    """Return True when ``condition`` holds; otherwise report the violation like
    :func:`report_violation` and return False (or raise :class:`InvariantViolation` in enforce mode).

    When the condition holds this is a branch and a return: keep it on hot paths. A callable
    ``condition`` (``lambda: ledger.balanced()``) is called, and its result checked: a lazy
    check; an exception inside it is reported as a violation (never raised).

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> charges_today = 1
        >>> ik.assert_invariant(charges_today <= 1, billing.NO_DOUBLE_CHARGE,
        ...                     tags={"subscription_id": "sub_1"})
        True
    """
    try:
        if condition is True:
            return True
        if callable(condition):
            condition = condition()
        if condition:
            return True
    except Exception as exc:  # a condition whose truth cannot be told is reported as violated
        merged: dict[Any, Any] = {"invariantkit.condition_error": safe_str(exc, 500)}
        given: object = extra
        if isinstance(given, Mapping):
            merged = {**given, **merged}
        elif given is not None:
            merged["extra"] = given  # not a mapping: still reported, made safe like any value
        extra = merged
    report_violation(invariant, tags=tags, extra=extra)
    return False


_UNDECLARED: list[Invariant] = []


def _undeclared() -> Invariant:
    if _UNDECLARED:
        undeclared = _UNDECLARED[0]
        if get_catalog().invariants.get(undeclared.name) is not undeclared:
            get_catalog().add(undeclared)  # the catalog was reset (tests): declare it again
        return undeclared
    _UNDECLARED.append(
        Invariant(
            "UNDECLARED_INVARIANT",
            type="undeclared_invariant",
            severity="error",
            summary="A violation was reported with something that is not an ik.Invariant",
        )
    )
    return _UNDECLARED[0]


# -- alert test mode ------------------------------------------------------------------------------

#: Why a test alert exists, in its ``extra``: whoever sees it in Sentry knows nothing is wrong.
TEST_ALERT_NOTE = (
    "Synthetic violation sent by invariantkit.fire_test_alert() to prove that this alert is "
    "routed to its owner. Nothing is wrong; no action is needed."
)
#: Seconds between ``configure(test_mode=True)`` and its test alerts (``ALERT_TEST_DELAY_SECONDS``).
DEFAULT_TEST_ALERT_DELAY = 90.0
_BUILTIN_TEST: list[Invariant] = []


def _builtin_test_invariant() -> Invariant:
    if _BUILTIN_TEST:
        builtin = _BUILTIN_TEST[0]
        if get_catalog().invariants.get(builtin.name) is not builtin:
            get_catalog().add(builtin)  # the catalog was reset (tests): declare it again
        return builtin
    _BUILTIN_TEST.append(
        Invariant(
            "TEST_INVARIANT_VIOLATION",
            type="invariant_violation",
            severity="warning",
            summary="Test alert: proves that invariant alerts reach their owner",
            description="Sent by ik.fire_test_alert() when no invariant is declared.",
        )
    )
    return _BUILTIN_TEST[0]


def _test_targets(invariant: Invariant | str | None) -> list[Invariant]:
    if invariant is None:
        declared = list(get_catalog().invariants.values())
        return declared or [_builtin_test_invariant()]
    if isinstance(invariant, Invariant):
        return [invariant]
    if isinstance(invariant, str):
        found = get_catalog().invariants.get(invariant)
        if found is None:
            known = ", ".join(sorted(get_catalog().invariants)) or "none"
            raise ValueError(
                f"invariantkit.fire_test_alert(): no invariant named {invariant!r} is declared "
                f"(declared: {known}); import the module that declares it first"
            )
        return [found]
    raise TypeError(
        "invariantkit.fire_test_alert(invariant=...) must be an ik.Invariant, the name of a "
        f"declared one, or None for all of them; got {type(invariant).__name__}"
    )


def fire_test_alert(invariant: Invariant | str | None = None) -> dict[str, str]:
    """Send a synthetic, clearly labelled violation through every sink, to prove that alerts
    reach their owner without paging anyone.

    For each invariant (``invariant``, or every declared one when None; with none declared, a
    built-in ``TEST_INVARIANT_VIOLATION``) it reports one violation with ``test=True``: the
    counter child ``billing_invariant_violation_total{type="test_<type>",invariant,test="true"}``
    (+1), a Sentry message at level ``warning`` with tag ``test=true``, a span event with
    ``invariant.test``, a WARNING log line with ``test: true`` and a personless PostHog
    ``invariant_violated`` with property ``test``. Each runs in its own fresh trace, detached from
    the current span and user, and never raises :class:`InvariantViolation`, whatever the mode.

    Returns:
        ``{invariant name: trace id}`` of what was sent.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> sent = ik.fire_test_alert(billing.NO_DOUBLE_CHARGE)
        >>> list(sent)
        ['NO_DOUBLE_CHARGE']
    """
    targets = _test_targets(invariant)
    sent: dict[str, str] = {}
    for inv in targets:
        # A fresh context: a test alert must not mark the caller's span as failed, nor be
        # attributed to the bound user in PostHog.
        otel_token = otel_context.attach(otel_context.Context())
        corr_token = CORRELATION.set(None)
        user_token = USER.set(None)
        try:
            sent[inv.name] = emit_violation(
                inv, None, {"invariantkit.test_alert": TEST_ALERT_NOTE}, test=True
            )
        except Exception:
            logger.exception("invariantkit: could not send the test alert of %s", inv.name)
        finally:
            USER.reset(user_token)
            CORRELATION.reset(corr_token)
            otel_context.detach(otel_token)
    return sent


def _announce_test(decl: Declaration) -> None:
    """Create the ``test="true"`` counter child of an invariant at zero in the current sinks."""
    d = STATE.dispatcher
    if d is None or decl.kind != "invariant":
        return
    d.emit(
        Record(
            "declare", decl.name, "declared", "", "", None, time.time(), declaration=decl, test=True
        )
    )


def announce_test_children() -> None:
    """Alert test mode: the ``test="true"`` child of every declared invariant starts at zero, so
    ``increase()`` sees the first test alert (a series born at 1 is never seen to increase)."""
    for inv in list(get_catalog().invariants.values()):
        _announce_test(inv)


def _on_declare(decl: Declaration) -> None:
    config = STATE.config
    if config is not None and config.test_mode:
        try:
            _announce_test(decl)
        except Exception:
            logger.exception("invariantkit: could not create the test series of %s", decl.name)


get_catalog().subscribe(_on_declare)


def alert_test_delay() -> float:
    """Seconds ``start_test_mode`` waits before its test alerts: ``ALERT_TEST_DELAY_SECONDS``,
    else ``DEFAULT_TEST_ALERT_DELAY`` (longer than two scrape intervals of a typical Prometheus)."""
    from invariantkit._env import seconds

    return seconds("ALERT_TEST_DELAY_SECONDS", DEFAULT_TEST_ALERT_DELAY, maximum=86400.0)


def start_test_mode(delay: float | None = None) -> threading.Timer | None:
    """What ``configure(test_mode=True)`` (or ``ALERT_TEST_MODE=true``) does once configured.

    Creates the ``test="true"`` counter child of every declared invariant at zero (and of each
    one declared later, while test mode is on), then fires :func:`fire_test_alert` for every
    declared invariant after ``delay`` seconds (default :func:`alert_test_delay`) on a daemon
    timer, so that Prometheus has scraped the zero first. With ``delay`` 0 it fires at once. The
    timer does nothing if invariantkit was configured again or shut down in the meantime.

    Returns the timer (None when it fired at once).
    """
    wait = alert_test_delay() if delay is None else float(delay)
    announce_test_children()
    generation = STATE.generation
    if wait <= 0:
        _fire_if_current(generation)
        return None
    timer = threading.Timer(wait, _fire_if_current, (generation,))
    timer.name = "invariantkit-test-alert"
    timer.daemon = True
    timer.start()
    return timer


def _start_if_test_mode(config: Config) -> None:
    """Alert test mode, once ``configure(test_mode=True)`` made its configuration active: test
    series at zero now, one labelled test alert per invariant after the delay (so Prometheus
    scrapes the zero first). Never pages anyone."""
    if config.test_mode:
        start_test_mode()


on_configure(_start_if_test_mode)


def _fire_if_current(generation: int) -> None:
    config = STATE.config
    if STATE.generation != generation or config is None or not config.test_mode:
        return
    try:
        fire_test_alert()
    except Exception:
        logger.exception("invariantkit: the test alert of alert test mode failed")
