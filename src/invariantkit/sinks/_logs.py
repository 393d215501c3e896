"""JSON log lines through the stdlib ``logging`` module (Loki, CloudWatch, any log shipper)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from invariantkit._config import Config
    from invariantkit._record import Record

__all__ = ["JsonFormatter", "JsonLogs"]

_EVENTS = {
    "operation_start": ("operation.start", logging.DEBUG),
    "event": ("product.event", logging.INFO),
    "retry": ("idempotent.retry", logging.INFO),
    "db_error": ("idempotent.db_error", logging.ERROR),
}


def _level_and_event(record: Record) -> tuple[int, str]:
    kind = record.kind
    if kind == "operation":
        if record.status in ("success", "cancelled"):
            return logging.INFO, "operation.end"
        return logging.ERROR, "operation.end"
    if kind == "violation":
        return (logging.WARNING if record.test else logging.CRITICAL), "invariant.violated"
    if kind == "cron":
        return (logging.ERROR if record.status == "error" else logging.INFO), "cron.checkin"
    if kind == "constraint":
        return (logging.ERROR if record.status == "missing" else logging.INFO), "constraint.checked"
    event, level = _EVENTS.get(kind, ("", 0))
    return level, event


_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
# One encoder for every line: json.dumps() with options builds a new encoder on each call.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"))
_UTC = dt.timezone.utc
_fromtimestamp = dt.datetime.fromtimestamp
_FALLBACK: list[Config] = []


_STATE: list[Any] = []  # invariantkit._config.STATE, bound on first use (import cycle)


def _active_config() -> Config:
    # Read, never configure: this runs on the background worker, also while shutdown() drains it.
    if not _STATE:
        from invariantkit._config import STATE

        _STATE.append(STATE)
    state = _STATE[0]
    config: Config | None = state.config or state.last_config
    if config is not None:
        return config
    if not _FALLBACK:
        from invariantkit._config import Config

        _FALLBACK.append(
            Config(
                service=os.environ.get("OTEL_SERVICE_NAME") or "unknown_service",
                environment=os.environ.get("INVARIANTKIT_ENVIRONMENT") or "production",
            )
        )
    return _FALLBACK[0]


def record_fields(record: Record, level: int, event: str) -> dict[str, Any]:
    """The JSON fields of one log line for ``record``."""
    config = _active_config()
    fields: dict[str, Any] = {
        "timestamp": _fromtimestamp(record.timestamp, _UTC).isoformat(),
        "level": _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower(),
        "logger": "invariantkit",
        "event": event,
        "service": config.service,
        "environment": config.environment,
        "trace_id": record.trace_id,
        "span_id": record.span_id,
        "user_id": record.user_id,
    }
    kind = record.kind
    decl = record.declaration
    if kind in ("operation", "operation_start"):
        fields["operation"] = record.name
        fields["domain"] = getattr(decl, "domain", "billing")
        if kind == "operation":
            fields["outcome"] = record.status
            fields["duration_ms"] = round((record.duration or 0.0) * 1000, 3)
    elif kind == "violation":
        fields["invariant"] = record.name
        fields["type"] = getattr(decl, "type", None)
        fields["severity"] = getattr(decl, "severity", None)
        fields["team"] = getattr(decl, "team", None)
        if record.test:
            fields["test"] = True
    elif kind in ("retry", "db_error"):
        fields["operation"] = record.name
    elif kind == "cron":
        fields["cron"] = record.name
        fields["status"] = record.status
        if record.duration is not None:
            fields["duration_ms"] = round(record.duration * 1000, 3)
    elif kind == "constraint":
        fields["constraint"] = record.name
        fields["status"] = record.status
    else:
        fields["name"] = record.name
    if record.attributes:
        fields["tags" if kind == "violation" else "attributes"] = dict(record.attributes)
    if record.extra:
        fields["extra"] = dict(record.extra)
    if record.exception is not None:
        from invariantkit._safe import scrubbed_str

        fields["error_type"] = type(record.exception).__name__
        fields["error_message"] = scrubbed_str(record.exception, config.scrubber, 1000)
    return fields


class JsonLogs:
    """One JSON log line per signal on the stdlib logger ``logger`` (default ``invariantkit``).

    Operation start at DEBUG, end at INFO (ERROR on failure), violations at CRITICAL, each with
    ``trace_id``, ``span_id`` and ``user_id``. The message *is* the JSON document, so any handler
    writes a JSON line; the fields are also on the log record as ``record.invariantkit`` for
    structured handlers. Lines are formatted on invariantkit's background worker. invariantkit adds
    no handler: configure logging as your service does.

    Example:
        >>> import invariantkit as ik
        >>> sink = ik.sinks.JsonLogs(logger="billing.signals")
    """

    name: ClassVar[str] = "json_logs"
    deferred: ClassVar[bool] = True

    def __init__(self, logger: str | logging.Logger = "invariantkit") -> None:
        if isinstance(logger, str):
            self.logger = logging.getLogger(logger)
        elif isinstance(logger, logging.Logger):
            self.logger = logger
        else:
            raise TypeError(
                f"invariantkit.sinks.JsonLogs(logger=...) must be a logger name or a "
                f"logging.Logger, not {type(logger).__name__}"
            )

    def wants_starts(self) -> bool:
        """Operation starts are logged at DEBUG: only worth a record when that level is on."""
        return self.logger.isEnabledFor(logging.DEBUG)

    def emit(self, record: Record) -> None:
        level, event = _level_and_event(record)
        if not event or not self.logger.isEnabledFor(level):
            return
        fields = record_fields(record, level, event)
        line = _ENCODER.encode(fields)
        log_record = self.logger.makeRecord(
            self.logger.name,
            level,
            "invariantkit",
            0,
            line,
            (),
            None,
            extra={"invariantkit": fields},
        )
        log_record.created = record.timestamp
        log_record.msecs = (record.timestamp % 1) * 1000
        self.logger.handle(log_record)

    def flush(self, timeout: float) -> bool:
        for handler in self.logger.handlers:
            try:
                handler.flush()
            except Exception:
                return False
        return True

    def shutdown(self, timeout: float) -> bool:
        return self.flush(timeout)


class JsonFormatter(logging.Formatter):
    """A formatter that writes the JSON document invariantkit put in the message, unchanged, and
    renders any other record as a JSON line too.

    Example:
        >>> import logging, invariantkit as ik
        >>> handler = logging.StreamHandler()
        >>> handler.setFormatter(ik.JsonFormatter())
    """

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "invariantkit", None) is not None:
            return record.getMessage()
        fields = {
            "timestamp": dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str, ensure_ascii=False)
