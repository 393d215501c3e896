"""What every integration does around one request or task: its own context, the incoming trace,
the user."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from opentelemetry import trace

from invariantkit import _sentry_scope
from invariantkit._context import USER, Binding, extract, identify, new_span_id, new_trace_id

__all__ = ["RequestContext", "require"]

logger = logging.getLogger("invariantkit")


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise an ImportError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs {module.partition('.')[0]}: pip install 'invariantkit[{extra}]'"
        ) from exc


def _valid_traceparent(value: str | None) -> bool:
    # "00-<32 hex>-<16 hex>-<2 hex>": the propagator checks the rest; a cheap shape test keeps a
    # malformed header from replacing the fresh correlation the request gets otherwise.
    return isinstance(value, str) and len(value) >= 55 and value[2] == "-"


class RequestContext:
    """The bindings of one request or task, entered at its start and left at its end.

    ``enter()`` always binds the user (``None`` when nobody is known) and the trace context, with
    tokens that ``leave()`` resets: whatever the handler binds without ``with`` is undone too.
    """

    __slots__ = ("_bindings",)

    def __init__(self) -> None:
        self._bindings: list[Binding] = []

    def enter(
        self,
        traceparent: str | None,
        baggage: str | None,
        user: Callable[[], object] | None = None,
    ) -> None:
        """Continue ``traceparent``/``baggage`` and bind the user ``user()`` returns (else the one
        in ``baggage``, else none). Never raises."""
        bindings = self._bindings
        try:
            bindings.append(identify(None))  # this request's own user token, reset by leave()
            carrier: dict[str, str] = {}
            if baggage:
                carrier["baggage"] = baggage
            if not trace.get_current_span().get_span_context().is_valid:
                # OpenTelemetry's instrumentation has not continued the trace: we do.
                if not _valid_traceparent(traceparent):
                    ids = _sentry_scope.current_trace()
                    trace_id = ids[0] if ids else format(new_trace_id(), "032x")
                    span_id = ids[1] if ids else format(new_span_id(), "016x")
                    traceparent = f"00-{trace_id}-{span_id}-01"
                carrier["traceparent"] = traceparent  # type: ignore[assignment]
            bindings.append(extract(carrier))
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                _sentry_scope.align_trace(format(ctx.trace_id, "032x"))
            user_id = _call_user(user) if user is not None else None
            if user_id is not None:
                try:
                    bindings.append(identify(user_id))  # type: ignore[arg-type]
                except (TypeError, ValueError) as exc:
                    logger.warning("invariantkit: ignoring the user id of the request: %s", exc)
                    _sentry_scope.set_user(USER.get())
            else:
                _sentry_scope.set_user(USER.get())  # the user from baggage, if any
        except Exception:
            logger.warning("invariantkit: could not bind the request's context", exc_info=True)

    def leave(self) -> None:
        """Restore what was bound before :meth:`enter`. Never raises."""
        bindings = self._bindings
        while bindings:
            try:
                bindings.pop().detach()
            except Exception:
                pass


def _call_user(user: Callable[[], object]) -> object:
    try:
        return user()
    except Exception:
        logger.warning("invariantkit: the user_id callable raised; no user bound", exc_info=True)
        return None


def header(headers: Any, name: str) -> str | None:
    """The value of header ``name`` from a list of ``(bytes, bytes)`` pairs (ASGI), or None."""
    raw = name.encode("latin-1")
    for key, value in headers:
        if key == raw:
            return str(value.decode("latin-1"))
    return None
