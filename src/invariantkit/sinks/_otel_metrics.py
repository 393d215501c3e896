"""OpenTelemetry metrics: the same metrics through an OTel ``MeterProvider`` (OTLP to Mimir)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry import metrics

from invariantkit import _semconv as sc
from invariantkit._semconv import DURATION_BUCKETS, LABEL_VALUE_CAP
from invariantkit.sinks._prometheus import attribute_number, lifecycle_labels

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["DURATION_BUCKETS", "OtelMetrics"]


class OtelMetrics:
    """The guide's metrics as OpenTelemetry instruments: every family the Prometheus sink emits
    (operations, durations, errors, violations, retries, subscription events, renewal failures,
    ``pg_constraint_exists``, the at-rest check families, each cron's four gauges and the sink
    counters), named and labelled as in ``invariantkit._semconv``. Through an OTLP pipeline into
    Prometheus or Mimir they become the same series as :class:`PrometheusMetrics` (counters
    gain ``_total``, the unit ``s`` gains ``_seconds``, ``error.type`` becomes ``error_type``),
    so the generated alerts and dashboards work on either.

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
        self._meter = meter = source.get_meter("invariantkit", "0.1.0")
        self.operations = _instrument(meter, sc.OPERATIONS)
        self.duration = _instrument(meter, sc.OPERATION_DURATION)
        self.errors = _instrument(meter, sc.OPERATION_ERRORS)
        self.violations = _instrument(meter, sc.VIOLATIONS)
        self.retries = _instrument(meter, sc.RETRIES)
        self.sink_errors = _instrument(meter, sc.SINK_ERRORS)
        self.sink_dropped = _instrument(meter, sc.SINK_DROPPED)
        self.constraints = _instrument(meter, sc.CONSTRAINT_EXISTS)
        self.subscription_events = _instrument(meter, sc.SUBSCRIPTION_EVENTS)
        self.renewal_failures = _instrument(meter, sc.RENEWAL_FAILURES)
        self.check_runs = _instrument(meter, sc.CHECK_RUNS)
        self.check_violating = _instrument(meter, sc.CHECK_VIOLATING)
        self.check_last_run = _instrument(meter, sc.CHECK_LAST_RUN)
        self.check_duration = _instrument(meter, sc.CHECK_DURATION)
        self._crons: dict[str, tuple[Any, ...]] = {}
        self._attrs: dict[tuple[str, str], dict[str, str]] = {}
        self._error_attrs: dict[tuple[str, str], dict[str, str]] = {}
        self._error_types: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        # Spike alerts use increase(): every series must exist at zero before its first event.
        from invariantkit._semconv import LIFECYCLE_EVENTS, RENEWAL_FAILURE_REASONS

        for event in LIFECYCLE_EVENTS:
            self.subscription_events.add(0, sc.SUBSCRIPTION_EVENTS.otel(event))
        for reason in sorted(RENEWAL_FAILURE_REASONS):
            self.renewal_failures.add(0, sc.RENEWAL_FAILURES.otel(reason))

    def _op_attrs(self, name: str, outcome: str) -> dict[str, str]:
        key = (name, outcome)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attrs[key] = sc.OPERATIONS.otel(name, outcome)
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
            self.retries.add(1, sc.RETRIES.otel(record.name))
        elif kind == "declare":
            self._declare(record)
        elif kind == "event":
            self._lifecycle_event(record)
        elif kind == "cron":
            if record.status in ("ok", "error"):
                self._cron_ended(record)
        elif kind == "check":
            self._check_ran(record)
        elif kind == "constraint":
            if record.status in ("present", "missing"):
                self.constraints.set(
                    1 if record.status == "present" else 0,
                    sc.CONSTRAINT_EXISTS.otel(record.name),
                )
        elif kind == "sink_error":
            self.sink_errors.add(
                record.attributes.get("count", 1), sc.SINK_ERRORS.otel(record.name)
            )
        elif kind == "sink_dropped":
            self.sink_dropped.add(
                record.attributes.get("count", 1),
                sc.SINK_DROPPED.otel(record.name, record.attributes.get("reason", "error")),
            )

    def _declare(self, record: Record) -> None:
        decl: Any = record.declaration
        if decl is None:
            return
        if decl.kind == "invariant":
            # Alert test mode announces the test="true" series too (record.test).
            self.violations.add(0, self._violation_attrs(decl, record.test))
        elif decl.kind == "operation":
            for outcome in ("success", "failure"):
                self.operations.add(0, self._op_attrs(decl.name, outcome))
        elif decl.kind == "idempotent":
            self.retries.add(0, sc.RETRIES.otel(decl.name))
        elif decl.kind == "check":
            for outcome in sc.CHECK_OUTCOMES:
                self.check_runs.add(0, sc.CHECK_RUNS.otel(decl.name, outcome))

    def _lifecycle_event(self, record: Record) -> None:
        labels = lifecycle_labels(record)
        if labels is None:
            return
        event, reason = labels
        self.subscription_events.add(1, sc.SUBSCRIPTION_EVENTS.otel(event))
        if reason is not None:
            self.renewal_failures.add(1, sc.RENEWAL_FAILURES.otel(reason))

    def _cron_ended(self, record: Record) -> None:
        """The cron's four gauges, created when its first run ends (never at declaration: a
        0 from a process that merely imported the job would fire the Missing alert)."""
        gauges = self._crons.get(record.name)
        if gauges is None:
            with self._lock:
                gauges = self._crons.get(record.name)
                if gauges is None:
                    specs = sc.cron_gauges(record.name)
                    gauges = self._crons[record.name] = tuple(
                        _instrument(self._meter, spec) for spec in specs
                    )
        last_run, last_status, duration, processed = gauges
        last_run.set(record.timestamp)
        last_status.set(1 if record.status == "ok" else 0)
        duration.set(record.duration or 0.0)
        processed.set(attribute_number(record, "processed"))

    def _check_ran(self, record: Record) -> None:
        attrs = sc.CHECK_VIOLATING.otel(record.name)
        outcome = record.status if record.status in sc.CHECK_OUTCOMES else "error"
        self.check_runs.add(1, sc.CHECK_RUNS.otel(record.name, outcome))
        self.check_duration.set(record.duration or 0.0, attrs)
        if outcome != "error":
            self.check_violating.set(attribute_number(record, "violating_entities"), attrs)
            self.check_last_run.set(record.timestamp, attrs)

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
            attrs = sc.OPERATION_ERRORS.otel(name, label)
            if label != "other":
                self._error_attrs[(name, error_type)] = attrs
            return attrs

    @staticmethod
    def _violation_attrs(decl: Any, test: bool) -> dict[str, str]:
        type_ = f"test_{decl.type}" if test and not decl.type.startswith("test_") else decl.type
        return sc.VIOLATIONS.otel(type_, decl.name, "true" if test else "false")

    def flush(self, timeout: float) -> bool:
        provider = self.provider if self.provider is not None else metrics.get_meter_provider()
        force_flush = getattr(provider, "force_flush", None)
        return True if force_flush is None else bool(force_flush(int(max(timeout, 0.0) * 1000)))

    def shutdown(self, timeout: float) -> bool:
        return self.flush(timeout)


def _instrument(meter: metrics.Meter, spec: sc.Metric) -> Any:
    """The OpenTelemetry instrument of ``spec``."""
    if spec.kind == "counter":
        return meter.create_counter(spec.otel_name, unit=spec.unit, description=spec.help)
    if spec.kind == "histogram":
        return meter.create_histogram(
            spec.otel_name,
            unit=spec.unit,
            description=spec.help,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
    return meter.create_gauge(spec.otel_name, unit=spec.unit, description=spec.help)
