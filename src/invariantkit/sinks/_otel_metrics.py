"""OpenTelemetry metrics: the same metrics through an OTel ``MeterProvider`` (OTLP to Mimir)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry import metrics

# The same buckets (in seconds) and label cap as the Prometheus sink: one definition. The SDK's
# default boundaries (0, 5, 10, 25 ... 10000) are meant for milliseconds and would put every call
# in one bucket.
from invariantkit.sinks._prometheus import DURATION_BUCKETS, LABEL_VALUE_CAP

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["OtelMetrics"]


class OtelMetrics:
    """The guide's metrics as OpenTelemetry instruments: ``billing_operation`` (counter,
    exported as ``billing_operation_total``), ``billing_operation_duration`` (histogram, seconds),
    ``billing_operation_errors``, ``billing_invariant_violation``, ``billing_idempotent_retry``,
    ``invariantkit_sink_errors``, ``invariantkit_sink_dropped`` and the gauge
    ``pg_constraint_exists``; same labels and duration buckets as Prometheus, so an OTLP
    pipeline into Mimir gives the same series names (``_total``, ``_seconds`` are added by the
    Prometheus naming of OTLP metrics).

    Args:
        meter_provider: the ``MeterProvider`` to create the instruments in; default the global
            one. Reconfiguring with the same provider reuses its instruments.

    Example:
        >>> import invariantkit as ik
        >>> from opentelemetry.sdk.metrics import MeterProvider
        >>> sink = ik.sinks.OtelMetrics(MeterProvider())
    """

    name: ClassVar[str] = "otel_metrics"
    deferred: ClassVar[bool] = False

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        self.provider = meter_provider
        source = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = source.get_meter("invariantkit", "0.1.0")
        self.operations = meter.create_counter(
            "billing_operation", description="Billing operations by outcome."
        )
        self.duration = meter.create_histogram(
            "billing_operation_duration",
            unit="s",
            description="Duration of billing operations.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.errors = meter.create_counter(
            "billing_operation_errors", description="Failed operations by exception class."
        )
        self.violations = meter.create_counter(
            "billing_invariant_violation", description="Invariant violations."
        )
        self.retries = meter.create_counter(
            "billing_idempotent_retry", description="Idempotent retries."
        )
        self.sink_errors = meter.create_counter(
            "invariantkit_sink_errors", description="Sink exceptions."
        )
        self.sink_dropped = meter.create_counter(
            "invariantkit_sink_dropped", description="Dropped signals."
        )
        self.constraints = meter.create_gauge(
            "pg_constraint_exists",
            description="1 when the database constraint or unique index exists, 0 when missing.",
        )
        self._attrs: dict[tuple[str, str], dict[str, str]] = {}
        self._error_attrs: dict[tuple[str, str], dict[str, str]] = {}
        self._error_types: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def _op_attrs(self, name: str, outcome: str) -> dict[str, str]:
        key = (name, outcome)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attrs[key] = {"operation": name, "outcome": outcome}
        return attrs

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "operation":
            attrs = self._op_attrs(record.name, record.status)
            self.operations.add(1, attrs)
            self.duration.record(record.duration or 0.0, attrs)
            if record.status == "failure":
                error_type = (
                    type(record.exception).__name__ if record.exception is not None else "Error"
                )
                self.errors.add(1, self._errors_attrs(record.name, error_type))
        elif kind == "violation":
            decl: Any = record.declaration
            if decl is not None:
                self.violations.add(1, self._violation_attrs(decl, record.test))
        elif kind == "retry":
            self.retries.add(1, {"operation": record.name})
        elif kind == "declare":
            decl = record.declaration
            if decl is None:
                return
            if decl.kind == "invariant":
                # Alert test mode announces the test="true" series too (record.test).
                self.violations.add(0, self._violation_attrs(decl, record.test))
            elif decl.kind == "operation":
                for outcome in ("success", "failure"):
                    self.operations.add(0, self._op_attrs(decl.name, outcome))
            elif decl.kind == "idempotent":
                self.retries.add(0, {"operation": decl.name})
        elif kind == "constraint":
            self.constraints.set(
                1 if record.status == "present" else 0, {"constraint": record.name}
            )
        elif kind == "sink_error":
            self.sink_errors.add(record.attributes.get("count", 1), {"sink": record.name})
        elif kind == "sink_dropped":
            self.sink_dropped.add(
                record.attributes.get("count", 1),
                {"sink": record.name, "reason": record.attributes.get("reason", "error")},
            )

    def _errors_attrs(self, name: str, error_type: str) -> dict[str, str]:
        attrs = self._error_attrs.get((name, error_type))
        if attrs is not None:
            return attrs
        with self._lock:
            seen = self._error_types.setdefault(name, set())
            if error_type not in seen and len(seen) >= LABEL_VALUE_CAP:
                label = "other"
            else:
                seen.add(error_type)
                label = error_type
            attrs = {"operation": name, "error_type": label}
            if label != "other":
                self._error_attrs[(name, error_type)] = attrs
            return attrs

    @staticmethod
    def _violation_attrs(decl: Any, test: bool) -> dict[str, str]:
        type_ = f"test_{decl.type}" if test and not decl.type.startswith("test_") else decl.type
        return {"type": type_, "invariant": decl.name, "test": "true" if test else "false"}

    def flush(self, timeout: float) -> bool:
        provider = self.provider if self.provider is not None else metrics.get_meter_provider()
        force_flush = getattr(provider, "force_flush", None)
        return True if force_flush is None else bool(force_flush(int(max(timeout, 0.0) * 1000)))

    def shutdown(self, timeout: float) -> bool:
        return self.flush(timeout)
