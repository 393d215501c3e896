"""The one place that knows the backends: how each is detected and how each is built, with
its SDK client when invariantkit makes one.

Per backend: ``detect``/``build`` (auto-detection, ``configure(sinks=None)``: the clients the
process set up), ``from_env`` (the clients the environment variables name, for a process that set
none up: ``invariantkit verify``'s test alert) and ``capture`` (the real SDK client with an
in-memory transport, exporter or consumer: ``invariantkit.testing.capture_signals``). Adding a
backend is one entry in :data:`BACKENDS` (and its sink module).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from invariantkit.sinks._base import Sink, SinkUnavailable

__all__ = ["BACKENDS", "Backend", "Built", "auto_sinks", "build", "capture", "from_env"]


def _nothing() -> None:
    return None


@dataclass
class Built:
    """A sink with what was made for it: ``store`` (what a capture keeps: the span exporter,
    the metrics registry, the Sentry transport, the list of PostHog messages; else None),
    ``close`` (releases the clients made here; never one the user passed in) and ``client``
    (the SDK client made here, when the caller must make it active: Sentry's)."""

    sink: Sink
    store: Any = None
    close: Callable[[], None] = field(default=_nothing)
    client: Any = None


@dataclass(frozen=True)
class Backend:
    """A backend: its sink's ``name``, whether the process has set it up (``detect``, for
    auto-detection), how to build its sink (``build``, keyword arguments: the client,
    provider, registry or logger to send through; none means the process's own), how to build
    it and its client from environment variables (``from_env(environ)``, None when they name
    no such backend) and how to build it on its real SDK with in-memory delivery
    (``capture(service=..., environment=..., **options)``)."""

    name: str
    detect: Callable[[], bool]
    build: Callable[..., Sink]
    from_env: Callable[[Mapping[str, str]], Built | None]
    capture: Callable[..., Built]


def _traces_detected() -> bool:
    from invariantkit.sinks._otel import tracing_configured

    return tracing_configured()


def _traces(provider: Any = None) -> Sink:
    from invariantkit.sinks._otel import OtelTraces

    return OtelTraces(provider)


def _traces_from_env(environ: Mapping[str, str]) -> Built | None:
    if not (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": environ.get("OTEL_SERVICE_NAME") or "invariantkit-test-alert"}
        )
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Built(_traces(provider), close=provider.shutdown)


def _traces_capture(*, service: str, environment: str) -> Built:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=ALWAYS_ON,
        # Not Resource.create(): no detectors, no OTEL_RESOURCE_ATTRIBUTES; same every run.
        resource=Resource({"service.name": service, "deployment.environment.name": environment}),
        shutdown_on_exit=False,  # no atexit handler per capture (hypothesis runs hundreds)
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Built(_traces(provider), exporter, provider.shutdown)


def _prometheus_from_env(environ: Mapping[str, str]) -> Built | None:
    return _prometheus_capture()


def _prometheus_capture(**_: Any) -> Built:
    """A sink on a registry of its own (``store``)."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError as exc:
        raise SinkUnavailable("pip install 'invariantkit[prometheus]'") from exc
    registry = CollectorRegistry()
    return Built(_prometheus(registry), registry)


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


def _sentry_from_env(environ: Mapping[str, str]) -> Built | None:
    dsn = environ.get("SENTRY_DSN")
    if not dsn:
        return None
    import sentry_sdk

    from invariantkit.sinks._sentry import RECOMMENDED_TRANSPORT_QUEUE_SIZE

    client = sentry_sdk.Client(
        dsn=dsn,
        default_integrations=False,
        environment=environ.get("SENTRY_ENVIRONMENT")
        or environ.get("INVARIANTKIT_ENVIRONMENT")
        or "production",
        transport_queue_size=RECOMMENDED_TRANSPORT_QUEUE_SIZE,
    )
    return Built(_sentry(client), close=lambda: client.close(timeout=5.0))


def _sentry_capture(*, service: str, environment: str, **options: Any) -> Built:
    """A real ``sentry_sdk.Client`` whose transport keeps the envelopes it built (``store``:
    ``envelopes``, and ``exceptions``, event id -> exception reported). The sink sends
    through the active client: make this one active where it is used."""
    try:
        import sentry_sdk
        from sentry_sdk.transport import Transport
    except ImportError as exc:
        raise SinkUnavailable("pip install 'invariantkit[sentry]'") from exc

    class KeepingTransport(Transport):
        """A real Sentry transport that keeps the envelopes the SDK built instead of posting."""

        def __init__(self) -> None:
            super().__init__(None)
            self.envelopes: list[Any] = []
            self.exceptions: dict[str, BaseException] = {}  # event id -> exception reported
            self._guard = threading.Lock()

        def capture_envelope(self, envelope: Any) -> None:
            with self._guard:
                self.envelopes.append(envelope)

    transport = KeepingTransport()
    client_options: dict[str, Any] = {
        "environment": environment,
        "release": f"{service}@test",  # else the SDK runs `git rev-parse` per client
        "sample_rate": 1.0,
        "default_integrations": False,
        "auto_enabling_integrations": False,
        **options,
    }
    client_options["dsn"] = "http://public@127.0.0.1:9/1"  # never used: the transport keeps
    client_options["transport"] = transport
    client = sentry_sdk.Client(**client_options)
    return Built(_sentry(), transport, lambda: client.close(timeout=0), client)


def _posthog_detected() -> bool:
    from invariantkit.sinks._posthog import posthog_configured

    return posthog_configured()


def _posthog(client: Any = None) -> Sink:
    from invariantkit.sinks._posthog import PostHog

    return PostHog(client)


def _posthog_from_env(environ: Mapping[str, str]) -> Built | None:
    api_key = environ.get("POSTHOG_PROJECT_API_KEY") or environ.get("POSTHOG_API_KEY")
    if not api_key:
        return None
    import posthog

    from invariantkit.sinks._posthog import CLIENT_DEFAULTS, DEFAULT_HOST, PostHog, bounded

    client = posthog.Posthog(
        api_key,
        host=environ.get("POSTHOG_HOST") or DEFAULT_HOST,
        on_error=PostHog.count_failed_batch,
        **CLIENT_DEFAULTS,
    )

    # PostHog's shutdown() has no timeout: a host that never answers holds it for a minute.
    def close() -> None:
        bounded(client.shutdown, 5.0, "invariantkit-posthog-close")

    return Built(PostHog(client), close=close)


def _posthog_capture(**_: Any) -> Built:
    """A real ``posthog.Posthog`` client that sends nothing and keeps each message it built
    (``store``, a list, in order)."""
    try:
        import posthog
    except ImportError as exc:
        raise SinkUnavailable("pip install 'invariantkit[posthog]'") from exc
    messages: list[dict[str, Any]] = []
    guard = threading.Lock()

    def keep(message: dict[str, Any]) -> dict[str, Any]:
        with guard:
            messages.append(message)
        return message

    client = posthog.Posthog(
        "phc_invariantkit_test",
        host="http://127.0.0.1:9",
        send=False,
        before_send=keep,
        disable_geoip=True,
    )
    return Built(_posthog(client), messages, client.shutdown)


def _json_logs_from_env(environ: Mapping[str, str]) -> Built | None:
    return None  # the logger is the service's own: built by build("json_logs", logger=...)


def _json_logs_capture(*, logger: Any = "invariantkit", **_: Any) -> Built:
    return Built(_json_logs(logger))


def _json_logs(logger: Any = "invariantkit") -> Sink:
    from invariantkit.sinks._logs import JsonLogs

    return JsonLogs(logger)


#: The backends, in fan-out order. Prometheus is detected by building it (its SDK installed);
#: JSON logs are always on.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("otel_traces", _traces_detected, _traces, _traces_from_env, _traces_capture),
        Backend("prometheus", lambda: True, _prometheus, _prometheus_from_env, _prometheus_capture),
        Backend("sentry", _sentry_detected, _sentry, _sentry_from_env, _sentry_capture),
        Backend("posthog", _posthog_detected, _posthog, _posthog_from_env, _posthog_capture),
        Backend("json_logs", lambda: True, _json_logs, _json_logs_from_env, _json_logs_capture),
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


def from_env(name: str, environ: Mapping[str, str]) -> Built | None:
    """The sink of backend ``name`` and the client it sends through, built from the
    environment variables in ``environ`` (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``SENTRY_DSN``,
    ``POSTHOG_PROJECT_API_KEY``...); None when they name no such backend. For a process that
    set up no client itself (``invariantkit verify``)."""
    return BACKENDS[name].from_env(environ)


def capture(name: str, *, service: str, environment: str, **options: Any) -> Built:
    """The sink of backend ``name`` on its real SDK with in-memory delivery: what
    ``capture_signals`` reads (``Built.store``). Raises :class:`SinkUnavailable` when the SDK is
    not installed.

    Example:
        >>> from invariantkit.sinks._registry import capture
        >>> built = capture("prometheus", service="s", environment="test")
        >>> built.sink.name, type(built.store).__name__
        ('prometheus', 'CollectorRegistry')
    """
    return BACKENDS[name].capture(service=service, environment=environment, **options)
