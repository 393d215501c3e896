"""The Prometheus sink for short-lived processes: Pushgateway pushes and node-exporter textfiles at
the end of a cron run (against a real Pushgateway scraped by a real Prometheus), its failures,
and the label-cardinality guard."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

import invariantkit as ik
from invariantkit import billing
from invariantkit.sinks._prometheus import LABEL_VALUE_CAP, PrometheusMetrics
from invariantkit.testing import Signals, capture_signals
from support.receivers import closed_port_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from support.servers import Prometheus, Pushgateway

CRON = "subscription_renewal"
GAUGES = [f"cron_{CRON}_{g}" for g in ("last_run_timestamp", "last_status", "duration_seconds", "processed")]  # fmt: skip
# The guide's RenewalCronMissing expression, verbatim.
MISSING = (
    f"absent(cron_{CRON}_last_run_timestamp) or (time() - cron_{CRON}_last_run_timestamp) > 90000"
)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _run_cron(*, processed: int = 0, fail: bool = False) -> None:
    """One run; then wait for its export (pushes and textfile writes happen on a worker)."""
    cron = ik.monitor_cron(CRON, every=86400, max_runtime=300)
    if fail:
        with pytest.raises(RuntimeError), cron as run:
            run.processed += processed
            raise RuntimeError("renewal failed")
    else:
        with cron as run:
            run.processed += processed
    ik.flush(timeout=10)


@pytest.fixture
def capture_with(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., tuple[Signals, CollectorRegistry]]]:
    """Open ``capture_signals`` whose metrics sink is ``PrometheusMetrics(registry, **kwargs)``."""
    import contextlib

    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> tuple[Signals, CollectorRegistry]:
            registry = CollectorRegistry()
            sink = PrometheusMetrics(registry, **kwargs)
            signals = stack.enter_context(capture_signals(metrics=False, extra_sinks=(sink,)))
            return signals, registry

        yield make


# --- configuration ---------------------------------------------------------------------------------


class TestConfiguration:
    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"pushgateway": 9091}, TypeError, "pushgateway=...) must be a URL string"),
            ({"pushgateway": "ftp://gw:21"}, ValueError, "must be an http(s) URL or host:port"),
            ({"pushgateway": "http://"}, ValueError, "must be an http(s) URL"),
            ({"textfile": 3}, TypeError, "textfile=...) must be a file path"),
            ({"textfile": "/tmp/metrics.txt"}, ValueError, "must end in .prom"),
            ({"grouping_key": "env=prod"}, TypeError, "grouping_key=...) must be a mapping"),
            ({"grouping_key": {"job": "x"}}, ValueError, "'job' is set to the cron's name"),
            ({"grouping_key": {"bad-label": "x"}}, ValueError, "must be a label name"),
            ({"grouping_key": {"env": ""}}, ValueError, "must be a non-empty str"),
            ({"push_timeout": 0}, ValueError, "push_timeout=0) must be seconds"),
            ({"push_timeout": True}, ValueError, "push_timeout=True"),
        ],
    )
    def test_bad_export_settings_fail_at_construction(
        self, kwargs: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        """Each bad setting raises when the sink is built, naming the argument."""
        with pytest.raises(error) as info:
            PrometheusMetrics(CollectorRegistry(), **kwargs)
        assert message in str(info.value)

    def test_credentials_in_the_pushgateway_url_are_not_repeated(self) -> None:
        """The error for a bad URL does not echo its password."""
        with pytest.raises(ValueError) as info:
            PrometheusMetrics(CollectorRegistry(), pushgateway="ftp://user:s3cret@gw:21")
        assert "s3cret" not in str(info.value)

    def test_accepted_forms(self, tmp_path: Path) -> None:
        """``host:port`` and URLs for the gateway, a ``PathLike`` for the textfile."""
        sink = PrometheusMetrics(
            CollectorRegistry(),
            pushgateway="127.0.0.1:9091",
            textfile=tmp_path / "cron_{cron}.prom",  # type: ignore[arg-type]
            grouping_key={"environment": "prod"},
            push_timeout=0.5,
        )
        assert sink.textfile == str(tmp_path / "cron_{cron}.prom")
        assert sink.grouping_key == {"environment": "prod"}

    def test_two_sinks_on_one_registry_share_the_cron_gauges(self) -> None:
        """Reconfiguring on the same registry never registers a cron gauge twice."""
        registry = CollectorRegistry()
        for _ in range(2):
            with capture_signals(
                metrics=False, extra_sinks=(PrometheusMetrics(registry),)
            ) as signals:
                _run_cron(processed=2)
                assert not [r for r in signals.records if r.kind == "sink_error"]
        assert _value(registry, f"cron_{CRON}_processed") == 2


# --- textfile ------------------------------------------------------------------------------------


def _read_textfile(path: Path) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }


class TestTextfile:
    def test_one_file_per_job_with_its_four_gauges(
        self, tmp_path: Path, capture_with: Callable[..., Any]
    ) -> None:
        """``{cron}`` in the path: one file per job, holding that job's gauges and nothing else."""
        capture_with(textfile=str(tmp_path / "cron_{cron}.prom"))
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        _run_cron(processed=12)
        other = ik.monitor_cron("ledger_export", every=3600, max_runtime=60)
        with other:
            pass
        ik.flush(timeout=10)  # textfiles are written on the export worker
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "cron_ledger_export.prom",
            f"cron_{CRON}.prom",
        ]
        values = _read_textfile(tmp_path / f"cron_{CRON}.prom")
        assert sorted(values) == sorted(GAUGES)
        assert values[f"cron_{CRON}_processed"] == 12
        assert values[f"cron_{CRON}_last_status"] == 1
        assert sorted(_read_textfile(tmp_path / "cron_ledger_export.prom")) == [
            "cron_ledger_export_duration_seconds",
            "cron_ledger_export_last_run_timestamp",
            "cron_ledger_export_last_status",
            "cron_ledger_export_processed",
        ]

    def test_a_single_file_holds_every_job_this_process_ran(
        self, tmp_path: Path, capture_with: Callable[..., Any]
    ) -> None:
        """Without ``{cron}``, the file is rewritten at each end with all jobs run so far."""
        path = tmp_path / "invariantkit.prom"
        capture_with(textfile=str(path))
        _run_cron(processed=1)
        with ik.monitor_cron("ledger_export", every=3600, max_runtime=60):
            pass
        _run_cron(processed=5, fail=True)
        values = _read_textfile(path)
        assert values[f"cron_{CRON}_last_status"] == 0
        assert values[f"cron_{CRON}_processed"] == 5
        assert values["cron_ledger_export_last_status"] == 1
        assert [p.name for p in tmp_path.iterdir()] == ["invariantkit.prom"]  # no temp file left

    def test_unwritable_path_is_counted_not_raised(
        self, tmp_path: Path, capture_with: Callable[..., Any], caplog: pytest.LogCaptureFixture
    ) -> None:
        """A missing directory: the job ends normally; one warning, a dropped count per run."""
        _, registry = capture_with(textfile=str(tmp_path / "missing" / "cron.prom"))
        with caplog.at_level(logging.WARNING, logger="invariantkit"):
            _run_cron(processed=1)
            _run_cron(processed=1)
        assert _value(registry, f"cron_{CRON}_last_status") == 1
        assert (
            _value(registry, "invariantkit_sink_dropped_total", sink="prometheus", reason="error")
            == 2
        )
        warnings = [r for r in caplog.records if "textfile" in r.getMessage()]
        assert len(warnings) == 1


# --- Pushgateway ---------------------------------------------------------------------------------


@pytest.mark.slow
class TestPushgateway:
    def test_push_at_the_end_of_a_run(
        self, pushgateway: Pushgateway, capture_with: Callable[..., Any]
    ) -> None:
        """The run's gauges and the billing families are in the group ``job=<cron>``; the
        registry's other metrics and other jobs' gauges are not."""
        _, registry = capture_with(
            pushgateway=pushgateway.url, grouping_key={"environment": "prod"}
        )
        Counter("app_requests", "The application's own metric.", registry=registry).inc()
        with ik.monitor_cron("ledger_export", every=3600, max_runtime=60):
            pass
        ik.flush(timeout=10)  # its push runs on the export worker: let it land before the wipe
        pushgateway.wipe()
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        _run_cron(processed=9)
        group = {"job": CRON, "environment": "prod"}
        assert pushgateway.metric_value(f"cron_{CRON}_last_status", group) == 1
        assert pushgateway.metric_value(f"cron_{CRON}_processed", group) == 9
        assert (
            pushgateway.metric_value(
                "billing_invariant_violation_total", {**group, "invariant": "NO_DOUBLE_CHARGE"}
            )
            == 1
        )
        text = pushgateway.metrics_text()
        assert "app_requests" not in text
        assert "cron_ledger_export" not in text
        assert 'instance=""' in text  # no per-host group: a new pod must not leave one behind

    def test_a_failed_run_is_pushed_too(
        self, pushgateway: Pushgateway, capture_with: Callable[..., Any]
    ) -> None:
        """A failing run pushes status 0 before its exception propagates."""
        capture_with(pushgateway=pushgateway.address)
        _run_cron(processed=1)
        _run_cron(processed=3, fail=True)
        assert pushgateway.metric_value(f"cron_{CRON}_last_status", {"job": CRON}) == 0
        assert pushgateway.metric_value(f"cron_{CRON}_processed", {"job": CRON}) == 3

    def test_metrics_you_push_to_the_same_group_survive(
        self, pushgateway: Pushgateway, capture_with: Callable[..., Any]
    ) -> None:
        """invariantkit pushes with POST (pushadd): the job's own pushed metrics stay."""
        from prometheus_client import Gauge, pushadd_to_gateway

        capture_with(pushgateway=pushgateway.url)
        own = CollectorRegistry()
        Gauge("renewal_revenue_cents", "The job's own figure.", registry=own).set(500)
        pushadd_to_gateway(pushgateway.url, job=CRON, registry=own, timeout=5)
        _run_cron(processed=1)
        assert pushgateway.metric_value("renewal_revenue_cents", {"job": CRON}) == 500
        assert pushgateway.metric_value(f"cron_{CRON}_last_status", {"job": CRON}) == 1


def test_pushgateway_down_is_counted_not_raised(
    capture_with: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused: the job's result is unchanged; one warning without credentials, and
    one dropped count per run."""
    url = closed_port_url().replace("http://", "http://user:s3cret@")
    _, registry = capture_with(pushgateway=url)
    cron = ik.monitor_cron(CRON, every=86400, max_runtime=300)

    @cron
    def job() -> str:
        return "renewed"

    with caplog.at_level(logging.WARNING, logger="invariantkit"):
        assert job() == "renewed"
        assert job() == "renewed"
        ik.flush(timeout=10)  # pushes run on the export worker
    assert _value(registry, f"cron_{CRON}_last_status") == 1
    assert (
        _value(registry, "invariantkit_sink_dropped_total", sink="prometheus", reason="error") == 2
    )
    [warning] = [r for r in caplog.records if "Pushgateway" in r.getMessage()]
    assert "s3cret" not in warning.getMessage()
    assert "127.0.0.1" in warning.getMessage()


def test_a_gateway_that_never_answers_is_bounded_by_push_timeout(
    capture_with: Callable[..., Any],
) -> None:
    """A gateway that accepts and then hangs: the push gives up after ``push_timeout``, counted;
    the job's exception still propagates unchanged."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(8)  # the kernel accepts connections; nobody ever answers
        port = hanging.getsockname()[1]
        _, registry = capture_with(pushgateway=f"127.0.0.1:{port}", push_timeout=0.2)
        error = RuntimeError("renewal failed")
        with (
            pytest.raises(RuntimeError) as info,
            ik.monitor_cron(CRON, every=86400, max_runtime=300),
        ):
            raise error
        assert info.value is error
        ik.flush(timeout=10)  # the push gives up after push_timeout, on the export worker
    assert (
        _value(registry, "invariantkit_sink_dropped_total", sink="prometheus", reason="error") == 1
    )
    assert _value(registry, f"cron_{CRON}_last_status") == 0


CRON_PROCESS = textwrap.dedent(
    """
    import sys
    import invariantkit as ik
    from prometheus_client import CollectorRegistry

    gateway, outcome, processed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ik.configure(
        service="renewal-job",
        sinks=[ik.sinks.PrometheusMetrics(CollectorRegistry(), pushgateway=gateway)],
    )
    renewal = ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300)
    with renewal as run:
        run.processed += processed
        if outcome == "fail":
            raise RuntimeError("Base Pay is down")
    """
)


def _cron_process(gateway: str, outcome: str, processed: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("prometheus_multiproc")}
    return subprocess.run(
        [sys.executable, "-c", CRON_PROCESS, gateway, outcome, str(processed)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.slow
def test_a_cron_process_that_exited_is_seen_by_prometheus(
    pushgateway: Pushgateway, prometheus_factory: Callable[..., Prometheus]
) -> None:
    """The end-to-end promise: a cron process runs and exits; a Prometheus started afterwards
    scrapes the Pushgateway (honor_labels) and has the run; the guide's Missing rule stays quiet
    and its Failed rule sees the next, failing run."""
    done = _cron_process(pushgateway.url, "ok", 17)
    assert done.returncode == 0, done.stderr
    prometheus = prometheus_factory(scrape_targets=[pushgateway.address], honor_labels=True)
    prometheus.wait_for_targets_up(timeout=30)
    prometheus.wait_for(lambda: prometheus.query(f"cron_{CRON}_last_status"), timeout=15)
    [series] = prometheus.query(f"cron_{CRON}_last_status")
    assert series["metric"]["job"] == CRON  # the pushed job label, kept by honor_labels
    assert float(series["value"][1]) == 1
    assert prometheus.query_value(f"cron_{CRON}_processed") == 17
    age = prometheus.query_value(f"time() - cron_{CRON}_last_run_timestamp")
    assert age is not None
    assert age < 120
    assert prometheus.query(MISSING) == []
    assert prometheus.query(f"cron_{CRON}_last_status != 1") == []  # RenewalCronFailed

    failed = _cron_process(pushgateway.url, "fail", 4)
    assert failed.returncode == 1
    assert "RuntimeError: Base Pay is down" in failed.stderr
    prometheus.wait_for(lambda: prometheus.query(f"cron_{CRON}_last_status != 1"), timeout=15)
    assert prometheus.query_value(f"cron_{CRON}_processed") == 4


@pytest.mark.slow
def test_missing_rule_fires_for_a_job_that_never_pushed(
    pushgateway: Pushgateway, prometheus_factory: Callable[..., Prometheus]
) -> None:
    """Nothing is exposed before a first run, so the guide's ``absent()`` branch fires."""
    prometheus = prometheus_factory(scrape_targets=[pushgateway.address], honor_labels=True)
    prometheus.wait_for_targets_up(timeout=30)
    assert prometheus.query_value(MISSING) == 1


# --- cardinality guard ---------------------------------------------------------------------------


def test_error_types_beyond_the_cap_fold_into_other(
    signals: Signals, caplog: pytest.LogCaptureFixture
) -> None:
    """300 distinct exception classes: 100 keep their label, the other 200 count as ``other``,
    with one warning; the sink's per-type cache stays bounded."""
    from invariantkit._config import current_config

    @ik.operation("charge")
    def charge(exc_type: type[Exception]) -> None:
        raise exc_type("declined")

    classes = [type(f"ProviderError{i}", (Exception,), {}) for i in range(300)]
    with caplog.at_level(logging.WARNING, logger="invariantkit"):
        for cls in classes:
            with pytest.raises(cls):
                charge(cls)
    assert signals.registry is not None
    by_type = {
        s.labels["error_type"]: s.value
        for family in signals.registry.collect()
        for s in family.samples
        if s.name == "billing_operation_errors_total" and s.labels["operation"] == "charge"
    }
    assert len(by_type) == LABEL_VALUE_CAP + 1
    assert by_type["other"] == 200
    assert sum(by_type.values()) == 300
    assert all(by_type[f"ProviderError{i}"] == 1 for i in range(LABEL_VALUE_CAP))
    assert len([r for r in caplog.records if "folded into 'other'" in r.getMessage()]) == 1
    [sink] = [s for s in current_config().sinks if isinstance(s, PrometheusMetrics)]
    assert len(sink._ops["charge"].errors) == LABEL_VALUE_CAP


@given(st.lists(st.text(min_size=1, max_size=5), max_size=400))
def test_bounded_keeps_the_first_cap_values_and_folds_the_rest(values: list[str]) -> None:
    """For any sequence: at most LABEL_VALUE_CAP distinct values pass, the first ones seen, always
    the same way; everything else is ``other``."""
    sink = PrometheusMetrics(CollectorRegistry())
    out = [sink._bounded("metric", v) for v in values]
    first: list[str] = []
    for v in values:
        if v not in first:
            first.append(v)
    allowed = set(first[:LABEL_VALUE_CAP])
    for v, o in zip(values, out, strict=True):
        assert o == (v if v in allowed else "other")
    assert sink._bounded("another_metric", "x") == "x"


def test_credentials_in_the_url_become_basic_auth(webhook_receiver: Any) -> None:
    """``https://user:password@host`` pushes with an ``Authorization: Basic`` header to the
    bare URL, as a Pushgateway behind an authenticating proxy expects."""
    import base64

    url = webhook_receiver.url.replace("http://", "http://billing:p%40ss@")
    with capture_signals(
        metrics=False, extra_sinks=(PrometheusMetrics(CollectorRegistry(), pushgateway=url),)
    ):
        _run_cron(processed=1)
    [request] = webhook_receiver.wait_until(lambda: list(webhook_receiver.received), 5, "a push")
    assert request.method == "POST"
    assert request.route.endswith(f"/metrics/job/{CRON}")
    assert "billing" not in request.route  # the credentials left the URL
    assert f"cron_{CRON}_last_status 1.0" in request.body.decode()
    expected = base64.b64encode(b"billing:p@ss").decode()
    assert request.headers["authorization"] == f"Basic {expected}"
