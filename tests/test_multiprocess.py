"""Multi-process servers: with prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``),
the counters and histograms of several worker processes add up, and the gauges (cron, constraint)
are one series each, holding the most recent value, when one ``MultiProcessCollector`` reads them.

Each process is a real interpreter started with the variable set, as gunicorn's workers are:
either forked from a master that imported and configured the app first (``--preload``), or
started independently (no preload).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from pathlib import Path

WORKERS = 4
PER_WORKER = 25

APP = textwrap.dedent(
    """
    import fcntl
    import os
    import sqlite3
    import sys

    import invariantkit as ik
    from invariantkit import billing

    mode, workers, per_worker, lock_path, order_path = sys.argv[1:6]
    workers, per_worker = int(workers), int(per_worker)


    class PaymentDeclined(Exception):
        pass


    @ik.billing_operation("charge")
    def charge(ok):
        if not ok:
            raise PaymentDeclined("card declined")
        return "charged"


    renewal = ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300)


    def work(index):
        for _ in range(per_worker):
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"})
            charge(True)
            try:
                charge(False)
            except PaymentDeclined:
                pass
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE events (k TEXT)")
        db.execute("CREATE UNIQUE INDEX events_k_idx ON events (k)")
        ik.verify_constraints(db, ["events_k_idx", "events_missing_idx"])
        # One cron run at a time, so "most recent" is well defined: the order file says which.
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with renewal as run:
                run.processed += index + 1
            with open(order_path, "a") as order:
                order.write(f"{index}\\n")
            fcntl.flock(lock, fcntl.LOCK_UN)


    ik.configure(service="billing-api", sinks=[ik.sinks.PrometheusMetrics()])
    if mode == "preload":
        pids = []
        for index in range(workers):
            pid = os.fork()
            if pid == 0:
                try:
                    work(index)
                finally:
                    os._exit(0)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        sys.exit(max(codes))
    else:
        work(int(mode))
    """
)


def _run_app(tmp_path: Path, mode: str) -> tuple[Path, list[int]]:
    metrics_dir = tmp_path / "prometheus_multiproc"
    metrics_dir.mkdir()
    script = tmp_path / "app.py"
    script.write_text(APP)
    lock, order = tmp_path / "cron.lock", tmp_path / "order.txt"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    args = [str(WORKERS), str(PER_WORKER), str(lock), str(order)]
    if mode == "preload":
        procs = [subprocess.Popen([sys.executable, str(script), "preload", *args], env=env)]
    else:
        procs = [
            subprocess.Popen([sys.executable, str(script), str(index), *args], env=env)
            for index in range(WORKERS)
        ]
    try:
        codes = [proc.wait(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0] * len(procs)
    return metrics_dir, [int(line) for line in order.read_text().split()]


def _collect(metrics_dir: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in registry.collect():
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    matching = [v for lbls, v in samples[name] if labels.items() <= lbls.items()]
    assert len(matching) == 1, (name, labels, samples[name])
    return matching[0]


@pytest.mark.parametrize("mode", ["preload", "independent"])
def test_workers_add_up_and_gauges_hold_the_latest_run(tmp_path: Path, mode: str) -> None:
    """4 workers x 25 violations, successes and failures: exact sums across processes; the
    cron gauges and the constraint gauge are single series with the latest values, no pid."""
    metrics_dir, order = _run_app(tmp_path, mode)
    assert sorted(order) == list(range(WORKERS))
    samples = _collect(metrics_dir)
    total = WORKERS * PER_WORKER

    assert _value(samples, "billing_invariant_violation_total", invariant="NO_DOUBLE_CHARGE") == total  # fmt: skip
    # Declared invariants exist at zero in multiprocess mode too (increase() sees the first one).
    assert _value(samples, "billing_invariant_violation_total", invariant="CANCELED_NEVER_CHARGED") == 0  # fmt: skip
    assert _value(samples, "billing_operation_total", operation="charge", outcome="success") == total  # fmt: skip
    assert _value(samples, "billing_operation_total", operation="charge", outcome="failure") == total  # fmt: skip
    assert (
        _value(
            samples,
            "billing_operation_errors_total",
            operation="charge",
            error_type="PaymentDeclined",
        )
        == total
    )
    assert (
        _value(
            samples,
            "billing_operation_duration_seconds_count",
            operation="charge",
            outcome="success",
        )
        == total
    )
    assert (
        _value(
            samples, "billing_operation_total", operation="verify_constraints", outcome="success"
        )
        == WORKERS
    )

    # Gauges: mostrecent, so one series without a pid label, from the last run.
    last = order[-1]
    for gauge in ("last_run_timestamp", "last_status", "duration_seconds", "processed"):
        [(labels, _)] = samples[f"cron_subscription_renewal_{gauge}"]
        assert labels == {}
    assert _value(samples, "cron_subscription_renewal_last_status") == 1
    assert _value(samples, "cron_subscription_renewal_processed") == last + 1
    assert _value(samples, "cron_subscription_renewal_last_run_timestamp") > 1.7e9
    assert sorted(samples["pg_constraint_exists"], key=lambda s: s[0]["constraint"]) == [
        ({"constraint": "events_k_idx"}, 1.0),
        ({"constraint": "events_missing_idx"}, 0.0),
    ]
    assert not any("pid" in labels for series in samples.values() for labels, _ in series)
