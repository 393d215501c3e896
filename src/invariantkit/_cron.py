"""``ik.monitor_cron``: cron-job health for short-lived processes.

One object per job. Constructing it declares the job in the catalog (the rule, dashboard and
Sentry generators know it before it ever runs); entering it starts a run. A run opens a
``cron.<name>`` span (so every operation inside shares the run's trace id), sends the Sentry
``in_progress`` check-in, and at the end sets the guide's four gauges, sends the ``ok`` or
``error`` check-in, and, when a Pushgateway or textfile is configured, hands the run's metrics
over before the process can exit.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from typing_extensions import ParamSpec

from invariantkit._catalog import (
    LABEL_VALUE,
    LOWER_SNAKE,
    CronDecl,
    check_name,
    check_url,
    get_catalog,
)
from invariantkit._config import STATE, dispatcher
from invariantkit._context import (
    CORRELATION,
    USER,
    CorrelationToken,
    current_ids,
    new_span_id,
    new_trace_id,
)
from invariantkit._control_flow import is_control_flow as _is_control_flow
from invariantkit._dispatch import Dispatcher
from invariantkit._operation import _record_exception
from invariantkit._record import Record
from invariantkit._safe import safe_str
from invariantkit.sinks._sentry_crons import SLUG_LIMIT, checkin_margin_seconds, monitor_slug

__all__ = ["Cron", "CronRun", "missing_after", "monitor_cron"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("invariantkit")

Duration = int | float | dt.timedelta
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_internal_errors_logged: set[str] = set()


def _internal_error(where: str) -> None:
    """invariantkit itself failed: never let it reach the job; log it once per place."""
    if where not in _internal_errors_logged:
        _internal_errors_logged.add(where)
        logger.exception("invariantkit: internal error in %s (further ones are not logged)", where)


def _seconds(owner: str, field: str, value: object) -> float:
    """A positive, finite duration in seconds from an int, float or ``timedelta``."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"{owner}: {field} must be seconds (an int or float) or a datetime.timedelta, "
            f"not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{owner}: {field}={value!r} must be a positive, finite duration")
    return seconds


def missing_after(decl: CronDecl) -> float:
    """Seconds after its last run when a cron counts as missing: ``every`` plus the check-in
    margin Sentry also gets (a tenth of ``every``, at least 1 minute or ``every`` if shorter, at
    most 1 hour).

    For a daily job this is 90000 s (25 h), the guide's ``RenewalCronMissing`` threshold; the
    alert generator and Sentry's ``checkin_margin`` use the same figure.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit._cron import missing_after
        >>> missing_after(ik.monitor_cron("nightly_export", every=86400, max_runtime=600).decl)
        90000.0
    """
    return decl.every + checkin_margin_seconds(decl.every)


class CronRun:
    """One run of a monitored cron job: what ``with cron as run`` gives.

    Attributes:
        processed: how many items this run handled; add to it (``run.processed += n``). It
            becomes ``cron_<name>_processed`` and the ``processed`` field of the check-in log line.
        check_in_id: the Sentry check-in id (32 hex), shared by the run's two check-ins.
        cron: the :class:`Cron` this run belongs to.

    Example:
        >>> import invariantkit as ik
        >>> cleanup = ik.monitor_cron("session_cleanup", every=3600, max_runtime=60)
        >>> with cleanup as run:
        ...     run.processed += 3
        >>> run.processed
        3
    """

    __slots__ = (
        "_corr_token",
        "_dispatcher",
        "_ended",
        "_span",
        "_stack_token",
        "_start",
        "_token",
        "_user",
        "check_in_id",
        "cron",
        "processed",
        "span_id",
        "trace_id",
    )
    _stack_token: Token[CronRun | None]

    def __init__(self, cron: Cron, d: Dispatcher | None) -> None:
        self.cron = cron
        self.processed: int | float = 0
        self.check_in_id = uuid.uuid4().hex
        self._dispatcher = d
        self._ended = False
        self._span: trace.Span | None = None
        self._token: Token[otel_context.Context] | None = None
        self._corr_token: CorrelationToken | None = None
        self._user = USER.get()
        self.trace_id = 0
        self.span_id = 0
        self._start = time.perf_counter()
        if d is None:
            return
        try:
            self._open(d)
        except Exception:
            _internal_error("cron run start")

    def _open(self, d: Dispatcher) -> None:
        decl = self.cron.decl
        traces = d.traces
        if traces is not None:
            span = traces.tracer.start_span(
                f"cron.{decl.name}",
                attributes={
                    "cron.name": decl.name,
                    "cron.monitor_slug": decl.sentry_slug,
                    "cron.check_in_id": self.check_in_id,
                },
            )
            if self._user is not None:
                span.set_attribute("enduser.id", self._user)
            self._span = span
            self._token = otel_context.attach(trace.set_span_in_context(span))
            ctx = span.get_span_context()
            self.trace_id, self.span_id = ctx.trace_id, ctx.span_id
        else:
            ids = current_ids()
            if ids is None:
                ids = (new_trace_id(), new_span_id())
                self._corr_token = CORRELATION.set(ids)
            self.trace_id, self.span_id = ids
        d.emit(self._record("in_progress", None, None, {"check_in_id": self.check_in_id}))
        self._start = time.perf_counter()

    @property
    def correlation_id(self) -> str:
        """The trace id of this run (32 lowercase hex): search it in traces, logs and Sentry."""
        return format(self.trace_id, "032x")

    def _record(
        self,
        status: str,
        duration: float | None,
        exc: BaseException | None,
        attributes: dict[str, Any],
    ) -> Record:
        return Record(
            "cron",
            self.cron.decl.name,
            status,
            format(self.trace_id, "032x"),
            format(self.span_id, "016x"),
            self._user,
            time.time(),
            duration,
            attributes,
            exception=exc,
            declaration=self.cron.decl,
        )

    def _processed(self) -> int | float:
        value = self.processed
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            logger.warning(
                "invariantkit: cron %s: run.processed=%r is not a number; reported as 0",
                self.cron.decl.name,
                safe_str(value, 100),
            )
            return 0
        return value

    def _finish(self, exc: BaseException | None) -> None:
        """End the run: ok when ``exc`` is None, else error (the caller re-raises ``exc``)."""
        if self._ended:
            return
        self._ended = True
        d = self._dispatcher
        if d is None:
            return
        try:
            duration = time.perf_counter() - self._start
            processed = self._processed()
            status = "ok" if exc is None else "error"
            span = self._span
            if span is not None:
                try:
                    span.set_attribute("cron.processed", processed)
                    if exc is not None:  # on success the status stays UNSET (OTel)
                        _record_exception(span, exc)  # message and stack trace scrubbed
                    span.end()
                except Exception:  # the tracing SDK failing must not lose the check-in
                    _internal_error("cron span end")
            self._close()
            d.emit(
                self._record(
                    status,
                    duration,
                    exc,
                    {"check_in_id": self.check_in_id, "processed": processed},
                )
            )
        except Exception:
            _internal_error("cron run end")
        finally:
            try:
                self._close()  # whatever failed above, the span never stays current
            except Exception:
                _internal_error("cron run end")

    def _close(self) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        if self._corr_token is not None:
            CORRELATION.reset(self._corr_token)
            self._corr_token = None


def _succeeded(exc: BaseException | None) -> bool:
    # ``sys.exit(0)`` inside a job is a successful end, not a failure.
    return (
        exc is None
        or (isinstance(exc, SystemExit) and exc.code in (None, 0))
        or _is_control_flow(exc)  # Celery's Retry/Ignore/Reject (integrations/celery.py)
    )


class Cron:
    """A monitored cron job: a (sync or async) context manager and a decorator for plain and
    async functions. Returned by :func:`monitor_cron`.

    Attributes:
        decl: the :class:`~invariantkit._catalog.CronDecl` in the catalog (seconds).

    Example:
        >>> import invariantkit as ik
        >>> export = ik.monitor_cron("nightly_export", every=86400, max_runtime=600)
        >>> isinstance(export, ik.Cron), export.missing_after
        (True, 90000.0)
    """

    __slots__ = ("_active", "decl")

    def __init__(
        self,
        name: str,
        *,
        every: Duration,
        max_runtime: Duration,
        team: str = "platform",
        sentry_slug: str | None = None,
        runbook_url: str | None = None,
        domain: str = "billing",
    ) -> None:
        owner = f"monitor_cron({name!r})" if isinstance(name, str) else "monitor_cron"
        check_name(owner, "name", name, LOWER_SNAKE, "lower_snake: [a-z][a-z0-9_]*")
        every_s = _seconds(owner, "every", every)
        max_runtime_s = _seconds(owner, "max_runtime", max_runtime)
        check_name(owner, "team", team, LABEL_VALUE, "a label value: [a-z][a-z0-9_-]*")
        check_name(owner, "domain", domain, LABEL_VALUE, "a label value: [a-z][a-z0-9_-]*")
        if sentry_slug is not None:
            check_name(
                owner,
                "sentry_slug",
                sentry_slug,
                _SLUG,
                "a Sentry monitor slug: [a-z0-9][a-z0-9_-]*",
            )
            if len(sentry_slug) > SLUG_LIMIT:
                raise ValueError(
                    f"{owner}: sentry_slug={sentry_slug!r} is {len(sentry_slug)} characters; "
                    f"Sentry keeps {SLUG_LIMIT} (longer slugs would share a monitor)"
                )
        check_url(owner, runbook_url)
        self.decl = CronDecl(
            name=name,
            every=every_s,
            max_runtime=max_runtime_s,
            team=team,
            sentry_slug=monitor_slug(name, sentry_slug),
            runbook_url=runbook_url,
            domain=domain,
        )
        get_catalog().add(self.decl)
        self._active: ContextVar[CronRun | None] = ContextVar(
            f"invariantkit.cron.{name}", default=None
        )

    def __repr__(self) -> str:
        d = self.decl
        return f"<Cron {d.name} every={d.every:g}s max_runtime={d.max_runtime:g}s>"

    @property
    def name(self) -> str:
        """The job's name (``cron_<name>_...`` metric names)."""
        return self.decl.name

    @property
    def missing_after(self) -> float:
        """Seconds after the last run when the job counts as missing (see :func:`missing_after`)."""
        return missing_after(self.decl)

    @property
    def run(self) -> CronRun:
        """The run of this job active in the current context (inside ``with`` or the decorated
        function), for ``cron.run.processed += n`` where the run object is not at hand.

        Raises:
            RuntimeError: no run of this job is active here.
        """
        run = self._active.get()
        if run is None:
            raise RuntimeError(
                f"monitor_cron({self.decl.name!r}).run: no run is active here; use it inside "
                "`with cron:` or the function the cron decorates"
            )
        return run

    # -- context manager ----------------------------------------------------------------------

    def _begin(self) -> CronRun:
        try:
            d: Dispatcher | None = STATE.dispatcher or dispatcher()
        except Exception:
            _internal_error("cron configuration")
            d = None
        return CronRun(self, d)

    def __enter__(self) -> CronRun:
        run = self._begin()
        run._stack_token = self._active.set(run)
        return run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run = self._active.get()
        if run is None:
            return
        try:
            self._active.reset(run._stack_token)
        except ValueError:  # exited in another context than entered: keep going
            self._active.set(None)
        run._finish(None if _succeeded(exc) else exc)

    async def __aenter__(self) -> CronRun:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator ----------------------------------------------------------------------------

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        name = self.decl.name
        if not callable(fn):
            raise TypeError(f"monitor_cron({name!r}) decorates a function, not {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"monitor_cron({name!r}) cannot decorate the generator function "
                f"{fn.__qualname__}: a run would end when the generator is created; decorate "
                "the function that consumes it, or use `with cron:` around the loop"
            )
        if inspect.iscoroutinefunction(fn):
            return self._wrap_async(fn)
        return self._wrap_sync(fn)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return fn(*args, **kwargs)

        return wrapper

    def _wrap_async(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            async with self:
                return await fn(*args, **kwargs)

        return wrapper


def monitor_cron(
    name: str,
    *,
    every: Duration,
    max_runtime: Duration,
    team: str = "platform",
    sentry_slug: str | None = None,
    runbook_url: str | None = None,
    domain: str = "billing",
) -> Cron:
    """Declare a cron job and monitor its runs: use the result as a context manager or decorator.

    Each run sets the guide's gauges ``cron_<name>_last_run_timestamp`` (unix seconds, when the
    run ended), ``cron_<name>_last_status`` (1 ok, 0 failed), ``cron_<name>_duration_seconds``
    and ``cron_<name>_processed``; sends Sentry Crons check-ins (``in_progress``, then ``ok`` or
    ``error`` with the duration, and a ``monitor_config`` from ``every`` and ``max_runtime``);
    and opens a ``cron.<name>`` span that the operations inside share. A failing run records
    status 0, reports its exception, and re-raises it unchanged. ``sys.exit(0)`` counts as ok.

    A cron process is short-lived: give the metrics sink a Pushgateway
    (``PrometheusMetrics(pushgateway=...)``) or a node-exporter textfile, or no scrape will ever
    see the run. The gauges appear at the end of the first run in a process, never at zero
    before it (a zero timestamp or status would fire the Missing and Failed alerts).

    Args:
        name: lower_snake job name; the metrics are ``cron_<name>_...``.
        every: how often the job runs: seconds or a ``timedelta``.
        max_runtime: how long a run may take: seconds or a ``timedelta``.
        team: who is paged when it is missing or slow (alert label ``team``).
        sentry_slug: the Sentry monitor slug; default: ``name`` with hyphens.
        runbook_url: the playbook for this job's alerts.
        domain: the product domain (Sentry tag ``domain`` of a failed run, as the guide's
            "New Issue in Billing Code" rule expects).

    Raises:
        TypeError, ValueError: at declaration, naming the field and the rule.

    Example:
        >>> import datetime as dt
        >>> import invariantkit as ik
        >>> renewal = ik.monitor_cron(
        ...     "subscription_renewal", every=dt.timedelta(days=1), max_runtime=dt.timedelta(minutes=5)
        ... )
        >>> @renewal
        ... def renew_due_subscriptions(due: list[str]) -> int:
        ...     for subscription_id in due:
        ...         renewal.run.processed += 1
        ...     return len(due)
        >>> renew_due_subscriptions(["sub_1", "sub_2"])
        2
    """
    return Cron(
        name,
        every=every,
        max_runtime=max_runtime,
        team=team,
        sentry_slug=sentry_slug,
        runbook_url=runbook_url,
        domain=domain,
    )
