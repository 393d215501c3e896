"""Django with invariantkit: one line in MIDDLEWARE, no per-view ``identify()``.

A one-file Django project:

    python examples/django/app.py                                     # a self-check
    python examples/django/app.py runserver 127.0.0.1:8000 --noreload  # serve it

Every request continues the caller's ``traceparent`` (or starts a trace) and binds the user:
here ``INVARIANTKIT_USER_ID`` names a function reading ``X-User-Id``; by default it is
``request.user.pk`` for an authenticated user. With ``SENTRY_DSN`` set, a failing renewal is one
Sentry event carrying the user, and the request's transaction has the same trace id.
"""

from __future__ import annotations

import json
import os
import sys

import django
from django.conf import settings

import invariantkit as ik
from invariantkit import billing

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        MIDDLEWARE=["invariantkit.integrations.django.InvariantkitMiddleware"],
        INVARIANTKIT_USER_ID=f"{__name__}.user_id",
        INSTALLED_APPS=[],
        DATABASES={},
    )

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def user_id(request: HttpRequest) -> str | None:
    """INVARIANTKIT_USER_ID: who is calling (a real app trusts its session, not a header)."""
    return request.headers.get("x-user-id")


@ik.billing_operation("renewal")
def renew(charges_today: int) -> bool:
    return ik.assert_invariant(charges_today <= 1, billing.NO_DOUBLE_CHARGE)


@csrf_exempt
def renewal(request: HttpRequest, charges_today: int) -> JsonResponse:
    return JsonResponse({"held": renew(charges_today), "trace_id": ik.correlation_id()})


urlpatterns = [path("renewals/<int:charges_today>", renewal)]


def setup() -> None:
    if os.environ.get("SENTRY_DSN"):
        import sentry_sdk

        sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], traces_sample_rate=1.0)
    ik.configure(service="billing-django")
    django.setup()


def self_check() -> int:
    from django.test import Client

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = Client().post(
        "/renewals/2",
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "x-user-id": "user_42"},
    )
    body = response.json()
    print(json.dumps(body))
    ik.flush()
    return 0 if body == {"held": False, "trace_id": trace_id} else 1


if __name__ == "__main__":
    setup()
    if len(sys.argv) > 1:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    else:
        sys.exit(self_check())
