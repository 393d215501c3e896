"""Test support: run code under real, isolated SDK pipelines and assert what they emitted.

:func:`capture_signals` swaps in an OpenTelemetry SDK ``TracerProvider`` with an in-memory
exporter, a fresh Prometheus ``CollectorRegistry``, a real Sentry client whose transport keeps
envelopes, a real PostHog client that keeps the messages it built instead of posting them, and a
capture of the JSON log lines; it restores every piece of global state it touched when it exits.
What you assert on is what the real SDKs produced, not an imitation.

The pytest plugin (:mod:`invariantkit.pytest_plugin`) gives the same object as the ``signals``
fixture.

Example:
    >>> import invariantkit as ik
    >>> from invariantkit import billing
    >>> from invariantkit.testing import capture_signals
    >>> with capture_signals() as signals:
    ...     ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"})
    ...     record = signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_1")
    False
    >>> signals.metric("billing_invariant_violation_total", invariant="NO_DOUBLE_CHARGE")
    1.0
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from invariantkit import _sentry_scope
from invariantkit._catalog import Invariant, get_catalog
from invariantkit._config import STATE, Config, Mode, _check_sinks, swap
from invariantkit._context import CORRELATION, USER
from invariantkit._dispatch import Dispatcher, SinkHandle
from invariantkit._record import Record
from invariantkit._safe import NO_SCRUB, Scrubber
from invariantkit.sinks._base import SinkContext, SinkUnavailable
from invariantkit.sinks._logs import handle_line
from invariantkit.sinks._registry import build as build_sink
from invariantkit.sinks._registry import capture as capture_sink

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from prometheus_client import CollectorRegistry

    from invariantkit.sinks._base import Sink

__all__ = ["Signals", "SinkError", "capture_signals"]

_LOGGER = "invariantkit"
_SYNC_TIMEOUT = 5.0
_LIST_LIMIT = 12

#: Defaults that the pytest plugin sets from its ini options for the duration of a session.
_DEFAULTS: dict[str, Any] = {"fail_on_sink_error": False}

#: The optional SDK behind each backend switch, and the extra that installs it.
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "traces": ("opentelemetry.sdk.trace", "opentelemetry-sdk", "otel"),
    "metrics": ("prometheus_client", "prometheus-client", "prometheus"),
    "sentry": ("sentry_sdk", "sentry-sdk", "sentry"),
    "posthog": ("posthog", "posthog", "posthog"),
}
#: The registry's backend names, to the names ``capture_signals`` switches them by.
_CAPTURED = {
    "otel_traces": "traces",
    "prometheus": "metrics",
    "sentry": "sentry",
    "posthog": "posthog",
}


class SinkError(NamedTuple):
    """An exception that invariantkit swallowed during a capture, so the host app never saw it.

    ``sink`` is the failing sink's name (``"sentry"``, ``"posthog"``...), or ``"invariantkit"``
    for an internal error of the library itself; ``message`` says where it happened.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> from invariantkit.testing import capture_signals
        >>> class Broken(ik.sinks.Memory):
        ...     name = "broken"
        ...     def emit(self, record):
        ...         raise ValueError("bug")
        >>> with capture_signals(extra_sinks=[Broken()]) as signals:
        ...     ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        False
        >>> {(error.sink, type(error.exception).__name__) for error in signals.sink_errors}
        {('broken', 'ValueError')}
    """

    sink: str
    exception: BaseException
    message: str


class _Errors:
    """Thread-safe list of swallowed errors; remembers how many were already reported."""

    def __init__(self) -> None:
        self.items: list[SinkError] = []
        self.reported = 0
        self.lock = threading.Lock()

    def add(self, error: SinkError) -> None:
        with self.lock:
            self.items.append(error)


class _CapturingDispatcher(Dispatcher):
    """The real dispatcher, which also remembers each sink failure it isolates (with the
    exception itself, which the dispatcher only counts and logs once)."""

    def __init__(
        self, sinks: Iterable[Sink], errors: _Errors, context: SinkContext | None = None
    ) -> None:
        super().__init__(sinks, context=context)
        self._errors = errors

    def sink_failed(self, sink: SinkHandle, exc: BaseException) -> None:
        name = sink.name
        self._errors.add(SinkError(name, exc, f"sink {name!r} raised {type(exc).__name__}: {exc}"))
        super().sink_failed(sink, exc)


class _InternalErrors(logging.Handler):
    """Keeps invariantkit's own swallowed errors (``logger.exception`` on the ``invariantkit``
    logger) while this capture is the active configuration."""

    def __init__(self, errors: _Errors, dispatcher: Dispatcher) -> None:
        super().__init__(logging.ERROR)
        self._errors = errors
        self._dispatcher = dispatcher

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or hasattr(record, "invariantkit"):
            return
        if STATE.dispatcher is not self._dispatcher:
            return  # an inner capture (or another configuration) owns this error
        self._errors.add(SinkError("invariantkit", exc, record.getMessage()))


class _TeeLogger(logging.Logger):
    """The logger the capture's ``JsonLogs`` sink writes to: it keeps every JSON line (debug
    included) and forwards each to the real ``invariantkit`` logger, whose level, handlers and
    propagation (pytest's ``caplog``, your log shipper) apply as in production."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__(target.name, logging.DEBUG)
        self.target = target
        self.lines: list[dict[str, Any]] = []
        self._guard = threading.Lock()

    def handle(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "invariantkit", None)
        if fields is not None:
            with self._guard:
                self.lines.append(dict(fields))
        if self.target.isEnabledFor(record.levelno):
            handle_line(self.target, record)


class _Unavailable:
    """Why a backend is not captured (for a clear error when a test reads it anyway)."""

    def __init__(self, reasons: Mapping[str, str]) -> None:
        self.reasons = dict(reasons)

    def check(self, backend: str, what: str) -> None:
        reason = self.reasons.get(backend)
        if reason is not None:
            raise RuntimeError(
                f"Signals.{what}: {backend} is not captured by this capture_signals() ({reason})"
            )


class Signals:
    """What the real SDK pipelines emitted inside :func:`capture_signals` (or the ``signals``
    pytest fixture).

    Made by :func:`capture_signals` (not constructed directly). Reading any attribute first
    drains invariantkit's background worker, so everything emitted before the read is there. The
    captured data stays readable after the capture exits.
    Reading a backend that is not captured (switched off, or its SDK is not installed) raises a
    ``RuntimeError`` that says so, rather than returning an empty list that would make an
    assertion pass for the wrong reason.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit.testing import capture_signals
        >>> @ik.billing_operation("refund")
        ... def refund(amount: int) -> int:
        ...     return amount
        >>> with capture_signals() as signals:
        ...     refund(5)
        5
        >>> [span.name for span in signals.spans]
        ['billing.refund']
        >>> signals.metric("billing_operation_total", operation="refund", outcome="success")
        1.0
    """

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        memory: Any,
        span_exporter: Any,
        registry: CollectorRegistry | None,
        sentry_transport: Any,
        posthog_messages: list[dict[str, Any]] | None,
        logs: _TeeLogger,
        errors: _Errors,
        unavailable: _Unavailable,
    ) -> None:
        self._dispatcher = dispatcher
        self._memory = memory
        self._span_exporter = span_exporter
        self._registry = registry
        self._sentry_transport = sentry_transport
        self._posthog_messages = posthog_messages
        self._logs = logs
        self._errors = errors
        self._unavailable = unavailable
        self._baseline: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._closed = False
        self._fail_on_sink_error = False

    def _sync(self) -> None:
        if self._closed:
            return
        worker = self._dispatcher.worker
        if worker is not None:
            worker.flush(_SYNC_TIMEOUT)

    def __repr__(self) -> str:
        # No flush here: a repr must not wait on workers (Sentry serialises frame locals with it).
        records = [r for r in self._memory.records if r.kind != "declare"]
        kinds = Counter(r.kind for r in records)
        parts = ", ".join(f"{kind}={n}" for kind, n in sorted(kinds.items()))
        return f"<Signals {len(records)} record(s): {parts or 'none'}>"

    # -- what was emitted -----------------------------------------------------------------------

    @property
    def records(self) -> list[Record]:
        """Every :class:`~invariantkit.Record` that reached the sinks, in order (declarations
        excluded)."""
        self._sync()
        return list(self._memory.records)

    @property
    def violations(self) -> list[Record]:
        """The violation records, in order."""
        return [r for r in self.records if r.kind == "violation"]

    @property
    def spans(self) -> list[ReadableSpan]:
        """Finished OpenTelemetry spans (``opentelemetry.sdk.trace.ReadableSpan``), in order."""
        self._unavailable.check("traces", "spans")
        self._sync()
        return list(self._span_exporter.get_finished_spans())

    @property
    def registry(self) -> CollectorRegistry:
        """The fresh ``prometheus_client.CollectorRegistry`` the metrics went to."""
        self._unavailable.check("metrics", "registry")
        assert self._registry is not None
        return self._registry

    @property
    def sentry_envelopes(self) -> list[Any]:
        """The ``sentry_sdk.envelope.Envelope`` objects the real Sentry client produced."""
        self._unavailable.check("sentry", "sentry_envelopes")
        self._sync()
        return list(self._sentry_transport.envelopes)

    def _sentry_items(self, item_type: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for envelope in self.sentry_envelopes:
            for item in envelope.items:
                if item.type == item_type:
                    out.append(json.loads(item.get_bytes()))
        return out

    @property
    def sentry_events(self) -> list[dict[str, Any]]:
        """The Sentry error and message events, as the JSON the SDK would post."""
        self._unavailable.check("sentry", "sentry_events")
        return self._sentry_items("event")

    @property
    def sentry_duplicates(self) -> list[dict[str, Any]]:
        """Sentry events that report an exception object an earlier event already reported: one
        failure sent twice (say, by a framework's Sentry integration, or a handler's own
        ``capture_exception``). ``assert_correlated()`` fails on them. Pass
        ``sentry_options={"integrations": [...]}`` to capture the framework's events too."""
        events = self.sentry_events
        return _sentry_scope.duplicates(events, self._sentry_transport.exceptions)

    @property
    def sentry_checkins(self) -> list[dict[str, Any]]:
        """Sentry Crons check-ins (``monitor_slug``, ``status``, ``duration``...), as posted."""
        self._unavailable.check("sentry", "sentry_checkins")
        return self._sentry_items("check_in")

    @property
    def posthog_events(self) -> list[dict[str, Any]]:
        """The PostHog messages the real client built (``event``, ``distinct_id``,
        ``properties``...), in order."""
        self._unavailable.check("posthog", "posthog_events")
        self._sync()
        assert self._posthog_messages is not None
        return list(self._posthog_messages)

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines (as dicts), in order, debug ones included."""
        self._sync()
        return list(self._logs.lines)

    @property
    def sink_errors(self) -> list[SinkError]:
        """The exceptions invariantkit swallowed so far: a sink that raised, or an internal
        error. Empty in a healthy capture."""
        self._sync()
        with self._errors.lock:
            return list(self._errors.items)

    def metric(self, name: str, **labels: Any) -> float:
        """The sum of every Prometheus series named ``name`` whose labels include ``labels``.

        ``name`` is a sample name as exposed (``billing_invariant_violation_total``); a
        counter's name without ``_total`` is accepted too. Returns 0.0 when the matching series
        exist at zero, or when none matches the label values (children created on first use,
        such as ``billing_operation_errors_total{error_type}``). A name that is not in the
        registry, a histogram named without its ``_count``/``_sum``/``_bucket`` suffix, or a
        label name the metric does not have raises ``ValueError`` listing what exists, so a typo
        cannot make an assertion pass. After :meth:`clear`, counters and histograms count from
        zero again; gauges keep their current value.

        Example:
            >>> import invariantkit as ik
            >>> from invariantkit import billing
            >>> from invariantkit.testing import capture_signals
            >>> with capture_signals() as signals:
            ...     signals.metric("billing_invariant_violation", invariant="NO_DOUBLE_CHARGE")
            0.0
        """
        self._unavailable.check("metrics", "metric()")
        self._sync()
        wanted = {key: _label(value) for key, value in labels.items()}
        families = list(self.registry.collect())
        sample_name = _resolve_sample_name(name, families)
        label_names: set[str] = set()
        total = 0.0
        for family in families:
            for sample in family.samples:
                if sample.name != sample_name:
                    continue
                label_names.update(sample.labels)
                if all(sample.labels.get(k) == v for k, v in wanted.items()):
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    total += sample.value - self._baseline.get(key, 0.0)
        unknown = sorted(set(wanted) - label_names)
        if unknown and label_names:
            raise ValueError(
                f"Signals.metric({name!r}): no label named {', '.join(unknown)}; "
                f"its labels are {', '.join(sorted(label_names))}"
            )
        return total

    def clear(self) -> None:
        """Forget everything captured so far: records, spans, Sentry envelopes, PostHog
        messages, log lines and swallowed errors; counters and histograms read by
        :meth:`metric` count from zero again (gauges keep their value)."""
        self._sync()
        self._memory.clear()
        if self._span_exporter is not None:
            self._span_exporter.clear()
        if self._sentry_transport is not None:
            with self._sentry_transport._guard:
                self._sentry_transport.envelopes.clear()
        if self._posthog_messages is not None:
            self._posthog_messages.clear()
        with self._logs._guard:
            self._logs.lines.clear()
        with self._errors.lock:
            self._errors.items.clear()
            self._errors.reported = 0
        if self._registry is not None:
            self._baseline = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in self._registry.collect()
                if family.type in ("counter", "histogram", "summary")
                for sample in family.samples
                if not sample.name.endswith("_created")
            }

    # -- assertions -----------------------------------------------------------------------------

    def assert_violation(
        self, name: str | Invariant, /, count: int | None = None, **tags: Any
    ) -> Record:
        """Assert that invariant ``name`` was reported with (at least) ``tags``; return the
        first matching record. With ``count``, assert exactly that many matching violations.

        Tag values are compared as reported: as text, after scrubbing (``True`` matches
        ``"true"``, ``5`` matches ``"5"``). The failure message lists what was reported instead.
        (A tag literally named ``count`` cannot be matched here: filter :attr:`violations`.)

        Example:
            >>> import invariantkit as ik
            >>> from invariantkit import billing
            >>> from invariantkit.testing import capture_signals
            >>> with capture_signals() as signals:
            ...     trace_id = ik.report_violation(billing.PERIOD_MUST_ADVANCE,
            ...                                    tags={"subscription_id": "s1"})
            ...     signals.assert_violation("PERIOD_MUST_ADVANCE", count=1, subscription_id="s1").name
            'PERIOD_MUST_ADVANCE'
        """
        inv_name = name.name if isinstance(name, Invariant) else name
        wanted = {key: _label(value) for key, value in tags.items()}
        violations = self.violations
        same_name = [r for r in violations if r.name == inv_name]
        matching = [r for r in same_name if _tags_match(r, wanted)]
        if matching and (count is None or len(matching) == count):
            return matching[0]
        what = f"{count} violation(s)" if count is not None else "a violation"
        with_tags = f" with tags {_fmt_mapping(wanted)}" if wanted else ""
        lines = [f"expected {what} of {inv_name}{with_tags}, found {len(matching)}."]
        if same_name and len(same_name) != len(matching):
            lines.append(
                f"{inv_name} was reported {len(same_name)} time(s), with tags: "
                + _fmt_tag_sets(same_name)
            )
        elif not same_name:
            hint = _did_you_mean(
                inv_name, [*get_catalog().invariants, *(r.name for r in violations)]
            )
            if hint:
                lines.append(hint)
        raise AssertionError("\n".join(lines) + "\n" + self._summary())

    def assert_no_violations(self) -> None:
        """Assert that no invariant was reported; the failure message lists those that were."""
        violations = self.violations
        if violations:
            raise AssertionError(
                f"expected no violations, found {len(violations)}: "
                + ", ".join(f"{n} x{c}" for n, c in Counter(r.name for r in violations).items())
                + "\n"
                + self._summary()
            )

    def assert_operation(
        self, name: str, /, outcome: str | None = None, *, count: int | None = None
    ) -> Record:
        """Assert that operation ``name`` ended (with ``outcome`` ``"success"``,
        ``"failure"`` or ``"cancelled"`` when given); return the first matching record. With ``count``, assert
        exactly that many.

        Example:
            >>> import invariantkit as ik
            >>> from invariantkit.testing import capture_signals
            >>> with capture_signals() as signals:
            ...     with ik.billing_operation("refund"):
            ...         pass
            ...     signals.assert_operation("refund", "success", count=1).status
            'success'
        """
        if outcome is not None and outcome not in ("success", "failure", "cancelled"):
            raise ValueError(
                f"Signals.assert_operation(outcome={outcome!r}): must be 'success', 'failure' or 'cancelled'"
            )
        ops = [r for r in self.records if r.kind == "operation"]
        matching = [r for r in ops if r.name == name and outcome in (None, r.status)]
        if matching and (count is None or len(matching) == count):
            return matching[0]
        what = f"{count} run(s)" if count is not None else "a run"
        ended = f" ending in {outcome}" if outcome else ""
        lines = [f"expected {what} of operation {name}{ended}, found {len(matching)}."]
        same = [r for r in ops if r.name == name]
        if same and len(same) != len(matching):
            lines.append(
                f"{name} ended {len(same)} time(s): "
                + ", ".join(f"{s} x{c}" for s, c in Counter(r.status for r in same).items())
            )
        elif not same:
            hint = _did_you_mean(name, [*get_catalog().operations, *(r.name for r in ops)])
            if hint:
                lines.append(hint)
        raise AssertionError("\n".join(lines) + "\n" + self._summary())

    def assert_no_sink_errors(self) -> None:
        """Assert that no sink raised and invariantkit had no internal error (both are swallowed
        so that the host app never sees them). The message shows each traceback.

        The ``fail_on_sink_error`` option of :func:`capture_signals` (and the pytest ini option
        ``invariantkit_fail_on_sink_error``) runs this check when the capture exits.
        """
        errors = self.sink_errors
        with self._errors.lock:
            self._errors.reported = len(self._errors.items)
        if not errors:
            return
        lines = [f"invariantkit swallowed {len(errors)} error(s) during this test:"]
        for error in errors[:_LIST_LIMIT]:
            lines.append(f"- {error.sink}: {error.message}")
            formatted = traceback.format_exception(
                type(error.exception), error.exception, error.exception.__traceback__
            )
            lines.extend("    " + line for line in "".join(formatted).rstrip().splitlines())
        if len(errors) > _LIST_LIMIT:
            lines.append(f"... and {len(errors) - _LIST_LIMIT} more")
        raise AssertionError("\n".join(lines)) from errors[0].exception

    def _check_unreported_errors(self) -> None:
        with self._errors.lock:
            fresh = len(self._errors.items) > self._errors.reported
        if fresh:
            self.assert_no_sink_errors()

    def assert_not_leaked(self, *values: str) -> None:
        """Assert that none of ``values`` (an e-mail, a card number, a token...) appears in
        anything that leaves the process: Sentry envelopes, PostHog messages, exported spans,
        JSON log lines and Prometheus labels. Values are looked up as substrings of every key
        and value, after decoding (so JSON escaping cannot hide one); the failure message says
        where each one was found.

        Example:
            >>> import invariantkit as ik
            >>> from invariantkit import billing
            >>> from invariantkit.testing import capture_signals
            >>> with capture_signals() as signals:
            ...     trace_id = ik.report_violation(billing.NO_DOUBLE_CHARGE,
            ...                                    tags={"customer": "alice@example.com"})
            ...     signals.assert_not_leaked("alice@example.com")
        """
        if not values:
            raise TypeError("Signals.assert_not_leaked() needs at least one value to look for")
        for value in values:
            if not isinstance(value, str) or not value:
                raise TypeError(
                    f"Signals.assert_not_leaked(): values must be non-empty str, got {value!r}"
                )
        found: list[str] = []
        for where, document in self._outgoing():
            for path, text in _walk(document):
                for value in values:
                    if value in text:
                        found.append(f"{value!r} in {where} at {path or '<root>'}")
        if found:
            shown = found[:_LIST_LIMIT]
            more = (
                f"\n  ... and {len(found) - _LIST_LIMIT} more" if len(found) > _LIST_LIMIT else ""
            )
            raise AssertionError(
                f"{len(found)} occurrence(s) of sensitive values left the process:\n  "
                + "\n  ".join(shown)
                + more
            )

    def _outgoing(self) -> Iterator[tuple[str, Any]]:
        reasons = self._unavailable.reasons
        if "sentry" not in reasons:
            for envelope in self.sentry_envelopes:
                for item in envelope.items:
                    raw = item.get_bytes()
                    try:
                        document: Any = json.loads(raw)
                    except ValueError:
                        document = raw.decode("utf-8", "replace")
                    event_id = document.get("event_id") if isinstance(document, dict) else None
                    yield f"Sentry {item.type} {event_id or ''}".rstrip(), document
        if "posthog" not in reasons:
            for message in self.posthog_events:
                yield f"PostHog event {message.get('event')!r}", message
        if "traces" not in reasons:
            for span in self.spans:
                yield f"span {span.name!r}", json.loads(span.to_json(indent=None))
        for i, line in enumerate(self.logs):
            yield f"log line {i} ({line.get('event')})", line
        if "metrics" not in reasons:
            for family in self.registry.collect():
                for sample in family.samples:
                    yield f"metric {sample.name}", dict(sample.labels)

    def assert_correlated(self) -> None:
        """Assert that every signal of each operation, violation and product event carries one
        trace id and one user id: its span (and span event), its Sentry event, its PostHog
        event and its log line, in every captured backend.

        Fails when nothing was emitted (there is nothing to correlate) and lists each missing or
        mismatched signal.
        """
        records = [r for r in self.records if r.kind in ("operation", "violation", "event")]
        if not records:
            raise AssertionError(
                "assert_correlated(): nothing to correlate (no operation, violation or product "
                "event was emitted).\n" + self._summary()
            )
        reasons = self._unavailable.reasons
        spans = {} if "traces" in reasons else {_span_id(s): s for s in self.spans}
        sentry = None if "sentry" in reasons else self.sentry_events
        posthog = None if "posthog" in reasons else self.posthog_events
        logs = self.logs
        problems: list[str] = []
        used_sentry: set[int] = set()
        used_posthog: set[int] = set()
        used_logs: set[int] = set()
        for record in records:
            where = f"{record.kind} {record.name} (trace_id={record.trace_id})"
            if "traces" not in reasons:
                problems.extend(_check_span(record, spans, where))
            if sentry is not None:
                problems.extend(_check_sentry(record, sentry, used_sentry, where))
            if posthog is not None:
                problems.extend(_check_posthog(record, posthog, used_posthog, where))
            problems.extend(_check_log(record, logs, used_logs, where))
        if sentry is not None:
            for event in self.sentry_duplicates:
                problems.append(f"Sentry event {event.get('event_id')} repeats a failure sent")
        if problems:
            shown = problems[: _LIST_LIMIT * 2]
            if len(problems) > len(shown):
                shown.append(f"... and {len(problems) - len(shown)} more")
            raise AssertionError(
                "signals are not correlated:\n  " + "\n  ".join(shown) + "\n" + self._summary()
            )

    # -- failure messages -----------------------------------------------------------------------

    def _summary(self) -> str:
        """What was emitted, grouped and counted: the second half of every failure message."""
        records = self.records
        reasons = self._unavailable.reasons
        lines = ["What was emitted:"]
        violations = [r for r in records if r.kind == "violation"]
        lines.append(f"  violations ({len(violations)}):")
        by_name: dict[str, list[Record]] = {}
        for r in violations:
            by_name.setdefault(r.name, []).append(r)
        for inv_name, recs in list(by_name.items())[:_LIST_LIMIT]:
            lines.append(f"    {inv_name} x{len(recs)}, tags: {_fmt_tag_sets(recs)}")
        ops = Counter(
            f"{r.name} {r.status}"
            + (f" ({type(r.exception).__name__})" if r.exception is not None else "")
            for r in records
            if r.kind == "operation"
        )
        lines.append(f"  operations ({sum(ops.values())}): {_fmt_counter(ops)}")
        events = Counter(r.name for r in records if r.kind == "event")
        lines.append(f"  product events ({sum(events.values())}): {_fmt_counter(events)}")
        other = Counter(
            f"{r.kind} {r.name}"
            for r in records
            if r.kind not in ("violation", "operation", "event", "operation_start")
        )
        if other:
            lines.append(f"  other records ({sum(other.values())}): {_fmt_counter(other)}")
        if "sentry" in reasons:
            lines.append(f"  sentry: not captured ({reasons['sentry']})")
        else:
            sentry = Counter(_sentry_label(e) for e in self.sentry_events)
            lines.append(f"  sentry events ({sum(sentry.values())}): {_fmt_counter(sentry)}")
        if "posthog" in reasons:
            lines.append(f"  posthog: not captured ({reasons['posthog']})")
        else:
            ph = Counter(str(m.get("event")) for m in self.posthog_events)
            lines.append(f"  posthog events ({sum(ph.values())}): {_fmt_counter(ph)}")
        if "traces" in reasons:
            lines.append(f"  spans: not captured ({reasons['traces']})")
        else:
            spans = Counter(
                f"{s.name}" + (" [ERROR]" if s.status.status_code.name == "ERROR" else "")
                for s in self.spans
            )
            lines.append(f"  spans ({sum(spans.values())}): {_fmt_counter(spans)}")
        errors = self.sink_errors
        if errors:
            lines.append(
                f"  swallowed errors ({len(errors)}): "
                + ", ".join(f"{e.sink}: {type(e.exception).__name__}" for e in errors[:5])
            )
        if not self._closed and STATE.dispatcher is not self._dispatcher:
            lines.append(
                "  note: invariantkit was configured again inside this capture (ik.configure() "
                "or ik.shutdown() was called), so later signals did not reach it"
            )
        return "\n".join(lines)


# -- helpers for messages and matching -----------------------------------------------------------


def _label(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _tags_match(record: Record, wanted: Mapping[str, str]) -> bool:
    attrs = record.attributes
    return all(attrs.get(k) == v for k, v in wanted.items())


def _fmt_mapping(mapping: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in mapping.items()) + "}"


def _fmt_tag_sets(records: list[Record]) -> str:
    sets = Counter(_fmt_mapping(r.attributes) for r in records)
    shown = [f"{s}" + (f" x{n}" if n > 1 else "") for s, n in list(sets.items())[:_LIST_LIMIT]]
    if len(sets) > _LIST_LIMIT:
        shown.append(f"... and {len(sets) - _LIST_LIMIT} more")
    return "; ".join(shown)


def _fmt_counter(counts: Counter[str]) -> str:
    if not counts:
        return "none"
    items = [f"{k} x{n}" for k, n in list(counts.items())[:_LIST_LIMIT]]
    if len(counts) > _LIST_LIMIT:
        items.append(f"... and {len(counts) - _LIST_LIMIT} more")
    return ", ".join(items)


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3)
    return f"nothing named {name} was emitted; did you mean {', '.join(close)}?" if close else ""


def _sentry_label(event: Mapping[str, Any]) -> str:
    message = event.get("message")
    if message:
        return f"{message!r} ({event.get('level')})"
    values = (event.get("exception") or {}).get("values") or [{}]
    return f"{values[-1].get('type')}: {values[-1].get('value')}"


def _resolve_sample_name(name: str, families: list[Any]) -> str:
    samples = {s.name for f in families for s in f.samples}
    by_family = {f.name: f for f in families}
    if name in samples:
        return name
    family = by_family.get(name)
    if family is not None:
        if family.type == "counter":
            return f"{name}_total"
        if family.type in ("gauge", "unknown", "info", "stateset"):
            return name
        raise ValueError(
            f"Signals.metric({name!r}) is a {family.type}: read {name}_count, {name}_sum or "
            f"{name}_bucket (with le=...)"
        )
    known: set[str] = set()
    for f in families:
        if f.type == "counter":
            known.add(f"{f.name}_total")
        elif f.type == "histogram":
            known.update(f"{f.name}{suffix}" for suffix in ("_count", "_sum", "_bucket"))
        else:
            known.add(f.name)
    if name in known:  # a family whose children do not exist yet
        return name
    hint = difflib.get_close_matches(name, sorted(known), n=3)
    raise ValueError(
        f"Signals.metric({name!r}): no such metric in this capture"
        + (f"; did you mean {', '.join(hint)}?" if hint else "")
        + f" Metrics: {', '.join(sorted(known))}"
    )


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every key and scalar of a JSON-like document as text, with its path."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            yield sub, str(key)
            yield from _walk(item, sub)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")
    elif value is not None:
        yield path, value if isinstance(value, str) else str(value)


def _span_id(span: Any) -> str:
    return format(span.context.span_id, "016x")


def _check_span(record: Record, spans: Mapping[str, Any], where: str) -> list[str]:
    span = spans.get(record.span_id)
    if span is None:
        if record.kind == "event":
            return []  # tracked outside any span: there is no span event to correlate
        known = ", ".join(f"{s.name} {sid}" for sid, s in list(spans.items())[:5]) or "none"
        return [f"{where}: no span with span_id {record.span_id} (spans: {known})"]
    problems = []
    trace_id = format(span.context.trace_id, "032x")
    if trace_id != record.trace_id:
        problems.append(f"{where}: span {span.name} has trace_id {trace_id}")
    if record.user_id is not None:
        span_user = (span.attributes or {}).get("enduser.id")
        if span_user != record.user_id:
            problems.append(
                f"{where}: span {span.name} has enduser.id {span_user!r}, "
                f"expected {record.user_id!r}"
            )
    if record.kind == "violation":
        names = [
            (e.attributes or {}).get("invariant.name")
            for e in span.events
            if e.name == "invariant.violated"
        ]
        if record.name not in names:
            problems.append(f"{where}: span {span.name} has no invariant.violated event for it")
    elif record.kind == "event" and record.name not in [e.name for e in span.events]:
        problems.append(f"{where}: span {span.name} has no span event {record.name!r}")
    return problems


def _sentry_trace_id(event: Mapping[str, Any]) -> Any:
    return ((event.get("contexts") or {}).get("trace") or {}).get("trace_id")


def _pair(
    record: Record,
    candidates: list[dict[str, Any]],
    used: set[int],
    *,
    label: str,
    where: str,
    trace_of: Callable[[dict[str, Any]], Any],
    span_of: Callable[[dict[str, Any]], Any] | None,
    user_field: str,
    user_of: Callable[[dict[str, Any]], Any],
    check_user: bool,
    expected_user: Any,
) -> tuple[dict[str, Any] | None, list[str]]:
    """Pair ``record`` with one not yet paired document of its trace (and span, when the
    document says it); report a missing document or the wrong user."""
    free = [d for d in candidates if id(d) not in used]
    in_trace = [d for d in free if trace_of(d) == record.trace_id]
    mine = [d for d in in_trace if span_of is None or span_of(d) == record.span_id]
    if not mine:
        if in_trace and span_of is not None:
            spans = ", ".join(sorted({str(span_of(d)) for d in in_trace}))
            message = (
                f"{where}: no {label} with span_id {record.span_id} (found it in this trace "
                f"with span_id {spans})"
            )
            return None, [message]
        others = sorted({str(trace_of(d)) for d in free})
        return None, [
            f"{where}: no {label} with this trace id"
            + (f" (found it with trace_id {', '.join(others)})" if others else "")
        ]
    for document in mine:
        if not check_user or user_of(document) == expected_user:
            used.add(id(document))
            return document, []
    document = mine[0]
    used.add(id(document))
    return document, [
        f"{where}: {label} has {user_field} {user_of(document)!r}, expected {expected_user!r}"
    ]


def _check_sentry(
    record: Record, events: list[dict[str, Any]], used: set[int], where: str
) -> list[str]:
    if record.kind == "violation":
        candidates = [e for e in events if e.get("message") == record.name]
        label = f"Sentry message {record.name!r}"
    elif (
        record.kind == "operation"
        and record.status == "failure"
        and isinstance(record.exception, Exception)
    ):
        from invariantkit.sinks._sentry import _already_reported

        if _already_reported(record.exception):
            return []  # its violation message / database error is the event (checked there)
        candidates = [
            e
            for e in events
            if e.get("exception") and (e.get("tags") or {}).get("operation") == record.name
        ]
        label = f"Sentry exception for operation {record.name!r}"
        if not candidates:
            # Failed by an exception a nested operation already sent: one event, in this trace.
            nested = [
                e for e in events if e.get("exception") and _sentry_trace_id(e) == record.trace_id
            ]
            if nested:
                return []
    else:
        return []
    event, problems = _pair(
        record,
        candidates,
        used,
        label=label,
        where=where,
        trace_of=_sentry_trace_id,
        span_of=lambda e: ((e.get("contexts") or {}).get("trace") or {}).get("span_id"),
        user_field="user",
        user_of=lambda e: (e.get("user") or {}).get("id"),
        check_user=record.user_id is not None,
        expected_user=record.user_id,
    )
    if event is not None:
        tag = (event.get("tags") or {}).get("trace_id")
        if tag != record.trace_id:
            problems.append(f"{where}: {label} has tag trace_id={tag!r}")
    return problems


def _check_posthog(
    record: Record, messages: list[dict[str, Any]], used: set[int], where: str
) -> list[str]:
    if record.kind == "violation":
        name = "invariant_violated"
    elif record.kind == "event":
        name = record.name
    else:
        decl = record.declaration
        if decl is None or not getattr(decl, "user_facing", False):
            return []
        name = f"{getattr(decl, 'event_prefix', record.name)}_{record.status}"
    return _pair(
        record,
        [m for m in messages if m.get("event") == name],
        used,
        label=f"PostHog event {name!r}",
        where=where,
        trace_of=lambda m: (m.get("properties") or {}).get("trace_id"),
        span_of=None,  # PostHog events carry the trace id only
        user_field="distinct_id",
        user_of=lambda m: m.get("distinct_id"),
        check_user=True,
        expected_user=record.user_id if record.user_id is not None else record.trace_id,
    )[1]


_LOG_EVENTS = {"operation": "operation.end", "violation": "invariant.violated"}
_LOG_NAME_FIELD = {"operation": "operation", "violation": "invariant", "event": "name"}


def _check_log(
    record: Record, lines: list[dict[str, Any]], used: set[int], where: str
) -> list[str]:
    event = _LOG_EVENTS.get(record.kind, "product.event")
    field = _LOG_NAME_FIELD[record.kind]
    return _pair(
        record,
        [line for line in lines if line.get("event") == event and line.get(field) == record.name],
        used,
        label=f"log line {event}",
        where=where,
        trace_of=lambda line: line.get("trace_id"),
        span_of=lambda line: line.get("span_id"),
        user_field="user_id",
        user_of=lambda line: line.get("user_id"),
        check_user=True,
        expected_user=record.user_id,
    )[1]


# -- capture_signals -----------------------------------------------------------------------------

_T = TypeVar("_T")


def _restore_var(var: ContextVar[_T], token: Token[_T], value: _T) -> None:
    try:
        var.reset(token)
    except ValueError:  # exited in another context than it was entered: put the value back
        var.set(value)


def _backend_reason(backend: str, option: bool | None) -> str | None:
    """None when ``backend`` can be captured; else why not. Raises when it was asked for."""
    if option is False:
        return f"{backend}=False was passed"
    module, package, extra = _BACKENDS[backend]
    try:
        __import__(module)
    except ImportError as exc:
        if option:
            raise SinkUnavailable(
                f"capture_signals({backend}=True) needs {package}: "
                f"pip install 'invariantkit[{extra}]'"
            ) from exc
        return f"{package} is not installed: pip install 'invariantkit[{extra}]'"
    return None


def _check_options(
    *,
    mode: object,
    test_mode: object,
    scrub: object,
    service: object,
    environment: object,
    switches: Mapping[str, object],
    sentry_options: object,
    fail_on_sink_error: object,
) -> Scrubber:
    if mode not in ("report", "enforce"):
        raise ValueError(f"capture_signals(mode={mode!r}): must be 'report' or 'enforce'")
    for option, value in (
        ("test_mode", test_mode),
        ("fail_on_sink_error", fail_on_sink_error),
        *switches.items(),
    ):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"capture_signals({option}=...): must be True, False or None")
    if test_mode is None:
        raise TypeError("capture_signals(test_mode=...): must be True or False")
    for option, value in (("service", service), ("environment", environment)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"capture_signals({option}=...): must be a non-empty str")
    if sentry_options is not None and not isinstance(sentry_options, Mapping):
        raise TypeError("capture_signals(sentry_options=...): must be a dict of sentry_sdk options")
    if scrub is None or scrub is True:
        return Scrubber()
    if scrub is False:
        return NO_SCRUB
    if isinstance(scrub, Scrubber):
        return scrub
    raise TypeError("capture_signals(scrub=...): must be a Scrubber, True, False or None")


@contextmanager
def capture_signals(
    *,
    mode: Mode = "report",
    test_mode: bool = False,
    scrub: Scrubber | bool | None = None,
    service: str = "test",
    environment: str = "test",
    traces: bool | None = None,
    metrics: bool | None = None,
    sentry: bool | None = None,
    posthog: bool | None = None,
    extra_sinks: Iterable[Sink] = (),
    sentry_options: Mapping[str, Any] | None = None,
    fail_on_sink_error: bool | None = None,
) -> Iterator[Signals]:
    """Run the body under isolated, real SDK pipelines and yield :class:`Signals`.

    On exit everything global is restored, whether the body raised or not: invariantkit's
    configuration, the catalog (declarations made inside are forgotten), the bound user and
    correlation, the OpenTelemetry context, Sentry's global client and scopes (tags or a user
    set inside do not leak), the ``invariantkit`` logger's handlers; the capture's own PostHog
    client, Sentry client and tracer provider are shut down. Nothing is sent anywhere.

    Each ``with`` block is independent, so a hypothesis ``@given`` test opens one per example.
    Captures nest: the inner one sees what is emitted inside it, the outer one does not, and the
    outer one works again once the inner one exits. The bound user and the current span at
    entry are kept (``with ik.identify("u"), capture_signals():`` works).

    Do not call ``ik.configure()`` inside: it would replace the capture (failure messages say
    so). Configure your app before, or pass its own sinks as ``extra_sinks``.

    Args:
        mode: ``"report"`` (violations return False) or ``"enforce"`` (they raise).
        test_mode: alert test mode, as ``configure(test_mode=True)``: the ``test="true"``
            series exist at zero; no delayed test alert fires (call ``ik.fire_test_alert()``).
        scrub: as in :func:`invariantkit.configure`: a ``Scrubber``, True/None for the default,
            False for none.
        service: the service name the log lines, spans and Sentry events say.
        environment: the environment the log lines and Sentry events say.
        traces: capture OpenTelemetry spans (True: the SDK must be installed, else
            ``SinkUnavailable``; None, the default: when it is installed; False: off).
        metrics: capture Prometheus metrics (same values as ``traces``).
        sentry: capture Sentry events (same values as ``traces``).
        posthog: capture PostHog events (same values as ``traces``).
        extra_sinks: more sinks to fan out to, such as one that raises, to test isolation.
        sentry_options: more ``sentry_sdk.Client`` options (``before_send``,
            ``include_local_variables``, ``event_scrubber``...), to test your own Sentry set-up;
            ``dsn`` and ``transport`` stay the capture's (nothing is sent).
        fail_on_sink_error: on a clean exit, raise ``AssertionError`` if a sink raised or
            invariantkit had an internal error (see :meth:`Signals.assert_no_sink_errors`).
            None: the pytest ini option ``invariantkit_fail_on_sink_error`` (else False).

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> from invariantkit.testing import capture_signals
        >>> with capture_signals(mode="enforce") as signals:
        ...     try:
        ...         ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        ...     except ik.InvariantViolation as exc:
        ...         print(exc.invariant.name)
        NO_DOUBLE_CHARGE
        >>> len(signals.sentry_events)
        1
    """
    switches = {"traces": traces, "metrics": metrics, "sentry": sentry, "posthog": posthog}
    scrubber = _check_options(
        mode=mode,
        test_mode=test_mode,
        scrub=scrub,
        service=service,
        environment=environment,
        switches=switches,
        sentry_options=sentry_options,
        fail_on_sink_error=fail_on_sink_error,
    )
    extra = _check_sinks(extra_sinks)
    reasons = {
        backend: reason
        for backend, option in switches.items()
        if (reason := _backend_reason(backend, option)) is not None
    }
    fail = _DEFAULTS["fail_on_sink_error"] if fail_on_sink_error is None else fail_on_sink_error

    with ExitStack() as stack:
        signals = _open(
            stack,
            mode=mode,
            test_mode=test_mode,
            scrubber=scrubber,
            service=service,
            environment=environment,
            unavailable=_Unavailable(reasons),
            extra_sinks=extra,
            sentry_options=sentry_options or {},
        )
        signals._fail_on_sink_error = fail
        yield signals
    if fail:
        signals._check_unreported_errors()


def _log_once_sets() -> list[set[str]]:
    """The ``_internal_errors_logged`` sets of the loaded invariantkit modules."""
    found = []
    for name, module in list(sys.modules.items()):
        if name.startswith("invariantkit.") and module is not None:
            seen = getattr(module, "_internal_errors_logged", None)
            if isinstance(seen, set):
                found.append(seen)
    return found


def _open(
    stack: ExitStack,
    *,
    mode: Mode,
    test_mode: bool,
    scrubber: Scrubber,
    service: str,
    environment: str,
    unavailable: _Unavailable,
    extra_sinks: tuple[Sink, ...],
    sentry_options: Mapping[str, Any],
) -> Signals:
    """Set up the capture; every step registers its own undo on ``stack`` (run in reverse)."""
    from invariantkit.sinks._memory import Memory

    captured = set(_BACKENDS) - set(unavailable.reasons)

    # invariantkit's "log an internal error once per place" memories: an error inside the
    # capture must be logged (and so seen) even if an earlier test logged one at that place.
    for seen in _log_once_sets():
        stack.callback(seen.update, set(seen))
        stack.callback(seen.clear)
        seen.clear()

    sinks: list[Any] = []
    # Each backend's real SDK with in-memory delivery, built by the sink registry.
    built = {
        name: capture_sink(
            name,
            service=service,
            environment=environment,
            **(dict(sentry_options) if name == "sentry" else {}),
        )
        for name in ("otel_traces", "prometheus", "sentry", "posthog")
        if _CAPTURED[name] in captured
    }
    for backend in built.values():
        stack.callback(backend.close)
        sinks.append(backend.sink)
    span_exporter = built["otel_traces"].store if "otel_traces" in built else None
    registry = built["prometheus"].store if "prometheus" in built else None
    sentry_transport = sentry_client = None
    if "sentry" in built:
        import sentry_sdk

        sentry_transport, sentry_client = built["sentry"].store, built["sentry"].client
        stack.enter_context(_sentry_scope.recording(sentry_transport.exceptions))
        global_scope = sentry_sdk.get_global_scope()
        stack.callback(global_scope.set_client, global_scope.client)
        global_scope.set_client(sentry_client)  # for threads the code under test starts
    posthog_messages = built["posthog"].store if "posthog" in built else None

    logs = _TeeLogger(logging.getLogger(_LOGGER))
    sinks.append(build_sink("json_logs", logger=logs))
    memory = Memory()
    sinks.append(memory)
    sinks.extend(extra_sinks)

    errors = _Errors()
    dispatcher = _CapturingDispatcher(
        sinks,
        errors,
        SinkContext(service=service, environment=environment, scrubber=scrubber),
    )
    config = Config(
        service=service,
        environment=environment,
        mode=mode,
        test_mode=test_mode,
        scrubber=scrubber,
        sinks=tuple(sinks),
    )
    signals = Signals(
        dispatcher=dispatcher,
        memory=memory,
        span_exporter=span_exporter,
        registry=registry,
        sentry_transport=sentry_transport,
        posthog_messages=posthog_messages,
        logs=logs,
        errors=errors,
        unavailable=unavailable,
    )

    handler = _InternalErrors(errors, dispatcher)
    real_logger = logging.getLogger(_LOGGER)
    real_logger.addHandler(handler)
    stack.callback(real_logger.removeHandler, handler)

    # Context: whatever the body binds and forgets to unbind is dropped on exit.
    from opentelemetry import context as otel_context

    user, corr = USER.get(), CORRELATION.get()
    user_token, corr_token = USER.set(user), CORRELATION.set(corr)
    stack.callback(_restore_var, USER, user_token, user)
    stack.callback(_restore_var, CORRELATION, corr_token, corr)
    stack.callback(otel_context.detach, otel_context.attach(otel_context.get_current()))
    if sentry_client is not None:
        import sentry_sdk

        isolation = stack.enter_context(sentry_sdk.isolation_scope())
        isolation.set_client(sentry_client)
        sentry_sdk.get_current_scope().set_client(sentry_client)

    # invariantkit's configuration; torn down first: drain, forget declarations, swap back.
    previous: list[tuple[Config | None, Dispatcher | None]] = []
    last_config = getattr(STATE, "last_config", None)

    def restore_configuration() -> None:
        if not previous:
            return
        current = STATE.dispatcher
        swap(*previous[0])
        if hasattr(STATE, "last_config"):
            STATE.last_config = last_config
        if current is not None and current is not dispatcher:
            current.shutdown(1.0)  # configured inside the block: release it like ik.shutdown()

    stack.callback(restore_configuration)
    catalog = get_catalog()
    stack.callback(catalog.restore, catalog.snapshot())

    def close() -> None:
        dispatcher.shutdown(_SYNC_TIMEOUT)
        signals._closed = True

    stack.callback(close)
    previous.append(swap(config, dispatcher))
    if test_mode:
        # As configure(test_mode=True), minus the delayed test alert (call fire_test_alert()).
        from invariantkit import _invariant

        announce = getattr(_invariant, "announce_test_children", None)
        if announce is not None:
            announce()
    return signals
