"""The one place that knows the backends: how each is detected and how each is built.

Auto-detection (``configure(sinks=None)``), ``invariantkit.testing.capture_signals``, ``invariantkit
verify`` and the demo all build their sinks here, so adding a backend is one entry in
:data:`BACKENDS` (and its sink module).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from invariantkit.sinks._base import Sink, SinkUnavailable

__all__ = ["BACKENDS", "Backend", "auto_sinks", "build"]


@dataclass(frozen=True)
class Backend:
    """A backend: its sink's ``name``, whether the process has set it up (``detect``, for
    auto-detection) and how to build its sink (``build``, keyword arguments: the client,
    provider, registry or logger to send through; none means the process's own)."""

    name: str
    detect: Callable[[], bool]
    build: Callable[..., Sink]


def _traces_detected() -> bool:
    from invariantkit.sinks._otel import tracing_configured

    return tracing_configured()


def _traces(provider: Any = None) -> Sink:
    from invariantkit.sinks._otel import OtelTraces

    return OtelTraces(provider)


def _prometheus(registry: Any = None, **options: Any) -> Sink:
    from invariantkit.sinks._prometheus import PrometheusMetrics

    return PrometheusMetrics(registry, **options)


def _sentry_detected() -> bool:
    # Installed is enough: the sink binds to the active client when it delivers, so configure()
    # may come before sentry_sdk.init() (app factories); nothing is sent while none is active.
    return importlib.util.find_spec("sentry_sdk") is not None


def _sentry(client: Any = None) -> Sink:
    from invariantkit.sinks._sentry import Sentry

    return Sentry(client)


def _posthog_detected() -> bool:
    from invariantkit.sinks._posthog import posthog_configured

    return posthog_configured()


def _posthog(client: Any = None) -> Sink:
    from invariantkit.sinks._posthog import PostHog

    return PostHog(client)


def _json_logs(logger: Any = "invariantkit") -> Sink:
    from invariantkit.sinks._logs import JsonLogs

    return JsonLogs(logger)


#: The backends, in fan-out order. Prometheus is detected by building it (its SDK installed);
#: JSON logs are always on.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("otel_traces", _traces_detected, _traces),
        Backend("prometheus", lambda: True, _prometheus),
        Backend("sentry", _sentry_detected, _sentry),
        Backend("posthog", _posthog_detected, _posthog),
        Backend("json_logs", lambda: True, _json_logs),
    )
}


def build(name: str, **kwargs: Any) -> Sink:
    """The sink of backend ``name`` (``otel_traces``, ``prometheus``, ``sentry``, ``posthog``,
    ``json_logs``), built with ``kwargs``. Raises :class:`SinkUnavailable` when its SDK is not
    installed.

    Example:
        >>> from invariantkit.sinks._registry import build
        >>> build("json_logs", logger="billing.signals").name
        'json_logs'
    """
    return BACKENDS[name].build(**kwargs)


def auto_sinks() -> list[Sink]:
    """The sinks ``configure(sinks=None)`` detects: each only when the process set it up; a
    backend whose SDK is missing is skipped silently."""
    sinks: list[Sink] = []
    for backend in BACKENDS.values():
        try:
            if backend.detect():
                sinks.append(backend.build())
        except SinkUnavailable:
            pass
    return sinks
