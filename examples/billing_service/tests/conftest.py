"""Fixtures: the service on an in-memory database, served on 127.0.0.1, under ``signals``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from billing_service.app import BillingApp, Server, create_app
from billing_service.service import CardProcessor


class Clock:
    """A clock the tests move forward."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float) -> None:
        self.now += days * 86_400


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def processor() -> CardProcessor:
    return CardProcessor()


@pytest.fixture
def app(signals: Any, processor: CardProcessor, clock: Clock) -> BillingApp:
    """The app, created under ``signals`` so its start-up check is captured too."""
    application = create_app(":memory:", processor=processor)
    application.billing.clock = clock
    return application


@pytest.fixture
def server(app: BillingApp) -> Iterator[Server]:
    with Server(app) as running:
        yield running


def call(
    server: Server, method: str, path: str, body: Any = None, user: str | None = None
) -> tuple[int, Any]:
    """One HTTP request to the service; returns (status, JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if user:
        headers["X-User-Id"] = user
    request = urllib.request.Request(server.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
