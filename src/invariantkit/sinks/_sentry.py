"""Sentry: failures as exceptions, violations as messages, crons as check-ins."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from invariantkit._sentry_scope import mark_reported
from invariantkit.sinks._base import Bound, SinkUnavailable

if TYPE_CHECKING:
    from invariantkit._record import Record
    from invariantkit._safe import Scrubber

__all__ = ["RECOMMENDED_TRANSPORT_QUEUE_SIZE", "Sentry", "check_transport_queue"]

LOGGER_NAME = "invariantkit"
#: ``transport_queue_size`` to pass to ``sentry_sdk.init``: Sentry's default (100) silently loses
#: the rest of a burst of violations while the backend is slow; this holds as many events as
#: invariantkit's own background queue.
RECOMMENDED_TRANSPORT_QUEUE_SIZE = 10_000
# Sentry's reasons for losing an event on the way out (client reports); others, such as
# "sample_rate" or "before_send", are the application's own choice and are not counted.
_DELIVERY_LOSSES = frozenset(
    {"queue_overflow", "network_error", "send_error", "ratelimit_backoff", "backpressure"}
)
#: Sentry's reasons that mean its transport queue was full; the other losses are errors.
_QUEUE_FULL = frozenset({"queue_overflow", "backpressure"})
_COUNTED_CATEGORIES = frozenset({"error", "default", "monitor"})
_HOOKED = "_invariantkit_counts_losses"


def _count_lost(transport: Any, sink: Any = None) -> None:
    """Wrap ``transport.record_lost_event`` (a public Transport method) so that events Sentry
    loses on the way out are counted in ``invariantkit_sink_dropped_total{sink="sentry"}``,
    through the context ``sink`` is bound to when it loses them."""
    original = transport.record_lost_event
    if getattr(original, _HOOKED, False):
        return

    def record_lost_event(
        reason: str,
        data_category: Any = None,
        item: Any = None,
        *,
        quantity: int = 1,
    ) -> None:
        try:
            category = item.data_category if item is not None else data_category
            if reason in _DELIVERY_LOSSES and category in _COUNTED_CATEGORIES:
                from invariantkit._dispatch import count_dropped

                count = sink._context.count_dropped if sink is not None else count_dropped
                count(
                    "sentry",
                    1 if item is not None else max(int(quantity), 1),
                    "sdk_queue_full" if reason in _QUEUE_FULL else "error",
                )
        except Exception:
            pass
        original(reason, data_category, item, quantity=quantity)

    setattr(record_lost_event, _HOOKED, True)
    transport.record_lost_event = record_lost_event


def check_transport_queue(client: Any = None) -> str | None:
    """A problem with the Sentry client's transport queue, or None when it can hold a burst.

    ``invariantkit verify`` reports it. ``client`` defaults to the active one.

    Example:
        >>> import sentry_sdk
        >>> from invariantkit.sinks._sentry import check_transport_queue
        >>> client = sentry_sdk.Client(dsn="http://key@127.0.0.1:9/1", transport_queue_size=10_000)
        >>> check_transport_queue(client) is None
        True
    """
    import sentry_sdk

    client = client if client is not None else sentry_sdk.get_client()
    if not client.is_active():
        return None
    size = client.options.get("transport_queue_size")
    if isinstance(size, int) and size < RECOMMENDED_TRANSPORT_QUEUE_SIZE:
        return (
            f"Sentry transport_queue_size={size} drops the rest of a burst of more than {size} "
            f'events (counted in invariantkit_sink_dropped_total{{sink="sentry"}}); pass '
            f"transport_queue_size={RECOMMENDED_TRANSPORT_QUEUE_SIZE} to sentry_sdk.init()"
        )
    return None


def _scrub_tree(value: Any, scrubber: Scrubber, depth: int = 0) -> Any:
    from invariantkit._safe import REDACTED

    if isinstance(value, str):
        return scrubber.scrub_text(value)
    if depth > 10:
        return value
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and scrubber.key_is_denied(k)
                else _scrub_tree(v, scrubber, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub_tree(v, scrubber, depth + 1) for v in value]
    return value


def _exception_scrubber(scrubber: Scrubber) -> Any:
    """A scope event processor: scrub exception messages, frame variables and source context
    lines of our events."""

    def process(event: dict[str, Any], hint: Any) -> dict[str, Any]:
        try:
            for exc in (event.get("exception") or {}).get("values") or ():
                if isinstance(exc.get("value"), str):
                    exc["value"] = scrubber.scrub_text(exc["value"])
                for frame in (exc.get("stacktrace") or {}).get("frames") or ():
                    if "vars" in frame:
                        frame["vars"] = _scrub_tree(frame["vars"], scrubber)
                    # Source context: a literal in the line that raised leaves the process too.
                    if isinstance(frame.get("context_line"), str):
                        frame["context_line"] = scrubber.scrub_text(frame["context_line"])
                    for key in ("pre_context", "post_context"):
                        lines = frame.get(key)
                        if isinstance(lines, list):
                            frame[key] = [
                                scrubber.scrub_text(x) if isinstance(x, str) else x for x in lines
                            ]
        except Exception:
            pass
        return event

    return process


class Sentry(Bound):
    """Send failures (``capture_exception``), violations (``capture_message`` at the invariant's
    level), missing constraints and cron check-ins to Sentry, with tags ``trace_id``,
    ``operation``/``invariant``, ``domain``, the user, and the trace context of the record.

    On the caller's thread the sink only forks Sentry's current and isolation scopes (a few
    microseconds, :meth:`prepare`), so the event keeps the user's request, breadcrumbs and tags;
    building and serialising the event (hundreds of microseconds, milliseconds at p99) happens on
    invariantkit's bounded background worker (:meth:`deliver`), which :func:`invariantkit.flush`
    drains. Our own log lines are kept out of Sentry's logging integration so no failure arrives
    twice.

    Args:
        client: a ``sentry_sdk.Client`` to send through; default: the client ``sentry_sdk.init``
            made. invariantkit never closes it.

    Example:
        >>> import invariantkit as ik
        >>> sink = ik.sinks.Sentry()
    """

    name: ClassVar[str] = "sentry"
    deferred: ClassVar[bool] = True
    #: At most ``configure(max_events_per_minute=...)`` violations per invariant per minute.
    storm_limited: ClassVar[bool] = True
    #: Pass ``transport_queue_size=Sentry.RECOMMENDED_TRANSPORT_QUEUE_SIZE`` to ``sentry_sdk.init``.
    RECOMMENDED_TRANSPORT_QUEUE_SIZE: ClassVar[int] = RECOMMENDED_TRANSPORT_QUEUE_SIZE

    def __init__(self, client: Any = None) -> None:
        try:
            import sentry_sdk
            from sentry_sdk.integrations.logging import ignore_logger
        except ImportError as exc:
            raise SinkUnavailable(
                "invariantkit.sinks.Sentry needs sentry-sdk: pip install 'invariantkit[sentry]'"
            ) from exc
        if client is not None and not callable(getattr(client, "capture_event", None)):
            hint = " (pass the DSN to sentry_sdk.init(dsn=...))" if isinstance(client, str) else ""
            raise TypeError(
                "invariantkit.sinks.Sentry(client): expected a sentry_sdk.Client, got a "
                f"{type(client).__name__}{hint}"
            )
        self._sdk = sentry_sdk
        self.client = client
        self._hooked: Any = None
        ignore_logger(LOGGER_NAME)

    # -- helpers --------------------------------------------------------------------------------

    def _scope_kwargs(self, record: Record, tags: dict[str, str]) -> dict[str, Any]:
        from invariantkit._safe import sentry_tags

        tags["trace_id"] = record.trace_id
        kwargs: dict[str, Any] = {
            "tags": sentry_tags(tags),  # keys and values Sentry's ingestion keeps
            "contexts": {"trace": {"trace_id": record.trace_id, "span_id": record.span_id}},
        }
        if record.user_id is not None:
            kwargs["user"] = {"id": record.user_id}
        return kwargs

    def _hook(self) -> None:
        client = self._client()
        transport = getattr(client, "transport", None)
        if transport is not None and transport is not self._hooked:
            self._hooked = transport
            _count_lost(transport, self)

    @contextlib.contextmanager
    def _scope(self) -> Iterator[Any]:
        """A fresh scope (a fork of the current one) that captures through our client: the one
        passed in, else the one ``sentry_sdk.init`` made. Its transport's losses are counted."""
        self._hook()
        with self._sdk.new_scope() as scope:
            if self.client is not None:
                scope.set_client(self.client)
            yield scope

    def _capture(self, method: str, *args: Any, **kwargs: Any) -> None:
        with self._scope() as scope:
            getattr(scope, method)(*args, **kwargs)

    def _capture_exception(self, exc: BaseException, kwargs: dict[str, Any]) -> None:
        # Exception messages and the frames' local variables leave the process too: scrub them
        # like tags (failure path only).
        if not first_report(exc):
            return  # nested operations (charge inside renewal inside the cron): one event
        with self._scope() as scope:
            scope.add_event_processor(_exception_scrubber(self._context.scrubber))
            scope.capture_exception(exc, **kwargs)

    # -- records --------------------------------------------------------------------------------

    def prepare(self, record: Record) -> tuple[Any, Any] | None:
        """On the caller's thread: the forked isolation and current scopes for a record that
        becomes a Sentry event or check-in, else None. invariantkit's dispatcher calls it, then
        :meth:`deliver` on its worker."""
        kind = record.kind
        failed: BaseException | None = None
        if kind == "operation":
            exc = record.exception
            if record.status != "failure" or not isinstance(exc, Exception):
                return None
            if _already_reported(exc):
                return None
            failed = exc
        elif kind == "constraint":
            if record.status != "missing":
                return None
        elif kind not in ("violation", "db_error", "cron"):
            return None
        if not self._client().is_active():
            return None  # no sentry_sdk.init() yet (or a closed client): nothing to send
        if failed is not None:
            mark_reported(failed)  # Sentry's framework integrations drop their copy of it
        # Keep what the caller's scopes know (request, breadcrumbs, tags); capture off the path.
        sdk = self._sdk
        return sdk.get_isolation_scope().fork(), sdk.get_current_scope().fork()

    def deliver(self, record: Record, prepared: tuple[Any, Any]) -> None:
        """On the worker: capture ``record`` inside the scopes :meth:`prepare` forked."""
        from sentry_sdk.scope import use_isolation_scope, use_scope

        isolation, current = prepared
        with use_isolation_scope(isolation), use_scope(current):
            self._capture_record(record)

    def emit(self, record: Record) -> None:
        """Both steps at once, for a caller that is not invariantkit's dispatcher."""
        prepared = self.prepare(record)
        if prepared is not None:
            self.deliver(record, prepared)

    def _capture_record(self, record: Record) -> None:
        kind = record.kind
        if kind == "operation":
            if not isinstance(record.exception, Exception):
                return
            decl = record.declaration
            tags = {"operation": record.name, "domain": getattr(decl, "domain", "billing")}
            tags.update(record.attributes)  # made safe where the record was made
            self._capture_exception(record.exception, self._scope_kwargs(record, tags))
        elif kind == "violation":
            decl = record.declaration
            tags = dict(record.attributes)
            tags["invariant"] = record.name
            if decl is not None:
                tags["invariant_type"] = getattr(decl, "type", "")
                tags["domain"] = getattr(decl, "domain", "billing")
                tags["team"] = getattr(decl, "team", "")
            level = "warning" if record.test else getattr(decl, "level", "error")
            if record.test:
                tags["test"] = "true"
            kwargs = self._scope_kwargs(record, tags)
            if record.extra:
                kwargs["extras"] = dict(record.extra)
            # Test alerts group apart: they must never join (or regress) the real issue.
            kwargs["fingerprint"] = (
                ["invariantkit", "test", record.name]
                if record.test
                else ["invariantkit", record.name]
            )
            if "entity_key" in record.attributes:  # an at-rest check: one issue per entity
                _check_fields(record, kwargs)
            self._capture("capture_message", record.name, level, **kwargs)
        elif kind == "db_error":
            if record.exception is None:
                return
            tags = {"operation": record.name, "domain": "billing"}
            tags.update(record.attributes)  # made safe where the record was made
            self._capture_exception(record.exception, self._scope_kwargs(record, tags))
        elif kind == "constraint":
            if record.status != "missing":
                return
            tags = {"constraint": record.name, "domain": "billing"}
            kwargs = self._scope_kwargs(record, tags)
            kwargs["fingerprint"] = ["invariantkit", "constraint", record.name]
            self._capture(
                "capture_message", f"Database constraint missing: {record.name}", "error", **kwargs
            )
        elif kind == "cron":
            self._checkin(record)

    @staticmethod
    def recommended_options() -> dict[str, Any]:
        """Options for ``sentry_sdk.init`` that keep a burst of violations: a transport queue
        that holds it (:data:`RECOMMENDED_TRANSPORT_QUEUE_SIZE`) and every error kept
        (``sample_rate=1.0``).

        Example:
            >>> import invariantkit as ik
            >>> ik.sinks.Sentry.recommended_options()["transport_queue_size"]
            10000
        """
        return {"transport_queue_size": RECOMMENDED_TRANSPORT_QUEUE_SIZE, "sample_rate": 1.0}

    def _checkin(self, record: Record) -> None:
        from invariantkit.sinks._sentry_crons import capture_cron_checkin

        with self._scope():
            capture_cron_checkin(record, scrubber=self._context.scrubber)

    def _client(self) -> Any:
        return self.client if self.client is not None else self._sdk.get_client()

    def flush(self, timeout: float) -> bool:
        # invariantkit's worker was drained before this is called; hand the events to Sentry.
        client = self._client()
        if client.is_active():
            client.flush(timeout=max(timeout, 0.0))
        return True

    def shutdown(self, timeout: float) -> bool:
        # The client belongs to the user: flush it, never close it.
        return self.flush(timeout)


def _already_reported(exc: BaseException) -> bool:
    """True for exceptions whose report was sent already: an ``ik.DbError`` (``idempotent_write``
    sent the database error it wraps, tagged with the write's operation) and an
    ``ik.InvariantViolation`` (enforce mode: the violation went out as its invariant's message).
    Sending them again would make two events of one failure. (Known by name: a sink does not
    import the public API layer above it.)"""
    return any(
        f"{cls.__module__}.{cls.__qualname__}" in _REPORTED_ELSEWHERE for cls in type(exc).__mro__
    )


_REPORTED_ELSEWHERE = frozenset(
    {
        "invariantkit.DbError",
        "invariantkit._idempotency.DbError",
        "invariantkit.InvariantViolation",
        "invariantkit._invariant.InvariantViolation",
    }
)


#: The exceptions sent last (the worker sends them one at a time, in order).
_REPORTED: collections.deque[BaseException] = collections.deque(maxlen=16)
_REPORTED_LOCK = threading.Lock()


def first_report(exc: BaseException) -> bool:
    """Remember ``exc`` as sent to Sentry; False when it already was.

    An exception that fails nested operations (a charge inside a renewal inside a cron run) is
    one failure: the innermost operation, which knows most, reports it, the others only count it;
    their records follow it closely on the worker. Exceptions support no weak references and are
    the user's objects, never changed: the last few sent are held (by identity) instead.
    """
    with _REPORTED_LOCK:
        if any(seen is exc for seen in _REPORTED):
            return False
        _REPORTED.append(exc)
    return True


def _check_fields(record: Record, kwargs: dict[str, Any]) -> None:
    """A violation found by an at-rest check (``ik.run_checks``): the fingerprint names the check
    and the entity (one entity, one Sentry issue, whatever the run), and the writer's trace id,
    when the row carried one, becomes context ``writer_trace``."""
    attributes = record.attributes
    check = attributes.get("check")
    if record.test or not isinstance(check, str):
        return
    kwargs["fingerprint"] = [
        "invariantkit",
        record.name,
        "check",
        check,
        str(attributes.get("entity_key")),
    ]
    writer = attributes.get("writer_trace_id")
    if isinstance(writer, str):
        contexts = kwargs.setdefault("contexts", {})
        contexts["writer_trace"] = {"trace_id": writer}
