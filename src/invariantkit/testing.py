"""Test support: run code under real, isolated SDK pipelines and assert what they emitted.

``capture_signals()`` swaps in an OpenTelemetry SDK ``TracerProvider`` with an in-memory
exporter, a fresh Prometheus ``CollectorRegistry``, a real Sentry client whose transport keeps
envelopes, a real PostHog client that keeps the messages it built instead of posting them, and a
log capture; it restores every piece of global state it touched when it exits. What you assert on
is what the real SDKs produced, not an imitation.

Example:
    >>> import invariantkit as ik
    >>> from invariantkit import billing
    >>> from invariantkit.testing import capture_signals
    >>> with capture_signals() as signals:
    ...     ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"})
    ...     signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_1")
    False
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from invariantkit._catalog import get_catalog
from invariantkit._config import STATE, Config, Mode, swap
from invariantkit._context import CORRELATION, USER
from invariantkit._dispatch import Dispatcher
from invariantkit._record import Record
from invariantkit._safe import NO_SCRUB, Scrubber

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from prometheus_client import CollectorRegistry

    from invariantkit.sinks._base import Sink

__all__ = ["Signals", "capture_signals"]

_LOGGER = "invariantkit"


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict[str, Any]] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "invariantkit", None)
        if fields is None:
            return
        with self._guard:
            self.lines.append(dict(fields))


def _keeping_transport() -> Any:
    from sentry_sdk.transport import Transport

    class KeepingTransport(Transport):
        """A real Sentry transport that keeps the envelopes the SDK built instead of posting."""

        def __init__(self, options: Any = None) -> None:
            super().__init__(options)
            self.envelopes: list[Any] = []
            self._guard = threading.Lock()

        def capture_envelope(self, envelope: Any) -> None:
            with self._guard:
                self.envelopes.append(envelope)

        def flush(self, timeout: float, callback: Any = None) -> None:
            return None

    return KeepingTransport()


class Signals:
    """What the real SDK pipelines emitted inside :func:`capture_signals`.

    Reading any attribute first drains invariantkit's background worker, so what was emitted
    before the read is there.
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
        logs: _LogCapture,
    ) -> None:
        self._dispatcher = dispatcher
        self._memory = memory
        self._span_exporter = span_exporter
        self.registry = registry
        self._sentry_transport = sentry_transport
        self._posthog_messages = posthog_messages
        self._logs = logs

    def _sync(self) -> None:
        self._dispatcher.flush(5.0)

    # -- what was emitted -----------------------------------------------------------------------

    @property
    def records(self) -> list[Record]:
        """Every :class:`~invariantkit.Record` that reached the sinks (declarations excluded)."""
        self._sync()
        return list(self._memory.records)

    @property
    def violations(self) -> list[Record]:
        """The violation records, in order."""
        return [r for r in self.records if r.kind == "violation"]

    @property
    def spans(self) -> list[ReadableSpan]:
        """Finished OpenTelemetry spans (``opentelemetry.sdk.trace.ReadableSpan``)."""
        if self._span_exporter is None:
            return []
        self._sync()
        return list(self._span_exporter.get_finished_spans())

    @property
    def sentry_envelopes(self) -> list[Any]:
        """The ``sentry_sdk.envelope.Envelope`` objects the real Sentry client produced."""
        if self._sentry_transport is None:
            return []
        self._sync()
        return list(self._sentry_transport.envelopes)

    @property
    def sentry_events(self) -> list[dict[str, Any]]:
        """The Sentry error and message events (dicts, as they would be posted)."""
        events = []
        for envelope in self.sentry_envelopes:
            event = envelope.get_event()
            if event is not None:
                events.append(event)
        return events

    @property
    def sentry_checkins(self) -> list[dict[str, Any]]:
        """Sentry Crons check-ins (dicts with ``monitor_slug``, ``status``, ``duration``...)."""
        out = []
        for envelope in self.sentry_envelopes:
            for item in envelope.items:
                if item.type == "check_in":
                    out.append(json.loads(item.get_bytes()))
        return out

    @property
    def posthog_events(self) -> list[dict[str, Any]]:
        """The PostHog messages the real client built (``event``, ``distinct_id``, ``properties``)."""
        if self._posthog_messages is None:
            return []
        self._sync()
        return list(self._posthog_messages)

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines, as dicts, in order."""
        self._sync()
        return list(self._logs.lines)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of every sample named ``name`` whose labels include ``labels``.

        0.0 when the series exist at zero (or do not exist). ``name`` is the exposed sample name,
        e.g. ``billing_invariant_violation_total``.
        """
        if self.registry is None:
            return 0.0
        self._sync()
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name != name:
                    continue
                if all(sample.labels.get(k) == str(v) for k, v in labels.items()):
                    total += sample.value
        return total

    def clear(self) -> None:
        """Forget everything captured so far (metrics keep their values)."""
        self._sync()
        self._memory.clear()
        if self._span_exporter is not None:
            self._span_exporter.clear()
        if self._sentry_transport is not None:
            self._sentry_transport.envelopes.clear()
        if self._posthog_messages is not None:
            self._posthog_messages.clear()
        self._logs.lines.clear()

    # -- assertions -----------------------------------------------------------------------------

    def _summary(self) -> str:
        records = self.records
        lines = [f"{len(records)} record(s) emitted:"]
        for r in records:
            tags = ", ".join(f"{k}={v!r}" for k, v in r.attributes.items())
            lines.append(f"  {r.kind} {r.name} [{r.status}] trace_id={r.trace_id} {tags}")
        lines.append(
            f"sentry events: {[e.get('message') or _exc_type(e) for e in self.sentry_events]}"
        )
        lines.append(f"posthog events: {[m.get('event') for m in self.posthog_events]}")
        return "\n".join(lines)

    def assert_violation(self, name: str, count: int | None = None, **tags: Any) -> Record:
        """Assert that invariant ``name`` was reported with (at least) ``tags``; return the record.

        With ``count``, assert exactly that many matching violations.
        """
        matching = [
            r
            for r in self.violations
            if r.name == name and all(r.attributes.get(k) == _tag(v) for k, v in tags.items())
        ]
        if not matching or (count is not None and len(matching) != count):
            wanted = f"{count} violation(s)" if count is not None else "a violation"
            raise AssertionError(
                f"expected {wanted} of {name} with tags {tags!r}, found {len(matching)}.\n"
                + self._summary()
            )
        return matching[0]

    def assert_no_violations(self) -> None:
        """Assert that no invariant was reported."""
        if self.violations:
            raise AssertionError("expected no violations.\n" + self._summary())

    def assert_correlated(self) -> None:
        """Assert that every signal of each operation and violation carries one trace id and
        one user id: span, Sentry event, PostHog event and log line alike."""
        problems: list[str] = []
        spans = (
            {format(s.context.trace_id, "032x"): s for s in self.spans}
            if self._span_exporter
            else {}
        )
        sentry_by_trace: dict[str, list[dict[str, Any]]] = {}
        for event in self.sentry_events:
            tid = event.get("contexts", {}).get("trace", {}).get("trace_id")
            sentry_by_trace.setdefault(tid, []).append(event)
            if event.get("tags", {}).get("trace_id") != tid:
                problems.append(f"Sentry event {event.get('event_id')}: tag trace_id != context")
        posthog_by_trace: dict[str, list[dict[str, Any]]] = {}
        for msg in self.posthog_events:
            posthog_by_trace.setdefault(str(msg.get("properties", {}).get("trace_id")), []).append(
                msg
            )
        logs_by_trace: dict[str, list[dict[str, Any]]] = {}
        for line in self.logs:
            logs_by_trace.setdefault(str(line.get("trace_id")), []).append(line)
        for record in self.records:
            if record.kind not in ("operation", "violation"):
                continue
            tid, user = record.trace_id, record.user_id
            where = f"{record.kind} {record.name} (trace_id={tid})"
            if self._span_exporter is not None and tid not in spans:
                problems.append(f"{where}: no span with this trace id")
            elif tid in spans and user is not None:
                span_user = (spans[tid].attributes or {}).get("enduser.id")
                if span_user is not None and span_user != user:
                    problems.append(f"{where}: span enduser.id={span_user!r}, expected {user!r}")
            for event in sentry_by_trace.get(tid, []):
                sentry_user = (event.get("user") or {}).get("id")
                if user is not None and sentry_user != user:
                    problems.append(f"{where}: Sentry user {sentry_user!r}, expected {user!r}")
            if (
                record.kind == "violation"
                and self._sentry_transport is not None
                and not any(e.get("message") == record.name for e in sentry_by_trace.get(tid, []))
            ):
                problems.append(f"{where}: no Sentry event with this trace id")
            for msg in posthog_by_trace.get(tid, []):
                expected = user if user is not None else tid
                if msg.get("distinct_id") != expected:
                    problems.append(
                        f"{where}: PostHog distinct_id {msg.get('distinct_id')!r}, expected {expected!r}"
                    )
            lines = logs_by_trace.get(tid, [])
            if not lines:
                problems.append(f"{where}: no log line with this trace id")
            for line in lines:
                if line.get("user_id") != user:
                    problems.append(
                        f"{where}: log user_id {line.get('user_id')!r}, expected {user!r}"
                    )
        if problems:
            raise AssertionError(
                "signals are not correlated:\n  " + "\n  ".join(problems) + "\n" + self._summary()
            )


def _tag(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _exc_type(event: Mapping[str, Any]) -> str | None:
    values = event.get("exception", {}).get("values") or [{}]
    return values[-1].get("type")  # type: ignore[no-any-return]


@contextmanager
def capture_signals(
    *,
    mode: Mode = "report",
    test_mode: bool = False,
    scrub: Scrubber | bool | None = None,
    service: str = "test",
    environment: str = "test",
    traces: bool = True,
    metrics: bool = True,
    sentry: bool = True,
    posthog: bool = True,
    extra_sinks: tuple[Sink, ...] = (),
) -> Iterator[Signals]:
    """Run the body under isolated, real SDK pipelines and yield :class:`Signals`.

    Everything global is restored on exit: invariantkit's configuration, Sentry's global client,
    the catalog (declarations made inside are forgotten), the bound user and correlation, and the
    log level of the ``invariantkit`` logger. Safe inside a hypothesis ``@given`` test: each
    example opens its own capture.

    Args:
        mode: ``"report"`` or ``"enforce"``.
        test_mode: alert test mode.
        scrub: as in :func:`invariantkit.configure`.
        traces, metrics, sentry, posthog: turn a backend's capture off (its SDK then need not be
            installed).
        extra_sinks: more sinks to fan out to (for example one that raises, to test isolation).
    """
    from invariantkit.sinks._logs import JsonLogs
    from invariantkit.sinks._memory import Memory

    memory = Memory()
    sinks: list[Any] = []
    span_exporter = None
    provider = None
    if traces:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from invariantkit.sinks._otel import OtelTraces

        span_exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        sinks.append(OtelTraces(provider))
    registry = None
    if metrics:
        from prometheus_client import CollectorRegistry

        from invariantkit.sinks._prometheus import PrometheusMetrics

        registry = CollectorRegistry()
        sinks.append(PrometheusMetrics(registry))
    sentry_transport = None
    sentry_scope = previous_client = None
    if sentry:
        import sentry_sdk

        from invariantkit.sinks._sentry import Sentry

        sentry_transport = _keeping_transport()
        client = sentry_sdk.Client(
            dsn="http://public@127.0.0.1:9/1",
            transport=sentry_transport,
            default_integrations=False,
            sample_rate=1.0,
            environment=environment,
        )
        sentry_scope = sentry_sdk.get_global_scope()
        previous_client = sentry_scope.client
        sentry_scope.set_client(client)
        sinks.append(Sentry())
    posthog_messages: list[dict[str, Any]] | None = None
    posthog_client = None
    if posthog:
        import posthog as posthog_sdk

        from invariantkit.sinks._posthog import PostHog

        posthog_messages = []
        kept = posthog_messages
        guard = threading.Lock()

        def keep(message: dict[str, Any]) -> dict[str, Any]:
            with guard:
                kept.append(message)
            return message

        posthog_client = posthog_sdk.Posthog(
            "phc_invariantkit_test",
            host="http://127.0.0.1:9",
            send=False,
            before_send=keep,
        )
        sinks.append(PostHog(posthog_client))
    sinks.append(JsonLogs(_LOGGER))
    sinks.append(memory)
    sinks.extend(extra_sinks)

    log_capture = _LogCapture()
    logger = logging.getLogger(_LOGGER)
    previous_level = logger.level
    logger.addHandler(log_capture)
    logger.setLevel(logging.DEBUG)

    if scrub is None or scrub is True:
        scrubber = Scrubber()
    elif scrub is False:
        scrubber = NO_SCRUB
    else:
        scrubber = scrub
    config = Config(
        service=service,
        environment=environment,
        mode=mode,
        test_mode=test_mode,
        scrubber=scrubber,
        sinks=tuple(sinks),
    )
    dispatcher = Dispatcher(sinks)
    catalog_snapshot = get_catalog().snapshot()
    user_token = USER.set(None)
    corr_token = CORRELATION.set(None)
    previous = swap(config, dispatcher)
    try:
        yield Signals(
            dispatcher=dispatcher,
            memory=memory,
            span_exporter=span_exporter,
            registry=registry,
            sentry_transport=sentry_transport,
            posthog_messages=posthog_messages,
            logs=log_capture,
        )
    finally:
        try:
            dispatcher.shutdown(5.0)
        finally:
            if STATE.dispatcher is dispatcher:
                swap(*previous)
            get_catalog().restore(catalog_snapshot)
            USER.reset(user_token)
            CORRELATION.reset(corr_token)
            logger.removeHandler(log_capture)
            logger.setLevel(previous_level)
            if sentry_scope is not None:
                sentry_scope.set_client(previous_client)
            if posthog_client is not None:
                try:
                    posthog_client.shutdown()
                except Exception:
                    pass
            if provider is not None:
                provider.shutdown()
