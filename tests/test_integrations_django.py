"""Django: the middleware through Django's test client (the real request handler and middleware
chain), with the real Sentry SDK (default integrations on) posting to a receiver on 127.0.0.1."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import django
import pytest
from django.conf import settings

import invariantkit as ik
from invariantkit._context import USER
from support.frameworks import TRACE_ID, TRACEPARENT, ProviderDown, one_exception_event

if TYPE_CHECKING:
    from collections.abc import Callable

    from support.receivers import SentryReceiver

MIDDLEWARE = [
    f"{__name__}.fake_auth",
    "invariantkit.integrations.django.InvariantkitMiddleware",
]

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver", "127.0.0.1"],
        MIDDLEWARE=MIDDLEWARE,
        INSTALLED_APPS=[],
        DATABASES={},
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.http import HttpRequest, JsonResponse  # noqa: E402 - needs settings
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402


def fake_auth(get_response: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Stands in for AuthenticationMiddleware: header X-Account logs account <n> in."""

    def middleware(request: HttpRequest) -> Any:
        account = request.headers.get("x-account")
        request.user = SimpleNamespace(  # type: ignore[assignment]
            is_authenticated=account is not None, pk=int(account) if account else None
        )
        return get_response(request)

    return middleware


def user_from_header(request: HttpRequest) -> str | None:
    """An INVARIANTKIT_USER_ID function."""
    return request.headers.get("x-user")


@ik.operation("charge")
def charge() -> None:
    raise ProviderDown("base pay is down")


def fail(request: HttpRequest) -> JsonResponse:
    charge()
    return JsonResponse({})


def whoami(request: HttpRequest) -> JsonResponse:
    seen = USER.get()
    bind = request.GET.get("bind")
    if bind:
        ik.identify(bind)  # no `with`: must end with the request
    return JsonResponse({"user": seen, "trace_id": ik.correlation_id()})


urlpatterns = [path("fail", fail), path("whoami", whoami)]


def test_one_failure_is_one_sentry_event_with_the_user_and_one_trace_id(
    sentry: SentryReceiver,
) -> None:
    """Django's Sentry integration and the django.request error log drop their copies; our
    event carries the incoming trace id and request.user.pk. (The test client bypasses the WSGI
    handler that starts Sentry's transaction: test_runserver checks the transaction.)"""
    client = Client(raise_request_exception=False)
    response = client.get("/fail", headers={"traceparent": TRACEPARENT, "x-account": "42"})
    assert response.status_code == 500
    event = one_exception_event(sentry, transaction=False)
    assert event["tags"]["operation"] == "charge"
    assert event["user"]["id"] == "42"
    assert event["contexts"]["trace"]["trace_id"] == TRACE_ID


def test_anonymous_requests_bind_no_user_and_nothing_leaks() -> None:
    """A user bound without ``with`` in one request never reaches the next one."""
    client = Client()
    first = client.get("/whoami", {"bind": "leaked"}, headers={"x-account": "7"}).json()
    second = client.get("/whoami").json()
    assert first["user"] == "7"
    assert second["user"] is None
    assert first["trace_id"] != second["trace_id"]


@override_settings(INVARIANTKIT_USER_ID=f"{__name__}.user_from_header")
def test_the_user_id_setting_names_the_function() -> None:
    """``INVARIANTKIT_USER_ID`` is a dotted path to f(request)."""
    body = Client().get("/whoami", headers={"x-user": "u_9", "x-account": "1"}).json()
    assert body["user"] == "u_9"


@override_settings(INVARIANTKIT_USER_ID=f"{__name__}.no_such_function")
def test_a_bad_user_id_setting_fails_loudly() -> None:
    """A dotted path that does not import is a clear error when the middleware loads."""
    with pytest.raises(ImportError, match="INVARIANTKIT_USER_ID"):
        Client().get("/whoami")


def test_an_incoming_traceparent_and_baggage_user_continue() -> None:
    """``ik.inject()`` on the caller: same trace id, and the baggage user when nobody logs in."""
    with ik.extract({"traceparent": TRACEPARENT}), ik.identify("u_5"):
        headers = ik.inject({})
    body = Client().get("/whoami", headers=headers).json()
    assert body == {"user": "u_5", "trace_id": TRACE_ID}
