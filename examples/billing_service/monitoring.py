"""What this service declares for monitoring, and its invariantkit set-up.

Importing this module only declares (the generators read the declarations):

    invariantkit rules -m billing_service.monitoring -o rules.yml

:func:`setup` configures the backends from the environment; the WSGI entry point
(:mod:`billing_service.wsgi`) and ``renewal_cron.py`` call it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import invariantkit as ik
import invariantkit.billing  # declares the guide's three invariants

IDEMPOTENCY_INDEX = "subscription_payment_events_idempotency_idx"

#: Layer 3 that stops double charges; checked at start-up (``pg_constraint_exists``).
IDEMPOTENCY_CONSTRAINT = ik.Constraint(
    IDEMPOTENCY_INDEX,
    team="platform",
    summary="CRITICAL: Billing idempotency constraint missing from database",
    description="The unique index that prevents double-charging is missing.",
)

#: The nightly renewal run (the guide's RenewalCronMissing/Failed/Slow alerts).
RENEWAL_CRON = ik.monitor_cron(
    "subscription_renewal", every=86_400, max_runtime=300, team="billing"
)


def setup(
    *,
    service: str = "billing",
    environ: Mapping[str, str] | None = None,
    pushgateway: str | None = None,
    registry: Any = None,
) -> ik.Config:
    """Configure Sentry, OpenTelemetry, Prometheus, PostHog and JSON logs from the environment.

    ``SENTRY_DSN``: Sentry with ``sample_rate=1.0`` (every violation kept) and a transport queue
    that holds a burst; ``OTEL_EXPORTER_OTLP_ENDPOINT``: traces over OTLP/HTTP;
    ``POSTHOG_PROJECT_API_KEY``/``POSTHOG_HOST``: PostHog (invariantkit builds the client);
    ``pushgateway`` (a cron process) or scrape ``/metrics`` (the WSGI app).
    """
    env = os.environ if environ is None else environ
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ik.JsonFormatter())
    log = logging.getLogger("invariantkit")
    if not any(
        isinstance(h, logging.StreamHandler) and h.stream is sys.stdout for h in log.handlers
    ):
        log.addHandler(handler)
    log.setLevel(logging.INFO)

    sinks: list[Any] = [
        ik.sinks.PrometheusMetrics(registry=registry, pushgateway=pushgateway),
        ik.sinks.JsonLogs(),
    ]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        sinks.append(ik.sinks.OtelTraces(provider))
    if env.get("SENTRY_DSN"):
        import sentry_sdk

        from invariantkit.sentry import before_send

        sentry_sdk.init(
            dsn=env["SENTRY_DSN"],
            sample_rate=1.0,  # never sample errors: each violation is an incident
            transport_queue_size=ik.sinks.Sentry.RECOMMENDED_TRANSPORT_QUEUE_SIZE,
            before_send=before_send,
            environment=env.get("SENTRY_ENVIRONMENT", "production"),
        )
        sinks.append(ik.sinks.Sentry())
    if env.get("POSTHOG_PROJECT_API_KEY"):
        sinks.append(ik.sinks.PostHog())
    return ik.configure(service=service, sinks=sinks)
