"""What every integration does around one request or task: its own context, the incoming trace,
the user."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any
from urllib.parse import unquote_plus

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace

from invariantkit import _sentry_scope
from invariantkit._context import _BAGGAGE as BAGGAGE
from invariantkit._context import (
    BAGGAGE_USER_KEY,
    CORRELATION,
    USER,
    PendingIds,
    new_span_id,
    new_trace_id,
    user_id_text,
)
from invariantkit._context import _check_user_id as check_user_id
from invariantkit._context import _decode_user as decode_user

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


# OpenTelemetry's own pattern (TraceContextTextMapPropagator), so both accept the same headers.
_TRACEPARENT = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$"
)
# What nearly every request sends (version 00, no padding, only the low flag bits), matched first
# with fewer groups; in the text of a header, or in its bytes (an ASGI scope's, not decoded).
_CANONICAL = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0([0-9a-f])")
_CANONICAL_BYTES = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-0([0-9a-f])")
_HEX_DIGIT: dict[str | bytes, int] = {
    key: int(digit, 16) for digit in "0123456789abcdef" for key in (digit, digit.encode())
}
_USER_PREFIX = BAGGAGE_USER_KEY + "="
_USER_PREFIX_LENGTH = len(_USER_PREFIX)
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_FLAGS = (trace.TraceFlags(0), trace.TraceFlags(trace.TraceFlags.SAMPLED))
_monotonic = time.monotonic


def _parse_traceparent(value: str | bytes | None) -> tuple[int, int, int] | None:
    """``(trace_id, span_id, flags)`` of a valid W3C ``traceparent`` (text, or the header's bytes
    as in an ASGI scope), else None. (The same rules as OpenTelemetry's propagator, at a fraction
    of its cost on every request.)"""
    if not value or len(value) > 512:
        return None
    if isinstance(value, bytes):
        canonical: re.Match[Any] | None = _CANONICAL_BYTES.fullmatch(value)
    else:
        canonical = _CANONICAL.fullmatch(value)
    if canonical is not None:
        trace_hex, span_hex, flag = canonical.groups()
        trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
        if not trace_id or not span_id:
            return None
        return trace_id, span_id, _HEX_DIGIT[flag]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (rest and version == "00"):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags, 16)


def _no_tracer_sdk() -> bool:
    """True while no OpenTelemetry SDK tracer provider is set; rechecked at most once a second
    (the check reads ``os.environ``, a measurable share of a request's cost)."""
    global _sdk_checked_at, _sdk_absent
    now = _monotonic()
    if now - _sdk_checked_at > 1.0:
        _sdk_checked_at = now
        _sdk_absent = isinstance(trace.get_tracer_provider(), _NO_SDK)
    return _sdk_absent


_sdk_checked_at = -2.0
_sdk_absent = True


class RequestContext:
    """The bindings of one request or task, entered at its start and left at its end.

    ``enter()`` always binds the user (``None`` when nobody is known) and, unless OpenTelemetry's
    instrumentation made a span current, the trace context, with tokens that ``leave()`` resets:
    whatever the handler binds without ``with`` is undone too. It runs on every request, so it
    avoids OpenTelemetry's generic propagators where it can (``benchmarks/asgi.py``).
    """

    # No __init__: one is made per request, and what enter() leaves unset stays None.
    _in_request: Any = None
    _corr_token: Any = None
    _otel_token: Any = None
    _user_token: Any = None
    _sentry: Any = None

    def enter(
        self,
        traceparent: str | bytes | None,
        baggage: str | None,
        user: Callable[[Any], object] | None = None,
        request: Any = None,
    ) -> None:
        """Continue ``traceparent`` (text, or the header's bytes) and ``baggage``, and bind the
        user ``user(request)`` returns (else the one in ``baggage``, else none). Never raises."""
        try:
            sdk = _sentry_scope.active_sdk() if "sentry_sdk" in sys.modules else None
            if sdk is not None:
                sentry_span = _sentry_scope.request_span(sdk)  # looked up once, passed on
                self._sentry = _sentry_scope.isolation(sdk, sentry_span)
                self._sentry.__enter__()
                self._in_request = _sentry_scope.IN_REQUEST.set(True)
            ctx = otel_context.get_current()
            # An empty context has no span: no lookups.
            span: Any = trace.get_current_span(ctx) if ctx else None
            # The incoming trace, parsed below only when something needs its ids now.
            continued = span is not None and span.get_span_context().is_valid
            if not continued:  # else OpenTelemetry's instrumentation continued the trace
                span = None
            baggage_user = plain_user = None
            if baggage:
                if baggage.startswith(_USER_PREFIX) and "," not in baggage and ";" not in baggage:
                    plain_user = baggage[_USER_PREFIX_LENGTH:]  # decoded only if it is needed
                else:  # other members too: keep them all in the context, as ik.extract() does
                    ctx = BAGGAGE.extract({"baggage": baggage}, context=ctx)
                    value = otel_baggage.get_baggage(BAGGAGE_USER_KEY, ctx)
                    if isinstance(value, str):
                        baggage_user = decode_user(value)
            remote = None
            if (
                not continued
                and sdk is None
                and not ctx
                # _no_tracer_sdk(), its answer of the last second read inline
                and (_sdk_absent if _monotonic() - _sdk_checked_at <= 1.0 else _no_tracer_sdk())
            ):
                # No OpenTelemetry SDK, no Sentry, nothing else in the context: invariantkit's
                # own correlation is the whole trace context (one contextvar, what operations use
                # without a tracer), and the traceparent is parsed when invariantkit first reads
                # it: a request that never reaches invariantkit never pays for it.
                self._corr_token = CORRELATION.set(PendingIds(traceparent, _parse_traceparent))
            else:
                if not continued:
                    remote = _parse_traceparent(traceparent)
                    if remote is None:
                        ids = None
                        if sdk is not None:
                            ids = _sentry_scope.current_trace(sdk, sentry_span)
                        if ids is not None:
                            remote = (int(ids[0], 16), int(ids[1], 16), 1)
                        else:
                            remote = (new_trace_id(), new_span_id(), 1)
                if remote is not None:
                    parent = trace.NonRecordingSpan(
                        trace.SpanContext(remote[0], remote[1], True, _FLAGS[remote[2] & 1])
                    )
                    ctx = trace.set_span_in_context(parent, ctx)
                self._otel_token = otel_context.attach(ctx)
            self._user_token = USER.set(
                _request_user(user, request, span, baggage_user, plain_user)
            )
            if sdk is not None:
                trace_id = remote[0] if remote is not None else span.get_span_context().trace_id
                _sentry_scope.set_user(USER.get(), sdk)
                _sentry_scope.align_trace(format(trace_id, "032x"), sdk, sentry_span)
        except Exception:
            logger.warning("invariantkit: could not bind the request's context", exc_info=True)

    def leave(self) -> None:
        """Restore what was bound before :meth:`enter`. Never raises."""
        # Each reset on its own: one failing (left in another context) must not keep the others.
        if self._user_token is not None:
            _quietly(USER.reset, self._user_token)
        if self._otel_token is not None:
            _quietly(otel_context.detach, self._otel_token)
        if self._corr_token is not None:
            _quietly(CORRELATION.reset, self._corr_token)
        if self._in_request is not None:
            _quietly(_sentry_scope.IN_REQUEST.reset, self._in_request)
        if self._sentry is not None:
            _quietly(self._sentry.__exit__, None, None, None)
        self._user_token = self._otel_token = self._corr_token = None
        self._in_request = self._sentry = None


def _quietly(undo: Callable[..., object], *args: Any) -> None:
    """``undo(*args)``, whatever it raises (a token made in another context, a scope already
    closed): leaving a request never fails it."""
    try:
        undo(*args)
    except Exception:
        pass


def _decode_plain(raw: str) -> str:
    """The user id in a ``baggage`` of only ``user_id=<raw>``, decoded as OpenTelemetry's
    propagator (and so ``ik.extract()``) decodes it."""
    if "%" in raw or "+" in raw or raw != raw.strip():
        raw = unquote_plus(raw).strip()
    return decode_user(raw)


def _request_user(
    user: Callable[[Any], object] | None,
    request: Any,
    span: Any,
    baggage_user: str | None,
    plain_baggage_user: str | None = None,
) -> str | None:
    """The user of the request: what ``user(request)`` returns, validated and made safe as
    ``identify()`` does it (an invalid one is logged and ignored), else the one in ``baggage``
    (made safe the same way, as ``ik.extract()`` does)."""
    if user is not None:
        try:
            user_id = user(request)
        except Exception:
            logger.warning(
                "invariantkit: the user_id callable raised; no user bound", exc_info=True
            )
            user_id = None
        if user_id is not None:
            try:
                # (A str needs no type check: straight to identify()'s PII handling.)
                text = user_id_text(user_id) if type(user_id) is str else check_user_id(user_id)
            except (TypeError, ValueError) as exc:
                logger.warning("invariantkit: ignoring the user id of the request: %s", exc)
            else:
                if text is not None and span is not None and span.is_recording():
                    span.set_attribute("enduser.id", text)  # as identify() does
                return text
    if plain_baggage_user is not None:
        baggage_user = _decode_plain(plain_baggage_user)
    return user_id_text(baggage_user) if baggage_user else None
