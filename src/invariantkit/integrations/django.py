"""Django: one invariantkit context per request.

Add ``"invariantkit.integrations.django.InvariantkitMiddleware"`` to ``MIDDLEWARE``, after
``AuthenticationMiddleware`` (the default user is ``request.user.pk``). The optional setting
``INVARIANTKIT_USER_ID`` is a dotted path to ``f(request) -> str | int | None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from invariantkit.integrations._common import RequestContext, require

__all__ = ["InvariantkitMiddleware", "default_user_id"]

_NEEDS = "invariantkit.integrations.django"


def default_user_id(request: Any) -> object:
    """``request.user.pk`` when the user is authenticated, else None (also without
    ``django.contrib.auth``'s middleware): the user when ``INVARIANTKIT_USER_ID`` is not set.

    Example:
        >>> from types import SimpleNamespace
        >>> from invariantkit.integrations.django import default_user_id
        >>> default_user_id(SimpleNamespace(user=SimpleNamespace(is_authenticated=True, pk=42)))
        42
    """
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return getattr(user, "pk", None)


def _user_function() -> Callable[[Any], object]:
    settings = require("django.conf", "django", _NEEDS).settings
    path = getattr(settings, "INVARIANTKIT_USER_ID", None)
    if path is None:
        return default_user_id
    if callable(path):
        return path  # type: ignore[no-any-return]
    if not isinstance(path, str):
        raise TypeError(
            "settings.INVARIANTKIT_USER_ID must be a dotted path to f(request), not "
            f"{type(path).__name__}"
        )
    import_string = require("django.utils.module_loading", "django", _NEEDS).import_string
    try:
        function = import_string(path)
    except ImportError as exc:
        raise ImportError(f"settings.INVARIANTKIT_USER_ID={path!r}: {exc}") from exc
    if not callable(function):
        raise TypeError(f"settings.INVARIANTKIT_USER_ID={path!r} is not callable")
    return function  # type: ignore[no-any-return]


class InvariantkitMiddleware:
    """Each request runs in its own invariantkit context, continuing the incoming
    ``traceparent``/``baggage`` (unless OpenTelemetry's Django instrumentation already made a span
    current) and binding the user: ``settings.INVARIANTKIT_USER_ID(request)``, by default
    ``request.user.pk`` when authenticated. Works under WSGI and ASGI (sync and async views).

    Args:
        get_response: the next middleware or view (Django passes it).

    Example:
        In ``settings.py``:

        ```python
        MIDDLEWARE = [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "invariantkit.integrations.django.InvariantkitMiddleware",
        ]
        INVARIANTKIT_USER_ID = "billing.auth.account_id"  # optional
        ```
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.user_id = _user_function()
        asyncio = require("asgiref.sync", "django", _NEEDS)
        self._async = bool(asyncio.iscoroutinefunction(get_response))
        if self._async:
            asyncio.markcoroutinefunction(self)

    def _enter(self, request: Any) -> RequestContext:
        meta = request.META
        context = RequestContext()
        context.enter(meta.get("HTTP_TRACEPARENT"), meta.get("HTTP_BAGGAGE"), self.user_id, request)
        return context

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        context = self._enter(request)
        try:
            return self.get_response(request)
        finally:
            context.leave()

    async def __acall__(self, request: Any) -> Any:
        if self.user_id is default_user_id and hasattr(request, "auser"):
            # request.user may not be touched from async code: resolve it first.
            request.user = await request.auser()
        context = self._enter(request)
        try:
            return await self.get_response(request)
        finally:
            context.leave()
