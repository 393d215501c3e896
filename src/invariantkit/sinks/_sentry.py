"""Sentry: failures as exceptions, violations as messages, crons as check-ins."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from invariantkit.sinks._base import SinkUnavailable

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["Sentry", "sentry_active"]

LOGGER_NAME = "invariantkit"


def sentry_active() -> bool:
    """True when ``sentry_sdk`` is imported and has an active client (``sentry_sdk.init`` ran)."""
    import sys

    if "sentry_sdk" not in sys.modules:
        return False
    import sentry_sdk

    return bool(sentry_sdk.get_client().is_active())


class Sentry:
    """Send failures (``capture_exception``), violations (``capture_message`` at the invariant's
    level), missing constraints and cron check-ins to Sentry, with tags ``trace_id``,
    ``operation``/``invariant``, ``domain``, the user, and the trace context of the record.

    Captures run on the caller's thread: they keep the user's scope (request, breadcrumbs) and the
    SDK only enqueues, it never waits on the network. Our own log lines are kept out of Sentry's
    logging integration so no failure arrives twice.

    Args:
        client: a ``sentry_sdk.Client`` to send through; default: the client ``sentry_sdk.init``
            made. invariantkit never closes it.

    Example:
        >>> import invariantkit as ik
        >>> sink = ik.sinks.Sentry()
    """

    name: ClassVar[str] = "sentry"
    deferred: ClassVar[bool] = False

    def __init__(self, client: Any = None) -> None:
        try:
            import sentry_sdk
            from sentry_sdk.integrations.logging import ignore_logger
        except ImportError as exc:
            raise SinkUnavailable(
                "invariantkit.sinks.Sentry needs sentry-sdk: pip install 'invariantkit[sentry]'"
            ) from exc
        self._sdk = sentry_sdk
        self.client = client
        ignore_logger(LOGGER_NAME)

    # -- helpers --------------------------------------------------------------------------------

    def _scope_kwargs(self, record: Record, tags: dict[str, str]) -> dict[str, Any]:
        tags["trace_id"] = record.trace_id
        kwargs: dict[str, Any] = {
            "tags": tags,
            "contexts": {"trace": {"trace_id": record.trace_id, "span_id": record.span_id}},
        }
        if record.user_id is not None:
            kwargs["user"] = {"id": record.user_id}
        return kwargs

    def _capture(self, method: str, *args: Any, **kwargs: Any) -> None:
        sdk = self._sdk
        if self.client is None:
            getattr(sdk, method)(*args, **kwargs)
            return
        with sdk.new_scope() as scope:
            scope.set_client(self.client)
            getattr(scope, method)(*args, **kwargs)

    # -- records --------------------------------------------------------------------------------

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "operation":
            if record.status != "failure" or not isinstance(record.exception, Exception):
                return
            decl = record.declaration
            tags = {"operation": record.name, "domain": getattr(decl, "domain", "billing")}
            tags.update(record.attributes)
            self._capture("capture_exception", record.exception, **self._scope_kwargs(record, tags))
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
            kwargs["fingerprint"] = ["invariantkit", record.name]
            self._capture("capture_message", record.name, level, **kwargs)
        elif kind == "db_error":
            if record.exception is None:
                return
            tags = {"operation": record.name, "domain": "billing"}
            tags.update(record.attributes)
            self._capture("capture_exception", record.exception, **self._scope_kwargs(record, tags))
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

    def _checkin(self, record: Record) -> None:
        from invariantkit.sinks._sentry_crons import capture_cron_checkin

        if self.client is None:
            capture_cron_checkin(record)
            return
        with self._sdk.new_scope() as scope:
            scope.set_client(self.client)
            capture_cron_checkin(record)

    def _client(self) -> Any:
        return self.client if self.client is not None else self._sdk.get_client()

    def flush(self, timeout: float) -> bool:
        client = self._client()
        if not client.is_active():
            return True
        client.flush(timeout=max(timeout, 0.0))
        return True

    def shutdown(self, timeout: float) -> bool:
        # The client belongs to the user: flush it, never close it.
        return self.flush(timeout)
