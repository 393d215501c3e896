"""The HTTP API (plain WSGI, served by the standard library's ``wsgiref``).

    POST /subscriptions                  {"tier": "horoscope-plus"}     X-User-Id: user_42
    POST /subscriptions/<id>/renew                                      X-User-Id: user_42
    POST /subscriptions/<id>/cancel      {"reason": "user_requested"}   X-User-Id: user_42
    POST /payments/charge                {"subscription_id", "idempotency_key"}  (internal)
    POST /webhooks/payments              {"events": [...]}              (the provider)
    GET  /metrics                        Prometheus
    GET  /healthz

The renew endpoint charges through ``/payments/charge`` over HTTP, as it would call a separate
payments service: ``ik.inject`` puts the trace id and the user id in the request headers and
the payments endpoint continues them with ``ik.extract``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import invariantkit as ik
from billing_service import db
from billing_service.service import Billing, CardProcessor, HttpPayments, NotFound, PaymentFailed
from invariantkit import billing

Handler = Callable[["BillingApp", dict[str, Any], dict[str, str], "re.Match[str]"], tuple[int, Any]]
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _ROUTES.append((method, re.compile(pattern + r"\Z"), fn))
        return fn

    return register


class BillingApp:
    """The WSGI application. ``payments_url`` is where renewals charge (this app's own base URL
    by default, set once the server is listening)."""

    def __init__(self, billing_: Billing) -> None:
        self.billing = billing_

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "/")
        if method == "GET" and path == "/metrics":
            from prometheus_client import make_wsgi_app

            return make_wsgi_app()(environ, start_response)  # type: ignore[no-any-return]
        headers = {
            key[5:].replace("_", "-").lower(): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        for allowed, pattern, handler in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            if method != allowed:
                return _respond(start_response, 405, {"error": "method not allowed"})
            try:
                body = _read_json(environ)
            except (TypeError, ValueError) as exc:
                return _respond(start_response, 400, {"error": str(exc)})
            user = headers.get("x-user-id")
            binding = ik.identify(user) if user else None
            try:
                status, payload = handler(self, body, headers, match)
            except NotFound as exc:
                status, payload = 404, {"error": f"no subscription {exc}"}
            except billing.SubscriptionNotChargeableError as exc:
                status, payload = 409, {"error": "not_chargeable", "trace_id": exc.trace_id}
            except PaymentFailed as exc:
                status, payload = exc.status, {"error": exc.reason, "trace_id": exc.trace_id}
            except (KeyError, TypeError, ValueError) as exc:
                status, payload = 400, {"error": f"bad request: {exc}"}
            except Exception:  # already in Sentry, the span and the logs, with this trace id
                status, payload = 500, {"error": "internal error", "trace_id": ik.correlation_id()}
            finally:
                if binding is not None:
                    binding.detach()
            return _respond(start_response, status, payload)
        return _respond(start_response, 404, {"error": "not found"})


def _read_json(environ: dict[str, Any]) -> dict[str, Any]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if not length:
        return {}
    try:
        data = json.loads(environ["wsgi.input"].read(length))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TypeError("the body must be a JSON object")
    return data


def _respond(start_response: Callable[..., Any], status: int, payload: Any) -> list[bytes]:
    reasons = {
        200: "OK",
        201: "Created",
        400: "Bad Request",
        402: "Payment Required",
        404: "Not Found",
        405: "Method Not Allowed",
        409: "Conflict",
        503: "Service Unavailable",
    }
    body = json.dumps(payload).encode()
    start_response(
        f"{status} {reasons.get(status, 'Error')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


# -- routes -------------------------------------------------------------------------------------


@route("GET", "/healthz")
def healthz(
    app: BillingApp, body: dict[str, Any], headers: dict[str, str], m: re.Match[str]
) -> tuple[int, Any]:
    return 200, {"ok": True}


@route("POST", "/subscriptions")
def subscribe(
    app: BillingApp, body: dict[str, Any], headers: dict[str, str], m: re.Match[str]
) -> tuple[int, Any]:
    user = headers.get("x-user-id")
    if not user:
        raise ValueError("the X-User-Id header is required")
    return 201, app.billing.subscribe(user, str(body.get("tier", "horoscope-plus")))


@route("POST", r"/subscriptions/(?P<id>[\w-]+)/renew")
def renew(
    app: BillingApp, body: dict[str, Any], headers: dict[str, str], m: re.Match[str]
) -> tuple[int, Any]:
    return 200, app.billing.renew(m["id"])


@route("POST", r"/subscriptions/(?P<id>[\w-]+)/cancel")
def cancel(
    app: BillingApp, body: dict[str, Any], headers: dict[str, str], m: re.Match[str]
) -> tuple[int, Any]:
    return 200, app.billing.cancel(m["id"], str(body.get("reason", "user_requested")))


@route("POST", "/payments/charge")
def charge(
    app: BillingApp, body: dict[str, Any], headers: dict[str, str], m: re.Match[str]
) -> tuple[int, Any]:
    # Another service's request: continue its trace id and user id (W3C traceparent, baggage).
    with ik.extract(headers):
        return 200, app.billing.charge(str(body["subscription_id"]), str(body["idempotency_key"]))


@route("POST", "/webhooks/payments")
def payment_webhook(
    app: BillingApp, body: dict[str, Any], headers: dict[str, str], m: re.Match[str]
) -> tuple[int, Any]:
    events = body.get("events")
    if not isinstance(events, list):
        raise TypeError("events must be a list")
    return 200, app.billing.payment_webhook(events)


# -- wiring -------------------------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return None


class _ThreadingServer(WSGIServer):
    """One thread per request: the renew endpoint calls the payments endpoint of this server."""

    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


def create_app(
    db_path: str = ":memory:",
    *,
    processor: CardProcessor | None = None,
    payments_url: str | None = None,
    migrate: bool = True,
    require_constraints: bool = False,
) -> BillingApp:
    """The application on the database at ``db_path``, after the start-up constraint check.

    A missing constraint is reported (Sentry error, ``pg_constraint_exists`` 0, the alert
    fires); with ``require_constraints`` the service also refuses to start. ``payments_url``:
    where renewals charge (default: this server's own ``/payments/charge``).
    """
    conn = db.connect(db_path, migrate=migrate)
    payments = HttpPayments(payments_url) if payments_url else None
    app = BillingApp(Billing(conn, processor=processor, payments=payments))
    found = app.billing.check_constraints()
    if require_constraints and not all(found.values()):
        missing = ", ".join(name for name, ok in found.items() if not ok)
        raise RuntimeError(f"refusing to start: database constraint(s) missing: {missing}")
    return app


class Server:
    """Serve ``app`` on 127.0.0.1 (port 0: a free one) in a background thread; renewals charge
    through this server's own ``/payments/charge``."""

    def __init__(self, app: BillingApp, port: int = 0) -> None:
        self.app = app
        self.httpd = make_server(
            "127.0.0.1", port, app, server_class=_ThreadingServer, handler_class=_Quiet
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        if app.billing.payments is None:
            app.billing.payments = HttpPayments(self.url)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C)."""
        self._thread.join()

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
