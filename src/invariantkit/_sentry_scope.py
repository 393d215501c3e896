"""Sentry's own events, in step with invariantkit's: the user on the isolation scope, one event
per failure, one trace id.

- :func:`set_user` puts the user that ``identify()`` binds on Sentry's current isolation scope, so
  the events and transactions that Sentry's framework integrations send carry it too.
- :func:`mark_reported` marks an exception that an operation reports (on the caller's thread,
  before the exception reaches the framework); :func:`drop_duplicate`, a global event processor,
  then drops the copy that a framework integration (Starlette, Flask, Django, Celery, logging...)
  captures of the same exception. invariantkit's own event (captured through
  ``capture_exception``, mechanism ``generic``) is kept: it carries the operation, the trace id
  and the user.
- :func:`align_trace` gives Sentry's current transaction the correlation id of the request.

Everything here is a no-op when ``sentry_sdk`` is not imported or has no active client.
"""

from __future__ import annotations

import collections
import contextlib
import random
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = [
    "active_sdk",
    "align_trace",
    "current_trace",
    "drop_duplicate",
    "duplicates",
    "isolation",
    "live_span",
    "mark_reported",
    "recording",
    "request_span",
    "set_user",
    "was_reported",
]

#: True inside a request or task that an integration entered (its own Sentry isolation scope).
IN_REQUEST: ContextVar[bool] = ContextVar("invariantkit.in_request", default=False)
#: The exceptions whose failure an operation reported to Sentry (see ``sinks._sentry``), most
#: recent last, compared by identity. Never an attribute on the user's exception object (we do
#: not change what the application raises); exceptions cannot be weakly referenced, so the ring
#: is small: a framework captures the exception moments after the operation reported it.
_REPORTED: collections.deque[BaseException] = collections.deque(maxlen=32)
_REPORTED_LOCK = threading.Lock()
_installed = False
#: Under ``capture_signals()``: event id -> the exception each outgoing Sentry event reports.
_recording: dict[str, BaseException] | None = None
#: "Not given": look Sentry's live span up (a request's integration passes the one it found).
_LOOK_UP: Any = object()


def active_sdk() -> Any:
    """The ``sentry_sdk`` module when it is imported and initialised, else None."""
    sdk = sys.modules.get("sentry_sdk")
    if sdk is None:
        return None
    try:
        return sdk if sdk.get_client().is_active() else None
    except Exception:
        return None


def set_user(user_id: str | None, sdk: Any = None) -> None:
    """Set (or, for None, clear) the user of Sentry's current isolation scope, inside a request or
    task: one an integration of ours entered, or one Sentry's own integration made a transaction
    for. Each has its own isolation scope, which ends with it.

    Called by ``identify()`` with the value it binds (after its own PII handling), so the user
    Sentry sees is the one every other signal carries. Outside a request (a script, a cron run)
    the isolation scope is the process's: a user set there would outlive ``with identify()`` and
    reach later events, so it is left alone (invariantkit's own events carry the user anyway).
    ``sdk``: :func:`active_sdk`, when the caller has it. Never raises.
    """
    if sdk is None:
        sdk = active_sdk()
        if sdk is None:
            return
    try:
        if not IN_REQUEST.get() and live_span(sdk) is None:
            return
        sdk.get_isolation_scope().set_user(None if user_id is None else {"id": user_id})
    except Exception:
        pass


def mark_reported(exc: BaseException) -> None:
    """Mark ``exc`` as reported by an operation, so a framework integration's copy is dropped.

    Runs on the caller's thread, before the exception leaves the operation: the framework
    captures it later on the same thread, while invariantkit's own event may still be queued.
    """
    with _REPORTED_LOCK:
        if not any(seen is exc for seen in _REPORTED):
            _REPORTED.append(exc)
    _install()


def was_reported(exc: object) -> bool:
    """True when an operation reported ``exc`` (this very object) to Sentry recently."""
    with _REPORTED_LOCK:
        return any(seen is exc for seen in _REPORTED)


def _install() -> None:
    global _installed
    if not _installed:
        _installed = True
        from sentry_sdk.scope import add_global_event_processor

        add_global_event_processor(drop_duplicate)


@contextlib.contextmanager
def recording(into: dict[str, BaseException]) -> Iterator[dict[str, BaseException]]:
    """Record, for each Sentry event that leaves :func:`drop_duplicate`, the exception object it
    reports (``into[event_id]``): ``Signals.sentry_duplicates`` finds two events of one failure."""
    global _recording
    _install()
    previous, _recording = _recording, into
    try:
        yield into
    finally:
        _recording = previous


def duplicates(events: list[dict[str, Any]], reported: dict[str, BaseException]) -> list[Any]:
    """The events in ``events`` that report an exception object an earlier event reported."""
    seen: set[int] = set()
    out = []
    for event in events:
        exc = reported.get(event.get("event_id", ""))
        if exc is None:
            continue
        if id(exc) in seen:
            out.append(event)
        seen.add(id(exc))
    return out


def _mechanisms(event: Any) -> set[str]:
    kinds: set[str] = set()
    for value in (event.get("exception") or {}).get("values") or ():
        mechanism = value.get("mechanism") or {}
        kind = mechanism.get("type")
        if isinstance(kind, str) and kind != "chained":
            kinds.add(kind)
    return kinds


def drop_duplicate(event: Any, hint: Any) -> Any:
    """A Sentry event processor: None (drop) for an event that a framework integration made of an
    exception an operation already reported; every other event unchanged.

    Example:
        >>> from invariantkit._sentry_scope import drop_duplicate, mark_reported
        >>> exc = ValueError("card declined")
        >>> mark_reported(exc)
        >>> event = {"exception": {"values": [{"mechanism": {"type": "starlette"}}]}}
        >>> drop_duplicate(event, {"exc_info": (ValueError, exc, None)}) is None
        True
        >>> ours = {"exception": {"values": [{"mechanism": {"type": "generic"}}]}}
        >>> drop_duplicate(ours, {"exc_info": (ValueError, exc, None)}) is ours
        True
    """
    try:
        exc_info = (hint or {}).get("exc_info")
        if not exc_info:
            return event
        if was_reported(exc_info[1]):
            kinds = _mechanisms(event)
            # "generic" is what capture_exception() gives: invariantkit's own event, or one the
            # application captured on purpose. Integrations name themselves ("starlette").
            if kinds and "generic" not in kinds:
                return None
        recording = _recording
        if recording is not None and isinstance(exc_info[1], BaseException):
            recording[str(event.get("event_id"))] = exc_info[1]
    except Exception:
        pass
    return event


def live_span(sdk: Any) -> Any:
    """Sentry's current span when it is open and belongs to an open transaction (one that
    Sentry's own framework integration started for this request), else None.

    Not merely ``get_current_span()``: a span can stay current after it finished. Concurrent
    asyncio tasks share one Sentry scope object, and Sentry's integrations (httpx's, for one)
    restore ``scope.span`` on exit in whatever order the tasks end, so after
    ``asyncio.gather()`` of outgoing requests outside any transaction, a finished span with no
    transaction is left current on the caller's scope: no request. ``sdk``: :func:`active_sdk`.
    """
    span = sdk.get_current_span()
    if span is None or span.timestamp is not None:
        return None
    transaction = span.containing_transaction
    if transaction is None or transaction.timestamp is not None:
        return None
    return span


def current_trace(sdk: Any, span: Any = _LOOK_UP) -> tuple[str, str] | None:
    """The ``(trace_id, span_id)`` of Sentry's current span (a transaction that Sentry's own
    framework integration started for this request), else None. ``sdk``: :func:`active_sdk`;
    ``span``: :func:`request_span`, when the caller has it."""
    try:
        if span is _LOOK_UP:
            span = live_span(sdk)
        if span is None:
            return None  # the propagation context outside a request may be process-wide
        return str(span.trace_id), str(span.span_id)
    except Exception:
        return None


def sdk_span_id() -> str:
    """A random 16-hex span id (the parent span id Sentry's propagation context wants)."""
    return format(random.getrandbits(64) or 1, "016x")


def align_trace(trace_id: str, sdk: Any = None, span: Any = _LOOK_UP) -> None:
    """Give Sentry's current transaction (and its open spans' future children) ``trace_id``: the
    framework's transaction and error events then share the correlation id of our own events.
    ``sdk`` (:func:`active_sdk`) and ``span`` (:func:`request_span`): when the caller has them."""
    if sdk is None:
        sdk = active_sdk()
        if sdk is None:
            return
    try:
        if span is _LOOK_UP:
            span = live_span(sdk)
        if span is None:
            # No transaction (tracing off): error events take the propagation context's id.
            sdk.continue_trace({"sentry-trace": f"{trace_id}-{sdk_span_id()}"})
            return
        transaction = span.containing_transaction
        for item in (span, transaction):
            if item is not None and item.trace_id != trace_id:
                item.trace_id = trace_id
    except Exception:
        pass


def isolation(sdk: Any, span: Any = _LOOK_UP) -> Any:
    """A fresh Sentry isolation scope for one request or task when no Sentry integration has
    started a transaction (which forks its own), else a null context: a user set on the scope
    never reaches the next request. ``sdk``: :func:`active_sdk`; ``span``: :func:`request_span`,
    when the caller has it."""
    try:
        if (live_span(sdk) if span is _LOOK_UP else span) is None:
            return sdk.isolation_scope()
    except Exception:
        pass
    return contextlib.nullcontext()


def request_span(sdk: Any) -> Any:
    """:func:`live_span`, looked up once for a request's :func:`isolation`,
    :func:`current_trace` and :func:`align_trace` (a fork of the scope keeps its span); when it
    cannot be read, ``_LOOK_UP``: each of them then looks (and fails) on its own. Never raises."""
    try:
        return live_span(sdk)
    except Exception:
        return _LOOK_UP
