"""The Sink protocol: the one abstraction every backend implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["Sink", "SinkUnavailable"]


class SinkUnavailable(ImportError):
    """A sink was named in ``configure(sinks=...)`` but its SDK is not installed.

    Auto-detected sinks whose SDK is missing are skipped silently instead.
    """


@runtime_checkable
class Sink(Protocol):
    """**Protocol:** a backend that receives every :class:`~invariantkit.Record`.

    - ``name``: short, stable, used as the ``sink`` label of
      ``invariantkit_sink_errors_total`` and ``invariantkit_sink_dropped_total``.
    - ``deferred``: False runs ``emit`` on the caller's thread before the decorated call returns
      (spans, metrics, Sentry's own non-blocking capture); True hands records to invariantkit's
      bounded background worker (log formatting, PostHog message building).
    - ``emit(record)``: handle one record; may raise (the dispatcher isolates and counts it), must
      never block on the network.
    - ``flush(timeout)``: hand everything to the backend and wait at most ``timeout`` seconds;
      True when everything was handed over.
    - ``shutdown(timeout)``: flush, then release what the sink itself created. Never closes a
      client the user passed in.
    """

    name: ClassVar[str]
    deferred: ClassVar[bool]

    def emit(self, record: Record) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def shutdown(self, timeout: float) -> bool: ...
