"""Shared fixtures: HTTP receivers and real servers (see ``tests/support``)."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from support.receivers import OTLPReceiver, PostHogReceiver, SentryReceiver, WebhookReceiver
from support.servers import Alertmanager, Postgres, Prometheus, Pushgateway

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# --- receivers (function scope) ---


@pytest.fixture
def sentry_receiver() -> Iterator[SentryReceiver]:
    """A Sentry ingestion endpoint; pass ``sentry_receiver.dsn`` to the SDK."""
    with SentryReceiver() as receiver:
        yield receiver


@pytest.fixture
def posthog_receiver() -> Iterator[PostHogReceiver]:
    """A PostHog capture endpoint; pass ``posthog_receiver.host`` to the client."""
    with PostHogReceiver() as receiver:
        yield receiver


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """An OTLP/HTTP collector; export to ``otlp_receiver.endpoint + "/v1/traces"``."""
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A webhook target for Alertmanager; configure ``webhook_receiver.url``."""
    with WebhookReceiver() as receiver:
        yield receiver


# --- real servers ---


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    """A fresh in-memory Pushgateway; push to ``pushgateway.address``."""
    with Pushgateway() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL 15 server for the session; use ``pg_dsn`` for a fresh database."""
    with Postgres() as server:
        yield server


@pytest.fixture
def pg_dsn(postgres: Postgres) -> Iterator[str]:
    """DSN of a database created for this test and dropped after it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = postgres.create_database(name)
    try:
        yield dsn
    finally:
        postgres.drop_database(name)


@pytest.fixture
def prometheus_factory() -> Iterator[Callable[..., Prometheus]]:
    """Build started Prometheus servers: ``prometheus_factory(config=None, rule_files=None,
    *, scrape_targets=(), alertmanagers=(), honor_labels=True)``; all stop after the test."""
    with contextlib.ExitStack() as stack:

        def make(*args: Any, **kwargs: Any) -> Prometheus:
            return stack.enter_context(Prometheus(*args, **kwargs))

        yield make


@pytest.fixture
def alertmanager_factory() -> Iterator[Callable[..., Alertmanager]]:
    """Build started Alertmanagers: ``alertmanager_factory(config=None, *, webhook_url=None)``;
    all stop after the test."""
    with contextlib.ExitStack() as stack:

        def make(*args: Any, **kwargs: Any) -> Alertmanager:
            return stack.enter_context(Alertmanager(*args, **kwargs))

        yield make


# --- invariantkit fixtures (owned by the core) ---
