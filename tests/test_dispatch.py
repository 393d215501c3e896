"""The dispatcher and its background worker: isolation, bounded flush and shutdown, counting."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit._dispatch import Dispatcher, Worker
from support.load import Arrivals, violations_beside_spinners


def _record(kind: str = "event", name: str = "e") -> ik.Record:
    return ik.Record(kind, name, "tracked", "0" * 32, "0" * 16, None, time.time())  # type: ignore[arg-type]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in registry.collect()
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class Recording:
    """A sink that keeps what it got; optionally deferred, raising, or hanging in flush."""

    def __init__(
        self,
        name: str,
        *,
        deferred: bool = False,
        raises: bool = False,
        hang: threading.Event | None = None,
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.deferred = deferred  # type: ignore[misc]
        self.raises = raises
        self.hang = hang
        self.records: list[ik.Record] = []
        self.flushed = 0
        self.flush_calls = 0

    def emit(self, record: ik.Record) -> None:
        if self.raises:
            raise RuntimeError(f"{self.name} broke")
        self.records.append(record)

    def flush(self, timeout: float) -> bool:
        self.flush_calls += 1
        if self.hang is not None:
            self.hang.wait(30)
        self.flushed += 1
        return True

    def shutdown(self, timeout: float) -> bool:
        return self.flush(timeout)


def test_a_raising_sink_is_isolated_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sink that raises on every record: the others get every record, each failure is counted
    in ``invariantkit_sink_errors_total{sink}``, one warning is logged."""
    registry = CollectorRegistry()
    good_inline, good_deferred = Recording("good"), Recording("good_deferred", deferred=True)
    bad_inline, bad_deferred = (
        Recording("bad", raises=True),
        Recording("bad_d", deferred=True, raises=True),
    )
    dispatcher = Dispatcher(
        [bad_inline, ik.sinks.PrometheusMetrics(registry), good_inline, bad_deferred, good_deferred]
    )
    caplog.set_level(logging.WARNING, logger="invariantkit")
    for _ in range(5):
        dispatcher.emit(_record())
    assert dispatcher.flush(2.0) is True
    assert [r.kind for r in good_inline.records].count("event") == 5
    assert [r.kind for r in good_deferred.records].count("event") == 5
    assert _sample(registry, "invariantkit_sink_errors_total", sink="bad") == 5
    assert _sample(registry, "invariantkit_sink_errors_total", sink="bad_d") == 5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("sink 'bad' failed" in m for m in messages) == 1
    assert sum("sink 'bad_d' failed" in m for m in messages) == 1
    assert dispatcher.shutdown(2.0) is True


def test_flush_and_shutdown_are_bounded_and_do_not_starve_other_sinks() -> None:
    """A sink whose flush never returns: ``flush(0.5)`` and ``shutdown(0.5)`` return False in
    time, the other sinks were flushed meanwhile, and repeated flushes do not pile up threads."""
    release = threading.Event()
    stuck, other = Recording("stuck", hang=release), Recording("other")
    dispatcher = Dispatcher([stuck, other])
    try:
        start = time.monotonic()
        assert dispatcher.flush(0.5) is False
        assert time.monotonic() - start < 2.0  # bounded (a stuck handler would be forever)
        assert other.flushed == 1
        threads = threading.active_count()
        for _ in range(5):
            assert dispatcher.flush(0.1) is False
        assert stuck.flush_calls == 1  # waited on the stuck call instead of starting new ones
        assert threading.active_count() <= threads
        start = time.monotonic()
        assert dispatcher.shutdown(0.5) is False
        assert time.monotonic() - start < 2.0  # bounded (a stuck handler would be forever)
    finally:
        release.set()


def test_worker_flush_waits_for_earlier_items_only_within_its_timeout() -> None:
    """``Worker.flush`` returns True once everything submitted before it was handled, and False
    (in time) when a handler is stuck; ``stop`` is bounded too, and drops are counted."""
    handled: list[int] = []
    gate = threading.Event()
    entered = threading.Event()
    dropped: list[int] = []

    def handler(item: int) -> None:
        if item == 99:
            entered.set()
            gate.wait(10)
        handled.append(item)

    worker = Worker(handler, maxsize=5, on_drop=dropped.append)
    for i in range(3):
        assert worker.submit(i)
    assert worker.flush(2.0) is True
    assert handled == [0, 1, 2]
    worker.submit(99)
    assert entered.wait(5)  # the worker holds the stuck item before the flush queues its marker
    start = time.monotonic()
    assert worker.flush(0.3) is False
    assert time.monotonic() - start < 2.0  # bounded (a stuck handler would be forever)
    for i in range(10):
        worker.submit(100 + i)
    # The stuck item has left the queue; the timed-out flush's marker holds one of its five
    # slots, four more fit, the other six are dropped and counted.
    assert sum(dropped) == 6
    queued_drops = sum(dropped)
    start = time.monotonic()
    assert worker.stop(0.3) is False
    assert time.monotonic() - start < 2.0  # bounded (a stuck handler would be forever)
    assert worker.submit(1) is False  # stopped: dropped and counted, never blocking
    assert sum(dropped) == queued_drops + 1
    gate.set()


def test_worker_restarts_in_a_forked_child() -> None:
    """After ``os.fork()`` the child's worker starts its own thread and handles the child's
    items; what the parent had queued is not handled twice."""
    read_fd, write_fd = os.pipe()
    seen: list[Any] = []
    worker = Worker(seen.append)
    worker.submit("parent")
    assert worker.flush(2.0) is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            seen.clear()
            worker.submit("child")
            ok = worker.flush(5.0)
            os.write(write_fd, f"{ok} {seen}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
        time.sleep(0.05)
    with os.fdopen(read_fd) as inp:
        assert inp.read() == "True ['child']"


def test_count_dropped_reaches_the_metrics_of_the_active_configuration() -> None:
    """``count_dropped`` (what SDK callbacks call) lands in the active configuration's
    ``invariantkit_sink_dropped_total{sink}``, and never raises, even with none active."""
    from invariantkit._dispatch import count_dropped

    registry = CollectorRegistry()
    ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry)])
    try:
        count_dropped("posthog", 3)
        assert _sample(registry, "invariantkit_sink_dropped_total", sink="posthog") == 3
    finally:
        ik.shutdown(timeout=1)
    count_dropped("posthog", 1)  # nothing configured: a no-op


class Preparing(Recording):
    """A deferred sink that reads the caller's context first (as the Sentry sink forks scopes):
    ``prepare`` on the caller's thread, ``deliver`` on the worker, violations only."""

    def __init__(self, name: str) -> None:
        super().__init__(name, deferred=True)
        self.prepared_on: list[str] = []
        self.delivered_on: list[str] = []

    def prepare(self, record: ik.Record) -> str | None:
        if record.kind != "violation":
            return None
        self.prepared_on.append(threading.current_thread().name)
        return f"context of {record.name}"

    def deliver(self, record: ik.Record, prepared: str) -> None:
        self.delivered_on.append(threading.current_thread().name)
        assert prepared == f"context of {record.name}"
        self.records.append(record)


def test_prepared_sinks_read_inline_and_deliver_on_the_one_worker() -> None:
    """A preparing sink reads on the caller's thread and delivers on the dispatcher's worker,
    next to the plain deferred sinks: one queue, one thread, only the records it prepared."""
    preparing, plain = Preparing("prep"), Recording("plain", deferred=True)
    dispatcher = Dispatcher([preparing, plain])
    dispatcher.emit(_record("violation", "A"))
    dispatcher.emit(_record("event", "e"))
    assert dispatcher.flush(2)
    me = threading.current_thread().name
    assert preparing.prepared_on == [me]
    assert preparing.delivered_on
    assert me not in preparing.delivered_on
    assert [r.name for r in preparing.records] == ["A"]
    assert [r.name for r in plain.records] == ["A", "e"]
    dispatcher.shutdown(2)


def test_a_full_queue_counts_each_record_for_the_sinks_it_was_for() -> None:
    """With the worker's queue full, a lost event counts for the plain deferred sinks only; a
    lost violation also for the sink that had prepared it."""
    registry = CollectorRegistry()
    release, started = threading.Event(), threading.Event()

    class Stuck(Recording):
        def emit(self, record: ik.Record) -> None:
            if record.name == "first":  # holds the worker: the queue stays full
                started.set()
                release.wait(10)
            super().emit(record)

    preparing, plain = Preparing("prep"), Stuck("plain", deferred=True)
    dispatcher = Dispatcher([ik.sinks.PrometheusMetrics(registry), preparing, plain], queue_size=1)
    dispatcher.emit(_record("event", "first"))
    assert started.wait(5)
    dispatcher.emit(_record("event", "queued"))  # fills the queue (size 1)
    dispatcher.emit(_record("event", "lost"))
    dispatcher.emit(_record("violation", "lost"))
    assert _sample(registry, "invariantkit_sink_dropped_total", sink="plain") == 2
    assert _sample(registry, "invariantkit_sink_dropped_total", sink="prep") == 1
    release.set()
    dispatcher.shutdown(2)
    assert [r.name for r in plain.records] == ["first", "queued"]


def test_a_raising_prepare_is_isolated_and_counted() -> None:
    """A sink whose ``prepare`` raises on the caller's thread: the caller never sees it, the
    failure is counted, and the other sinks still get the record."""
    registry = CollectorRegistry()

    class Broken(Preparing):
        def prepare(self, record: ik.Record) -> str | None:
            raise RuntimeError("cannot read the caller's context")

    broken, plain = Broken("broken_prep"), Recording("plain", deferred=True)
    dispatcher = Dispatcher([ik.sinks.PrometheusMetrics(registry), broken, plain])
    dispatcher.emit(_record("violation", "A"))
    assert dispatcher.flush(2)
    assert [r.name for r in plain.records] == ["A"]
    assert broken.records == []
    assert _sample(registry, "invariantkit_sink_errors_total", sink="broken_prep") == 1
    dispatcher.shutdown(2)


class Starts(Recording):
    """A sink that asks for operation starts while ``want`` is set (or raises when asked)."""

    def __init__(self, name: str, *, want: bool = True, broken: bool = False) -> None:
        super().__init__(name)
        self.want = want
        self.broken = broken

    def wants_starts(self) -> bool:
        if self.broken:
            raise RuntimeError("cannot tell")
        return self.want


def _operations(sink: Recording) -> list[str]:
    return [r.kind for r in sink.records if r.kind.startswith("operation")]


def test_operation_starts_go_out_when_a_sink_wants_them() -> None:
    """``wants_starts()`` is the one way a sink asks for ``operation_start`` records: any sink
    may (not only one named "json_logs"), it is asked at each operation, and a sink that merely
    shares the JSON sink's name, or whose answer raises, never costs the operation its signals."""
    registry = CollectorRegistry()
    starts = Starts("starts", want=False)
    namesake = Recording("json_logs")  # no logger, no wants_starts: an ordinary sink
    broken = Starts("broken_starts", broken=True)
    ik.configure(sinks=[ik.sinks.PrometheusMetrics(registry), starts, namesake, broken])
    try:
        op = ik.operation("start_wanted")(lambda: 7)
        assert op() == 7
        assert _operations(starts) == ["operation"]
        starts.want = True
        assert op() == 7
        kinds = ["operation", "operation_start", "operation"]
        assert _operations(starts) == kinds
        assert _operations(namesake) == kinds
        # Asked at the first call only: at the second, the sink before it already said yes.
        assert _sample(registry, "invariantkit_sink_errors_total", sink="broken_starts") == 1
        assert (
            _sample(
                registry, "billing_operation_total", operation="start_wanted", outcome="success"
            )
            == 2
        )
    finally:
        ik.shutdown(2)


def test_violations_reach_deferred_sinks_promptly_beside_cpu_bound_threads() -> None:
    """With three CPU-bound threads in the process, violations at 400/s reach a deferred sink
    (beside the real JSON log sink) within a second: the worker yields the GIL once per batch,
    not once per record (which delivered about 12% in time). The bar (90%) is the benchmark's;
    this test only proves the order of magnitude, with margins for a busy machine."""
    arrivals = Arrivals()
    log = logging.getLogger("test.dispatch.arrivals")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    log.setLevel(logging.INFO)
    ik.configure(sinks=[ik.sinks.JsonLogs(log), arrivals])
    invariant = ik.Invariant("ARRIVALS_PROMPT", type="arrivals_prompt", summary="x")
    try:
        sent = violations_beside_spinners(invariant, 2.0)
    finally:
        ik.shutdown(timeout=2)
    in_time = sum(1 for d in arrivals.delays if d <= 1.0)
    assert sent >= 400
    # The bar (90%) is the benchmark's (`benchmarks/run.py --only delivery`); here a margin for a
    # loaded CI machine that still fails the per-record yield (3% reached the sinks in time).
    assert in_time >= 0.3 * sent, (in_time, sent)


class Stuck:
    """A deferred sink whose backend hangs on the first record until released."""

    name = "stuck"
    deferred = True

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.got = 0

    def emit(self, record: ik.Record) -> None:
        if record.kind != "violation":
            return
        self.entered.set()
        self.release.wait(10)
        self.got += 1

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True


def test_what_shutdown_could_not_deliver_in_its_bound_is_counted_not_sent_late() -> None:
    """``ik.shutdown(timeout)`` with a hanging backend: every record either reached the sink
    before the bound or is counted as dropped with reason "shutdown", also those the worker
    held when the bound passed (they are not delivered behind the caller's back)."""
    sink = Stuck()
    ik.configure(sinks=[sink])
    invariant = ik.Invariant("SHUTDOWN_BOUND", type="shutdown_bound", summary="x")
    before = ik.stats().dropped.get(("stuck", "shutdown"), 0)
    ik.assert_invariant(False, invariant)
    assert sink.entered.wait(5)
    for _ in range(99):
        ik.assert_invariant(False, invariant)
    start = time.monotonic()
    assert ik.shutdown(timeout=0.3) is False
    assert time.monotonic() - start < 2.0
    sink.release.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        counted = ik.stats().dropped.get(("stuck", "shutdown"), 0) - before
        if sink.got + counted >= 100:
            break
        time.sleep(0.02)
    assert sink.got == 1
    assert counted == 99


def test_drops_are_visible_without_a_metrics_sink_and_named_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no metrics sink, ``ik.stats()`` still has every drop, by sink and reason; a
    warning line names them, at most once a minute."""
    from invariantkit import _dispatch

    clock = [1000.0]
    monkeypatch.setattr(_dispatch, "_clock", lambda: clock[0])
    counters = _dispatch._Counters()
    monkeypatch.setattr(_dispatch, "COUNTERS", counters)
    with caplog.at_level(logging.WARNING, logger="invariantkit"):
        counters.drop("posthog", "sdk_queue_full", 2)
        counters.drop("posthog", "sdk_queue_full", 3)
        clock[0] += 30
        counters.drop("sentry", "error", 1)
        clock[0] += 31
        counters.drop("sentry", "error", 1)
    lines = [r.getMessage() for r in caplog.records if "signals dropped" in r.getMessage()]
    assert len(lines) == 2
    assert "2 for posthog (sdk_queue_full)" in lines[0]
    assert "3 for posthog (sdk_queue_full)" in lines[1]
    assert "2 for sentry (error)" in lines[1]
    assert _dispatch.stats().dropped == {("posthog", "sdk_queue_full"): 5, ("sentry", "error"): 2}
    assert _dispatch.stats().dropped_total == 7
