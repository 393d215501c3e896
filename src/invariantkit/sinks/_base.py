"""The Sink protocol: the one abstraction every backend implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["Sink", "SinkUnavailable"]


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
    - ``emit(record)``: handle one record; may raise (the dispatcher isolates and counts it), must
      never block on the network.
    - ``flush(timeout)``: hand everything to the backend and wait at most ``timeout`` seconds;
      True when everything was handed over.
    - ``shutdown(timeout)``: flush, then release what the sink itself created. Never closes a
      client the user passed in.

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
