"""Fan-out: every record to every sink, each isolated; deferred sinks on a bounded worker."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from invariantkit._record import Record
from invariantkit._safe import Scrubber, install_log_filter, safe_str, scrub_for_log

if TYPE_CHECKING:
    from invariantkit.sinks._base import Sink
    from invariantkit.sinks._otel import OtelTraces

__all__ = [
    "COUNTERS",
    "DROP_REASONS",
    "ClosedDispatcher",
    "Dispatcher",
    "DropReason",
    "SinkContext",
    "Stats",
    "Worker",
    "count_dropped",
    "set_counting",
    "stats",
]

logger = logging.getLogger("invariantkit")
# No DSN, API key or token ever reaches a log line of ours (a sink's error message may quote one).
install_log_filter(logger)

#: Records the background worker holds before it drops (and counts) new ones. A violation inside
#: an operation is two records (the violation and the operation's end), and PostHog's client
#: takes about 0.2 ms per event on the worker, so a burst of 10,000 violations from 8 threads
#: needs room for about 20,000 records; each record is about 750 bytes.
DEFAULT_QUEUE_SIZE = 50_000
#: Records the worker takes from its queue at once. It hands the GIL back once per batch, never
#: once per record: with CPU-bound threads in the process each hand-back costs up to one switch
#: interval (5 ms) per thread, so yielding per record delivered 147 of 1,197 violations (400/s)
#: within a second with three such threads.
BATCH_SIZE = 256
#: Seconds the worker lets records gather after the first one arrives, unless a batch is already
#: waiting or a flush asks: waking the thread (and handing it the GIL) for each record cost more
#: CPU than handling the record. flush() and shutdown() never wait for it.
LINGER = 0.02
_sleep = time.sleep
_clock = time.monotonic


DropReason = Literal["queue_full", "shutdown", "sdk_queue_full", "error", "sampled"]
#: Why a record did not reach a sink's SDK (the ``reason`` label of
#: ``invariantkit_sink_dropped_total``): invariantkit's queue was full; ``shutdown()`` could not
#: deliver it within its bound, or it came after ``shutdown()``; the SDK's own queue was full;
#: the sink or its delivery failed; a violation storm was sampled.
DROP_REASONS: tuple[DropReason, ...] = (
    "queue_full",
    "shutdown",
    "sdk_queue_full",
    "error",
    "sampled",
)
#: Seconds between two warning lines that name drops.
WARN_INTERVAL = 60.0


@dataclass(frozen=True)
class Stats:
    """invariantkit's own counters since the process started, as :func:`invariantkit.stats`
    returns them: visible even when no metrics sink is configured.

    Attributes:
        dropped: records that did not reach a sink's SDK, by ``(sink, reason)`` (reasons:
            ``queue_full``, ``shutdown``, ``sdk_queue_full``, ``error``, ``sampled``); the same
            counts as ``invariantkit_sink_dropped_total{sink,reason}``.
        errors: exceptions raised by each sink (``invariantkit_sink_errors_total{sink}``).

    Example:
        >>> import invariantkit as ik
        >>> ik.stats().dropped_total >= 0
        True
    """

    dropped: Mapping[tuple[str, str], int]
    errors: Mapping[str, int]

    @property
    def dropped_total(self) -> int:
        """Every dropped record, all sinks and reasons together."""
        return sum(self.dropped.values())


_DEFAULT_SCRUBBER = Scrubber()


class SinkContext:
    """What a sink is given when a configuration binds it (its optional ``bind(context)``):
    the configuration's ``service``, ``environment`` and ``scrubber``, and
    :meth:`count_dropped` to count what the sink or its SDK lost. A sink reads these instead of
    any global state; a sink that is never bound sees the defaults.

    Example:
        >>> import invariantkit as ik
        >>> context = ik.sinks.SinkContext(service="billing-api")
        >>> context.service, context.environment
        ('billing-api', 'production')
        >>> context.scrubber.scrub_text("mail ana@example.com")
        'mail [redacted]'
    """

    __slots__ = ("_count", "environment", "scrubber", "service")

    def __init__(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        scrubber: Scrubber | None = None,
        count_dropped: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self.service: str = service or os.environ.get("OTEL_SERVICE_NAME") or "unknown_service"
        self.environment: str = (
            environment or os.environ.get("INVARIANTKIT_ENVIRONMENT") or "production"
        )
        self.scrubber: Scrubber = scrubber if scrubber is not None else _DEFAULT_SCRUBBER
        self._count = count_dropped

    def count_dropped(self, sink: str, count: int = 1, reason: str = "error") -> None:
        """Count ``count`` records that ``sink`` (its ``name``) could not hand to its backend,
        in ``invariantkit_sink_dropped_total{sink,reason}`` and :func:`invariantkit.stats`.
        ``reason``: ``queue_full``, ``sdk_queue_full``, ``error`` (the usual ones for a sink).
        Never raises."""
        try:
            if self._count is not None:
                self._count(sink, count, reason)
            else:
                count_dropped(sink, count, reason)
        except Exception:
            pass


class _Counters:
    """Process-wide drop and error counts; a warning line names new drops once a minute."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.dropped: dict[tuple[str, str], int] = {}
        self.errors: dict[str, int] = {}
        self._unreported: dict[tuple[str, str], int] = {}
        self._warned_at = -WARN_INTERVAL

    def drop(self, sink: str, reason: str, count: int, *, warn: bool = True) -> None:
        if count <= 0:
            return
        key = (sink, reason)
        message = None
        with self._lock:
            self.dropped[key] = self.dropped.get(key, 0) + count
            if warn:
                self._unreported[key] = self._unreported.get(key, 0) + count
                now = _clock()
                if now - self._warned_at >= WARN_INTERVAL:
                    self._warned_at = now
                    message = ", ".join(
                        f"{n} for {s} ({r})" for (s, r), n in sorted(self._unreported.items())
                    )
                    self._unreported.clear()
        if message:
            logger.warning(
                "invariantkit: signals dropped: %s; counted in ik.stats() and "
                "invariantkit_sink_dropped_total (this line at most once a minute)",
                message,
            )

    def error(self, sink: str, count: int = 1) -> None:
        with self._lock:
            self.errors[sink] = self.errors.get(sink, 0) + count

    def snapshot(self) -> Stats:
        with self._lock:
            return Stats(MappingProxyType(dict(self.dropped)), MappingProxyType(dict(self.errors)))

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


COUNTERS = _Counters()


#: The dispatcher whose metrics sinks count what SDKs drop: the active one, else the one shut
#: down last (Sentry's transport still reports losses while shutdown() drains it).
_COUNTING: list[Dispatcher] = []


def set_counting(dispatcher: Dispatcher) -> None:
    """Make ``dispatcher``'s metrics sinks the ones that count drops reported from anywhere."""
    _COUNTING[:] = [dispatcher]


def count_dropped(sink_name: str, count: int, reason: str = "error") -> None:
    """Count records a sink's SDK dropped, reported where no bound sink is at hand (an SDK
    callback such as PostHog's ``on_error``): in :func:`stats` and in the metrics of the
    active configuration (or the one shut down last). Never raises."""
    counting = _COUNTING[0] if _COUNTING else None
    if counting is not None:
        counting.count_dropped(sink_name, count, reason)
    else:
        COUNTERS.drop(sink_name, reason, count)


def stats() -> Stats:
    """invariantkit's own counters: records dropped per sink and reason, and sink errors.

    The same counts as ``invariantkit_sink_dropped_total{sink,reason}`` and
    ``invariantkit_sink_errors_total{sink}``, available with no metrics sink configured (and
    after :func:`invariantkit.shutdown`). They count from the start of the process.

    Example:
        >>> import invariantkit as ik
        >>> before = ik.stats().dropped.get(("posthog", "error"), 0)
        >>> isinstance(before, int)
        True
    """
    return COUNTERS.snapshot()


class _Marker:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


_STOP = object()
_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()


class Worker:
    """A bounded queue drained by one daemon thread, started lazily and again after ``fork()``.

    ``submit`` never blocks: when the queue holds ``maxsize`` items the item is dropped and
    ``on_drop`` is told, so the loss is counted instead of silent.

    The thread takes everything queued, up to :data:`BATCH_SIZE` items, at once; ``handler``
    receives that list when ``batched`` is true, else each item in turn. Either way the thread
    hands the GIL back once per batch.
    """

    def __init__(
        self,
        handler: Callable[[Any], None],
        *,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        on_drop: Callable[[int], None] | None = None,
        name: str = "invariantkit-worker",
        batched: bool = False,
    ) -> None:
        self._handler = handler
        self._batched = batched
        self._maxsize = maxsize
        self._on_drop = on_drop
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = False  # True from _start() until _run() returns
        self._lock = threading.Lock()
        self._drops = 0  # since the last flush: a flush that lost items does not report success
        self._wake = threading.Event()  # ends the linger early (a flush, a full batch waiting)
        _WORKERS.add(self)

    def submit(self, item: Any) -> bool:
        queued = self._queue.qsize()
        if queued >= self._maxsize:
            self._drops += 1
            if self._on_drop is not None:
                self._on_drop(1)
            return False
        self._queue.put(item)
        if queued >= BATCH_SIZE and not self._wake.is_set():  # one wake-up per batch, not per item
            self._wake.set()
        if not self._running:  # first use, after stop(), after fork()
            self._start()
        return True

    def _start(self) -> None:
        with self._lock:
            if not self._running:
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._running = True
                try:
                    thread.start()
                except BaseException:
                    self._running = False
                    raise
                self._thread = thread

    def _run(self) -> None:
        try:
            while True:
                if not self._run_batch():
                    return
                # Hand the GIL back between batches: work here is pure Python (serialising a
                # Sentry event takes ~1 ms), and a caller waiting for the GIL would otherwise
                # wait for CPython's 5 ms switch interval. Once per batch, not per item: a
                # yield costs this thread a whole switch interval per busy thread.
                _sleep(0)
        finally:
            # Cleared before the thread ends: the next submit starts a new one. (A flag, not
            # Thread.is_alive(), which costs the call path a lock and a few calls per record.)
            self._running = False

    def _run_batch(self) -> bool:
        """Handle everything queued (at most :data:`BATCH_SIZE` items); False at ``_STOP``."""
        queue_ = self._queue
        first = queue_.get()
        if first is not _STOP and not isinstance(first, _Marker) and queue_.qsize() < BATCH_SIZE:
            self._wake.wait(LINGER)
        self._wake.clear()
        batch = [first]
        get_nowait = queue_.get_nowait
        try:
            while len(batch) < BATCH_SIZE:
                batch.append(get_nowait())
        except queue.Empty:
            pass
        run: list[Any] = []
        for i, item in enumerate(batch):
            if item is _STOP or isinstance(item, _Marker):
                # Everything before a marker is handled before the marker is set.
                self._handle(run)
                run = []
                if item is _STOP:
                    # Items taken after the stop go back for the next thread (a later submit).
                    for later in batch[i + 1 :]:
                        queue_.put(later)
                    return False
                if isinstance(item, _Marker):
                    item.event.set()
                continue
            run.append(item)
        self._handle(run)
        return True

    def _handle(self, items: list[Any]) -> None:
        if not items:
            return
        handler = self._handler
        if self._batched:
            try:
                handler(items)
            except Exception:  # the handler isolates sinks; this is a last resort
                logger.exception("invariantkit: background worker handler failed")
            return
        for item in items:
            try:
                handler(item)
            except Exception:  # the handler isolates sinks; this is a last resort
                logger.exception("invariantkit: background worker handler failed")

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted before this call was handled (at most ``timeout`` s).

        False when that did not happen in time, or when items were dropped (queue full) since
        the previous flush: "handed over" must mean all of it.
        """
        dropped, self._drops = self._drops, 0
        if not self._running:
            return self._queue.empty() and not dropped
        if threading.current_thread() is self._thread:
            # Called from a handler (an SDK serialising a local variable whose repr flushes):
            # waiting for ourselves would only burn the timeout.
            return False
        marker = _Marker()
        self._queue.put(marker)
        self._wake.set()
        return marker.event.wait(max(timeout, 0.0)) and not dropped

    def stop(self, timeout: float) -> bool:
        """Drain what is queued (within ``timeout``), then end the thread.

        Never waits longer than ``timeout``: a handler stuck on a backend keeps its (daemon)
        thread, which ends by itself once the handler returns.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        drained = self.flush(timeout)
        thread = self._thread
        if thread is not None and self._running:
            self._queue.put(_STOP)
            self._wake.set()
            if drained:
                thread.join(_left(deadline))
        # A sink reused by a later configure() gets a new thread on its next submit; anything
        # submitted while this one was stopping is not lost: it starts that thread now.
        if not self._queue.empty() and not self._running:
            self._start()
        return drained

    def abandon(self) -> list[Any]:
        """Take every item still queued, for the caller to count as lost; a stop request
        stays queued (the thread still ends) and flushes waiting for markers return."""
        items: list[Any] = []
        stop = False
        try:
            while True:
                item = self._queue.get_nowait()
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Marker):
                    item.event.set()
                else:
                    items.append(item)
        except queue.Empty:
            pass
        if stop:
            self._queue.put(_STOP)
            self._wake.set()
        return items

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here; its queue may hold half-handled state.
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._running = False
        self._lock = threading.Lock()
        self._wake = threading.Event()


def _reset_workers_after_fork() -> None:
    COUNTERS._after_fork_in_child()
    for worker in list(_WORKERS):
        worker._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_workers_after_fork)


#: Events per invariant per minute that reach the storm-limited sinks (Sentry, PostHog).
DEFAULT_EVENTS_PER_MINUTE = 60


class _StormLimiter:
    """At most ``limit`` violations per invariant per minute pass; the next one that passes
    after a suppression carries how many were suppressed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        # invariant -> [window start, passed in the window, suppressed not yet reported]
        self._state: dict[str, list[float]] = {}

    def admit(self, name: str) -> int:
        """-1: suppress this one; else the count of suppressed ones to report with it."""
        now = _clock()
        with self._lock:
            state = self._state.get(name)
            if state is None:
                if len(self._state) >= _MAX_STORM_KEYS:
                    self._state.clear()  # bounded: forgetting only lets a few more through
                state = self._state[name] = [now, 0, 0]
            elif now - state[0] >= 60.0:
                state[0], state[1] = now, 0
            if state[1] >= self.limit:
                state[2] += 1
                return -1
            state[1] += 1
            suppressed = int(state[2])
            state[2] = 0
            return suppressed


_MAX_STORM_KEYS = 10_000


class SinkHandle:
    """A sink as the dispatcher uses it, resolved once when a configuration binds it: the
    :class:`~invariantkit.sinks.Sink` protocol's optional members become bound callables (None
    when the sink has none) and its flags plain booleans, so that sending a record probes
    nothing. The one place that reads a sink's optional members."""

    __slots__ = (
        "batches",
        "deferred",
        "deliver",
        "emit",
        "emit_batch",
        "name",
        "opens_spans",
        "prepare",
        "prepares",
        "sink",
        "starts",
        "storm_limited",
        "wants_starts",
    )

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.name = _name_of(sink)
        self.deferred = bool(sink.deferred)
        self.emit: Callable[[Record], Any] = sink.emit
        # Optional members the sink lacks are no-ops; the flags say which ones it has.
        #: Deferred sinks that first read the caller's context (Sentry forks its scopes there):
        #: ``prepare(record)`` on the caller's thread, ``deliver(record, prepared)`` on the worker.
        self.prepare: Callable[[Record], Any] = _none
        self.deliver: Callable[[Record, Any], Any] = _none
        #: Deferred sinks that take each worker batch at once: ``emit_batch(records)``.
        self.emit_batch: Callable[[list[Record]], Any] = _none
        prepare, deliver = _member(sink, "prepare"), _member(sink, "deliver")
        self.prepares = self.deferred and prepare is not None and deliver is not None
        if self.prepares:
            self.prepare, self.deliver = prepare, deliver
        batch = _member(sink, "emit_batch")
        self.batches = self.deferred and not self.prepares and batch is not None
        if self.batches:
            self.emit_batch = batch
        #: ``wants_starts()``: whether the sink wants ``operation_start`` records now.
        starts = _member(sink, "wants_starts")
        self.starts = starts is not None
        self.wants_starts: Callable[[], bool] = starts if starts is not None else _none
        #: Each violation of a storm would cost money or quota (Sentry, PostHog).
        self.storm_limited = getattr(sink, "storm_limited", False) is True
        #: The traces sink opens spans itself (they must exist during the call).
        self.opens_spans = getattr(sink, "opens_spans", False) is True


def _none(*_: Any) -> Any:
    return None


def _member(sink: Sink, name: str) -> Any:
    """The sink's optional method ``name``, or None."""
    member = getattr(sink, name, None)
    return member if callable(member) else None


class _Job(NamedTuple):
    """A record with work prepared on the caller's thread: the span the traces sink makes on
    the worker (``span_parent``), what deferred sinks read from the caller's context
    (``prepared``, aligned with ``Dispatcher.preparers``)."""

    record: Record
    span_parent: int | None
    prepared: tuple[Any, ...] | None
    #: A violation past its invariant's storm limit: the storm-limited sinks skip it.
    sampled: bool = False


#: ``Dispatcher.emit(record)``: no span to make on the worker.
NO_SPAN = -1


class Dispatcher:
    """Sends each record to every sink. A sink's exception is caught, counted in
    ``invariantkit_sink_errors_total{sink}`` and logged once per sink; it never reaches the caller.
    """

    def __init__(
        self,
        sinks: Iterable[Sink],
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        events_per_minute: int = DEFAULT_EVENTS_PER_MINUTE,
        context: SinkContext | None = None,
    ) -> None:
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        # Each sink is bound to this configuration: its scrubber, service and environment, and
        # drop counting into this dispatcher's metrics (sinks never read the global state).
        base = context if context is not None else SinkContext()
        self.context = SinkContext(
            service=base.service,
            environment=base.environment,
            scrubber=base.scrubber,
            count_dropped=self.count_dropped,
        )
        for sink in self.sinks:
            bind = _member(sink, "bind")  # once per configuration, never per record
            if bind is not None:
                bind(self.context)
        handles = self._handles = tuple(SinkHandle(s) for s in self.sinks)
        #: Sinks called on the caller's thread, and those handed to the worker.
        self.inline: tuple[SinkHandle, ...] = tuple(h for h in handles if not h.deferred)
        self.deferred: tuple[SinkHandle, ...] = tuple(h for h in handles if h.deferred)
        self.preparers: tuple[SinkHandle, ...] = tuple(h for h in self.deferred if h.prepares)
        #: Deferred sinks that get each record as it is (no prepare step): by ``emit_batch``
        #: (``batchers``) or one ``emit`` per record (``each``).
        self.plain: tuple[SinkHandle, ...] = tuple(h for h in self.deferred if not h.prepares)
        self.batchers: tuple[SinkHandle, ...] = tuple(h for h in self.plain if h.batches)
        self.each: tuple[SinkHandle, ...] = tuple(h for h in self.plain if not h.batches)
        #: At most ``events_per_minute`` violations per invariant reach these; the rest are
        #: counted (reason ``sampled``).
        self.limited: tuple[SinkHandle, ...] = tuple(h for h in handles if h.storm_limited)
        self._storms = _StormLimiter(events_per_minute) if self.limited else None
        self._logged: set[str] = set()
        traces = next((h for h in handles if h.opens_spans), None)
        self._traces_handle = traces
        self.traces: OtelTraces | None = (
            cast("OtelTraces", traces.sink) if traces is not None else None
        )
        #: Violations outside any span get their span on the worker, not on the call path.
        self.spans_later = self.traces is not None and self.traces.defers_violation_spans
        self.worker: Worker | None = (
            Worker(self._run_deferred, maxsize=queue_size, batched=True)
            if self.deferred or self.spans_later
            else None
        )
        #: Sinks that may want ``operation_start`` records (``wants_starts()``: JSON logs at DEBUG).
        self.start_sinks: tuple[SinkHandle, ...] = tuple(h for h in handles if h.starts)
        #: Set when shutdown() ran out of time: what the worker still holds is counted as lost
        #: (reason "shutdown"), never delivered behind the caller's back.
        self._abandoned = False
        self._guard = threading.Lock()
        # Per sink: the flush or shutdown call still running in its helper thread (pid, done).
        self._inflight: dict[int, tuple[int, threading.Event]] = {}

    # -- hot path -------------------------------------------------------------------------------

    def emit(self, record: Record, span_parent: int | None = NO_SPAN) -> None:
        """Send ``record`` to every sink. ``span_parent`` (only when ``spans_later``): the traces
        sink makes the violation's span on the worker, child of that span id (None: a root)."""
        sampled = False
        storms = self._storms
        if storms is not None and record.kind == "violation" and not record.test:
            suppressed = storms.admit(record.name)
            if suppressed < 0:
                sampled = True
                self._dropped(self.limited, "sampled")
            elif suppressed:
                record = record._replace(extra={**record.extra, "suppressed_count": suppressed})
        for sink in self.inline:
            if sampled and sink.storm_limited:
                continue
            try:
                sink.emit(record)
            except Exception as exc:
                self.record_failed(sink, exc)
        worker = self.worker
        if worker is None:
            return
        prepared = self._prepare(record, sampled) if self.preparers else None
        if prepared is None and span_parent == NO_SPAN and not sampled:
            if self.plain and not worker.submit(record):
                self._dropped(self.plain, "queue_full")
            return
        job = _Job(record, span_parent, prepared, sampled)
        if not worker.submit(job):
            self._dropped(self._sinks_of(job), "queue_full")

    def _sinks_of(self, item: Record | _Job) -> list[SinkHandle]:
        """The sinks a queued item was for."""
        if not isinstance(item, _Job):
            return list(self.plain)
        lost = [s for s in self.plain if not (item.sampled and s.storm_limited)]
        if item.span_parent != NO_SPAN and self._traces_handle is not None:
            lost.append(self._traces_handle)
        if item.prepared is not None:
            lost += [s for s, p in zip(self.preparers, item.prepared, strict=True) if p is not None]
        return lost

    def starts_wanted(self) -> bool:
        """True when a sink wants the ``operation_start`` record of the operation beginning now."""
        for sink in self.start_sinks:
            try:
                if sink.wants_starts():
                    return True
            except Exception as exc:
                self.sink_failed(sink, exc)
        return False

    def _prepare(self, record: Record, sampled: bool = False) -> tuple[Any, ...] | None:
        """What the preparing sinks read on this thread, or None when none wants the record
        (the success path: no allocation)."""
        out: list[Any] | None = None
        for i, sink in enumerate(self.preparers):
            if sampled and sink.storm_limited:
                continue
            try:
                ready = sink.prepare(record)
            except Exception as exc:
                self.record_failed(sink, exc)
                continue
            if ready is not None:
                if out is None:
                    out = [None] * len(self.preparers)
                out[i] = ready
        return tuple(out) if out is not None else None

    def _run_deferred(self, batch: list[Record | _Job]) -> None:
        batched: tuple[SinkHandle, ...] = ()
        if self.batchers and not self._abandoned:
            self._run_batchers(batch)
            batched = self.batchers  # they had the whole batch
        for item in batch:
            if self._abandoned:  # shutdown() gave up on these: counted, not delivered late
                self._dropped((s for s in self._sinks_of(item) if s not in batched), "shutdown")
            else:
                self._run_deferred_one(item)

    def _run_batchers(self, batch: list[Record | _Job]) -> None:
        """Hand each batching sink the records of ``batch`` meant for it, in one call."""
        for sink in self.batchers:
            skip = sink.storm_limited
            records = [
                item.record if isinstance(item, _Job) else item
                for item in batch
                if not (skip and isinstance(item, _Job) and item.sampled)
            ]
            if not records:
                continue
            try:
                sink.emit_batch(records)
            except Exception as exc:
                self.sink_failed(sink, exc)
                self.count_dropped(sink.name, len(records), "error")

    def _run_deferred_one(self, item: Record | _Job) -> None:
        prepared: tuple[Any, ...] | None = None
        sampled = False
        if isinstance(item, _Job):
            record = item.record
            prepared = item.prepared
            sampled = item.sampled
            traces, handle = self.traces, self._traces_handle
            if item.span_parent != NO_SPAN and traces is not None and handle is not None:
                try:
                    traces.violation_span(record, item.span_parent)
                except Exception as exc:
                    self.record_failed(handle, exc)
        else:
            record = item
        for sink in self.each:
            if sampled and sink.storm_limited:
                continue
            try:
                sink.emit(record)
            except Exception as exc:
                self.record_failed(sink, exc)
        if prepared is not None:
            for sink, ready in zip(self.preparers, prepared, strict=True):
                if ready is None:
                    continue
                try:
                    sink.deliver(record, ready)
                except Exception as exc:
                    self.record_failed(sink, exc)

    # -- failures -------------------------------------------------------------------------------

    def sink_failed(self, sink: SinkHandle, exc: BaseException) -> None:
        """Count and (once per sink) log a sink's failure. Never raises.

        The log line names the sink and the exception; DSNs, API keys and tokens that the
        exception's message may quote are redacted.
        """
        try:
            name = sink.name
            COUNTERS.error(name)
            self._count("sink_error", name, 1, exclude=sink)
            with self._guard:
                first = name not in self._logged
                self._logged.add(name)
            if first:
                logger.warning(
                    "invariantkit: sink %r failed (%s: %s); further failures are only counted in "
                    "invariantkit_sink_errors_total",
                    name,
                    type(exc).__name__,
                    _short(exc),
                )
        except Exception:
            pass

    def record_failed(self, sink: SinkHandle, exc: BaseException) -> None:
        """A sink raised on a record: count the error and the record as dropped for it."""
        self.sink_failed(sink, exc)
        self.count_dropped(sink.name, 1, "error")

    def count_dropped(self, sink_name: str, count: int, reason: str = "error") -> None:
        """Count records a sink or its SDK dropped, in :func:`stats` and in
        ``invariantkit_sink_dropped_total{sink,reason}``. Never raises."""
        try:
            COUNTERS.drop(sink_name, reason, count)
            self._count("sink_dropped", sink_name, count, reason=reason)
        except Exception:
            pass

    def _dropped(self, sinks: Iterable[SinkHandle], reason: str) -> None:
        """A record was lost for each of ``sinks``: count it once per sink."""
        for sink in sinks:
            self.count_dropped(sink.name, 1, reason)

    def _count(
        self,
        kind: str,
        name: str,
        count: int,
        exclude: SinkHandle | None = None,
        reason: str | None = None,
    ) -> None:
        attributes: dict[str, Any] = {"count": count}
        if reason is not None:
            attributes["reason"] = reason
        record = Record(
            kind,  # type: ignore[arg-type]
            name,
            "error",
            "",
            "",
            None,
            time.time(),
            attributes=attributes,
        )
        for sink in self.inline:
            if sink is exclude:
                continue
            try:
                sink.emit(record)
            except Exception:
                pass

    # -- lifecycle ------------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Drain the worker, then flush every sink, all within ``timeout`` seconds.

        Sinks are flushed side by side, each in a helper thread, so one backend that hangs
        (an OTLP exporter whose ``force_flush`` ignores its timeout, a PostHog host that never
        answers) neither delays the others nor this call past its bound.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        ok = True
        if self.worker is not None:
            ok = self.worker.flush(_left(deadline)) and ok
        calls = [(h, h.sink.flush) for h in self._handles]
        return self._bounded(calls, deadline) and ok

    def shutdown(self, timeout: float, keep: Iterable[Sink] = ()) -> bool:
        """Drain the worker, then shut every sink down; sinks in ``keep`` (reused by a new
        configuration) are only flushed. Returns within ``timeout`` seconds whatever the
        backends do."""
        deadline = time.monotonic() + max(timeout, 0.0)
        kept = {id(s) for s in keep}
        ok = True
        worker = self.worker
        if worker is not None:
            ok = worker.stop(_left(deadline)) and ok
            if not ok:
                # Out of time: what is still queued is counted as lost, and the worker, which
                # may still be busy with a backend, counts instead of delivering what it holds.
                self._abandoned = True
                for item in worker.abandon():
                    self._dropped(self._sinks_of(item), "shutdown")
        calls = [
            (h, h.sink.flush if id(h.sink) in kept else h.sink.shutdown) for h in self._handles
        ]
        return self._bounded(calls, deadline) and ok

    def _bounded(
        self, calls: Sequence[tuple[SinkHandle, Callable[[float], bool]]], deadline: float
    ) -> bool:
        """Run each ``fn(timeout)`` in its own daemon thread; wait for all until ``deadline``."""
        pid = os.getpid()
        results: dict[int, bool] = {}
        waits: list[tuple[int, threading.Event]] = []
        for sink, fn in calls:
            key = id(sink)
            with self._guard:
                previous = self._inflight.get(key)
            stuck = previous is not None and previous[0] == pid and not previous[1].is_set()
            # The last call on this sink is still running: wait for it, never pile up threads.
            if stuck and previous is not None and not previous[1].wait(_left(deadline)):
                results[key] = False
                continue
            done = threading.Event()
            with self._guard:
                self._inflight[key] = (pid, done)
            thread = threading.Thread(
                target=self._call,
                args=(sink, fn, _left(deadline), done, results),
                name=f"invariantkit-flush-{sink.name[:40]}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down: no new threads; call inline
                self._call(sink, fn, _left(deadline), done, results)
            waits.append((key, done))
        ok = True
        for key, done in waits:
            if not done.wait(_left(deadline)) or not results.get(key, False):
                ok = False
        return ok and all(results.values())

    def _call(
        self,
        sink: SinkHandle,
        fn: Callable[[float], bool],
        timeout: float,
        done: threading.Event,
        results: dict[int, bool],
    ) -> None:
        try:
            results[id(sink)] = bool(fn(timeout))
        except Exception as exc:
            results[id(sink)] = False
            self.sink_failed(sink, exc)
        finally:
            done.set()


class ClosedDispatcher(Dispatcher):
    """What the API uses after :func:`invariantkit.shutdown` until the next ``configure()``:
    business code runs unchanged, nothing is sent anywhere, each record is counted as dropped
    (reason ``shutdown``) for each sink of the configuration that was shut down, and one warning
    line says so."""

    def __init__(self, sink_names: Iterable[str]) -> None:
        super().__init__(())
        self.sink_names = tuple(sink_names) or ("unconfigured",)
        self._warned = False

    def emit(self, record: Record, span_parent: int | None = NO_SPAN) -> None:
        if record.kind in _BOOKKEEPING:
            return
        try:
            for name in self.sink_names:
                COUNTERS.drop(name, "shutdown", 1, warn=False)
            if not self._warned:
                self._warned = True
                logger.warning(
                    "invariantkit: a %s record after ik.shutdown() was dropped; until "
                    "ik.configure() is called again nothing is sent and drops are only counted "
                    "(ik.stats())",
                    record.kind,
                )
        except Exception:
            pass


_BOOKKEEPING = frozenset({"declare", "sink_error", "sink_dropped"})


def _name_of(sink: Any) -> str:
    return safe_str(getattr(sink, "name", None) or type(sink).__name__, 100)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _short(exc: BaseException) -> str:
    return scrub_for_log(safe_str(exc, 300))[:200]
