"""Celery: tasks carry the sender's trace context and user id, and run in them.

Example:
    >>> from celery import Celery
    >>> from invariantkit.integrations.celery import instrument
    >>> app = Celery("billing", broker="memory://")
    >>> instrument(app)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from invariantkit import _control_flow
from invariantkit._context import inject
from invariantkit.integrations._common import RequestContext, require

__all__ = ["instrument"]

logger = logging.getLogger("invariantkit")
_NEEDS = "invariantkit.integrations.celery.instrument()"
_KEYS = ("traceparent", "baggage")
_RUNNING = "_invariantkit_context"
_connected = False


def instrument(celery_app: Any) -> None:
    """Instrument Celery for invariantkit (idempotent; call it where the app is made, so both the
    sender and the worker run it).

    - A task sent inside an operation, a request or ``ik.identify()`` carries W3C
      ``traceparent`` and ``baggage`` (with the user id) in its message headers.
    - The worker runs each task in its own context: the sender's trace id and user id (unless
      OpenTelemetry's Celery instrumentation already continued the trace), reset when the task
      ends, so nothing one task binds reaches the next.
    - Celery's ``Retry``, ``Ignore`` and ``Reject`` end an operation or a ``monitor_cron`` run as
      a success, not a failure (and send nothing to Sentry).

    Args:
        celery_app: the ``celery.Celery`` application.

    Example:
        >>> from celery import Celery
        >>> from invariantkit.integrations.celery import instrument
        >>> app = Celery("billing", broker="memory://")
        >>> instrument(app)
    """
    global _connected
    signals = require("celery.signals", "celery", _NEEDS)
    exceptions = require("celery.exceptions", "celery", _NEEDS)
    if not callable(getattr(celery_app, "send_task", None)):
        raise TypeError(
            f"invariantkit.integrations.celery.instrument(): expected a celery.Celery app, got "
            f"{type(celery_app).__name__}"
        )
    _control_flow.register(exceptions.Retry, exceptions.Ignore, exceptions.Reject)
    if _connected:
        return
    # Celery's signals are process-wide; weak=False keeps our module-level receivers connected.
    signals.before_task_publish.connect(_before_publish, weak=False)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
    _connected = True


def _before_publish(headers: MutableMapping[str, Any] | None = None, **_: Any) -> None:
    """On the sender, while ``apply_async`` runs: write our carrier into the message headers."""
    if headers is None:
        return
    try:
        carrier: dict[str, str] = {}
        inject(carrier)
        # celery#4875: depending on the protocol and the caller, headers reach the worker's
        # task.request as attributes or nested in headers["headers"]: write the top level, and
        # the nested dict when there is one (the worker looks in both, see _lookup).
        nested = headers.get("headers")
        targets = [headers] + ([nested] if isinstance(nested, MutableMapping) else [])
        for target in targets:
            for key, value in carrier.items():
                existing = target.get(key)
                if not existing:
                    target[key] = value
                elif key == "baggage" and value not in existing:
                    target[key] = f"{existing},{value}"  # one W3C list (Sentry's is there too)
                # An existing traceparent was written by OpenTelemetry's own instrumentation:
                # its publish span is the right parent.
    except Exception:
        logger.warning("invariantkit: could not add trace headers to a task", exc_info=True)


def _lookup(request: Any, key: str) -> str | None:
    value = getattr(request, key, None)
    if isinstance(value, str):
        return value
    headers = getattr(request, "headers", None)
    if isinstance(headers, Mapping):
        value = headers.get(key)
        if isinstance(value, str):
            return value
        nested = headers.get("headers")
        if isinstance(nested, Mapping):
            value = nested.get(key)
            if isinstance(value, str):
                return value
    return None


def _prerun(task: Any = None, **_: Any) -> None:
    """On the worker, before the task body: enter the sender's context."""
    if task is None:
        return
    try:
        request = task.request
        if getattr(request, "is_eager", False):
            return  # task.apply(): the task runs inside its caller's own context
        context = RequestContext()
        context.enter(_lookup(request, "traceparent"), _lookup(request, "baggage"))
        setattr(request, _RUNNING, context)
    except Exception:
        logger.warning("invariantkit: could not enter a task's context", exc_info=True)


def _postrun(task: Any = None, **_: Any) -> None:
    """On the worker, after the task body (whatever it raised): leave the task's context."""
    if task is None:
        return
    try:
        request = task.request
        context = getattr(request, _RUNNING, None)
        if context is None:
            return
        setattr(request, _RUNNING, None)
        context.leave()
    except Exception:
        logger.warning("invariantkit: could not leave a task's context", exc_info=True)
