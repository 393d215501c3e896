"""Process-wide configuration: which sinks, which mode; ``configure``, ``flush``, ``shutdown``."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from invariantkit._catalog import Declaration, get_catalog
from invariantkit._dispatch import (
    DEFAULT_EVENTS_PER_MINUTE,
    DROP_REASONS,
    ClosedDispatcher,
    Dispatcher,
    set_counting,
)
from invariantkit._env import check_environment, flag, seconds
from invariantkit._record import Record
from invariantkit._safe import NO_SCRUB, Scrubber
from invariantkit.sinks._base import Sink, SinkContext
from invariantkit.sinks._registry import auto_sinks as detected_sinks

__all__ = ["Config", "configure", "current_config", "flush", "shutdown"]

logger = logging.getLogger("invariantkit")

Mode = Literal["report", "enforce"]


@dataclass(frozen=True)
class Config:
    """The active configuration, as returned by :func:`configure`.

    Attributes:
        service: service name (``OTEL_SERVICE_NAME``; default ``"unknown_service"``).
        environment: deployment environment (``INVARIANTKIT_ENVIRONMENT``; default ``"production"``).
        mode: ``"report"`` (violations return False) or ``"enforce"`` (they raise).
        test_mode: alert test mode (``ALERT_TEST_MODE=true``): the ``test="true"`` series exist
            at zero and one labelled test alert per invariant fires after
            ``ALERT_TEST_DELAY_SECONDS``; real violations are never relabelled.
        scrubber: what is redacted before anything leaves the process.
        sinks: the configured sinks, in fan-out order.
        max_events_per_minute: violations per invariant per minute that reach Sentry and
            PostHog; the rest of a storm is counted (``reason="sampled"``).

    Example:
        >>> import invariantkit as ik
        >>> config = ik.configure(service="billing-api", sinks=[ik.sinks.Memory()])
        >>> config.service, [sink.name for sink in config.sinks]
        ('billing-api', ['memory'])
    """

    service: str = "unknown_service"
    environment: str = "production"
    mode: Mode = "report"
    test_mode: bool = False
    scrubber: Scrubber = field(default_factory=Scrubber)
    sinks: tuple[Sink, ...] = ()
    max_events_per_minute: int = DEFAULT_EVENTS_PER_MINUTE


class _State:
    """The one mutable global: read on every call without a lock (attribute reads are atomic)."""

    def __init__(self) -> None:
        self.config: Config | None = None
        #: The most recent configuration, kept after shutdown: the background worker may still
        #: format log lines of that configuration while it drains.
        self.last_config: Config | None = None
        self.dispatcher: Dispatcher | None = None
        self.generation = 0
        self.lock = threading.RLock()


STATE = _State()


def _check_text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"invariantkit.configure({name}=...) must be a str")
    if not value.strip():
        raise ValueError(f"invariantkit.configure({name}=...) must not be empty")
    return value


def _check_sinks(sinks: Iterable[object]) -> tuple[Sink, ...]:
    if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Iterable):
        raise TypeError("invariantkit.configure(sinks=...) must be a list of sinks")
    checked: list[Sink] = []
    for sink in sinks:
        if isinstance(sink, type):
            raise TypeError(
                f"invariantkit.configure(sinks=...): {sink.__name__} is not a sink but a sink "
                f"class; pass an instance: {sink.__name__}(...)"
            )
        if not isinstance(sink, Sink):
            raise TypeError(
                f"invariantkit.configure(sinks=...): {sink!r} is not a sink (it needs name, "
                "deferred, emit(record), flush(timeout) and shutdown(timeout)); use the classes "
                "in invariantkit.sinks"
            )
        if any(sink is other for other in checked):
            raise ValueError(
                f"invariantkit.configure(sinks=...): {sink!r} is listed more than once "
                "(each signal would be sent twice)"
            )
        checked.append(sink)
    return tuple(checked)


def configure(
    *,
    service: str | None = None,
    environment: str | None = None,
    sinks: Iterable[Sink] | None = None,
    mode: Mode | None = None,
    test_mode: bool | None = None,
    scrub: Scrubber | bool | None = None,
    max_events_per_minute: int = DEFAULT_EVENTS_PER_MINUTE,
) -> Config:
    """Configure invariantkit for this process and return the active :class:`Config`.

    May be called again (also after :func:`shutdown`): the previous sinks are flushed and
    released, the new ones receive every declaration in the catalog (their metric children start
    at zero), and no metric is registered twice.

    Args:
        service: service name; default ``OTEL_SERVICE_NAME``.
        environment: default ``INVARIANTKIT_ENVIRONMENT``, else ``"production"``.
        sinks: the backends; None auto-detects: OpenTelemetry traces when an SDK tracer provider
            is set, Prometheus when prometheus-client is installed, Sentry when ``sentry_sdk.init``
            ran, PostHog when ``POSTHOG_PROJECT_API_KEY`` is set, and JSON logs.
        mode: ``"report"`` or ``"enforce"``; default ``INVARIANTKIT_MODE``, else ``"report"``.
        test_mode: alert test mode; default ``ALERT_TEST_MODE``.
        scrub: a :class:`Scrubber`, True/None for the default one, False to turn scrubbing off.
        max_events_per_minute: at most this many violations of one invariant per minute reach
            Sentry and PostHog (default 60); the rest are counted in
            ``invariantkit_sink_dropped_total{reason="sampled"}`` and the next event sent
            carries ``suppressed_count``. The violation counter, spans and log lines still get
            every violation.

    Example:
        >>> import invariantkit as ik
        >>> config = ik.configure(service="billing", sinks=[ik.sinks.Memory()])
        >>> config.mode
        'report'
    """
    _check_text("service", service)
    _check_text("environment", environment)
    check_environment()
    resolved_mode = mode if mode is not None else os.environ.get("INVARIANTKIT_MODE", "report")
    resolved_mode = (
        resolved_mode.strip().lower() if isinstance(resolved_mode, str) else resolved_mode
    )
    if resolved_mode not in ("report", "enforce"):
        source = "mode" if mode is not None else "INVARIANTKIT_MODE"
        raise ValueError(
            f"invariantkit.configure(): {source}={resolved_mode!r} must be 'report' or 'enforce'"
        )
    if test_mode is not None and not isinstance(test_mode, bool):
        raise TypeError("invariantkit.configure(test_mode=...) must be True, False or None")
    resolved_test_mode = (
        test_mode if test_mode is not None else flag("ALERT_TEST_MODE", "invariantkit.configure()")
    )
    if scrub is None or scrub is True:
        scrubber = Scrubber()
    elif scrub is False:
        scrubber = NO_SCRUB
    elif isinstance(scrub, Scrubber):
        scrubber = scrub
    else:
        raise TypeError("invariantkit.configure(scrub=...) must be a Scrubber, True, False or None")
    if (
        isinstance(max_events_per_minute, bool)
        or not isinstance(max_events_per_minute, int)
        or max_events_per_minute < 1
    ):
        raise ValueError(
            "invariantkit.configure(max_events_per_minute=...) must be an int >= 1, got "
            f"{max_events_per_minute!r}"
        )
    resolved_sinks = _check_sinks(sinks) if sinks is not None else tuple(detected_sinks())

    config = Config(
        service=service or os.environ.get("OTEL_SERVICE_NAME") or "unknown_service",
        environment=environment or os.environ.get("INVARIANTKIT_ENVIRONMENT") or "production",
        mode=resolved_mode,  # type: ignore[arg-type]
        test_mode=resolved_test_mode,
        scrubber=scrubber,
        sinks=resolved_sinks,
        max_events_per_minute=max_events_per_minute,
    )
    _keep_logs_out_of_sentry(resolved_sinks)
    dispatcher = Dispatcher(
        resolved_sinks,
        events_per_minute=max_events_per_minute,
        context=SinkContext(
            service=config.service, environment=config.environment, scrubber=config.scrubber
        ),
    )
    with STATE.lock:
        old = STATE.dispatcher
        STATE.config = config
        STATE.last_config = config
        STATE.dispatcher = dispatcher
        set_counting(dispatcher)
        STATE.generation += 1
        _announce_sinks(dispatcher)
        for decl in get_catalog():
            _announce(dispatcher, decl)
    if old is not None:
        old.shutdown(1.0, keep=resolved_sinks)
    _drain_at_exit()
    for callback in _ON_CONFIGURE:  # alert test mode starts here (see _invariant)
        callback(config)
    return config


#: Called with each configuration once it is active. The layers above configuration subscribe
#: (``on_configure``) instead of being imported from here: alert test mode (test series at zero
#: now, one labelled test alert per invariant after ALERT_TEST_DELAY_SECONDS) is started by
#: ``_invariant`` this way.
_ON_CONFIGURE: list[Callable[[Config], None]] = []


def on_configure(callback: Callable[[Config], None]) -> None:
    """Call ``callback(config)`` after every ``configure()``, once the configuration is active.
    An exception it raises reaches the caller of ``configure()`` (a bad setting fails there)."""
    _ON_CONFIGURE.append(callback)


_AT_EXIT: list[bool] = []


def _drain_at_exit() -> None:
    """Register, once, a bounded drain of the workers at interpreter exit.

    Signals wait on daemon workers (log lines, PostHog messages, Sentry captures); without this a
    short script's last violations would die with the process. Registered at the first
    ``configure()``, which usually follows ``sentry_sdk.init()``: atexit runs handlers in reverse
    order, so ours drains into Sentry before Sentry's own atexit closes its client.
    """
    if _AT_EXIT:
        return
    _AT_EXIT.append(True)
    import atexit

    atexit.register(_shutdown_at_exit)


def _shutdown_at_exit() -> None:
    try:
        timeout = seconds("INVARIANTKIT_EXIT_TIMEOUT", 2.0, maximum=600.0)
    except ValueError:
        timeout = 2.0
    shutdown(timeout=timeout)


def _keep_logs_out_of_sentry(sinks: tuple[Sink, ...]) -> None:
    """With a Sentry sink, failures already reach Sentry once: keep the JSON log lines of every
    JsonLogs sink (whatever its logger name) out of Sentry's logging integration."""
    if not any(s.name == "sentry" for s in sinks):
        return
    try:
        from sentry_sdk.integrations.logging import ignore_logger
    except ImportError:
        return
    for sink in sinks:
        log = getattr(sink, "logger", None)
        if sink.name == "json_logs" and isinstance(log, logging.Logger):
            ignore_logger(log.name)


def swap(
    config: Config | None, new_dispatcher: Dispatcher | None
) -> tuple[Config | None, Dispatcher | None]:
    """Install ``config`` and ``new_dispatcher`` without shutting the previous ones down; return
    the previous pair. For ``invariantkit.testing``, which must restore the user's set-up intact.
    """
    with STATE.lock:
        previous = (STATE.config, STATE.dispatcher)
        STATE.config = config
        if config is not None:
            STATE.last_config = config
        STATE.dispatcher = new_dispatcher
        STATE.generation += 1
        if new_dispatcher is not None:
            set_counting(new_dispatcher)
            _announce_sinks(new_dispatcher)
            for decl in get_catalog():
                _announce(new_dispatcher, decl)
    return previous


def _announce_sinks(dispatcher: Dispatcher) -> None:
    """Create ``invariantkit_sink_errors_total{sink}`` and ``invariantkit_sink_dropped_total
    {sink}`` at zero for every configured sink: the sink-error alert uses ``increase()``, which
    never sees a series born at 1."""
    now = time.time()
    for sink in dispatcher.sinks:
        name = getattr(sink, "name", None)
        if not isinstance(name, str):
            continue
        dispatcher.emit(
            Record("sink_error", name, "declared", "", "", None, now, attributes={"count": 0})
        )
        for reason in DROP_REASONS:
            dispatcher.emit(
                Record(
                    "sink_dropped",
                    name,
                    "declared",
                    "",
                    "",
                    None,
                    now,
                    attributes={"count": 0, "reason": reason},
                )
            )


def _announce(dispatcher: Dispatcher, decl: Declaration) -> None:
    dispatcher.emit(
        Record("declare", decl.name, "declared", "", "", None, time.time(), declaration=decl)
    )


def _on_declare(decl: Declaration) -> None:
    dispatcher = STATE.dispatcher
    if dispatcher is not None:
        _announce(dispatcher, decl)


get_catalog().subscribe(_on_declare)


def dispatcher() -> Dispatcher:
    """The active dispatcher; configures with defaults on first use (never a silent no-op).

    On this implicit path a bad environment (``INVARIANTKIT_MODE=enforcee``) must not turn a
    violation into an exception in business code: it is logged, naming the problem, and the
    defaults are used. An explicit :func:`configure` call still raises.
    """
    d = STATE.dispatcher
    if d is None:
        with STATE.lock:
            if STATE.dispatcher is None:
                try:
                    configure()
                except Exception as exc:
                    logger.error(  # noqa: TRY400 - the message says all; no traceback needed
                        "invariantkit: configuring from the environment failed (%s); using "
                        "report mode without alert test mode",
                        exc,
                    )
                    try:
                        configure(mode="report", test_mode=False)
                    except Exception:
                        from invariantkit.sinks._logs import JsonLogs

                        configure(mode="report", test_mode=False, sinks=[JsonLogs()])
            d = STATE.dispatcher
    assert d is not None
    return d


def current_config() -> Config:
    """The active :class:`Config` (configuring with defaults on first use)."""
    config = STATE.config
    if config is None:
        dispatcher()
        config = STATE.config
    assert config is not None
    return config


def flush(timeout: float = 2.0) -> bool:
    """Hand everything queued to every sink's SDK and flush them, within ``timeout`` seconds.

    Returns True when everything was handed over in time. Never raises, even when backends are
    down. Does not close clients the user passed in.

    Example:
        >>> import invariantkit as ik
        >>> ik.flush(timeout=0.5)
        True
    """
    d = STATE.dispatcher
    if d is None:
        return True
    try:
        return d.flush(timeout)
    except Exception:
        logger.exception("invariantkit: flush failed")
        return False


def shutdown(timeout: float = 2.0) -> bool:
    """Flush like :func:`flush`, then stop invariantkit's own workers, within ``timeout`` seconds.

    What could not be handed to a sink's SDK within ``timeout`` is counted as dropped
    (``reason="shutdown"``, see :func:`invariantkit.stats`), never delivered behind your back.
    After it, and until :func:`configure` is called again, the API runs business code unchanged
    and sends nothing anywhere (not even to auto-detected backends): each signal is counted as
    dropped and one warning line says so.

    Example:
        >>> import invariantkit as ik
        >>> ik.shutdown(timeout=0.5)
        True
    """
    with STATE.lock:
        d = STATE.dispatcher
        last = STATE.config or STATE.last_config
        if isinstance(d, ClosedDispatcher):
            return True
        STATE.dispatcher = ClosedDispatcher(s.name for s in (d.sinks if d is not None else ()))
        # Mode and scrubber stay what they were: enforce mode still raises (business code
        # unchanged); only the sinks are gone.
        STATE.config = (
            Config(
                service=last.service,
                environment=last.environment,
                mode=last.mode,
                scrubber=last.scrubber,
            )
            if last is not None
            else Config()
        )
        STATE.generation += 1
    if d is None:
        return True
    try:
        return d.shutdown(timeout)
    except Exception:
        logger.exception("invariantkit: shutdown failed")
        return False
