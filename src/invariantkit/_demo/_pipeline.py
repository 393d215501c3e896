"""The demo's backends: real SDK pipelines, kept in process, and sent on when configured.

Every backend is the real SDK (an OpenTelemetry SDK tracer provider, a prometheus-client
registry, a ``sentry_sdk.Client``, a ``posthog.Posthog`` client, the stdlib logger); a tap at each
SDK's public extension point (span exporter, Sentry transport, PostHog ``before_send``, a logging
handler) keeps what the SDK produced so the demo can show it. With ``SENTRY_DSN``,
``POSTHOG_PROJECT_API_KEY`` (and ``POSTHOG_HOST``) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, the same
pipelines also send to those backends.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from invariantkit._config import STATE, Config, swap
from invariantkit._context import CORRELATION, USER
from invariantkit._dispatch import Dispatcher
from invariantkit._safe import Scrubber
from invariantkit.sinks._base import SinkContext
from invariantkit.sinks._logs import JsonFormatter
from invariantkit.sinks._registry import build as build_sink

__all__ = ["Pipeline", "open_pipeline"]

LOGGER = "invariantkit"


@dataclass
class Destination:
    """Where one backend's signals go (shown in the demo's header)."""

    backend: str
    target: str  # "in-process" or a host (never a secret)
    env: str  # the variable that switches on the real backend


@dataclass
class Pipeline:
    """The live pipelines of one demo run; read the taps after :meth:`flush`."""

    config: Config
    dispatcher: Dispatcher
    memory: Any
    registry: Any
    provider: Any
    span_exporter: Any
    sentry_client: Any
    sentry_transport: Any
    posthog_client: Any
    posthog_messages: list[dict[str, Any]]
    log_lines: list[dict[str, Any]]
    destinations: list[Destination]
    otlp_results: dict[str, int] = field(default_factory=lambda: {"exported": 0, "failed": 0})
    posthog_failed: list[int] = field(default_factory=lambda: [0])
    _restore: list[Any] = field(default_factory=list)

    # -- taps -----------------------------------------------------------------------------------

    @property
    def spans(self) -> list[Any]:
        return list(self.span_exporter.get_finished_spans())

    @property
    def sentry_envelopes(self) -> list[Any]:
        return list(self.sentry_transport.envelopes)

    def flush(self, timeout: float = 5.0) -> bool:
        ok = self.dispatcher.flush(timeout)
        try:
            self.provider.force_flush(int(timeout * 1000))
        except Exception:
            ok = False
        return ok

    def close(self, timeout: float = 5.0) -> None:
        """Flush and stop every pipeline; put back the global state found at open."""
        try:
            self.dispatcher.shutdown(timeout)
        finally:
            for undo in reversed(self._restore):
                try:
                    undo()
                except Exception:
                    pass
            self._restore.clear()


def _seeded_ids(seed: int) -> Any:
    """OpenTelemetry ids from a seeded generator: the same ``--seed`` gives the same trace ids."""
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class SeededIds(IdGenerator):
        def __init__(self) -> None:
            self._rng = random.Random(seed)  # noqa: S311 - ids for a simulation, not secrets
            self._lock = threading.Lock()

        def generate_span_id(self) -> int:
            with self._lock:
                return self._rng.getrandbits(64) or 1

        def generate_trace_id(self) -> int:
            with self._lock:
                return self._rng.getrandbits(128) or 1

    return SeededIds()


class _LogTap(logging.Handler):
    def __init__(self, lines: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "invariantkit", None)
        if fields is not None:
            with self._guard:
                self.lines.append(dict(fields))


def _host(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.scheme}://{parsed.hostname}{f':{parsed.port}' if parsed.port else ''}"


def _sentry(environ: Mapping[str, str]) -> tuple[Any, Any, Destination]:
    import sentry_sdk
    from sentry_sdk.transport import HttpTransport, Transport

    dsn = environ.get("SENTRY_DSN") or None

    class Keeping(Transport):
        """Keeps the envelopes the real client built (in-process mode)."""

        def __init__(self, options: Any = None) -> None:
            super().__init__(options)
            self.envelopes: list[Any] = []
            self.dropped = 0

        def capture_envelope(self, envelope: Any) -> None:
            self.envelopes.append(envelope)

        def flush(self, timeout: float, callback: Any = None) -> None:
            return None

    class Tapping(HttpTransport):
        """Sends like the SDK's own transport, and keeps a copy and the drop count."""

        def __init__(self, options: Any) -> None:
            super().__init__(options)
            self.envelopes: list[Any] = []
            self.dropped = 0

        def capture_envelope(self, envelope: Any) -> None:
            if any(item.type in ("event", "check_in") for item in envelope.items):
                self.envelopes.append(envelope)
            super().capture_envelope(envelope)

        def on_dropped_event(self, _reason: str) -> None:
            self.dropped += 1

    options: dict[str, Any] = {
        "default_integrations": False,
        "sample_rate": 1.0,
        "environment": "demo",
        "release": "invariantkit-demo",
        # Large enough for the demo's bursts: a full queue silently drops events.
        "transport_queue_size": 10_000,
    }
    if dsn:
        client = sentry_sdk.Client(dsn=dsn, transport=Tapping, **options)
        transport = client.transport
        dest = Destination("Sentry", _host(dsn), "SENTRY_DSN")
    else:
        transport = Keeping()
        client = sentry_sdk.Client(dsn="http://demo@127.0.0.1:9/1", transport=transport, **options)
        dest = Destination("Sentry", "in-process", "SENTRY_DSN")
    return client, transport, dest


def _posthog(
    environ: Mapping[str, str], kept: list[dict[str, Any]], failed: list[int]
) -> tuple[Any, Destination]:
    import posthog

    guard = threading.Lock()

    def keep(message: dict[str, Any]) -> dict[str, Any]:
        with guard:
            kept.append(message)
        return message

    def on_error(error: Exception, batch: list[Any]) -> None:
        failed[0] += len(batch) if batch else 1

    key = environ.get("POSTHOG_PROJECT_API_KEY") or environ.get("POSTHOG_API_KEY")
    if key:
        host = environ.get("POSTHOG_HOST") or "https://us.i.posthog.com"
        client = posthog.Posthog(
            key,
            host=host,
            before_send=keep,
            on_error=on_error,
            timeout=2,
            max_retries=1,
            flush_interval=0.5,
            max_queue_size=100_000,
        )
        return client, Destination("PostHog", _host(host), "POSTHOG_PROJECT_API_KEY")
    client = posthog.Posthog(
        "phc_invariantkit_demo", host="http://127.0.0.1:9", send=False, before_send=keep
    )
    return client, Destination("PostHog", "in-process", "POSTHOG_PROJECT_API_KEY")


def _tracing(
    environ: Mapping[str, str], seed: int | None, results: dict[str, int]
) -> tuple[Any, Any, Destination]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    traces_endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    endpoint = traces_endpoint or (base.rstrip("/") + "/v1/traces" if base else None)
    resource = Resource.create({"service.name": "invariantkit-demo"})
    # Seeded ids make a run reproducible; a real tracing backend needs unique ids per run.
    ids = _seeded_ids(seed) if seed is not None and not endpoint else None
    provider = (
        TracerProvider(resource=resource, id_generator=ids)
        if ids
        else TracerProvider(resource=resource)
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        class Counting(SpanExporter):
            """Counts what the OTLP exporter really delivered (force_flush cannot tell)."""

            def __init__(self, inner: SpanExporter) -> None:
                self.inner = inner

            def export(self, spans: Any) -> SpanExportResult:
                result = self.inner.export(spans)
                key = "exported" if result is SpanExportResult.SUCCESS else "failed"
                results[key] += len(spans)
                return result

            def shutdown(self) -> None:
                self.inner.shutdown()

            def force_flush(self, timeout_millis: int = 30_000) -> bool:
                return self.inner.force_flush(timeout_millis)

        provider.add_span_processor(
            BatchSpanProcessor(
                Counting(OTLPSpanExporter(endpoint=endpoint, timeout=5)),
                max_queue_size=200_000,
                schedule_delay_millis=500,
                max_export_batch_size=2048,
                export_timeout_millis=5_000,
            )
        )
        return (
            provider,
            exporter,
            Destination("trace", _host(endpoint), "OTEL_EXPORTER_OTLP_ENDPOINT"),
        )
    return provider, exporter, Destination("trace", "in-process", "OTEL_EXPORTER_OTLP_ENDPOINT")


def open_pipeline(
    *,
    seed: int | None = None,
    environ: Mapping[str, str] | None = None,
    log_file: str | None = None,
    registry: Any = None,
    service: str = "invariantkit-demo",
) -> Pipeline:
    """Build every backend, install them as invariantkit's configuration, and return the
    :class:`Pipeline`; :meth:`Pipeline.close` puts back what was there before."""
    from prometheus_client import CollectorRegistry

    from invariantkit.sinks._memory import Memory

    env = os.environ if environ is None else environ
    restore: list[Any] = []
    otlp_results = {"exported": 0, "failed": 0}
    posthog_failed = [0]
    provider, span_exporter, trace_dest = _tracing(env, seed, otlp_results)

    def close_tracing() -> None:
        from invariantkit.sinks._posthog import bounded

        # A backend that is down must not keep the demo from ending: the exporter retries.
        bounded(provider.shutdown, 10.0, "invariantkit-demo-tracing")

    restore.append(close_tracing)
    registry = registry if registry is not None else CollectorRegistry()
    sentry_client, sentry_transport, sentry_dest = _sentry(env)
    posthog_messages: list[dict[str, Any]] = []
    posthog_client, posthog_dest = _posthog(env, posthog_messages, posthog_failed)

    def close_posthog() -> None:
        from invariantkit.sinks._posthog import bounded

        bounded(posthog_client.shutdown, 5.0, "invariantkit-demo-posthog")

    restore.append(close_posthog)
    restore.append(lambda: sentry_client.close(timeout=5.0))

    log_lines: list[dict[str, Any]] = []
    logger = logging.getLogger(LOGGER)
    previous = (logger.level, logger.propagate)
    tap = _LogTap(log_lines)
    logger.addHandler(tap)
    handlers: list[logging.Handler] = [tap]
    log_dest = Destination("log", "in-process", "--log-file")
    if log_file:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(JsonFormatter())
        logger.addHandler(file_handler)
        handlers.append(file_handler)
        log_dest = Destination("log", log_file, "--log-file")
    # INFO: one line per outcome (the debug "start" lines are not needed here). Our lines stay
    # out of the root logger so they do not flood the terminal.
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def restore_logger() -> None:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(previous[0])
        logger.propagate = previous[1]

    restore.append(restore_logger)

    memory = Memory()
    sinks = (
        build_sink("otel_traces", provider=provider),
        build_sink("prometheus", registry=registry),
        build_sink("sentry", client=sentry_client),
        build_sink("posthog", client=posthog_client),
        build_sink("json_logs", logger=logger),
        memory,
    )
    config = Config(
        service=service,
        environment="demo",
        mode="report",
        test_mode=False,
        scrubber=Scrubber(),
        sinks=sinks,
    )
    dispatcher = Dispatcher(
        sinks,
        context=SinkContext(
            service=config.service, environment=config.environment, scrubber=config.scrubber
        ),
    )
    user_token = USER.set(None)
    corr_token = CORRELATION.set(None)
    previous_state = swap(config, dispatcher)

    def restore_state() -> None:
        if STATE.dispatcher is dispatcher:
            swap(*previous_state)
        USER.reset(user_token)
        CORRELATION.reset(corr_token)

    restore.append(restore_state)
    return Pipeline(
        config=config,
        dispatcher=dispatcher,
        memory=memory,
        registry=registry,
        provider=provider,
        span_exporter=span_exporter,
        sentry_client=sentry_client,
        sentry_transport=sentry_transport,
        posthog_client=posthog_client,
        posthog_messages=posthog_messages,
        log_lines=log_lines,
        destinations=[
            sentry_dest,
            Destination("Prometheus", "in-process", "--serve"),
            trace_dest,
            posthog_dest,
            log_dest,
        ],
        otlp_results=otlp_results,
        posthog_failed=posthog_failed,
        _restore=restore,
    )
