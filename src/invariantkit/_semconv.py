"""The metric spec: every metric invariantkit emits, declared once.

Each :class:`Metric` says what one family is (Prometheus name, kind, unit, labels, help) and how
the OpenTelemetry metrics sink names it (instrument name and attribute names). The Prometheus
sink, the OpenTelemetry metrics sink, the rule generator, the dashboards, ``verify`` and the docs'
metric table all read this module; the Prometheus names and labels are a contract (DESIGN
section 2), so a change here is a breaking change for users' dashboards and alerts.

An OTLP pipeline into Prometheus or Mimir turns each OpenTelemetry instrument into the
Prometheus name declared here by the standard translation: counters gain ``_total``, the unit
``s`` gains ``_seconds`` (unless the name already ends so), and ``.`` in attribute names
becomes ``_`` (``error.type`` -> ``error_type``). The parity test checks that translation for
every family.

Model layer: imports nothing from the runtime or the sinks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALL",
    "CHECK_DURATION",
    "CHECK_LAST_RUN",
    "CHECK_OUTCOMES",
    "CHECK_RUNS",
    "CHECK_VIOLATING",
    "CONSTRAINT_EXISTS",
    "CRON_DURATION",
    "CRON_GAUGES",
    "CRON_LAST_RUN",
    "CRON_LAST_STATUS",
    "CRON_PROCESSED",
    "DURATION_BUCKETS",
    "LABEL_VALUE_CAP",
    "LIFECYCLE_EVENTS",
    "OPERATIONS",
    "OPERATION_DURATION",
    "OPERATION_ERRORS",
    "OUTCOMES",
    "RENEWAL_FAILED",
    "RENEWAL_FAILURES",
    "RENEWAL_FAILURE_REASONS",
    "RENEWAL_SUCCESS",
    "RETRIES",
    "SINK_DROPPED",
    "SINK_ERRORS",
    "SUBSCRIPTION_CANCELED",
    "SUBSCRIPTION_EVENTS",
    "SUBSCRIPTION_STARTED",
    "VIOLATIONS",
    "CronGauge",
    "Metric",
    "cron_gauges",
    "failure_reason_label",
    "markdown_table",
]

Kind = Literal["counter", "histogram", "gauge"]

#: Histogram buckets of every duration (seconds). The OpenTelemetry SDK's default boundaries
#: (0, 5, 10, 25 ... 10000) are meant for milliseconds and would put every call in one bucket.
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

#: ``outcome`` of an operation: cancellation is not failure (no error counter).
OUTCOMES = ("success", "failure", "cancelled")
#: ``outcome`` of an at-rest check run.
CHECK_OUTCOMES = ("ok", "violations", "error")


#: The guide's PostHog event names, one per lifecycle step.
SUBSCRIPTION_STARTED = "subscription_started"
RENEWAL_SUCCESS = "subscription_renewal_success"
RENEWAL_FAILED = "subscription_renewal_failed"
SUBSCRIPTION_CANCELED = "subscription_canceled"
LIFECYCLE_EVENTS: tuple[str, ...] = (
    SUBSCRIPTION_STARTED,
    RENEWAL_SUCCESS,
    RENEWAL_FAILED,
    SUBSCRIPTION_CANCELED,
)

RENEWAL_FAILURE_REASONS: frozenset[str] = frozenset(
    {
        "insufficient_funds",
        "card_declined",
        "card_expired",
        "authentication_required",
        "processing_error",
        "provider_unavailable",
        "fraud_suspected",
        "invalid_payment_method",
        "other",
    }
)
"""Failure reasons kept as ``billing_renewal_failures_total{reason}`` label values; any other
reason is counted as ``other`` (the PostHog event still carries the exact reason).

Example:
    >>> from invariantkit import billing
    >>> "insufficient_funds" in billing.RENEWAL_FAILURE_REASONS
    True
"""


def failure_reason_label(reason: str) -> str:
    """The bounded ``reason`` label value for ``reason``."""
    return reason if reason in RENEWAL_FAILURE_REASONS else "other"


@dataclass(frozen=True)
class Metric:
    """One metric family.

    ``name`` is the Prometheus name as exposed (counters end in ``_total``), ``labels`` its label
    names; ``otel_name`` the OpenTelemetry instrument's name and ``otel_attributes`` the attribute
    names, in the order of ``labels``.
    """

    name: str
    kind: Kind
    unit: str
    labels: tuple[str, ...]
    help: str
    otel_name: str
    otel_attributes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.otel_attributes):
            raise ValueError(f"{self.name}: one OpenTelemetry attribute per label")

    def otel(self, *values: str) -> dict[str, str]:
        """The OpenTelemetry attributes for label ``values`` (in the order of ``labels``)."""
        return dict(zip(self.otel_attributes, values, strict=True))


def _metric(
    name: str,
    kind: Kind,
    labels: tuple[str, ...],
    doc: str,
    *,
    unit: str = "",
    otel_name: str | None = None,
    otel_attributes: tuple[str, ...] | None = None,
) -> Metric:
    if otel_name is None:
        otel_name = name.removesuffix("_total") if kind == "counter" else name
    return Metric(name, kind, unit, labels, doc, otel_name, otel_attributes or labels)


OPERATIONS = _metric(
    "billing_operation_total",
    "counter",
    ("operation", "outcome"),
    "Billing operations by outcome (success, failure or cancelled).",
)
OPERATION_DURATION = _metric(
    "billing_operation_duration_seconds",
    "histogram",
    ("operation", "outcome"),
    "Duration of billing operations.",
    unit="s",
    otel_name="billing_operation_duration",
)
OPERATION_ERRORS = _metric(
    "billing_operation_errors_total",
    "counter",
    ("operation", "error_type"),
    "Failed billing operations by exception class.",
    otel_attributes=("operation", "error.type"),
)
VIOLATIONS = _metric(
    "billing_invariant_violation_total",
    "counter",
    ("type", "invariant", "test"),
    "Invariant violations detected in production (should stay 0).",
)
RETRIES = _metric(
    "billing_idempotent_retry_total",
    "counter",
    ("operation",),
    "Idempotent writes that hit their unique constraint (expected retries).",
)
CONSTRAINT_EXISTS = _metric(
    "pg_constraint_exists",
    "gauge",
    ("constraint",),
    "1 when the database constraint or unique index exists, 0 when missing.",
)
SINK_ERRORS = _metric(
    "invariantkit_sink_errors_total",
    "counter",
    ("sink",),
    "Exceptions raised by an invariantkit sink (its signal was lost).",
)
SINK_DROPPED = _metric(
    "invariantkit_sink_dropped_total",
    "counter",
    ("sink", "reason"),
    "Signals a sink or its SDK dropped, by reason (queue_full, shutdown, sdk_queue_full, error, "
    "sampled).",
)
SUBSCRIPTION_EVENTS = _metric(
    "billing_subscription_events_total",
    "counter",
    ("event",),
    "Subscription lifecycle events (started, renewed, renewal failed, canceled).",
)
RENEWAL_FAILURES = _metric(
    "billing_renewal_failures_total",
    "counter",
    ("reason",),
    "Failed renewals by reason (a bounded set; anything else is 'other').",
)
CHECK_RUNS = _metric(
    "invariant_check_runs_total",
    "counter",
    ("check", "outcome"),
    "At-rest check runs by outcome (ok, violations or error).",
)
CHECK_VIOLATING = _metric(
    "invariant_check_violating_entities",
    "gauge",
    ("check",),
    "Entities the last run of the at-rest check found violating (should be 0).",
)
CHECK_LAST_RUN = _metric(
    "invariant_check_last_run_timestamp_seconds",
    "gauge",
    ("check",),
    "Unix time (seconds) the at-rest check last ran without error.",
    unit="s",
)
CHECK_DURATION = _metric(
    "invariant_check_duration_seconds",
    "gauge",
    ("check",),
    "Duration of the last run of the at-rest check.",
    unit="s",
)

#: Every family with a fixed name, in the order of the docs' table.
ALL: tuple[Metric, ...] = (
    OPERATIONS,
    OPERATION_DURATION,
    OPERATION_ERRORS,
    VIOLATIONS,
    RETRIES,
    SUBSCRIPTION_EVENTS,
    RENEWAL_FAILURES,
    CONSTRAINT_EXISTS,
    CHECK_RUNS,
    CHECK_VIOLATING,
    CHECK_LAST_RUN,
    CHECK_DURATION,
    SINK_ERRORS,
    SINK_DROPPED,
)


@dataclass(frozen=True)
class CronGauge:
    """One of the guide's four gauges of a cron job: ``cron_<name>_<suffix>`` (no labels; the
    job's name is in the metric name, exactly as the guide writes it)."""

    suffix: str
    unit: str
    help: str  # with ``{cron}`` for the job's name

    def name(self, cron: str) -> str:
        return f"cron_{cron}_{self.suffix}"

    def metric(self, cron: str) -> Metric:
        """This gauge of cron ``cron`` as a :class:`Metric`."""
        name = self.name(cron)
        return Metric(name, "gauge", self.unit, (), self.help.format(cron=cron), name, ())


CRON_LAST_RUN = CronGauge(
    "last_run_timestamp", "", "Unix time (seconds) the {cron} cron job last ended."
)
CRON_LAST_STATUS = CronGauge(
    "last_status", "", "1 if the last run of the {cron} cron job succeeded, 0 if not."
)
CRON_DURATION = CronGauge(
    "duration_seconds", "s", "Duration of the last run of the {cron} cron job."
)
CRON_PROCESSED = CronGauge(
    "processed", "", "Items processed by the last run of the {cron} cron job."
)
CRON_GAUGES = (CRON_LAST_RUN, CRON_LAST_STATUS, CRON_DURATION, CRON_PROCESSED)


def cron_gauges(cron: str) -> tuple[Metric, ...]:
    """The four gauges of cron ``cron``, in the order of :data:`CRON_GAUGES`."""
    return tuple(g.metric(cron) for g in CRON_GAUGES)


def markdown_table() -> str:
    """The docs' metric table (docs/configuration.md holds exactly this; a test compares)."""
    rows = [
        "| Prometheus name | Kind | Labels | OpenTelemetry instrument (unit) | Attributes | What |",
        "|---|---|---|---|---|---|",
    ]
    for spec in (*ALL, *(g.metric("<name>") for g in CRON_GAUGES)):
        unit = f" ({spec.unit})" if spec.unit else ""
        what = spec.help.replace("the <name> cron job", "the cron job")
        rows.append(
            f"| `{spec.name}` | {spec.kind} | {', '.join(f'`{x}`' for x in spec.labels) or '-'} "
            f"| `{spec.otel_name}`{unit} | {', '.join(f'`{x}`' for x in spec.otel_attributes) or '-'} "
            f"| {what} |"
        )
    return "\n".join(rows) + "\n"
