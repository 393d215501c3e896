"""FastAPI under a real uvicorn, with the real Sentry SDK (default integrations on) posting to a
receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI, Request

import invariantkit as ik
from invariantkit._context import USER
from invariantkit.integrations.asgi import InvariantkitMiddleware
from support.frameworks import (
    TRACE_ID,
    TRACEPARENT,
    ProviderDown,
    assert_no_leak,
    assert_one_failure_reported,
    serve_asgi,
    whoami_concurrently,
)

if TYPE_CHECKING:
    from support.receivers import SentryReceiver


def make_app() -> Any:
    app = FastAPI()
    app.add_middleware(InvariantkitMiddleware, user_id=lambda conn: conn.headers.get("x-user"))

    @ik.operation("charge")
    def charge() -> None:
        raise ProviderDown("base pay is down")

    @app.get("/fail")
    def fail() -> None:
        charge()

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        seen = USER.get()
        bind = request.query_params.get("bind")
        if bind:
            ik.identify(bind)  # no `with`: must end with the request
        await asyncio.sleep(0)
        return {"user": seen, "trace_id": ik.correlation_id()}

    return app


def test_one_failure_is_one_sentry_event_with_the_user_and_one_trace_id(
    sentry: SentryReceiver,
) -> None:
    """A failing operation in a handler: our event only (Sentry's Starlette integration's copy is
    dropped), with the user; the framework's transaction carries the same trace id and user."""
    with serve_asgi(make_app()) as url:
        assert_one_failure_reported(sentry, url)


def test_no_user_leaks_across_1000_concurrent_requests() -> None:
    """Each request sees only its own user (header, or none), even when the previous request on
    the same connection bound one without ``with``; each gets its own trace id."""
    ik.configure(sinks=[ik.sinks.Memory()])
    with serve_asgi(make_app()) as url:
        assert_no_leak(whoami_concurrently(url, 1000))


def test_an_incoming_baggage_user_is_bound_without_a_user_function() -> None:
    """``ik.inject()`` on the caller, the middleware on the server: same trace id and user."""
    app = FastAPI()
    app.add_middleware(InvariantkitMiddleware)

    @app.get("/")
    def index() -> dict[str, Any]:
        return {"user": USER.get(), "trace_id": ik.correlation_id()}

    with serve_asgi(app) as url, ik.extract({"traceparent": TRACEPARENT}), ik.identify("u_7"):
        body = httpx.get(url, headers=ik.inject({}), timeout=10).json()
    assert body == {"user": "u_7", "trace_id": TRACE_ID}
