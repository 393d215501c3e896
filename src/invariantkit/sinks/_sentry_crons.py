"""Sentry Crons check-ins for ``ik.monitor_cron`` records (called by the Sentry sink).

A run sends two check-ins with one ``check_in_id``: ``in_progress`` when it starts, then ``ok`` or
``error`` with its duration. Each carries a ``monitor_config`` built from the cron's ``every`` and
``max_runtime``, so Sentry creates or updates the monitor from the check-in itself (upsert): no
monitor has to be clicked together in Sentry's UI first. A failed run also sends its exception,
tagged ``cron`` and ``monitor_slug``, in the same trace as the run.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from invariantkit._record import Record
    from invariantkit._safe import Scrubber

__all__ = [
    "capture_cron_checkin",
    "checkin_margin_seconds",
    "exception_kwargs",
    "monitor_config",
    "monitor_slug",
]

#: Sentry interval units we use, largest first, with their length in seconds.
_UNITS: tuple[tuple[str, int], ...] = (("week", 604_800), ("day", 86_400), ("hour", 3_600))
#: Sentry's bounds for ``max_runtime`` (minutes): at least 1, at most 28 days.
_MAX_RUNTIME_MINUTES = 28 * 24 * 60


def checkin_margin_seconds(every: float) -> float:
    """How late a run may start before it counts as missed: a tenth of the interval, at least
    one minute (or the interval itself, for jobs run more often), at most one hour. A daily job
    gets 1 h, so "missing" means 25 h, as in the guide; the generated Missing alert uses the same
    figure (``invariantkit.alerts``' ``cron_missing_after``)."""
    return min(max(every / 10.0, min(every, 60.0)), 3_600.0)


def _schedule(every: float) -> dict[str, Any]:
    seconds = math.ceil(every)
    for unit, length in _UNITS:
        if seconds >= length and seconds % length == 0:
            return {"type": "interval", "value": seconds // length, "unit": unit}
    # Sentry has no "second" unit: round up, so a run is never expected before it is due.
    return {"type": "interval", "value": max(math.ceil(every / 60.0), 1), "unit": "minute"}


def monitor_config(every: float, max_runtime: float) -> dict[str, Any]:
    """The Sentry ``monitor_config`` for a job run every ``every`` seconds that may take up to
    ``max_runtime`` seconds.

    Example:
        >>> from invariantkit.sinks._sentry_crons import monitor_config
        >>> monitor_config(86_400, 300)
        {'schedule': {'type': 'interval', 'value': 1, 'unit': 'day'}, 'checkin_margin': 60, 'max_runtime': 5}
    """
    return {
        "schedule": _schedule(every),
        "checkin_margin": max(math.ceil(checkin_margin_seconds(every) / 60.0), 1),
        "max_runtime": min(max(math.ceil(max_runtime / 60.0), 1), _MAX_RUNTIME_MINUTES),
    }


#: Sentry keeps the first 50 characters of a monitor slug: longer ones would share a monitor.
SLUG_LIMIT = 50


def monitor_slug(name: str, sentry_slug: str | None = None) -> str:
    """The Sentry monitor slug of cron ``name``: ``sentry_slug``, else the name with hyphens;
    over 50 characters, its first 41 then ``-`` and 8 hex digits of a hash of the whole
    (deterministic: the same in every process, two crons never share a monitor)."""
    slug = sentry_slug or name.replace("_", "-")
    if len(slug) <= SLUG_LIMIT:
        return slug
    digest = hashlib.sha256(slug.encode()).hexdigest()[:8]
    return f"{slug[:41]}-{digest}"


_STATUSES = {"in_progress": "in_progress", "ok": "ok"}


def exception_kwargs(record: Record) -> dict[str, Any]:
    """Scope arguments for the exception of a failed run: tags ``cron``, ``monitor_slug``,
    ``trace_id`` (and ``team``, ``domain`` when declared), the run's trace context, the check-in
    id in the ``monitor`` context, and the user."""
    decl = record.declaration
    slug = monitor_slug(record.name, getattr(decl, "sentry_slug", None))
    tags: dict[str, str] = {"cron": record.name, "monitor_slug": slug, "trace_id": record.trace_id}
    for field in ("team", "domain"):
        value = getattr(decl, field, None)
        if value:
            tags[field] = value
    kwargs: dict[str, Any] = {
        "tags": tags,
        "contexts": {
            "trace": {"trace_id": record.trace_id, "span_id": record.span_id},
            "monitor": {"slug": slug, "check_in_id": record.attributes.get("check_in_id")},
        },
    }
    if record.user_id is not None:
        kwargs["user"] = {"id": record.user_id}
    return kwargs


def capture_cron_checkin(
    record: Record, *, capture_exception: bool = True, scrubber: Scrubber | None = None
) -> None:
    """Send the check-in ``record`` describes through the current Sentry client.

    The Sentry sink calls this for ``cron`` records inside a scope bound to its client. For a
    failed run (status ``error``) whose exception is an ``Exception``, the exception is captured
    first (scrubbed like the sink's other exceptions), so the issue and the failed check-in
    arrive together; ``capture_exception=False`` leaves that to the caller.
    """
    import sentry_sdk
    from sentry_sdk.crons import capture_checkin

    decl = record.declaration
    slug = monitor_slug(record.name, getattr(decl, "sentry_slug", None))
    config: Any = None
    every = getattr(decl, "every", None)
    if every:
        config = monitor_config(every, getattr(decl, "max_runtime", None) or every)
    status = _STATUSES.get(record.status, "error")
    exc = record.exception
    if capture_exception and status == "error" and isinstance(exc, Exception):
        from invariantkit.sinks._base import UNBOUND
        from invariantkit.sinks._sentry import _exception_scrubber, first_report

        # Unless an operation inside the run already sent it (one failure, one event).
        if first_report(exc):
            with sentry_sdk.new_scope() as scope:
                # Exception messages and frame variables leave the process: scrub them.
                scope.add_event_processor(
                    _exception_scrubber(scrubber if scrubber is not None else UNBOUND.scrubber)
                )
                scope.capture_exception(exc, **exception_kwargs(record))
    # A forked scope carries the run's trace id into the check-in (the SDK would otherwise use
    # its own propagation context), so the check-in, its error and the run's spans share one id.
    with sentry_sdk.new_scope() as scope:
        scope.set_context("trace", {"trace_id": record.trace_id, "span_id": record.span_id})
        capture_checkin(
            monitor_slug=slug,
            check_in_id=record.attributes.get("check_in_id"),
            status=status,
            duration=record.duration,
            monitor_config=config,
        )
