"""The Celery app the integration tests run in a real worker (``celery -A support.celery_app
worker``) and send tasks to from the test process. Broker and result backend: ``IK_TEST_REDIS``;
the worker's Sentry DSN: ``IK_TEST_SENTRY_DSN``."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.exceptions import Ignore

import invariantkit as ik
from invariantkit import billing
from invariantkit._context import USER
from invariantkit.integrations.celery import instrument

REDIS = os.environ.get("IK_TEST_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("ik_tests", broker=REDIS, backend=REDIS)
app.conf.update(task_default_queue="ik_tests", worker_hijack_root_logger=False)
instrument(app)

renewal_cron = ik.monitor_cron("celery_renewal", every=3600, max_runtime=60)


def start_worker_monitoring() -> None:
    """In the worker process: Sentry (default integrations) and invariantkit's Sentry sink."""
    import sentry_sdk

    sentry_sdk.init(dsn=os.environ["IK_TEST_SENTRY_DSN"], traces_sample_rate=1.0)
    ik.configure(sinks=[ik.sinks.Sentry(), ik.sinks.JsonLogs()])


@app.task
def charge(charges_today: int) -> bool:
    """A violation inside the worker: it must carry the sender's trace id and user id."""
    with ik.operation("celery_charge"):
        return ik.assert_invariant(charges_today <= 1, billing.NO_DOUBLE_CHARGE)


@app.task
def whoami(bind: str | None = None) -> dict[str, Any]:
    seen = USER.get()
    if bind:
        ik.identify(bind)  # no `with`: must end with the task
    return {"user": seen, "trace_id": ik.correlation_id()}


@app.task
def ignored() -> None:
    """Ignore inside an operation: not a failure, nothing sent to Sentry."""
    with ik.operation("celery_ignored"):
        raise Ignore


@app.task
@renewal_cron
def renew_all() -> str:
    """A beat task monitored by monitor_cron."""
    return "renewed"
