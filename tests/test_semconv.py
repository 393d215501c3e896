"""The metric spec: both metric sinks emit every family it declares, with the same series."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit import _semconv as sc
from invariantkit import billing
from invariantkit._catalog import IdempotentDecl, OperationDecl
from invariantkit._record import Record

Series = dict[tuple[tuple[str, str], ...], float]

NOW = time.time()
CHECK = SimpleNamespace(kind="check", name="ledger_balanced")


def rec(kind: Any, name: str, status: str = "", **kw: Any) -> Record:
    return Record(kind, name, status, "ab" * 16, "cd" * 8, None, NOW, **kw)


def records() -> list[Record]:
    """One of everything the metric sinks count."""
    return [
        rec("declare", "", declaration=billing.NO_DOUBLE_CHARGE),
        rec("declare", "", declaration=billing.CANCELED_NEVER_CHARGED),
        rec("declare", "", declaration=OperationDecl("renewal")),
        rec("declare", "", declaration=IdempotentDecl("record_payment_event")),
        rec("declare", "", declaration=CHECK),  # type: ignore[arg-type]  # issue 20's Check
        rec("operation", "renewal", "success", duration=0.02),
        rec("operation", "renewal", "failure", duration=0.3, exception=KeyError("x")),
        rec("operation", "renewal", "cancelled", duration=1.5),
        rec("violation", "NO_DOUBLE_CHARGE", "violated", declaration=billing.NO_DOUBLE_CHARGE),
        rec("retry", "record_payment_event", "duplicate"),
        rec("event", "subscription_started"),
        rec("event", "subscription_renewal_failed", attributes={"failureReason": "card_declined"}),
        rec("cron", "renewal_job", "ok", duration=12.0, attributes={"processed": 40}),
        rec("constraint", "payments_idx", "present"),
        rec("constraint", "refunds_idx", "missing"),
        rec(
            "check",
            CHECK.name,
            "violations",
            duration=0.7,
            attributes={"violating_entities": 3},
            declaration=CHECK,  # type: ignore[arg-type]
        ),
        rec("sink_error", "posthog", "error", attributes={"count": 2}),
        rec("sink_dropped", "sentry", "queue_full", attributes={"count": 5}),
    ]


def prometheus_series() -> dict[str, Series]:
    """Family name -> series (label pairs -> value; a histogram's observation count)."""
    registry = CollectorRegistry()
    sink = ik.sinks.PrometheusMetrics(registry=registry)
    for record in records():
        sink.emit(record)
    out: dict[str, Series] = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        if family.type == "histogram":
            name = family.name
        for sample in family.samples:
            if sample.name.endswith("_created") or sample.name.endswith("_bucket"):
                continue
            if family.type == "histogram" and not sample.name.endswith("_count"):
                continue
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(name, {})[key] = sample.value
    return out


def otel_to_prometheus(name: str, kind: str, unit: str) -> str:
    """The OTLP-to-Prometheus name translation (Prometheus's and Mimir's OTLP endpoints)."""
    if unit == "s" and not name.endswith("_seconds"):
        name += "_seconds"
    if kind == "counter" and not name.endswith("_total"):
        name += "_total"
    return name


@pytest.fixture(scope="module")
def otel_series() -> Iterator[dict[str, Series]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        sink = ik.sinks.OtelMetrics(provider)
        for record in records():
            sink.emit(record)
        data = reader.get_metrics_data()
        assert data is not None
        out: dict[str, Series] = {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = type(metric.data).__name__
                    kind = {"Sum": "counter", "Histogram": "histogram"}.get(kind, "gauge")
                    name = otel_to_prometheus(metric.name, kind, metric.unit or "")
                    for point in metric.data.data_points:
                        labels = tuple(
                            sorted(
                                (k.replace(".", "_"), str(v)) for k, v in point.attributes.items()
                            )
                        )
                        value = point.count if kind == "histogram" else point.value
                        out.setdefault(name, {})[labels] = float(value)
        yield out
    finally:
        provider.shutdown()


EVERY_FAMILY = [*sc.ALL, *sc.cron_gauges("renewal_job")]


@pytest.mark.parametrize("spec", EVERY_FAMILY, ids=lambda m: m.name)
def test_both_sinks_emit_the_family_with_the_same_series(
    spec: sc.Metric, otel_series: dict[str, Series]
) -> None:
    """Family by family: the OTel sink, translated as an OTLP endpoint does, gives exactly the
    Prometheus sink's series and values."""
    prom = prometheus_series()
    assert prom.get(spec.name), f"the Prometheus sink does not emit {spec.name}"
    assert otel_series.get(spec.name) == prom[spec.name]
    for labels in prom[spec.name]:
        assert tuple(k for k, _ in labels) == tuple(sorted(spec.labels))


def test_the_spec_names_every_family_the_prometheus_sink_emits() -> None:
    """No family escapes the spec."""
    assert set(prometheus_series()) == {m.name for m in EVERY_FAMILY}


def test_otel_uses_semconv_error_type() -> None:
    """The error class travels as ``error.type``, which OTLP endpoints turn into ``error_type``."""
    assert sc.OPERATION_ERRORS.otel("renewal", "KeyError") == {
        "operation": "renewal",
        "error.type": "KeyError",
    }


def test_check_declaration_and_error_run() -> None:
    """A declared check's run counter exists at zero per outcome; a failing query counts as
    error and leaves the last successful run's gauges alone."""
    registry = CollectorRegistry()
    sink = ik.sinks.PrometheusMetrics(registry=registry)
    sink.emit(rec("declare", "", declaration=CHECK))  # type: ignore[arg-type]
    for outcome in sc.CHECK_OUTCOMES:
        assert (
            registry.get_sample_value(
                "invariant_check_runs_total", {"check": CHECK.name, "outcome": outcome}
            )
            == 0
        )
    assert (
        registry.get_sample_value(
            "invariant_check_last_run_timestamp_seconds", {"check": CHECK.name}
        )
        is None
    )
    sink.emit(rec("check", CHECK.name, "ok", duration=0.1, attributes={"violating_entities": 0}))
    sink.emit(rec("check", CHECK.name, "error", duration=0.2))
    labels = {"check": CHECK.name}
    assert (
        registry.get_sample_value("invariant_check_runs_total", {**labels, "outcome": "error"}) == 1
    )
    assert registry.get_sample_value("invariant_check_last_run_timestamp_seconds", labels) == NOW
    assert registry.get_sample_value("invariant_check_duration_seconds", labels) == 0.2


def test_the_docs_metric_table_is_the_spec() -> None:
    """docs/configuration.md holds the table generated from the spec, unedited."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert sc.markdown_table() in docs.read_text()
