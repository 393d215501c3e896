"""PostHog: user-facing outcomes, violations and product events, off the call path."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from invariantkit.sinks._base import Bound, SinkUnavailable

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["PostHog", "posthog_configured"]

DEFAULT_HOST = "https://us.i.posthog.com"
#: Options of the client invariantkit builds (and recommends when you build your own): a request
#: never waits more than 2 s, a failed batch is retried once, batches leave every half second.
#: PostHog's own defaults (15 s timeout, 3 retries) keep ``flush()`` 7 s on a host that is down.
CLIENT_DEFAULTS: dict[str, Any] = {"timeout": 2, "max_retries": 1, "flush_interval": 0.5}


def _api_key_from_env() -> str | None:
    return os.environ.get("POSTHOG_PROJECT_API_KEY") or os.environ.get("POSTHOG_API_KEY") or None


def posthog_configured() -> bool:
    """True when a PostHog project API key is in the environment."""
    return _api_key_from_env() is not None


def bounded(fn: Callable[[], object], timeout: float, name: str) -> bool:
    """Run ``fn`` in a daemon thread and wait at most ``timeout`` s. True when it finished.

    PostHog's ``shutdown()`` has no timeout and a host that never answers keeps it for over a
    minute: the caller waits at most ``timeout``; the thread ends when the SDK gives up.
    """
    done = threading.Event()
    error: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    finished = done.wait(max(timeout, 0.0))
    if error:
        raise error[0]
    return finished


class PostHog(Bound):
    """Send user-facing operation outcomes (``billing_<name>_success`` / ``_failure``), violations
    (``invariant_violated``, tags as properties) and ``ik.track()`` events to PostHog.

    Every event carries ``trace_id``; the ``distinct_id`` is the bound user, or, with no user
    bound, the trace id with ``$process_person_profile: false`` (a personless event). Messages are
    built on invariantkit's background worker, never on the caller's thread.

    Events PostHog's client drops (its queue full, a batch that failed after its retries, for
    the client invariantkit builds) are counted in
    ``invariantkit_sink_dropped_total{sink="posthog"}``. When you build the client yourself, pass
    ``timeout=2, max_retries=1`` (see ``CLIENT_DEFAULTS``) so a PostHog outage cannot hold
    ``flush()`` for seconds, and ``on_error=ik.sinks.PostHog.count_failed_batch`` so failed
    batches are counted.

    Args:
        client: a ``posthog.Posthog`` client (never shut down by invariantkit). When None, one is
            built from ``POSTHOG_PROJECT_API_KEY`` (or ``POSTHOG_API_KEY``) and ``POSTHOG_HOST``
            with bounded defaults: 2 s request timeout, one retry, half-second batches.

    Example:
        >>> import invariantkit as ik
        >>> import posthog
        >>> client = posthog.Posthog("phc_example", host="http://127.0.0.1:9", send=False)
        >>> sink = ik.sinks.PostHog(client)
    """

    name: ClassVar[str] = "posthog"
    deferred: ClassVar[bool] = True
    #: At most ``configure(max_events_per_minute=...)`` violations per invariant per minute.
    storm_limited: ClassVar[bool] = True
    #: The bounded options of the client invariantkit builds; pass them to your own client too.
    CLIENT_DEFAULTS: ClassVar[dict[str, Any]] = CLIENT_DEFAULTS

    def __init__(self, client: Any = None) -> None:
        try:
            import posthog
        except ImportError as exc:
            raise SinkUnavailable(
                "invariantkit.sinks.PostHog needs posthog: pip install 'invariantkit[posthog]'"
            ) from exc
        self._owned = client is None
        if client is None:
            api_key = _api_key_from_env()
            if api_key is None:
                raise ValueError(
                    "invariantkit.sinks.PostHog(): pass a posthog.Posthog client or set "
                    "POSTHOG_PROJECT_API_KEY (and POSTHOG_HOST)"
                )
            client = posthog.Posthog(
                api_key,
                host=os.environ.get("POSTHOG_HOST") or DEFAULT_HOST,
                on_error=self.count_failed_batch,
                **CLIENT_DEFAULTS,
            )
        elif not callable(getattr(client, "capture", None)):
            hint = " (pass the API key to posthog.Posthog(...))" if isinstance(client, str) else ""
            raise TypeError(
                "invariantkit.sinks.PostHog(client): expected a posthog.Posthog, got a "
                f"{type(client).__name__}{hint}"
            )
        self.client = client

    @staticmethod
    def count_failed_batch(error: Exception, batch: list[Any]) -> None:
        """An ``on_error`` callback for ``posthog.Posthog``: counts the events of a batch that
        could not be delivered in ``invariantkit_sink_dropped_total{sink="posthog"}``.

        Example:
            >>> import invariantkit as ik
            >>> import posthog
            >>> client = posthog.Posthog("phc_example", host="http://127.0.0.1:9", send=False,
            ...                          on_error=ik.sinks.PostHog.count_failed_batch,
            ...                          timeout=2, max_retries=1)
        """
        from invariantkit._dispatch import count_dropped

        try:
            count = len(batch) if batch else 1
        except Exception:
            count = 1
        count_dropped("posthog", count, "error")

    def _capture(self, event: str, record: Record, properties: dict[str, Any]) -> None:
        properties["trace_id"] = record.trace_id
        if record.user_id is not None:
            distinct_id = record.user_id
        else:
            distinct_id = record.trace_id
            properties["$process_person_profile"] = False
        client = self.client
        queued = client.capture(
            event,
            distinct_id=distinct_id,
            properties=properties,
            timestamp=dt.datetime.fromtimestamp(record.timestamp, tz=dt.timezone.utc),
        )
        if queued is None and not getattr(client, "disabled", False):
            # posthog returns None when its queue is full (or the client was shut down):
            # the event is lost, count it.
            self._context.count_dropped(self.name, 1, "sdk_queue_full")

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "operation":
            decl = record.declaration
            if decl is None or not getattr(decl, "user_facing", False):
                return
            if record.status == "cancelled":
                return  # not an outcome the user saw: no product event
            props: dict[str, Any] = {
                "operation": record.name,
                "domain": decl.domain,  # type: ignore[union-attr]
                "outcome": record.status,
                "duration_ms": round((record.duration or 0.0) * 1000, 3),
            }
            props.update(record.attributes)  # made safe where the record was made
            if record.exception is not None:
                props["error_type"] = type(record.exception).__name__
            self._capture(f"{decl.event_prefix}_{record.status}", record, props)  # type: ignore[union-attr]
        elif kind == "violation":
            decl = record.declaration
            props = dict(record.attributes)
            props["invariant"] = record.name
            props["type"] = getattr(decl, "type", "")
            props["severity"] = getattr(decl, "severity", "")
            if record.test:
                props["test"] = True
            suppressed = record.extra.get("suppressed_count")
            if suppressed:
                props["suppressed_count"] = suppressed
            self._capture("invariant_violated", record, props)
        elif kind == "event":
            self._capture(record.name, record, dict(record.attributes))

    def flush(self, timeout: float) -> bool:
        client = self.client

        def run() -> None:
            try:
                client.flush(timeout_seconds=timeout)
            except TypeError:  # posthog releases before timeout_seconds existed
                client.flush()

        # PostHog's flush returns quietly when its budget runs out: "handed over" means its
        # queues have nothing left unfinished (a batch stuck on a hanging host included).
        return bounded(run, timeout, "invariantkit-posthog-flush") and not _pending(client)

    def shutdown(self, timeout: float) -> bool:
        if not self._owned:
            return self.flush(timeout)
        return bounded(self.client.shutdown, timeout, "invariantkit-posthog-shutdown")


def _pending(client: Any) -> bool:
    """True when PostHog's client still holds events not yet sent (queued or in an upload)."""
    try:
        lanes = getattr(client, "_lanes", None)
        queues = [lane.queue for lane in lanes] if lanes else [getattr(client, "queue", None)]
        return any(getattr(q, "unfinished_tasks", 0) for q in queues if q is not None)
    except Exception:
        return False
