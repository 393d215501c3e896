"""JSON log lines through the stdlib ``logging`` module (Loki, CloudWatch, any log shipper)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar, cast

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
# The same encoder made once: ``_ENCODER.encode`` builds CPython's C encoder object again for
# every document (a third of its cost for a line). No circular-reference markers: a record's
# fields are copies, and a document the C encoder refuses (RecursionError included) is encoded
# field by field by ``encode_line``. None where the C accelerator is missing (PyPy).
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER: Any = (
    _c_make_encoder(None, str, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    if _c_make_encoder is not None
    else None
)
_UTC = dt.timezone.utc
_fromtimestamp = dt.datetime.fromtimestamp
_modf = math.modf
#: The ISO 8601 text of the last whole second a line was written in, ``(second, text)``: lines
#: come in bursts, and ``datetime.isoformat()`` was a tenth of a line's cost.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def _timestamp(created: float) -> str:
    """``created`` (Unix seconds) in UTC, ISO 8601 with microseconds: what
    ``datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="microseconds")``
    returns."""
    global _last_second
    fraction, whole = _modf(created)  # datetime's own rounding: the fraction, half to even
    second, micros = int(whole), round(fraction * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:  # before 1970
        second, micros = second - 1, micros + 1_000_000
    cached = _last_second
    if cached[0] != second:
        text = _fromtimestamp(second, _UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _last_second = (second, text)
    return f"{cached[1]}.{micros:06d}+00:00"


def record_fields(
    record: Record, level: int, event: str, context: SinkContext = UNBOUND
) -> dict[str, Any]:
    """The JSON fields of one log line for ``record``, with ``context``'s service and
    environment (the configuration that bound the sink)."""
    config = context
    fields: dict[str, Any] = {
        "timestamp": _timestamp(record.timestamp),
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


_encode_str = json.encoder.encode_basestring  # CPython's C function: a str as a JSON string


def _text_or_null(value: object) -> str:
    """A JSON string, or ``null`` for None; anything else raises (the caller falls back)."""
    return "null" if value is None else _encode_str(value)  # type: ignore[arg-type]


def _nested(value: Any) -> str:
    """A record's attributes or extra (a mapping of made-safe values) as a JSON object; raises
    what the encoder refuses (the caller falls back)."""
    return "".join(_C_ENCODER(value if type(value) is dict else dict(value), 0))


def quick_line(
    record: Record, level: int, event: str, context: SinkContext = UNBOUND
) -> str | None:
    """The JSON line of an operation's start or end (no exception) or of a violation, written
    out directly: the text ``encode_line(record_fields(...))`` makes, without building the
    fields (the dict and the generic encoder were most of a line's cost). None for any other
    record, and for any value it does not expect (a non-string name, a NaN duration, tags the
    encoder refuses): the caller then takes the generic path, which handles them all."""
    kind = record.kind
    if record.exception is not None or _C_ENCODER is None:
        return None
    try:
        head = (
            f'{{"timestamp":"{_timestamp(record.timestamp)}","level":"{_LEVEL_NAMES[level]}",'
            f'"logger":"invariantkit","event":{_encode_str(event)},'
            f'"service":{_encode_str(context.service)},'
            f'"environment":{_encode_str(context.environment)},'
            f'"trace_id":{_encode_str(record.trace_id)},"span_id":{_encode_str(record.span_id)},'
            f'"user_id":{_text_or_null(record.user_id)}'
        )
        decl = record.declaration
        if kind == "operation":
            duration = round((record.duration or 0.0) * 1000, 3)
            if type(duration) is not float or duration - duration != 0.0:  # NaN, infinity
                return None
            body = (
                f',"operation":{_encode_str(record.name)},'
                f'"domain":{_encode_str(getattr(decl, "domain", "billing"))},'
                f'"outcome":{_encode_str(record.status)},"duration_ms":{duration!r}'
            )
            nested = "attributes"
        elif kind == "violation":
            body = (
                f',"invariant":{_encode_str(record.name)},'
                f'"type":{_text_or_null(getattr(decl, "type", None))},'
                f'"severity":{_text_or_null(getattr(decl, "severity", None))},'
                f'"team":{_text_or_null(getattr(decl, "team", None))}'
            )
            if record.test:
                body += ',"test":true'
            nested = "tags"
        elif kind == "operation_start":
            body = (
                f',"operation":{_encode_str(record.name)},'
                f'"domain":{_encode_str(getattr(decl, "domain", "billing"))}'
            )
            nested = "attributes"
        else:
            return None
        if record.attributes:
            body += f',"{nested}":{_nested(record.attributes)}'
        if record.extra:
            body += f',"extra":{_nested(record.extra)}'
    except Exception:
        return None
    return f"{head}{body}}}"


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


def _writes_lines(handler: logging.Handler) -> bool:
    """True for a handler whose ``handle(record)`` of a line only writes the line and flushes:
    the stdlib's own stream and file handlers (not a subclass), no filters, formatted by
    :class:`JsonFormatter` (which writes the line unchanged), stream open."""
    return (
        type(handler) in _LINE_HANDLERS
        and not handler.filters
        and type(handler.formatter) is JsonFormatter
        and getattr(handler, "stream", None) is not None
    )


def _routes(
    logger: logging.Logger,
) -> tuple[list[logging.StreamHandler[Any]], list[logging.Handler]] | None:
    """The handlers a line reaches, as ``Logger.handle()`` finds them (the logger's, then its
    parents' while ``propagate``): those that only write lines, and the others. None when the
    stdlib's own path must run for each line: a logger with filters or its own ``handle()``,
    or no handler at all (``logging.lastResort``)."""
    if type(logger).handle is not logging.Logger.handle or logger.filters or logger.disabled:
        return None
    writers: list[logging.StreamHandler[Any]] = []
    others: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if _writes_lines(handler):
                writers.append(cast("logging.StreamHandler[Any]", handler))
            else:
                others.append(handler)
        if not current.propagate:
            break
        current = current.parent
    if not writers and not others:
        return None
    return writers, others


def _write_lines(
    handler: logging.StreamHandler[Any], lines: list[str], logger: logging.Logger
) -> None:
    """What ``handler.emit()`` does for each line, for all of them at once: one write, one
    flush, under the handler's lock (the lines of other threads never cut into one); an
    error goes to ``handler.handleError``, as the stdlib's does."""
    terminator = handler.terminator
    text = terminator.join(lines) + terminator
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.flush()
    except RecursionError:  # as the stdlib's emit(): never swallowed
        raise
    except Exception:
        handler.handleError(
            logging.LogRecord(logger.name, logging.ERROR, "invariantkit", 0, lines[0], (), None)
        )
    finally:
        handler.release()


_LINE_HANDLERS = (logging.StreamHandler, logging.FileHandler)


def encode_line(fields: dict[str, Any]) -> str:
    """``fields`` as one strict JSON document, never failing: one C-encoder call in the common
    case; else each field alone, with what it cannot encode made strict (NaN and Infinity,
    integers too long to print, objects whose ``str()`` raises become strings)."""
    try:
        if _C_ENCODER is not None:
            return "".join(_C_ENCODER(fields, 0))
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
        self.emit_batch([record])

    def emit_batch(self, records: list[Record]) -> None:
        """The lines of ``records``, in order. A handler that only writes lines (a
        ``logging.StreamHandler`` or ``FileHandler`` with :class:`JsonFormatter` and no filters)
        gets them all in one write and one flush under its lock, the bytes ``handle()`` would
        have written; any other handler gets one ``LogRecord`` per line through ``handle()``.
        A record that cannot be made into a line is counted as dropped; the others are
        written."""
        logger = self.logger
        context = self._context
        routes = _routes(logger)
        writers, others = routes if routes is not None else ([], [])
        # Only line writers: each line is written out directly, with no fields dict and no
        # LogRecord (the stdlib's LogRecord was a third of a line's cost).
        direct = routes is not None and not others
        pending: list[list[str]] = [[] for _ in writers]
        enabled = logger.isEnabledFor
        for record in records:
            try:
                level, event = _level_and_event(record)
                if not event or not enabled(level):
                    continue
                fields: dict[str, Any] | None = None
                if direct:
                    line = quick_line(record, level, event, context) or encode_line(
                        record_fields(record, level, event, context)
                    )
                else:
                    fields = record_fields(record, level, event, context)
                    line = encode_line(fields)
                for handler, lines in zip(writers, pending, strict=True):
                    if level >= handler.level:
                        lines.append(line)
                if fields is None:
                    continue
                log_record = make_line_record(logger, level, line, fields, record)
                if routes is None:  # the stdlib's own way, line by line
                    handle_line(logger, log_record)
                    continue
                for other in others:
                    if level >= other.level:
                        other.handle(log_record)
            except Exception:
                context.count_dropped(self.name, 1, "error")
        for handler, lines in zip(writers, pending, strict=True):
            if lines:
                _write_lines(handler, lines, logger)

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
