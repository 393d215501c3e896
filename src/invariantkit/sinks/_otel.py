"""OpenTelemetry traces: operations open spans; violations and events become span events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

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
    deferred: ClassVar[bool] = False

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.provider = tracer_provider
        source = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer: trace.Tracer = source.get_tracer("invariantkit", _VERSION)

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "violation":
            span = trace.get_current_span()
            if span.is_recording():
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
                span.add_event("invariant.violated", attrs)
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


def _span_attributes(values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (str, bool, int, float)):
            out[key] = value
        else:
            out[key] = str(value)
    return out
