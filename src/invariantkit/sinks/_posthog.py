"""PostHog: user-facing outcomes, violations and product events, off the call path."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from invariantkit.sinks._base import SinkUnavailable

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["PostHog", "posthog_configured"]

DEFAULT_HOST = "https://us.i.posthog.com"


def _api_key_from_env() -> str | None:
    return os.environ.get("POSTHOG_PROJECT_API_KEY") or os.environ.get("POSTHOG_API_KEY") or None


def posthog_configured() -> bool:
    """True when a PostHog project API key is in the environment."""
    return _api_key_from_env() is not None


def bounded(fn: Callable[[], object], timeout: float, name: str) -> bool:
    """Run ``fn`` in a daemon thread and wait at most ``timeout`` s. True when it finished."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    return done.wait(max(timeout, 0.0))


class PostHog:
    """Send user-facing operation outcomes (``billing_<name>_success`` / ``_failure``), violations
    (``invariant_violated``, tags as properties) and ``ik.track()`` events to PostHog.

    Every event carries ``trace_id``; the ``distinct_id`` is the bound user, or, with no user
    bound, the trace id with ``$process_person_profile: false`` (a personless event). Messages are
    built on invariantkit's background worker, never on the caller's thread.

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
                timeout=2,
                max_retries=1,
                flush_interval=0.5,
                on_error=self._on_error,
            )
        elif not callable(getattr(client, "capture", None)):
            raise TypeError(
                f"invariantkit.sinks.PostHog(client): expected a posthog.Posthog, got {client!r}"
            )
        self.client = client

    def _on_error(self, error: Exception, batch: list[Any]) -> None:
        from invariantkit._config import count_dropped

        count_dropped(self.name, len(batch) if batch else 1)

    def _capture(self, event: str, record: Record, properties: dict[str, Any]) -> None:
        properties["trace_id"] = record.trace_id
        if record.user_id is not None:
            distinct_id = record.user_id
        else:
            distinct_id = record.trace_id
            properties["$process_person_profile"] = False
        self.client.capture(
            event,
            distinct_id=distinct_id,
            properties=properties,
            timestamp=dt.datetime.fromtimestamp(record.timestamp, tz=dt.timezone.utc),
        )

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "operation":
            decl = record.declaration
            if decl is None or not getattr(decl, "user_facing", False):
                return
            props: dict[str, Any] = {
                "operation": record.name,
                "domain": decl.domain,  # type: ignore[union-attr]
                "outcome": record.status,
                "duration_ms": round((record.duration or 0.0) * 1000, 3),
            }
            props.update(record.attributes)
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

        return bounded(run, timeout, "invariantkit-posthog-flush")

    def shutdown(self, timeout: float) -> bool:
        if not self._owned:
            return self.flush(timeout)
        return bounded(self.client.shutdown, timeout, "invariantkit-posthog-shutdown")
