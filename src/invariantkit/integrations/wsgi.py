"""Flask (any WSGI app): one invariantkit context per request.

Example:
    >>> from flask import Flask
    >>> from invariantkit.integrations.wsgi import InvariantkitMiddleware
    >>> app = Flask(__name__)
    >>> app.wsgi_app = InvariantkitMiddleware(app.wsgi_app)  # type: ignore[method-assign]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from invariantkit.integrations._common import RequestContext

__all__ = ["InvariantkitMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class InvariantkitMiddleware:
    """A WSGI middleware: each request runs in its own invariantkit context, continuing the
    incoming ``traceparent``/``baggage`` (unless OpenTelemetry's WSGI instrumentation already made
    a span current) and binding the user, until the response body is closed.

    Args:
        wsgi_app: the WSGI application to wrap (Flask: ``app.wsgi_app``).
        user_id: ``f(environ) -> str | int | None``: the user of the request. Default: the
            ``user_id`` in the incoming ``baggage``, else no user.

    Needs no framework. What the request bound is reset when the server closes the response, so
    a user bound with ``ik.identify()`` without ``with`` ends with the request, even on a server
    that reuses its threads.

    Example:
        >>> from flask import Flask
        >>> from invariantkit.integrations.wsgi import InvariantkitMiddleware
        >>> app = Flask(__name__)
        >>> app.wsgi_app = InvariantkitMiddleware(  # type: ignore[method-assign]
        ...     app.wsgi_app, user_id=lambda environ: environ.get("HTTP_X_USER")
        ... )
    """

    def __init__(
        self,
        wsgi_app: WSGIApp,
        *,
        user_id: Callable[[Environ], str | int | None] | None = None,
    ) -> None:
        if user_id is not None and not callable(user_id):
            raise TypeError(
                "InvariantkitMiddleware(user_id=...): expected a function of the environ, got "
                f"{type(user_id).__name__}"
            )
        self.wsgi_app = wsgi_app
        self.user_id = user_id

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        context = RequestContext()
        context.enter(
            environ.get("HTTP_TRACEPARENT"), environ.get("HTTP_BAGGAGE"), self.user_id, environ
        )
        try:
            body = self.wsgi_app(environ, start_response)
        except BaseException:
            context.leave()
            raise
        return _ClosingBody(body, context)


class _ClosingBody:
    """The response body; the request's context ends after the last byte, or on ``close()``
    (the server calls it, PEP 3333), whichever comes first."""

    __slots__ = ("_body", "_context")

    def __init__(self, body: Iterable[bytes], context: RequestContext) -> None:
        self._body = body
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        yield from self._body
        # Also end here: a test client that does not close the response (werkzeug's, unbuffered)
        # must not leave the request's user and trace bound in the test.
        self._context.leave()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._context.leave()
