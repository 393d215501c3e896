"""Fork safety (gunicorn ``preload_app``, multiprocessing with fork): after ``os.fork()`` every
sink of the child delivers, with real SDKs to receivers on 127.0.0.1."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import invariantkit as ik
from test_faults import Pipeline, pipeline

CHILD_USER = "child-user"


def _in_child() -> dict[str, Any]:
    """What a forked worker does: a billing call with a violation, then a bounded shutdown."""
    invariant = ik.get_catalog().invariants["FORK_NO_DOUBLE_CHARGE"]
    pid = str(os.getpid())

    @ik.billing_operation("fork_charge", user_facing=True)
    def charge() -> str:
        ik.assert_invariant(False, invariant, tags={"pid": pid})
        return "charged"

    with ik.identify(CHILD_USER):
        result = charge()
    from invariantkit._config import STATE

    dispatcher = STATE.dispatcher
    assert dispatcher is not None
    registry = next(s.registry for s in dispatcher.sinks if s.name == "prometheus")  # type: ignore[attr-defined]
    violations = sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "billing_invariant_violation_total"
        and sample.labels.get("invariant") == "FORK_NO_DOUBLE_CHARGE"
    )
    start = time.monotonic()
    shut = ik.shutdown(timeout=10)
    return {
        "pid": pid,
        "result": result,
        "violations": violations,
        "shutdown": shut,
        "shutdown_took": time.monotonic() - start,
    }


def _prepare(p: Pipeline) -> None:
    """The parent (a gunicorn master with ``preload_app``) is configured and has used every
    sink, so every SDK's background thread exists before the fork."""
    invariant = ik.Invariant("FORK_NO_DOUBLE_CHARGE", type="double_charge", summary="x")

    @ik.billing_operation("fork_charge", user_facing=True)
    def charge() -> str:
        ik.assert_invariant(False, invariant, tags={"pid": str(os.getpid())})
        return "charged"

    with ik.identify("parent-user"):
        assert charge() == "charged"
    # Delivered before forking, so no SDK queue is copied into the child with items in it.
    assert ik.flush(timeout=5) is True
    assert p.sentry is not None
    p.sentry.wait_for(1, timeout=10)


def _assert_child_delivered(p: Pipeline, report: dict[str, Any]) -> None:
    assert report["result"] == "charged"
    assert report["violations"] == 2  # the parent's, inherited, and the child's
    assert report["shutdown"] is True
    assert report["shutdown_took"] < 10
    pid = report["pid"]
    assert p.sentry is not None
    assert p.posthog is not None
    assert p.otlp is not None
    p.sentry.wait_until(
        lambda: any(e.get("tags", {}).get("pid") == pid for e in p.sentry.events),
        timeout=15,
        message="the child's Sentry event",
    )
    [event] = [e for e in p.sentry.events if e.get("tags", {}).get("pid") == pid]
    assert event["user"]["id"] == CHILD_USER
    p.posthog.wait_until(
        lambda: any(e["properties"].get("pid") == pid for e in p.posthog.events),
        timeout=15,
        message="the child's PostHog event",
    )
    [message] = [e for e in p.posthog.events if e["properties"].get("pid") == pid]
    assert message["distinct_id"] == CHILD_USER
    assert message["properties"]["trace_id"] == event["tags"]["trace_id"]
    trace_id = event["tags"]["trace_id"]
    p.otlp.wait_until(
        lambda: any(s["trace_id"] == trace_id for s in p.otlp.spans),
        timeout=15,
        message="the child's span",
    )
    # OTLP delivery is at least once (the exporter retries a slow export): any copy will do.
    spans = [s for s in p.otlp.spans if s["trace_id"] == trace_id]
    assert {s["name"] for s in spans} == {"billing.fork_charge"}
    assert {s["attributes"]["enduser.id"] for s in spans} == {CHILD_USER}
    assert len({s["span_id"] for s in spans}) == 1
    # Nothing the parent had sent before the fork was sent again by the child.
    parent_events = [e for e in p.sentry.events if e["user"]["id"] == "parent-user"]
    assert len(parent_events) == 1


def _wait_child(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child {pid} did not finish within {timeout}s")


def _fork(target: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock: that is the
        # very situation (gunicorn preload) this test proves invariantkit survives.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            report = target()
        except BaseException as exc:
            report = {"error": repr(exc)}
            code = 1
        try:
            with os.fdopen(write_fd, "w") as out:
                out.write(json.dumps(report))
        finally:
            os._exit(code)
    os.close(write_fd)
    code = _wait_child(pid, 30)
    with os.fdopen(read_fd) as inp:
        report = json.loads(inp.read() or "{}")
    assert code == 0, report
    return report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_os_fork_every_sink_of_the_child_delivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn ``preload_app``: the master configured invariantkit and used it; a forked worker's
    violation reaches Sentry, PostHog, the OTLP collector, its metrics and its JSON logs, with the
    child's user and one trace id, and its shutdown is bounded."""
    with pipeline(monkeypatch) as p:
        _prepare(p)
        report = _fork(_in_child)
        _assert_child_delivered(p, report)
        # The parent keeps working after the fork.
        ik.report_violation(ik.get_catalog().invariants["FORK_NO_DOUBLE_CHARGE"], tags={"pid": "p"})
        assert ik.flush(timeout=5) is True
        assert p.sentry is not None
        p.sentry.wait_until(
            lambda: any(e.get("tags", {}).get("pid") == "p" for e in p.sentry.events),
            timeout=10,
            message="the parent's event after the fork",
        )


def _mp_target(conn: Any) -> None:
    try:
        conn.send(_in_child())
    except BaseException as exc:  # pragma: no cover - reported to the parent
        conn.send({"error": repr(exc)})


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_multiprocessing_fork_children_deliver(monkeypatch: pytest.MonkeyPatch) -> None:
    """``multiprocessing`` with the fork start method: two children each deliver their own
    violation to every backend."""
    ctx = multiprocessing.get_context("fork")
    with pipeline(monkeypatch) as p:
        _prepare(p)
        reports = []
        for _ in range(2):
            parent_conn, child_conn = ctx.Pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                process = ctx.Process(target=_mp_target, args=(child_conn,))
                process.start()
            try:
                assert parent_conn.poll(30), "the child did not report"
                reports.append(parent_conn.recv())
            finally:
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join(5)
            assert process.exitcode == 0, reports[-1]
        assert len({r["pid"] for r in reports}) == 2
        for report in reports:
            assert "error" not in report, report
            _assert_child_delivered(p, report)
