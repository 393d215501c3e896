"""identify() on Sentry's isolation scope, the duplicate a framework's Sentry integration would
send, and how the ``signals`` fixture reports one failure sent twice."""

from __future__ import annotations

import pytest
import sentry_sdk
from flask import Flask
from sentry_sdk.integrations.flask import FlaskIntegration
from sentry_sdk.integrations.httpx import HttpxIntegration

import invariantkit as ik
from invariantkit.testing import capture_signals
from support.frameworks import serve_wsgi, whoami_concurrently
from test_integrations_wsgi import ProviderDown
from test_integrations_wsgi import make_app as make_wsgi_app


def make_app(*, recapture: bool) -> Flask:
    """The Flask app of test_integrations_wsgi; with ``recapture``, an error handler that
    captures the failure once more itself."""
    app = make_wsgi_app()
    if recapture:

        def handle(exc: ProviderDown) -> tuple[str, int]:
            sentry_sdk.capture_exception(exc)  # the application reports it once more
            return "down", 503

        app.register_error_handler(ProviderDown, handle)
    return app


def test_flasks_own_copy_is_dropped_and_ours_kept() -> None:
    """With Flask's Sentry integration on, one failure is one event: invariantkit's."""
    with capture_signals(sentry_options={"integrations": [FlaskIntegration()]}) as signals:
        response = make_app(recapture=False).test_client().get("/fail", headers={"x-user": "u1"})
        assert response.status_code == 500
        response.close()  # werkzeug's test client leaves it to us; a server closes it
        [event] = signals.sentry_events
        assert event["tags"]["operation"] == "charge"
        assert event["user"]["id"] == "u1"
        assert signals.sentry_duplicates == []
        signals.assert_correlated()


def test_the_signals_fixture_reports_one_failure_sent_twice() -> None:
    """A handler that captures the failure again: sentry_duplicates shows the second event and
    assert_correlated() fails on it."""
    with capture_signals(sentry_options={"integrations": [FlaskIntegration()]}) as signals:
        response = make_app(recapture=True).test_client().get("/fail")
        assert response.status_code == 503
        assert response.data == b"down"
        assert len(signals.sentry_events) == 2
        [duplicate] = signals.sentry_duplicates
        assert duplicate["exception"]["values"][-1]["type"] == "ProviderDown"
        with pytest.raises(AssertionError, match="repeats a failure"):
            signals.assert_correlated()


def test_identify_sets_the_user_on_sentrys_isolation_scope_in_a_request() -> None:
    """Inside a request (here Sentry's transaction for it), events Sentry makes on its own carry
    the identified user; identify(None) clears it."""
    with capture_signals() as signals, sentry_sdk.isolation_scope():
        with sentry_sdk.start_transaction(name="GET /renewals"):
            ik.identify("user_42")
            sentry_sdk.capture_message("from the framework")
            ik.identify(None)
            sentry_sdk.capture_message("anonymous")
        first, second = signals.sentry_events
    assert first["user"] == {"id": "user_42"}
    assert not (second.get("user") or {}).get("id")


def test_outside_a_request_the_user_does_not_outlive_its_binding() -> None:
    """A script's or cron's ``with ik.identify()`` leaves the process's Sentry scope alone: an
    event after the block carries no user."""
    with capture_signals() as signals, sentry_sdk.isolation_scope():
        with ik.identify("user_42"):
            pass
        sentry_sdk.capture_message("later")
        [event] = signals.sentry_events
    assert not (event.get("user") or {}).get("id")


def test_a_span_left_current_after_concurrent_requests_is_not_a_request() -> None:
    """Concurrent asyncio tasks share one Sentry scope, and Sentry's httpx integration restores
    its span in whatever order they end: after ``asyncio.gather()`` of requests outside any
    transaction, a finished span stays current. ``identify()`` there is still outside a request
    and leaves the process's scope alone."""
    with (
        capture_signals(sentry_options={"integrations": [HttpxIntegration()]}) as signals,
        sentry_sdk.isolation_scope(),
    ):
        with serve_wsgi(make_wsgi_app()) as url:
            whoami_concurrently(url, 50)
        left = sentry_sdk.get_current_span()
        assert left is not None, "Sentry left no span current: the test no longer shows the case"
        assert left.timestamp is not None  # finished
        assert left.containing_transaction is None
        with ik.identify("user_42"):
            pass
        sentry_sdk.capture_message("later")
        [event] = [e for e in signals.sentry_events if e.get("message") == "later"]
    assert not (event.get("user") or {}).get("id")
