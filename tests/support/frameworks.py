"""Real servers for the framework integration tests: uvicorn, waitress and redis-server, each on
a free 127.0.0.1 port, bounded in time and stopped by the context manager."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from support.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.receivers import SentryReceiver

__all__ = [
    "TRACEPARENT",
    "TRACE_ID",
    "ProviderDown",
    "Redis",
    "assert_no_leak",
    "assert_one_failure_reported",
    "one_exception_event",
    "sentry_and_sink",
    "sentry_with_integrations",
    "serve_asgi",
    "serve_wsgi",
    "whoami_concurrently",
]

START_TIMEOUT = 15.0
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class ProviderDown(Exception):
    """What the apps' failing ``charge`` operation raises."""


def _wait_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def _serve_in_thread(name: str, run: Any, stop: Any, port: int) -> Iterator[str]:
    """``run()`` in a daemon thread until ``stop()``; yields the base URL once ``port`` listens."""
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        _wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop()
        thread.join(10.0)
        assert not thread.is_alive(), f"{name} did not stop"


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """uvicorn serving ``app`` in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", backlog=2048
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    with _serve_in_thread("uvicorn", server.run, stop, port) as url:
        yield url


@contextlib.contextmanager
def serve_wsgi(app: Any, threads: int = 8) -> Iterator[str]:
    """waitress serving ``app`` in a thread; yields the base URL."""
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=threads)
    port = server.effective_port  # type: ignore[union-attr]
    with _serve_in_thread("waitress", server.run, server.close, port) as url:
        yield url


class Redis:
    """Debian's ``redis-server`` on a free port, in a temporary directory, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="ik-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Redis:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self._dir,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def sentry_with_integrations(dsn: str) -> Iterator[Any]:
    """``sentry_sdk.init`` with its default and auto-enabled integrations (Starlette, FastAPI,
    Flask, Django, Celery, logging...) and tracing; the previous client is restored after."""
    import sentry_sdk

    scope = sentry_sdk.get_global_scope()
    previous = scope.client
    sentry_sdk.init(dsn=dsn, traces_sample_rate=1.0, environment="test")
    client = sentry_sdk.get_client()
    try:
        yield client
    finally:
        client.flush(timeout=2.0)
        scope.set_client(previous)
        client.close(timeout=2.0)


@contextlib.contextmanager
def sentry_and_sink(receiver: SentryReceiver) -> Iterator[SentryReceiver]:
    """:func:`sentry_with_integrations` plus invariantkit configured with its Sentry sink."""
    import invariantkit as ik

    with sentry_with_integrations(receiver.dsn):
        ik.configure(sinks=[ik.sinks.Sentry()])
        yield receiver


def one_exception_event(receiver: SentryReceiver, *, transaction: bool = True) -> Any:
    """Flush invariantkit and Sentry, then the one exception event the receiver got (failing with
    the mechanisms of all of them when there are more); waits for a transaction too."""
    import sentry_sdk

    import invariantkit as ik

    ik.flush()
    sentry_sdk.flush(timeout=5)
    receiver.wait_for(1, item_type="transaction" if transaction else "event")
    exceptions = [e for e in receiver.events if "exception" in e]
    assert len(exceptions) == 1, [e["exception"]["values"][-1]["mechanism"] for e in exceptions]
    return exceptions[0]


def assert_one_failure_reported(receiver: SentryReceiver, url: str) -> None:
    """GET ``{url}/fail`` (an app whose ``charge`` operation raises) as ``user_42`` under
    :data:`TRACEPARENT`: a 500, one exception event (ours) with the operation, the user and the
    incoming trace id; the framework's one transaction carries the same trace id and user."""
    import httpx

    response = httpx.get(
        f"{url}/fail", headers={"traceparent": TRACEPARENT, "x-user": "user_42"}, timeout=10
    )
    assert response.status_code == 500
    event = one_exception_event(receiver)
    assert event["tags"]["operation"] == "charge"
    assert event["user"]["id"] == "user_42"
    assert event["contexts"]["trace"]["trace_id"] == TRACE_ID
    [transaction] = receiver.transactions
    assert transaction["contexts"]["trace"]["trace_id"] == TRACE_ID
    assert transaction["user"]["id"] == "user_42"


def whoami_concurrently(url: str, count: int = 1000) -> list[tuple[int, dict[str, Any]]]:
    """``count`` concurrent GET /whoami over 50 connections: odd requests name a user in X-User,
    every third binds one without ``with`` (``?bind=``); returns ``(i, body)`` pairs."""
    import httpx

    async def run() -> list[tuple[int, dict[str, Any]]]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

            async def one(i: int) -> tuple[int, dict[str, Any]]:
                headers = {"x-user": f"user_{i}"} if i % 2 else {}
                params = {"bind": f"leak_{i}"} if i % 3 == 0 else {}
                response = await client.get("/whoami", headers=headers, params=params)
                return i, response.json()

            return await asyncio.gather(*(one(i) for i in range(count)))

    return asyncio.run(run())


def assert_no_leak(results: list[tuple[int, dict[str, Any]]]) -> None:
    """Each request saw only its own user, and had its own trace id."""
    for i, body in results:
        assert body.get("user") == (f"user_{i}" if i % 2 else None), (i, body)
    assert len({body["trace_id"] for _, body in results}) == len(results)
