"""The one immutable record of what happened, which every sink consumes."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from invariantkit._catalog import Declaration

__all__ = ["EMPTY", "Kind", "Record"]

EMPTY: Mapping[str, Any] = MappingProxyType({})

Kind = Literal[
    "declare",  # a declaration entered the catalog (sinks create metric children at zero)
    "operation_start",  # an operation began (debug log line only)
    "operation",  # an operation ended: status "success" or "failure"
    "violation",  # an invariant did not hold: status "violated"
    "event",  # a product event from ik.track()
    "retry",  # an idempotent write hit its unique constraint: status "duplicate"
    "db_error",  # an idempotent write failed for another database reason: status "error"
    "cron",  # a cron check-in: status "in_progress", "ok" or "error"
    "constraint",  # a constraint check: status "present" or "missing"
    "check",  # an at-rest check ran: status "ok", "violations" or "error" (ik.run_checks)
    "sink_error",  # a sink raised: name is the sink's name (metrics sinks count it)
    "sink_dropped",  # a sink dropped signals: name is the sink, attributes["count"]
]


class Record(NamedTuple):
    """What happened, once, with its correlation.

    A ``NamedTuple``: immutable and cheap to build on the hot path. Every sink receives the same
    record; none may mutate it. ``attributes`` holds tags or product-event properties (already
    scrubbed and made safe), ``extra`` the free-form context (Sentry ``extra``).

    Fields: ``kind`` (see :data:`Kind`), ``name`` (operation, invariant, event, cron...),
    ``status``, ``trace_id`` (32 hex), ``span_id`` (16 hex), ``user_id``, ``timestamp`` (epoch
    seconds), ``duration`` (seconds), ``attributes``, ``extra``, ``exception``, ``declaration``
    (the catalog entry) and ``test`` (alert test mode).

    Example:
        >>> import invariantkit as ik
        >>> sink = ik.sinks.Memory()
        >>> _ = ik.configure(sinks=[sink])
        >>> ik.track("subscription_started", tier="plus")
        >>> record = sink.records[-1]
        >>> record.kind, record.name, record.attributes["tier"], len(record.trace_id)
        ('event', 'subscription_started', 'plus', 32)
    """

    kind: Kind
    name: str
    status: str
    trace_id: str
    span_id: str
    user_id: str | None
    timestamp: float
    duration: float | None = None
    attributes: Mapping[str, Any] = EMPTY
    extra: Mapping[str, Any] = EMPTY
    exception: BaseException | None = None
    declaration: Declaration | None = None
    test: bool = False
