"""Flask under a real WSGI server (waitress), with the real Sentry SDK (default integrations on)
posting to a receiver on 127.0.0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, request

import invariantkit as ik
from invariantkit._context import USER
from invariantkit.integrations.wsgi import InvariantkitMiddleware
from support.frameworks import (
    ProviderDown,
    assert_no_leak,
    assert_one_failure_reported,
    serve_wsgi,
    whoami_concurrently,
)

if TYPE_CHECKING:
    from support.receivers import SentryReceiver


def make_app() -> Flask:
    app = Flask(__name__)
    app.wsgi_app = InvariantkitMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, user_id=lambda environ: environ.get("HTTP_X_USER")
    )

    @ik.operation("charge")
    def charge() -> None:
        raise ProviderDown("base pay is down")

    @app.get("/fail")
    def fail() -> str:
        charge()
        return "unreachable"

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        seen = USER.get()
        bind = request.args.get("bind")
        if bind:
            ik.identify(bind)  # no `with`: must end with the request
        return {"user": seen, "trace_id": ik.correlation_id()}

    return app


def test_one_failure_is_one_sentry_event_with_the_user_and_one_trace_id(
    sentry: SentryReceiver,
) -> None:
    """Flask's Sentry integration (and the logging integration, which sees Flask's error log)
    drop their copies; the transaction carries our trace id and the user."""
    with serve_wsgi(make_app()) as url:
        assert_one_failure_reported(sentry, url)


def test_no_user_leaks_across_1000_concurrent_requests(sentry: SentryReceiver) -> None:
    """waitress reuses 8 threads for 1,000 requests: each sees only its own user, even after a
    request on the same thread bound one without ``with``; each gets its own trace id."""
    with serve_wsgi(make_app()) as url:
        assert_no_leak(whoami_concurrently(url, 1000))
