"""``examples/fastapi``, ``examples/flask``, ``examples/django`` and ``examples/celery`` run as a
user would run them; Django's ``runserver`` serves the Django example once, with Sentry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.frameworks import Redis
from support.servers import free_port, wait_until

if TYPE_CHECKING:
    from support.receivers import SentryReceiver

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ENV = {
    **{k: v for k, v in os.environ.items() if k not in {"SENTRY_DSN", "PYTEST_ADDOPTS"}},
    "PYTHONPATH": str(ROOT / "src"),
}


def _self_check(script: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, script],
        cwd=EXAMPLES,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.startswith('{"held"')]
    body: dict[str, object] = json.loads(line)
    # The worker's or server's JSON log line of the violation carries the trace id and user.
    assert f'"trace_id":"{TRACE_ID}"' in done.stderr + done.stdout
    return body


@pytest.mark.parametrize("script", ["fastapi/app.py", "flask/app.py", "django/app.py"])
def test_the_web_examples_continue_the_callers_trace(script: str) -> None:
    """Served (or, for Django, through the test client), called with a traceparent and a user:
    the response and the violation's log line carry the caller's trace id."""
    assert _self_check(script) == {"held": False, "trace_id": TRACE_ID}


def test_the_celery_example_runs_the_task_in_the_senders_trace() -> None:
    """A real worker on Debian's redis-server: the task's result says the sender's trace id."""
    with Redis() as redis:
        body = _self_check("celery/tasks.py", {"REDIS_URL": redis.url})
    assert body == {"held": False, "trace_id": TRACE_ID}


def test_django_runserver_serves_the_example_with_one_trace_id_in_sentry(
    sentry_receiver: SentryReceiver,
) -> None:
    """``manage.py runserver`` (the example's own command line): the request's Sentry
    transaction and the violation's event share the caller's trace id and user."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "django/app.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=EXAMPLES,
        env={**ENV, "SENTRY_DSN": sentry_receiver.dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/renewals/2",
            method="POST",
            headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01", "X-User-Id": "u_9"},
        )

        def call() -> dict[str, object] | None:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return json.load(response)  # type: ignore[no-any-return]
            except OSError:
                return None

        body = wait_until(call, timeout=30)
        assert body == {"held": False, "trace_id": TRACE_ID}
        [violation] = sentry_receiver.wait_for(1, timeout=15)
        [transaction] = sentry_receiver.wait_for(1, timeout=15, item_type="transaction")
    finally:
        proc.terminate()
        proc.wait(15)
    assert violation["tags"]["trace_id"] == TRACE_ID
    assert violation["user"]["id"] == "u_9"
    assert transaction["contexts"]["trace"]["trace_id"] == TRACE_ID
    assert transaction["user"]["id"] == "u_9"
