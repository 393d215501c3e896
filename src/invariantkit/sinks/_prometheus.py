"""Prometheus metrics through prometheus-client: the guide's metric names, children at zero."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from invariantkit.sinks._base import SinkUnavailable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from invariantkit._record import Record

__all__ = ["PrometheusMetrics"]

logger = logging.getLogger("invariantkit")

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Distinct values allowed per metric and label before new ones fold into "other".
LABEL_VALUE_CAP = 100


@dataclass
class _Families:
    operation_total: Counter
    operation_duration: Histogram
    operation_errors: Counter
    violations: Counter
    retries: Counter
    constraint_exists: Gauge
    sink_errors: Counter
    sink_dropped: Counter
    extra: dict[str, Any]


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_FAMILIES_LOCK = threading.Lock()


def _families(registry: CollectorRegistry) -> _Families:
    """The invariantkit metric families of ``registry``, registered once per registry."""
    from prometheus_client import Counter, Gauge, Histogram

    with _FAMILIES_LOCK:
        fams = _FAMILIES.get(registry)
        if fams is None:
            fams = _Families(
                operation_total=Counter(
                    "billing_operation_total",
                    "Billing operations by outcome (success or failure).",
                    ["operation", "outcome"],
                    registry=registry,
                ),
                operation_duration=Histogram(
                    "billing_operation_duration_seconds",
                    "Duration of billing operations.",
                    ["operation", "outcome"],
                    buckets=DURATION_BUCKETS,
                    registry=registry,
                ),
                operation_errors=Counter(
                    "billing_operation_errors_total",
                    "Failed billing operations by exception class.",
                    ["operation", "error_type"],
                    registry=registry,
                ),
                violations=Counter(
                    "billing_invariant_violation_total",
                    "Invariant violations detected in production (should stay 0).",
                    ["type", "invariant", "test"],
                    registry=registry,
                ),
                retries=Counter(
                    "billing_idempotent_retry_total",
                    "Idempotent writes that hit their unique constraint (expected retries).",
                    ["operation"],
                    registry=registry,
                ),
                constraint_exists=Gauge(
                    "pg_constraint_exists",
                    "1 when the database constraint or unique index exists, 0 when missing.",
                    ["constraint"],
                    registry=registry,
                    multiprocess_mode="mostrecent",
                ),
                sink_errors=Counter(
                    "invariantkit_sink_errors_total",
                    "Exceptions raised by an invariantkit sink (its signal was lost).",
                    ["sink"],
                    registry=registry,
                ),
                sink_dropped=Counter(
                    "invariantkit_sink_dropped_total",
                    "Signals a sink or its SDK dropped (queue full, delivery failed).",
                    ["sink"],
                    registry=registry,
                ),
                extra={},
            )
            _FAMILIES[registry] = fams
        return fams


class _OpChildren:
    __slots__ = ("errors", "fail_count", "fail_hist", "ok_count", "ok_hist", "seen_errors")

    def __init__(self, fams: _Families, name: str) -> None:
        self.ok_count = fams.operation_total.labels(name, "success")
        self.fail_count = fams.operation_total.labels(name, "failure")
        self.ok_hist = fams.operation_duration.labels(name, "success")
        self.fail_hist = fams.operation_duration.labels(name, "failure")
        self.errors: dict[str, Any] = {}


class PrometheusMetrics:
    """The guide's Prometheus metrics, in ``registry`` (default: prometheus-client's global one).

    Every declared invariant, operation and idempotent write gets its label children at zero
    when declared, so ``increase()`` sees the first violation after a start. Ids never become
    labels: only ``type``, ``invariant``, ``operation``, ``outcome``, ``error_type``,
    ``constraint``, ``sink`` and ``test``.

    Args:
        registry: a ``CollectorRegistry``; the default registry when None.
        pushgateway: URL of a Prometheus Pushgateway; cron runs push their metrics there when
            they end (short-lived processes are never scraped).
        textfile: path of a node-exporter textfile to write atomically when a cron run ends.

    Example:
        >>> import invariantkit as ik
        >>> from prometheus_client import CollectorRegistry
        >>> sink = ik.sinks.PrometheusMetrics(registry=CollectorRegistry())
    """

    name: ClassVar[str] = "prometheus"
    deferred: ClassVar[bool] = False

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        pushgateway: str | None = None,
        textfile: str | None = None,
    ) -> None:
        try:
            import prometheus_client
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise SinkUnavailable(
                "invariantkit.sinks.PrometheusMetrics needs prometheus-client: "
                "pip install 'invariantkit[prometheus]'"
            ) from exc
        if pushgateway is not None and not isinstance(pushgateway, str):
            raise TypeError("PrometheusMetrics(pushgateway=...) must be a URL string")
        if textfile is not None and not isinstance(textfile, str):
            raise TypeError("PrometheusMetrics(textfile=...) must be a file path string")
        self.registry: CollectorRegistry = (
            registry if registry is not None else prometheus_client.REGISTRY
        )
        self.pushgateway = pushgateway
        self.textfile = textfile
        self.families = _families(self.registry)
        self._ops: dict[str, _OpChildren] = {}
        self._violations: dict[tuple[str, bool], Any] = {}
        self._retries: dict[str, Any] = {}
        self._capped: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    # -- declarations ---------------------------------------------------------------------------

    def _declare(self, decl: Any) -> None:
        kind = decl.kind
        if kind == "operation":
            if decl.name not in self._ops:
                self._ops[decl.name] = _OpChildren(self.families, decl.name)
        elif kind == "invariant":
            self._violation_child(decl, test=False)
        elif kind == "idempotent":
            self._retry_child(decl.name)

    def _violation_child(self, decl: Any, *, test: bool) -> Any:
        key = (decl.name, test)
        child = self._violations.get(key)
        if child is None:
            type_ = f"test_{decl.type}" if test and not decl.type.startswith("test_") else decl.type
            child = self.families.violations.labels(type_, decl.name, "true" if test else "false")
            self._violations[key] = child
        return child

    def _retry_child(self, name: str) -> Any:
        child = self._retries.get(name)
        if child is None:
            child = self._retries[name] = self.families.retries.labels(name)
        return child

    def _bounded(self, metric: str, value: str) -> str:
        """Fold a label value into ``other`` once ``metric`` has seen LABEL_VALUE_CAP values."""
        with self._lock:
            seen = self._capped.setdefault(metric, set())
            if value in seen:
                return value
            if len(seen) < LABEL_VALUE_CAP:
                seen.add(value)
                return value
            if "\x00warned" not in seen:
                seen.add("\x00warned")
                logger.warning(
                    "invariantkit: %s has %d distinct label values; new ones are folded into 'other'",
                    metric,
                    LABEL_VALUE_CAP,
                )
        return "other"

    # -- records --------------------------------------------------------------------------------

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "operation":
            ops = self._ops.get(record.name)
            if ops is None:
                ops = self._ops[record.name] = _OpChildren(self.families, record.name)
            duration = record.duration or 0.0
            if record.status == "success":
                ops.ok_count.inc()
                ops.ok_hist.observe(duration)
                return
            ops.fail_count.inc()
            ops.fail_hist.observe(duration)
            error_type = (
                type(record.exception).__name__ if record.exception is not None else "Error"
            )
            child = ops.errors.get(error_type)
            if child is None:
                bounded = self._bounded(f"billing_operation_errors_total/{record.name}", error_type)
                child = self.families.operation_errors.labels(record.name, bounded)
                ops.errors[error_type] = child
            child.inc()
        elif kind == "violation":
            decl = record.declaration
            if decl is None:
                return
            child = self._violation_child(decl, test=record.test)
            if record.trace_id:
                child.inc(1, exemplar={"trace_id": record.trace_id})
            else:
                child.inc()
        elif kind == "retry":
            self._retry_child(record.name).inc()
        elif kind == "constraint":
            self.families.constraint_exists.labels(record.name).set(
                1 if record.status == "present" else 0
            )
        elif kind == "declare":
            if record.declaration is not None:
                self._declare(record.declaration)
        elif kind == "sink_error":
            self.families.sink_errors.labels(record.name).inc(record.attributes.get("count", 1))
        elif kind == "sink_dropped":
            self.families.sink_dropped.labels(record.name).inc(record.attributes.get("count", 1))

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True
