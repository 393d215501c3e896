"""Starlette and FastAPI (any ASGI app): one invariantkit context per request.

Example:
    >>> from starlette.applications import Starlette
    >>> from invariantkit.integrations.asgi import InvariantkitMiddleware
    >>> app = Starlette()
    >>> app.add_middleware(InvariantkitMiddleware, user_id=lambda request: None)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from invariantkit.integrations._common import RequestContext, require

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

__all__ = ["InvariantkitMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _connection_builder() -> Callable[[Scope, list[Any]], HTTPConnection]:
    """What makes the ``HTTPConnection`` that ``user_id`` is given, from the scope and its list of
    headers.

    ``HTTPConnection(scope)`` builds its ``Headers`` on first use of ``.headers`` (the scope's
    list, kept in ``_headers``): about 6,000 instructions of every request whose ``user_id``
    reads a header, half of that saved here (``benchmarks/asgi.py``). The connection is made in
    the state that leaves it in, without the constructors' calls, when this Starlette keeps
    exactly that state (checked once, on a probe scope); otherwise by Starlette's own
    constructor.
    """
    from starlette.datastructures import Headers
    from starlette.requests import HTTPConnection

    new = object.__new__

    def build(scope: Scope, headers: list[Any]) -> HTTPConnection:
        built_headers = new(Headers)
        built_headers._list = headers
        connection = new(HTTPConnection)
        connection.scope = scope
        connection._headers = built_headers
        return connection

    def construct(scope: Scope, headers: list[Any]) -> HTTPConnection:
        return HTTPConnection(scope)

    try:
        probe: Scope = {"type": "http", "headers": [(b"x-user", b"u1")]}
        made = HTTPConnection(probe)
        expected = made.headers.get("x-user")
        built = build({**probe}, probe["headers"])
        if (
            vars(built).keys() == vars(made).keys()
            and vars(built.headers) == vars(made.headers)
            and built.headers.get("x-user") == expected == "u1"
        ):
            return build
    except Exception:
        pass
    return construct


class InvariantkitMiddleware:
    """A pure ASGI middleware: each HTTP or WebSocket connection runs in its own invariantkit
    context, continuing the incoming ``traceparent``/``baggage`` (unless OpenTelemetry's ASGI
    instrumentation already made a span current) and binding the user.

    Args:
        app: the ASGI application to wrap.
        user_id: ``f(connection) -> str | int | None``, given a
            ``starlette.requests.HTTPConnection``: the user of the request (say, from the
            session or a verified token). Default: the ``user_id`` in the incoming ``baggage``,
            else no user. Needs Starlette (``pip install 'invariantkit[fastapi]'``).

    A user bound with ``ik.identify()`` inside a handler, with or without ``with``, ends with the
    request. Lifespan and other scopes pass through untouched.

    Example:
        >>> from fastapi import FastAPI
        >>> from invariantkit.integrations.asgi import InvariantkitMiddleware
        >>> app = FastAPI()
        >>> app.add_middleware(
        ...     InvariantkitMiddleware, user_id=lambda request: request.headers.get("x-user")
        ... )
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        user_id: Callable[[HTTPConnection], str | int | None] | None = None,
    ) -> None:
        if user_id is not None and not callable(user_id):
            raise TypeError(
                "InvariantkitMiddleware(user_id=...): expected a function of the request, got "
                f"{type(user_id).__name__}"
            )
        self.app = app
        self.user_id = user_id
        self._connection: Callable[[Scope, list[Any]], HTTPConnection] | None = None
        if user_id is not None:
            require("starlette.requests", "fastapi", "invariantkit.integrations.asgi(user_id=...)")
            self._connection = _connection_builder()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # One pass over the headers: comparing names of other lengths costs next to nothing, less
        # than building a dict or a list of the names (benchmarks/asgi.py). Only one
        # traceparent is valid, the first (as ik.extract() takes it); several baggage headers are
        # one list (W3C Baggage). The traceparent is parsed from its bytes.
        traceparent = raw_baggage = baggage = None
        headers: list[Any] = scope.get("headers") or []
        try:
            if type(headers) is not list:
                headers = scope["headers"] = list(headers)  # as Starlette's Headers does
            for name, value in headers:
                if name == b"traceparent":
                    if traceparent is None:
                        traceparent = value
                elif name == b"baggage":
                    raw_baggage = value if raw_baggage is None else raw_baggage + b"," + value
            if raw_baggage is not None:
                baggage = raw_baggage.decode("latin-1")
        except Exception:  # not the headers ASGI specifies: the app deals with them
            traceparent = baggage = None
        context = RequestContext()
        if self._connection is None:
            context.enter(traceparent, baggage)
        else:
            context.enter(traceparent, baggage, self.user_id, self._connection(scope, headers))
        try:
            await self.app(scope, receive, send)
        finally:
            context.leave()
