"""Cardinality guard: metric labels come only from the allow-list, and the values of a label are
capped per metric (folded into ``other`` with one warning), whatever the public API is given.

A million calls take about a minute on the CI machine (about 50 us each with the Prometheus sink
alone), so the test uses 50,000 distinct subscription ids; the million is the benchmark's."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

import invariantkit as ik

ALLOWED_LABELS = {
    "type",
    "invariant",
    "operation",
    "outcome",
    "error_type",
    "constraint",
    "sink",
    "test",
    # issue 11's lifecycle metrics
    "event",
    "reason",
    "currency",
    # prometheus-client's own: histogram buckets
    "le",
}
DISTINCT_IDS = 50_000
CAP = 100


def series(registry: CollectorRegistry) -> dict[str, int]:
    """Number of samples per metric family (what Prometheus would store as series)."""
    counts: dict[str, int] = {}
    for family in registry.collect():
        counts[family.name] = len(family.samples)
    return counts


def label_names(registry: CollectorRegistry) -> set[str]:
    return {name for family in registry.collect() for s in family.samples for name in s.labels}


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    ik.configure(service="billing", sinks=[ik.sinks.PrometheusMetrics(registry)])
    try:
        yield registry
    finally:
        ik.shutdown(timeout=2)


def test_distinct_ids_in_tags_never_become_series(registry: CollectorRegistry) -> None:
    """50,000 violations, operations and product events, each with its own subscription id,
    user and tags, leave the number of series exactly where the first call left it."""
    invariant = ik.Invariant("CARDINALITY_DOUBLE_CHARGE", type="double_charge", summary="x")
    operation = ik.billing_operation("cardinality_renewal")

    def call(i: int) -> None:
        with ik.identify(f"user_{i}"), operation as run:
            run.set_attribute("subscription_id", f"sub_{i}")
            ik.assert_invariant(
                False, invariant, tags={"subscription_id": f"sub_{i}", f"tag_{i % 1000}": i}
            )
            ik.track("subscription_renewal_success", subscription_id=f"sub_{i}", amount=i)

    call(0)
    before = series(registry)
    for i in range(1, DISTINCT_IDS):
        call(i)
    assert series(registry) == before
    assert label_names(registry) <= ALLOWED_LABELS
    total = sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "billing_invariant_violation_total"
        and s.labels["invariant"] == "CARDINALITY_DOUBLE_CHARGE"
    )
    assert total == DISTINCT_IDS


def test_error_types_are_capped_and_fold_into_other(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """An operation failing with 1,000 distinct exception classes: at most 100 ``error_type``
    values plus ``other``, counts kept, and one warning."""
    operation = ik.billing_operation("cardinality_charge")
    classes = [type(f"ProviderError{i}", (Exception,), {}) for i in range(1_000)]
    caplog.set_level(logging.WARNING, logger="invariantkit")
    for cls in classes:
        for _ in range(2):
            with pytest.raises(cls), operation:
                raise cls("declined")
    values = {
        s.labels["error_type"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "billing_operation_errors_total"
        and s.labels["operation"] == "cardinality_charge"
    }
    assert len(values) == CAP + 1
    assert values["other"] == 2 * (1_000 - CAP)
    assert sum(values.values()) == 2_000
    warnings = [r for r in caplog.records if "folded into 'other'" in r.getMessage()]
    assert len(warnings) == 1


def test_every_label_comes_from_the_allow_list(registry: CollectorRegistry) -> None:
    """After every kind of signal the public API emits, every label is an allowed one."""
    invariant = ik.Invariant("CARDINALITY_ANY", type="any_kind", summary="x")
    ik.report_violation(invariant, tags={"subscription_id": "sub_1", "user": "u"})
    with pytest.raises(KeyError), ik.billing_operation("cardinality_any"):
        raise KeyError("x")
    ik.track("subscription_canceled", subscription_id="sub_1", reason="too_expensive")
    ik.flush(timeout=2)
    names = label_names(registry)
    assert names <= ALLOWED_LABELS, names - ALLOWED_LABELS


def test_operation_names_built_from_ids_are_capped(registry: CollectorRegistry) -> None:
    """A misuse such as ``ik.operation(f"charge_{subscription_id}")`` cannot grow the series
    without bound: ``operation`` values are capped like ``error_type``."""
    for i in range(300):
        with ik.operation(f"cardinality_charge_{i}"):
            pass
    totals: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "billing_operation_total":
                op = s.labels["operation"]
                totals[op] = totals.get(op, 0.0) + s.value
    assert len(totals) == CAP + 1  # CAP names (some declared before this test), then "other"
    kept = [name for name in totals if name.startswith("cardinality_charge_")]
    assert kept
    assert totals["other"] == 300 - len(kept)  # the rest folded, not dropped
    assert sum(totals.values()) == 300
