"""JSON log lines through the stdlib ``logging`` module (Loki, CloudWatch, any log shipper)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from invariantkit._safe import safe_str
from invariantkit.sinks._base import UNBOUND, Bound, SinkContext

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["JsonFormatter", "JsonLogs", "handle_line"]

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
# ``encode`` runs CPython's C encoder; allow_nan=False keeps the line strict JSON (log shippers
# reject NaN and Infinity): a line it refuses is encoded again field by field (``encode_line``).
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_UTC = dt.timezone.utc
_fromtimestamp = dt.datetime.fromtimestamp


def record_fields(
    record: Record, level: int, event: str, context: SinkContext = UNBOUND
) -> dict[str, Any]:
    """The JSON fields of one log line for ``record``, with ``context``'s service and
    environment (the configuration that bound the sink)."""
    config = context
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


def make_line_record(
    logger: logging.Logger, level: int, line: str, fields: dict[str, Any], record: Record
) -> logging.LogRecord:
    """The stdlib log record of one line: what ``logger.makeRecord`` returns, with the time of
    ``record`` and ``fields`` as ``invariantkit``. With the stdlib's own record factory and
    ``makeRecord``, the fields that are the same for every line this thread writes (thread,
    process, source location) are copied from a record made once, not computed again for each
    line (``LogRecord.__init__`` was a third of the line's cost)."""
    created = record.timestamp
    if (
        logging.getLogRecordFactory() is not _LogRecord
        or type(logger).makeRecord is not _make_record
    ):
        log_record = logger.makeRecord(
            logger.name, level, "invariantkit", 0, line, (), None, extra={"invariantkit": fields}
        )
        log_record.created = created
        log_record.msecs = (created % 1) * 1000
        return log_record
    key = _get_ident()
    template = _templates.get(key)
    if template is None:
        if len(_templates) > 64:  # threads come and go: keep this bounded
            _templates.clear()
        template = _templates[key] = _LogRecord(
            "invariantkit", logging.INFO, "invariantkit", 0, "", (), None
        ).__dict__
    log_record = _new_record(_LogRecord)
    values = log_record.__dict__
    values.update(template)
    values["name"] = logger.name
    values["msg"] = line
    values["levelno"] = level
    values["levelname"] = _level_name(level)
    values["created"] = created
    values["msecs"] = (created % 1) * 1000
    values["relativeCreated"] = (created - _start_time) * 1000
    values["invariantkit"] = fields
    return log_record


_LogRecord = logging.LogRecord
_make_record = logging.Logger.makeRecord
_new_record = object.__new__
_level_name = logging.getLevelName
_start_time: float = getattr(logging, "_startTime", 0.0)
_get_ident = threading.get_ident
#: Per thread: the ``__dict__`` of one stdlib record made on that thread (forgotten in a forked
#: child, whose process id differs).
_templates: dict[int, dict[str, Any]] = {}
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_templates.clear)


def handle_line(logger: logging.Logger, record: logging.LogRecord) -> None:
    """``logger.handle(record)``, as the stdlib does it (filters, then the handlers of the
    logger and its parents while ``propagate``, ``lastResort`` when there are none), without
    the ``Logger.callHandlers`` that SDKs patch: Sentry's logging integration would turn our
    lines into breadcrumbs and events a second time, and costs each line as much as the line."""
    if type(logger).handle is not logging.Logger.handle:  # a logger with its own handle()
        logger.handle(record)
        return
    if logger.disabled or not logger.filter(record):
        return
    found = 0
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            found += 1
            if record.levelno >= handler.level:
                handler.handle(record)
        if not current.propagate:
            break
        current = current.parent
    if not found:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)


def encode_line(fields: dict[str, Any]) -> str:
    """``fields`` as one strict JSON document, never failing: one C-encoder call in the common
    case; else each field alone, with what it cannot encode made strict (NaN and Infinity,
    integers too long to print, objects whose ``str()`` raises become strings)."""
    try:
        return _ENCODER.encode(fields)
    except Exception:
        pass
    parts = []
    for key, value in fields.items():
        try:
            text = _ENCODER.encode(value)
        except Exception:
            try:
                text = _ENCODER.encode(_strict(value, 0))
            except Exception:
                text = _ENCODER.encode("<unencodable>")
        parts.append(f"{_ENCODER.encode(str(key))}:{text}")
    return "{" + ",".join(parts) + "}"


def _strict(value: Any, depth: int) -> Any:
    """``value`` with everything strict JSON cannot hold turned into a string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            str(value)
        except ValueError:  # more digits than sys.get_int_max_str_digits() allows
            return f"<int of {value.bit_length()} bits>"
        return value
    if value is None or isinstance(value, (str, bool)):
        return value
    if depth < 20 and isinstance(value, dict):
        return {safe_str(k, 200): _strict(v, depth + 1) for k, v in value.items()}
    if depth < 20 and isinstance(value, (list, tuple)):
        return [_strict(v, depth + 1) for v in value]
    return safe_str(value)


class JsonLogs(Bound):
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
        fields = record_fields(record, level, event, self._context)
        logger = self.logger
        handle_line(logger, make_line_record(logger, level, encode_line(fields), fields, record))

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
