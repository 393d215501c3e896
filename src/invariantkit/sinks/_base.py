"""The Sink protocol: the one abstraction every backend implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from invariantkit._dispatch import SinkContext

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["UNBOUND", "Bound", "Sink", "SinkContext", "SinkUnavailable"]


class SinkUnavailable(ImportError):
    """A sink was named in ``configure(sinks=...)`` but its SDK is not installed.

    Auto-detected sinks whose SDK is missing are skipped silently instead.

    Example:
        >>> import invariantkit as ik
        >>> try:
        ...     sink = ik.sinks.Sentry()
        ... except ik.sinks.SinkUnavailable as exc:  # sentry-sdk is not installed
        ...     print(exc)
    """


#: The context of a sink no configuration has bound (defaults; drops still counted).
UNBOUND = SinkContext()


class Bound:
    """Base of invariantkit's own sinks: ``bind(context)`` keeps the context the configuration
    gives; until then ``_context`` is :data:`UNBOUND`."""

    _context: SinkContext = UNBOUND

    def bind(self, context: SinkContext) -> None:
        """Called by each configuration that uses this sink, before any record."""
        self._context = context


@runtime_checkable
class Sink(Protocol):
    """**Protocol:** a backend that receives every :class:`~invariantkit.Record`.

    - ``name``: short, stable, used as the ``sink`` label of
      ``invariantkit_sink_errors_total`` and ``invariantkit_sink_dropped_total``.
    - ``deferred``: False runs ``emit`` on the caller's thread before the decorated call returns
      (spans, metrics); True hands records to invariantkit's bounded background worker (log
      formatting, PostHog message building, Sentry's capture).
    - optional, deferred sinks only: ``prepare(record)`` runs on the caller's thread and returns
      what must be read there (the Sentry sink forks Sentry's scopes) or None to skip the
      record; then ``deliver(record, prepared)`` runs on the worker instead of ``emit``.
    - optional: ``wants_starts()``: True when the sink wants an ``operation_start`` record as
      each operation begins (asked on the caller's thread, so keep it to a flag or a level
      check; the JSON logs sink says yes when its logger is at DEBUG). Start records are made,
      and sent to every sink, only when some sink says yes.
    - ``emit(record)``: handle one record; may raise (the dispatcher isolates it and counts the
      record as dropped, ``reason="error"``), must never block on the network.
    - optional, deferred sinks only: ``emit_batch(records)``: handle everything the worker took
      at once (a list, in order) instead of one ``emit`` per record; one write or one request
      per batch.
    - optional: ``bind(context)``: each configuration that uses the sink calls it, before any
      record, with a :class:`SinkContext` (service, environment, scrubber, ``count_dropped``).
      A sink reads these instead of any global state.
    - ``flush(timeout)``: hand everything to the backend and wait at most ``timeout`` seconds;
      True when everything was handed over.
    - ``shutdown(timeout)``: flush, then release what the sink itself created. Never closes a
      client the user passed in.

    The optional members are looked up once, when a configuration binds the sink, never per
    record. ``record.attributes`` and ``record.extra`` are already scrubbed and cut: send them
    as they are.

    Every record handed to a sink is accounted for: delivered, or counted in
    ``invariantkit_sink_dropped_total{sink,reason}`` (by invariantkit when the sink raises or a
    queue is full, by the sink through ``context.count_dropped`` when its backend loses it).
    See the "Writing a sink" page of the documentation for a complete example.

    Example:
        >>> from typing import ClassVar
        >>> import invariantkit as ik
        >>> class Violations:
        ...     name: ClassVar[str] = "violations"
        ...     deferred: ClassVar[bool] = True  # called on invariantkit's worker thread
        ...     def __init__(self) -> None:
        ...         self.names: list[str] = []
        ...     def emit(self, record: ik.Record) -> None:
        ...         if record.kind == "violation":
        ...             self.names.append(record.name)
        ...     def flush(self, timeout: float) -> bool:
        ...         return True
        ...     def shutdown(self, timeout: float) -> bool:
        ...         return True
        >>> isinstance(Violations(), ik.sinks.Sink)
        True
    """

    name: ClassVar[str]
    deferred: ClassVar[bool]

    def emit(self, record: Record) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def shutdown(self, timeout: float) -> bool: ...
