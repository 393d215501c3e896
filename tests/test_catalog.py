"""Declarations: validated at declaration time, registered once, counters born at zero."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit._catalog import IdempotentDecl, get_catalog
from invariantkit.testing import capture_signals

VIOLATIONS = "billing_invariant_violation_total"


def declare(name: str = "LEDGER_BALANCED", **kw: Any) -> ik.Invariant:
    kw.setdefault("type", "ledger_unbalanced")
    kw.setdefault("summary", "The ledger does not balance")
    return ik.Invariant(name, **kw)


def series(
    registry: CollectorRegistry | None, name: str
) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample named ``name`` in ``registry``, by sorted labels."""
    assert registry is not None
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labels(type_: str, invariant: str, test: str = "false") -> tuple[tuple[str, str], ...]:
    return (("invariant", invariant), ("test", test), ("type", type_))


class TestValidation:
    """Every rule of ``ik.Invariant`` fails at declaration with the field and the rule named."""

    @pytest.mark.parametrize(
        ("name", "hint"),
        [
            ("no_double_charge", "'NO_DOUBLE_CHARGE'"),
            ("No-Double-Charge", "'NO_DOUBLE_CHARGE'"),
            ("double charge", "'DOUBLE_CHARGE'"),
            ("1ST_CHARGE", None),
            ("", None),
            ("_LEADING", None),
        ],
    )
    def test_name_must_be_upper_snake(self, name: str, hint: str | None) -> None:
        """A name outside ``[A-Z][A-Z0-9_]*`` is rejected, with a spelling that would work."""
        with pytest.raises(
            ValueError, match=r"name=.* must be UPPER_SNAKE: \[A-Z\]\[A-Z0-9_\]\*"
        ) as info:
            declare(name)
        if hint is not None:
            assert f"for example {hint}" in str(info.value)
        assert name not in get_catalog().invariants

    def test_name_must_be_a_str(self) -> None:
        """A non-str name is a TypeError naming the field."""
        with pytest.raises(TypeError, match="Invariant: name must be a str, not int"):
            declare(42)  # type: ignore[arg-type]

    def test_name_length_is_bounded(self) -> None:
        """A name longer than 100 characters is rejected (it is a Sentry tag value)."""
        declare("A" * 100)
        with pytest.raises(ValueError, match="name must be at most 100 characters long, not 101"):
            declare("A" * 101)

    @pytest.mark.parametrize("type_", ["DoubleCharge", "double-charge", "1x", "", "double charge"])
    def test_type_must_be_lower_snake(self, type_: str) -> None:
        """A ``type`` outside ``[a-z][a-z0-9_]*`` is rejected, naming the invariant and field."""
        with pytest.raises(
            ValueError,
            match=r"Invariant\('LEDGER_BALANCED'\): type=.* must be lower_snake: \[a-z\]\[a-z0-9_\]\*",
        ):
            declare(type=type_)

    def test_type_suggests_a_spelling(self) -> None:
        """The error for a camel-case type shows a lower_snake one."""
        with pytest.raises(ValueError, match="for example 'double_charge'"):
            declare(type="Double-Charge")

    def test_test_prefix_is_reserved(self) -> None:
        """``test_`` types are reserved for test alerts, which report ``test_<type>``."""
        with pytest.raises(
            ValueError, match="type='test_double_charge' must not start with 'test_'"
        ):
            declare(type="test_double_charge")

    @pytest.mark.parametrize("severity", ["CRITICAL", "info", "", None, 1])
    def test_severity_must_be_known(self, severity: object) -> None:
        """Only critical, error and warning exist."""
        with pytest.raises(
            ValueError, match=r"severity=.* must be one of critical, error, warning"
        ):
            declare(severity=severity)

    def test_fatal_severity_points_to_critical(self) -> None:
        """Sentry's level name is answered with the severity that maps to it."""
        with pytest.raises(ValueError, match="Sentry level 'fatal' is severity 'critical'"):
            declare(severity="fatal")

    @pytest.mark.parametrize(
        ("severity", "level"), [("critical", "fatal"), ("error", "error"), ("warning", "warning")]
    )
    def test_severity_maps_to_sentry_level(self, severity: str, level: str) -> None:
        """Each severity has its Sentry level."""
        assert declare(severity=severity).level == level

    def test_summary_is_required(self) -> None:
        """No summary, no alert text: the declaration fails."""
        with pytest.raises(TypeError, match="summary"):
            ik.Invariant("LEDGER_BALANCED", type="ledger_unbalanced")  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="summary must not be empty"):
            declare(summary="   ")
        with pytest.raises(TypeError, match="summary must be a str, not bytes"):
            declare(summary=b"x")

    def test_description_must_be_text(self) -> None:
        """The description is optional text."""
        assert declare(description=None).description == ""  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="description must be a str"):
            declare(description=3)

    @pytest.mark.parametrize(
        "url",
        [
            "https://docs.internal/runbooks/double-charge",
            "/runbooks/double-charge",
            "runbooks/double-charge.md",
            "../playbooks.md#double-charge",
        ],
    )
    def test_runbook_url_accepts_links(self, url: str) -> None:
        """http(s) URLs, absolute paths and relative .md paths are runbooks."""
        assert declare(runbook_url=url).runbook_url == url

    @pytest.mark.parametrize("url", ["ftp://x/y", "runbook", "https://", "see the wiki", 3])
    def test_runbook_url_rejects_the_rest(self, url: object) -> None:
        """Anything else fails, naming the field and what is accepted."""
        with pytest.raises(ValueError, match=r"runbook_url=.* must be an http\(s\) URL"):
            declare(runbook_url=url)

    @pytest.mark.parametrize("field", ["team", "domain"])
    @pytest.mark.parametrize("value", ["Billing", "billing team", "", "-x"])
    def test_team_and_domain_are_label_values(self, field: str, value: str) -> None:
        """``team`` and ``domain`` become alert labels and tags: ``[a-z][a-z0-9_-]*``."""
        with pytest.raises(ValueError, match=f"{field}=.* must be a label value"):
            declare(**{field: value})

    def test_enforce_must_be_a_bool_or_none(self) -> None:
        """``enforce`` is True, False or None: a truthy string is a mistake."""
        with pytest.raises(TypeError, match=r"enforce must be True .*False .*or None .*not 'yes'"):
            declare(enforce="yes")

    def test_defaults(self) -> None:
        """A minimal declaration is critical, owned by billing, following the configured mode."""
        inv = declare()
        assert (inv.severity, inv.team, inv.domain, inv.enforce) == (
            "critical",
            "billing",
            "billing",
            None,
        )
        assert inv.kind == "invariant"

    def test_declarations_are_frozen(self) -> None:
        """A declaration cannot be changed after the fact."""
        inv = declare()
        with pytest.raises(AttributeError):
            inv.type = "other"  # type: ignore[misc]


class TestCatalog:
    """The process-wide catalog."""

    def test_declaring_registers(self) -> None:
        """A declaration is in the catalog under its name."""
        inv = declare()
        assert get_catalog().invariants["LEDGER_BALANCED"] is inv
        assert inv in list(get_catalog())

    def test_redeclaring_replaces_and_warns_when_different(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A second declaration replaces the first; a different type is logged as a warning."""
        first = declare()
        with caplog.at_level(logging.WARNING, logger="invariantkit"):
            same = declare()
        assert not caplog.records
        assert get_catalog().invariants["LEDGER_BALANCED"] is same is not first
        with caplog.at_level(logging.WARNING, logger="invariantkit"):
            declare(type="ledger_off", severity="error")
        [record] = caplog.records
        assert (
            "LEDGER_BALANCED declared again with a different type, severity" in record.getMessage()
        )

    def test_invariants_pickle_by_name(self) -> None:
        """An invariant pickles as a reference to the declared one (it crosses process pools)."""
        inv = declare()
        assert pickle.loads(pickle.dumps(inv)) is inv

    def test_idempotent_declarations_are_registered_once(self) -> None:
        """The same idempotent operation declared twice is one entry."""
        catalog = get_catalog()
        first = catalog.add(IdempotentDecl("record_payment_event"))
        assert catalog.add(IdempotentDecl("record_payment_event")) is first


class TestCountersAtZero:
    """A declared invariant's counter child exists at zero in every metrics sink, so the first
    violation after a start is an increase that ``increase()`` sees."""

    def test_declared_before_configure(self) -> None:
        """Declared first, then configured: the child is there at 0, then 1 after a violation."""
        inv = declare()
        with capture_signals() as signals:
            assert (
                series(signals.registry, VIOLATIONS)[labels("ledger_unbalanced", "LEDGER_BALANCED")]
                == 0.0
            )
            ik.assert_invariant(False, inv)
            assert (
                series(signals.registry, VIOLATIONS)[labels("ledger_unbalanced", "LEDGER_BALANCED")]
                == 1.0
            )

    def test_declared_after_configure(self) -> None:
        """Configured first, then declared: the child appears at 0 at once, then 1."""
        with capture_signals() as signals:
            assert labels("ledger_unbalanced", "LEDGER_BALANCED") not in series(
                signals.registry, VIOLATIONS
            )
            inv = declare()
            assert (
                series(signals.registry, VIOLATIONS)[labels("ledger_unbalanced", "LEDGER_BALANCED")]
                == 0.0
            )
            ik.report_violation(inv)
            assert (
                series(signals.registry, VIOLATIONS)[labels("ledger_unbalanced", "LEDGER_BALANCED")]
                == 1.0
            )

    @pytest.mark.parametrize("order", ["declare_first", "configure_first"])
    def test_with_configure(self, order: str) -> None:
        """The same through ``ik.configure`` and a Prometheus sink on its own registry."""
        registry = CollectorRegistry()
        try:
            if order == "declare_first":
                inv = declare()
                ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry)])
            else:
                ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry)])
                inv = declare()
            key = labels("ledger_unbalanced", "LEDGER_BALANCED")
            assert series(registry, VIOLATIONS)[key] == 0.0
            ik.assert_invariant(False, inv)
            assert series(registry, VIOLATIONS)[key] == 1.0
        finally:
            ik.shutdown()

    def test_reconfiguring_keeps_children(self) -> None:
        """A second ``configure()`` on a fresh registry creates the children there too."""
        inv = declare()
        first, second = CollectorRegistry(), CollectorRegistry()
        try:
            ik.configure(sinks=[ik.sinks.PrometheusMetrics(first)])
            ik.assert_invariant(False, inv)
            ik.configure(sinks=[ik.sinks.PrometheusMetrics(second)])
            key = labels("ledger_unbalanced", "LEDGER_BALANCED")
            assert series(first, VIOLATIONS)[key] == 1.0
            assert series(second, VIOLATIONS)[key] == 0.0
        finally:
            ik.shutdown()

    @pytest.mark.parametrize("order", ["declare_first", "configure_first"])
    def test_otel_metrics_sink(self, order: str) -> None:
        """The OpenTelemetry metrics sink exports the declared series at 0, then 1."""
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])

        def points() -> dict[tuple[tuple[str, Any], ...], float]:
            data = reader.get_metrics_data()
            out: dict[tuple[tuple[str, Any], ...], float] = {}
            for rm in data.resource_metrics if data else []:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == "billing_invariant_violation":
                            for point in metric.data.data_points:
                                out[tuple(sorted(point.attributes.items()))] = point.value
            return out

        try:
            if order == "declare_first":
                inv = declare()
            with capture_signals(extra_sinks=(ik.sinks.OtelMetrics(provider),)):
                if order == "configure_first":
                    inv = declare()
                key = labels("ledger_unbalanced", "LEDGER_BALANCED")
                assert points()[key] == 0
                ik.assert_invariant(False, inv)
                assert points()[key] == 1
        finally:
            provider.shutdown()

    def test_ids_never_become_labels(self) -> None:
        """Only ``type``, ``invariant`` and ``test`` label the counter, whatever the tags."""
        inv = declare()
        with capture_signals() as signals:
            ik.assert_invariant(False, inv, tags={"subscription_id": "sub_42", "user": "u_7"})
            keys = series(signals.registry, VIOLATIONS)
        assert {name for key in keys for name, _ in key} == {"type", "invariant", "test"}
        assert not [key for key in keys if any("sub_42" in v or "u_7" in v for _, v in key)]


def test_operations_named_at_run_time_fold_beyond_the_cap_and_memory_stays_flat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """100,000 operation names built at run time (an id inside each): the catalog keeps at most
    ``OPERATION_LIMIT`` operations, never drops one declared before, warns once, and the
    process's RSS grows by less than 15 MB (it grew 41 MB when the catalog kept every name)."""
    import gc

    import psutil

    from invariantkit._catalog import OPERATION_LIMIT

    registry = CollectorRegistry()
    ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry)])
    declared = ik.billing_operation("declared_before_the_storm")
    process = psutil.Process()
    for n in range(2000):  # warm up: caches, the first label children
        with ik.billing_operation(f"warmup_{n}"):
            pass
    gc.collect()
    start = process.memory_info().rss
    with caplog.at_level(logging.WARNING, logger="invariantkit"):
        for n in range(100_000):
            with ik.billing_operation(f"charge_sub_{n}"):
                pass
    gc.collect()
    growth = process.memory_info().rss - start
    catalog = get_catalog()
    assert len(catalog.operations) <= OPERATION_LIMIT
    assert catalog.operations["declared_before_the_storm"] is declared.decl
    assert "charge_sub_99999" not in catalog.operations
    assert len([r for r in caplog.records if "operation names" in r.getMessage()]) <= 1
    assert growth < 15 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB"
    with declared:
        pass  # a declared operation keeps working (and counting) after the fold
    labels = {"operation": "declared_before_the_storm", "outcome": "success"}
    assert registry.get_sample_value("billing_operation_total", labels) == 1
