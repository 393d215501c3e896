"""Starlette and FastAPI (any ASGI app): one invariantkit context per request.

Example:
    >>> from starlette.applications import Starlette
    >>> from invariantkit.integrations.asgi import InvariantkitMiddleware
    >>> app = Starlette()
    >>> app.add_middleware(InvariantkitMiddleware, user_id=lambda request: None)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from invariantkit.integrations._common import RequestContext, require

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

__all__ = ["InvariantkitMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_NAME = itemgetter(0)


def _search(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """The first ``traceparent`` and every ``baggage`` joined, of headers where a name repeats."""
    names = list(map(_NAME, headers))
    traceparent = baggage = None
    if b"traceparent" in names:
        traceparent = headers[names.index(b"traceparent")][1]
    if b"baggage" in names:
        baggage = b",".join([value for name, value in headers if name == b"baggage"])
    return traceparent, baggage


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
        self._connection: Callable[[Scope], HTTPConnection] | None = None
        if user_id is not None:
            self._connection = require(
                "starlette.requests", "fastapi", "invariantkit.integrations.asgi(user_id=...)"
            ).HTTPConnection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # The two headers found in C, no Python loop over every header: in a dict of them all
        # when no name comes twice (nearly always), else in the list of names. Only one
        # traceparent is valid, the first (as ik.extract() takes it); several baggage headers are
        # one list (W3C Baggage). The traceparent is parsed from its bytes.
        traceparent = raw_baggage = baggage = None
        try:
            headers = scope.get("headers") or ()
            if type(headers) is not list:
                headers = list(headers)
            found = dict(headers)
            if len(found) == len(headers):
                traceparent = found.get(b"traceparent")
                raw_baggage = found.get(b"baggage")
            else:
                traceparent, raw_baggage = _search(headers)
            if raw_baggage is not None:
                baggage = raw_baggage.decode("latin-1")
        except Exception:  # not the headers ASGI specifies: the app deals with them
            traceparent = baggage = None
        context = RequestContext()
        if self._connection is None:
            context.enter(traceparent, baggage)
        else:  # starlette parses the headers of the connection only when user_id reads them
            context.enter(traceparent, baggage, self.user_id, self._connection(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            context.leave()
