"""Celery with invariantkit: ``instrument(app)`` once, and tasks run in their sender's trace and
user.

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/celery/tasks.py   # a self-check
    celery -A tasks worker --pool=solo                                # (from examples/celery)

The self-check starts a worker on this file, sends ``renew`` from inside a request-like context
(a trace id and a user), and prints what the worker saw: the same trace id and user. With
``SENTRY_DSN`` set, the worker's violation event carries both, and ``Retry``/``Ignore``/
``Reject`` never count as failures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from celery import Celery

import invariantkit as ik
from invariantkit import billing
from invariantkit.integrations.celery import instrument

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("billing_tasks", broker=REDIS_URL, backend=REDIS_URL)
app.conf.task_default_queue = "billing_example"
instrument(app)

nightly_renewals = ik.monitor_cron("nightly_renewals", every=86400, max_runtime=600)


def setup() -> None:
    if os.environ.get("SENTRY_DSN"):
        import sentry_sdk

        sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], traces_sample_rate=1.0)
    ik.configure(service="billing-worker")


@app.task(name="billing.renew")  # the same name in the worker and in this script's __main__
def renew(charges_today: int) -> dict[str, Any]:
    """Runs in the sender's trace and user: the violation's log line and Sentry event say so."""
    with ik.billing_operation("renewal"):
        held = ik.assert_invariant(charges_today <= 1, billing.NO_DOUBLE_CHARGE)
    return {"held": held, "trace_id": ik.correlation_id()}


@app.task(name="billing.renew_all")
@nightly_renewals
def renew_all() -> None:
    """A beat task (``app.conf.beat_schedule``): monitor_cron reports each run."""


def self_check() -> int:
    here = Path(__file__).resolve().parent
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
            "-Q",
            "billing_example",
        ],
        cwd=here,
    )
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        with (
            ik.extract({"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}),
            ik.identify("user_42"),
        ):
            body = renew.delay(2).get(timeout=60)
        print(json.dumps(body))
        return 0 if body == {"held": False, "trace_id": trace_id} else 1
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


setup()

if __name__ == "__main__":
    sys.exit(self_check())
