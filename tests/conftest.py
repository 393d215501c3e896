"""Shared fixtures: HTTP receivers and real servers (see ``tests/support``)."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from support.frameworks import sentry_and_sink
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
def sentry(sentry_receiver: SentryReceiver) -> Iterator[SentryReceiver]:
    """The real Sentry SDK with its default integrations and invariantkit with its Sentry sink,
    both posting to ``sentry_receiver`` (the framework integration tests)."""
    with sentry_and_sink(sentry_receiver) as receiver:
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


@pytest.fixture(autouse=True)
def _restore_invariantkit_state() -> Iterator[None]:
    """Leave invariantkit as each test found it (like structlog's reset_defaults): configuration,
    catalog, bound user and correlation, and Sentry's global client."""
    import sentry_sdk

    from invariantkit._catalog import get_catalog
    from invariantkit._config import STATE, swap
    from invariantkit._context import CORRELATION, USER

    saved_state = (STATE.config, STATE.dispatcher)
    catalog = get_catalog().snapshot()
    user_token = USER.set(None)
    corr_token = CORRELATION.set(None)
    sentry_scope = sentry_sdk.get_global_scope()
    sentry_client = sentry_scope.client
    try:
        yield
    finally:
        current = STATE.dispatcher
        if current is not saved_state[1]:
            swap(*saved_state)
            if current is not None:
                current.shutdown(1.0)
        get_catalog().restore(catalog)
        USER.reset(user_token)
        CORRELATION.reset(corr_token)
        sentry_scope.set_client(sentry_client)
