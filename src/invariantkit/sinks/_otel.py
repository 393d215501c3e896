"""OpenTelemetry traces: operations open spans; violations and events become span events."""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode

from invariantkit._context import sampled_parent

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["OtelTraces", "tracing_configured"]

_VERSION = "0.1.0"


def tracing_configured(provider: trace.TracerProvider | None = None) -> bool:
    """True when ``provider`` (default: the global one) is a real SDK provider, not the no-op."""
    provider = provider if provider is not None else trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


class OtelTraces:
    """Spans for operations, span events for violations and product events.

    Uses ``tracer_provider`` when given, else the global provider. When no SDK provider is set,
    auto-detection leaves this sink out entirely (a no-op span still costs microseconds).

    Example:
        >>> import invariantkit as ik
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> sink = ik.sinks.OtelTraces(TracerProvider())
    """

    name: ClassVar[str] = "otel_traces"
    #: The sink that opens each operation's span during the call (the dispatcher asks this).
    opens_spans: ClassVar[bool] = True
    deferred: ClassVar[bool] = False

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        if tracer_provider is not None and not callable(
            getattr(tracer_provider, "get_tracer", None)
        ):
            raise TypeError(
                "OtelTraces(tracer_provider=...) must be an OpenTelemetry TracerProvider (with "
                f"get_tracer()) or None (the global one), not {type(tracer_provider).__name__}"
            )
        self.provider = tracer_provider
        source = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer: trace.Tracer = source.get_tracer("invariantkit", _VERSION)
        self._chosen = _choosable_ids(self.tracer)

    @property
    def defers_violation_spans(self) -> bool:
        """True when a violation outside any span gets its span on the background worker.

        Needs an SDK tracer: the span's ids are chosen on the caller's thread (so the trace id
        is known at once, for the return value, the exemplar and every other sink) and the
        span is made with those ids later. Other tracers get the span on the caller's thread.
        """
        return self._chosen is not None

    def violation_span(self, record: Record, parent_span_id: int | None) -> None:
        """Make, on the worker, the span of a violation reported outside any span.

        The span has the record's trace and span ids, the time of the report, the
        ``invariant.violated`` event and status ERROR: the same span the caller's thread would
        have made, without its cost on the call path. ``parent_span_id`` is the span of the
        bound correlation (``ik.extract()``, a sampled-out span), None for a root span.
        """
        if self._chosen is None:
            return
        tracer, chosen = self._chosen
        trace_id = int(record.trace_id, 16)
        context = Context()
        if parent_span_id is not None:
            context = sampled_parent(trace_id, parent_span_id, context)
        decl = record.declaration
        attributes: dict[str, Any] = {
            "invariant.name": record.name,
            "invariant.type": getattr(decl, "type", ""),
        }
        if record.user_id is not None:
            attributes["enduser.id"] = record.user_id
        at = int(record.timestamp * 1e9)
        chosen.local.ids = (trace_id, int(record.span_id, 16))
        try:
            span = tracer.start_span(
                f"invariant.{record.name}", context=context, attributes=attributes, start_time=at
            )
        finally:
            chosen.local.ids = None
        span.add_event("invariant.violated", _violation_attributes(record), timestamp=at)
        span.set_status(Status(StatusCode.ERROR, f"invariant violated: {record.name}"))
        span.end(end_time=at)

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "violation":
            span = trace.get_current_span()
            if span.is_recording():
                span.add_event("invariant.violated", _violation_attributes(record))
                span.set_status(Status(StatusCode.ERROR, f"invariant violated: {record.name}"))
        elif kind == "event":
            span = trace.get_current_span()
            if span.is_recording():
                span.add_event(record.name, _span_attributes(record.attributes))
        elif kind == "retry":
            span = trace.get_current_span()
            if span.is_recording():
                retry = {"billing.operation": record.name}
                idempotency_key = record.attributes.get("idempotency_key")
                if isinstance(idempotency_key, str):  # on the span, never a metric label
                    retry["billing.idempotency_key"] = idempotency_key
                span.add_event("idempotent.retry", retry)

    def flush(self, timeout: float) -> bool:
        provider = self.provider if self.provider is not None else trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is None:
            return True
        return bool(force_flush(int(max(timeout, 0.0) * 1000)))

    def shutdown(self, timeout: float) -> bool:
        # The provider belongs to the user (or the process): flush, never shut it down.
        return self.flush(timeout)


def _violation_attributes(record: Record) -> dict[str, Any]:
    decl = record.declaration
    attrs: dict[str, Any] = {
        "invariant.name": record.name,
        "invariant.type": getattr(decl, "type", ""),
        "invariant.severity": getattr(decl, "severity", ""),
    }
    if record.test:
        attrs["invariant.test"] = True
    for key, value in record.attributes.items():
        attrs[f"invariant.tag.{key}"] = value
    return attrs


class _ChosenIds:
    """An SDK ``IdGenerator`` that hands out ids chosen beforehand, on the thread that set them,
    and delegates to the tracer's own generator otherwise."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.local = threading.local()

    def generate_trace_id(self) -> int:
        ids = getattr(self.local, "ids", None)
        return int(ids[0]) if ids is not None else int(self.inner.generate_trace_id())

    def generate_span_id(self) -> int:
        ids = getattr(self.local, "ids", None)
        return int(ids[1]) if ids is not None else int(self.inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        if getattr(self.local, "ids", None) is not None:
            return True  # ours come from random.getrandbits(128)
        probe = getattr(self.inner, "is_trace_id_random", None)
        return bool(probe()) if probe is not None else False


def _choosable_ids(tracer: trace.Tracer) -> tuple[trace.Tracer, _ChosenIds] | None:
    """A copy of ``tracer`` (an SDK tracer) that makes spans with ids chosen in advance; None
    when ``tracer`` is not the SDK's.

    A shallow copy: same instrumentation scope, sampler, resource, limits and span processors.
    The SDK shares one tracer per scope; the copy keeps the operations' spans on the SDK's own
    id generator, without a wrapper on their path.
    """
    try:
        from opentelemetry.sdk.trace import Tracer as SdkTracer
    except ImportError:  # pragma: no cover - the SDK is what makes spans at all
        return None
    inner = getattr(tracer, "id_generator", None)
    if not isinstance(tracer, SdkTracer) or inner is None:
        return None
    violations = copy.copy(tracer)
    chosen = _ChosenIds(inner)
    violations.id_generator = chosen  # type: ignore[assignment]
    return violations, chosen


def _span_attributes(values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (str, bool, int, float)):
            out[key] = value
        else:
            out[key] = str(value)
    return out
