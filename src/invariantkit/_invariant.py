"""``assert_invariant`` and ``report_violation``: one call reports to every backend."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from invariantkit._catalog import Invariant, get_catalog
from invariantkit._config import STATE, current_config, dispatcher
from invariantkit._context import CORRELATION, USER, current_ids, new_span_id, new_trace_id
from invariantkit._record import Record
from invariantkit._safe import safe_mapping, safe_str, safe_tags

__all__ = ["InvariantViolation", "assert_invariant", "report_violation"]

logger = logging.getLogger("invariantkit")


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
    config = current_config()
    scrubber = config.scrubber
    safe = safe_tags(tags, scrubber) if tags else {}
    safe_extra = safe_mapping(extra, scrubber) if extra else {}
    span: trace.Span | None = None
    otel_token = corr_token = None
    current = trace.get_current_span()
    if d.traces is not None and not current.is_recording():
        # No span to put the event on: open one, in the trace of the bound correlation if any.
        ids = current_ids()
        parent = None
        if ids is not None:
            parent = trace.set_span_in_context(
                trace.NonRecordingSpan(
                    trace.SpanContext(
                        ids[0], ids[1], False, trace.TraceFlags(trace.TraceFlags.SAMPLED)
                    )
                )
            )
        span = d.traces.tracer.start_span(
            f"invariant.{invariant.name}",
            context=parent,
            attributes={"invariant.name": invariant.name, "invariant.type": invariant.type},
        )
        user = USER.get()
        if user is not None:
            span.set_attribute("enduser.id", user)
        otel_token = otel_context.attach(trace.set_span_in_context(span))
    ids = current_ids()
    if ids is None:
        ids = (new_trace_id(), new_span_id())
        corr_token = CORRELATION.set(ids)
    trace_id = format(ids[0], "032x")
    try:
        d.emit(
            Record(
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
            )
        )
    finally:
        if span is not None:
            span.end()
        if otel_token is not None:
            otel_context.detach(otel_token)
        if corr_token is not None:
            CORRELATION.reset(corr_token)
    return trace_id


def report_violation(
    invariant: Invariant,
    *,
    tags: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Report a violation of ``invariant`` found by a check computed elsewhere.

    Sends a Sentry message (the invariant's name, at its level, tag ``invariant`` plus ``tags``,
    ``extra`` as the event's extra), increments ``billing_invariant_violation_total{type,invariant}``
    (trace id as exemplar), adds span event ``invariant.violated`` and sets the span's status to
    ERROR, writes a CRITICAL JSON log line, and sends PostHog ``invariant_violated`` with the tags
    as properties; all with one trace id and the bound user. Ids in ``tags`` never become metric
    labels. In enforce mode it then raises :class:`InvariantViolation`.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> ik.report_violation(billing.PERIOD_MUST_ADVANCE, tags={"subscription_id": "sub_1"})
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
    enforce = inv.enforce if inv.enforce is not None else current_config().mode == "enforce"
    if enforce:
        raise InvariantViolation(inv, safe_tags(tags, current_config().scrubber), trace_id)


def assert_invariant(
    condition: object,
    invariant: Invariant,
    *,
    tags: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bool:
    """Return True when ``condition`` holds; otherwise report the violation like
    :func:`report_violation` and return False (or raise :class:`InvariantViolation` in enforce mode).

    When the condition holds this is a branch and a return: keep it on hot paths.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> charges_today = 1
        >>> ik.assert_invariant(charges_today <= 1, billing.NO_DOUBLE_CHARGE,
        ...                     tags={"subscription_id": "sub_1"})
        True
    """
    try:
        if condition:
            return True
    except Exception as exc:  # a condition whose truth cannot be told is reported as violated
        extra = {**(extra or {}), "invariantkit.condition_error": safe_str(exc, 500)}
    report_violation(invariant, tags=tags, extra=extra)
    return False


_UNDECLARED: list[Invariant] = []


def _undeclared() -> Invariant:
    if not _UNDECLARED:
        _UNDECLARED.append(
            Invariant(
                "UNDECLARED_INVARIANT",
                type="undeclared_invariant",
                severity="error",
                summary="A violation was reported with something that is not an ik.Invariant",
            )
        )
    return _UNDECLARED[0]
