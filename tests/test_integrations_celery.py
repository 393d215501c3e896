"""Celery: a real worker (subprocess) and a real broker (Debian's redis-server), with the real
Sentry SDK (default integrations on) in both processes, posting to a receiver on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from celery.exceptions import Ignore, Reject, Retry

import invariantkit as ik
from invariantkit.integrations.celery import _lookup, instrument
from invariantkit.testing import capture_signals
from support.frameworks import Redis, sentry_with_integrations

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.receivers import SentryReceiver

ROOT = Path(__file__).resolve().parent.parent
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    with Redis() as server:
        yield server


@pytest.fixture
def worker(redis: Redis, sentry_receiver: SentryReceiver) -> Iterator[Any]:
    """``celery worker`` (solo pool) for support.celery_app, stopped after the test."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}",
        "IK_TEST_REDIS": redis.url,
        "IK_TEST_SENTRY_DSN": sentry_receiver.dsn,
    }
    code = (
        "import support.celery_app as m; m.start_worker_monitoring(); "
        "m.app.worker_main(['worker', '--pool=solo', '--loglevel=WARNING', '-Q', 'ik_tests'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    os.environ["IK_TEST_REDIS"] = redis.url
    import support.celery_app as tasks

    tasks.app.conf.broker_url = tasks.app.conf.result_backend = redis.url
    try:
        assert tasks.whoami.delay().get(timeout=60) is not None  # the worker is up
        yield tasks
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_task_runs_in_the_senders_trace_and_user(
    worker: Any, sentry_receiver: SentryReceiver
) -> None:
    """The violation in the worker carries the sender's trace id and user id; the worker's Sentry
    transaction has the same trace id: one trace in Sentry."""
    sentry_receiver.clear()
    with sentry_with_integrations(sentry_receiver.dsn):  # the sender's Sentry adds its headers
        with ik.extract({"traceparent": TRACEPARENT}), ik.identify("user_42"):
            worker.charge.delay(2).get(timeout=30)
    [violation] = sentry_receiver.wait_for(1, timeout=15)
    assert violation["message"] == "NO_DOUBLE_CHARGE"
    assert violation["tags"]["trace_id"] == TRACE_ID
    assert violation["user"]["id"] == "user_42"
    sentry_receiver.wait_until(
        lambda: [t for t in sentry_receiver.transactions if t["transaction"].endswith(".charge")],
        timeout=15,
    )
    [transaction] = [
        t for t in sentry_receiver.transactions if t["transaction"].endswith(".charge")
    ]
    assert transaction["contexts"]["trace"]["trace_id"] == TRACE_ID
    assert transaction["user"]["id"] == "user_42"


def test_nothing_leaks_between_tasks(worker: Any) -> None:
    """A user bound without ``with`` in one task never reaches the next; each task without a
    sender context gets its own trace id."""
    with ik.identify("sender"):
        first = worker.whoami.delay(bind="leaked").get(timeout=30)
    second = worker.whoami.delay().get(timeout=30)
    assert first["user"] == "sender"
    assert second["user"] is None
    assert first["trace_id"] != second["trace_id"]


def test_ignore_and_a_beat_task_under_monitor_cron(
    worker: Any, sentry_receiver: SentryReceiver
) -> None:
    """Ignore is no failure (no Sentry event); a beat task's monitor_cron sends its check-ins."""
    sentry_receiver.clear()
    worker.ignored.delay()
    worker.app.send_task("support.celery_app.renew_all").get(timeout=30)
    checkins = sentry_receiver.wait_for(2, timeout=15, item_type="check_in")
    assert [c["status"] for c in checkins] == ["in_progress", "ok"]
    assert checkins[0]["monitor_slug"] == "celery-renewal"
    time.sleep(1.0)  # give a wrong event from the ignored task time to arrive
    assert [e for e in sentry_receiver.events if "exception" in e] == []


@pytest.mark.parametrize("control", [Retry(), Ignore(), Reject("bad input", requeue=False)])
def test_celery_control_flow_is_not_a_failure(control: Exception) -> None:
    """Retry, Ignore and Reject end an operation or cron run as a success, with no Sentry event."""
    from celery import Celery

    instrument(Celery("ik_control_flow", broker="memory://"))
    cron = ik.monitor_cron("control_flow_job", every=3600, max_runtime=60)
    with capture_signals() as signals:
        with pytest.raises(type(control)), cron, ik.operation("celery_step"):
            raise control
        assert signals.sentry_events == []
        assert [c["status"] for c in signals.sentry_checkins] == ["in_progress", "ok"]
        assert not signals.metric("billing_operation_errors_total", operation="celery_step")


def test_headers_are_found_where_celery_4875_puts_them() -> None:
    """As request attributes, in request.headers, or nested in request.headers["headers"]."""

    class Request:
        headers: Any = None

    flat, nested, attribute = Request(), Request(), Request()
    flat.headers = {"traceparent": TRACEPARENT}
    nested.headers = {"headers": {"traceparent": TRACEPARENT}}
    attribute.traceparent = TRACEPARENT  # type: ignore[attr-defined]
    assert {_lookup(r, "traceparent") for r in (flat, nested, attribute)} == {TRACEPARENT}
    assert _lookup(Request(), "traceparent") is None


def test_instrument_rejects_what_is_not_a_celery_app() -> None:
    with pytest.raises(TypeError, match=r"celery\.Celery"):
        instrument("billing")
