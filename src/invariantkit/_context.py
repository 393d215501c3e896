"""Correlation: one trace id and one user id for every signal of a unit of work."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from invariantkit import _sentry_scope
from invariantkit._safe import REDACTED, Scrubber

__all__ = ["Binding", "correlation_id", "extract", "identify", "inject"]

#: The user bound with ``identify()`` in the current context.
USER: ContextVar[str | None] = ContextVar("invariantkit.user_id", default=None)


class PendingIds:
    """A request's incoming ``traceparent``, parsed when invariantkit first reads the correlation
    (an integration binds one when neither Sentry nor an OpenTelemetry SDK needs the ids at once):
    a request that never reaches invariantkit never pays for the parse. ``parse(header)`` gives
    ``(trace_id, span_id, flags)`` or None (then new random ids). The first ids made are the
    request's for good, even when threads of the request read them at the same moment."""

    __slots__ = ("_header", "_ids", "_parse")

    def __init__(self, header: Any, parse: Callable[[Any], tuple[int, int, int] | None]) -> None:
        self._header = header
        self._parse = parse
        self._ids: list[tuple[int, int]] = []  # one item, once made: append() is atomic

    def ids(self) -> tuple[int, int]:
        made = self._ids
        if not made:
            try:
                parsed = self._parse(self._header)
            except Exception:
                parsed = None
            made.append(parsed[:2] if parsed is not None else (new_trace_id(), new_span_id()))
        return made[0]


#: The fallback correlation ``(trace_id, span_id)`` when no valid OpenTelemetry span is current
#: (read it with :func:`bound_ids`: an integration may bind a :class:`PendingIds`).
CORRELATION: ContextVar[tuple[int, int] | PendingIds | None] = ContextVar(
    "invariantkit.correlation", default=None
)


#: What ``CORRELATION.set()`` returns.
CorrelationToken = Token["tuple[int, int] | PendingIds | None"]


def bound_ids() -> tuple[int, int] | None:
    """The bound correlation ``(trace_id, span_id)``, else None."""
    value = CORRELATION.get()
    if type(value) is PendingIds:
        return value.ids()
    return value  # type: ignore[return-value]


BAGGAGE_USER_KEY = "user_id"
_TRACECONTEXT = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()
_getrandbits = random.getrandbits  # reseeded in forked children by the random module itself


def new_trace_id() -> int:
    """A random, valid (non-zero) 128-bit trace id."""
    return _getrandbits(128) or 1


def new_span_id() -> int:
    """A random, valid (non-zero) 64-bit span id."""
    return _getrandbits(64) or 1


def current_ids() -> tuple[int, int] | None:
    """The ``(trace_id, span_id)`` of the current span, else of the bound correlation, else None."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        return ctx.trace_id, ctx.span_id
    return bound_ids()


def correlation_id() -> str:
    """Return the correlation id of the current unit of work: 32 lowercase hex characters.

    It is the current OpenTelemetry trace id when a valid span is current, else the id that the
    enclosing operation or violation bound. Outside of both, a fresh id is returned each call
    (nothing is bound: a worker thread never keeps one id for its whole life).

    Example:
        >>> import invariantkit as ik
        >>> len(ik.correlation_id())
        32
    """
    ids = current_ids()
    return format(ids[0] if ids is not None else new_trace_id(), "032x")


class Binding:
    """A context binding returned by ``identify()`` and ``extract()``.

    The binding is active as soon as it is created; use it as a context manager (or call
    ``detach()``) to restore what was bound before.

    Example:
        >>> import invariantkit as ik
        >>> binding = ik.identify("user_42")
        >>> binding.detach()
    """

    __slots__ = ("_otel_token", "_user_token")

    def __init__(
        self,
        user_token: Token[str | None] | None,
        otel_token: Token[otel_context.Context] | None = None,
    ) -> None:
        self._user_token = user_token
        self._otel_token = otel_token

    def detach(self) -> None:
        """Restore the user id and trace context that were current before this binding."""
        if self._otel_token is not None:
            otel_context.detach(self._otel_token)
            self._otel_token = None
        if self._user_token is not None:
            USER.reset(self._user_token)
            self._user_token = None

    def __enter__(self) -> Binding:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()


USER_ID_LIMIT = 200
#: The key of the user-id pseudonyms; the same value in every process and service makes a
#: pseudonym the same everywhere (unset: a random key per process).
PSEUDONYM_KEY_ENV = "INVARIANTKIT_PSEUDONYM_KEY"
_PROCESS_KEY = os.urandom(32)
_PHONE = re.compile(r"[+(]?\d[\d\s().-]{5,22}\d")
_PHONE_SEP = re.compile(r"[\s().-]")
_NON_DIGITS = re.compile(r"\D+")  # \d is str.isdecimal(): what _pii_form_general counts
_ASCII_DIGITS = b"0123456789"


def _check_user_id(user_id: object) -> str | None:
    if user_id is None:
        return None
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise TypeError(
            "invariantkit.identify(): user_id must be a str (or int, or None for no user), "
            f"not {type(user_id).__name__}"
        )
    return user_id_text(user_id)


def user_id_text(user_id: str | int) -> str | None:
    """The user id as it leaves the process. Never raises.

    Empty: None (no user). PII-shaped (an e-mail address, a card number, a phone number
    written as one): a keyed pseudonym, ``pseudonym:<20 hex>``. Longer than 200 characters
    (a 5,000-digit int included): cut, with a hash of the whole to keep ids apart.
    """
    try:
        if isinstance(user_id, int):
            if -(10**180) < user_id < 10**180:
                text = str(user_id)
            else:
                return "int:" + _digest(
                    user_id.to_bytes((user_id.bit_length() + 8) // 8, "big", signed=True), b""
                )
        else:
            text = user_id
        if not text:
            return None
        pii = _pii_form(text)
        if pii is not None:
            return "pseudonym:" + _digest(pii.encode("utf-8", "backslashreplace"), _key())
        if len(text) > USER_ID_LIMIT:
            whole = _digest(text.encode("utf-8", "backslashreplace"), b"")
            return f"{text[: USER_ID_LIMIT - 22]}…{whole}"
        return text
    except Exception:
        return None


#: What finds e-mail addresses, and card numbers, in a user id.
_EMAILS = Scrubber(cards=False, bearer_tokens=False, credentials=False, deny_keys=frozenset())
_CARDS = Scrubber(emails=False, bearer_tokens=False, credentials=False, deny_keys=frozenset())


def _pii_form(text: str) -> str | None:
    """The normal form of a PII-shaped id (what its pseudonym is made of), else None.

    It runs on every request an integration serves: an id without "@" and with fewer digits
    than a phone number (7; a card has 13) is none of them, decided without the patterns.
    """
    if "@" not in text and (
        len(text) > 64
        or (
            # Fewer than 7 digits: an ASCII id's counted by deleting them in C (no regex).
            (
                len(text.encode().translate(None, _ASCII_DIGITS)) > len(text) - 7
                if text.isascii()
                else len(_NON_DIGITS.sub("", text)) < 7
            )
            and REDACTED not in text
        )
    ):
        return None
    return _pii_form_general(text)


def _pii_form_general(text: str) -> str | None:
    """:func:`_pii_form` by the patterns alone, on every id."""
    if "@" in text and REDACTED in _EMAILS.scrub_text(text[:400]):
        return text.lower()  # an e-mail address
    if len(text) > 64 or not any(c.isdigit() for c in text):
        return None
    digits = "".join(str(int(c)) for c in text if c.isdecimal())
    if REDACTED in _CARDS.scrub_text(text):
        return digits  # a card number, however it is written
    if _PHONE.fullmatch(text) and (text.startswith("+") or _PHONE_SEP.search(text)):
        return digits if 7 <= len(digits) <= 15 else None
    return None


def _key() -> bytes:
    configured = os.environ.get(PSEUDONYM_KEY_ENV)
    return configured.encode("utf-8") if configured else _PROCESS_KEY


def _digest(data: bytes, key: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()[:20]


def identify(user_id: str | int | None) -> Binding:
    """Bind ``user_id`` to the current context: Sentry user, PostHog ``distinct_id``, span
    attribute ``enduser.id`` and log field ``user_id`` of every signal emitted in it.

    Active at once; as a context manager it restores the previous user on exit. ``None`` binds
    "no user" (an anonymous request): PostHog events are then personless.

    Example:
        >>> import invariantkit as ik
        >>> with ik.identify("user_42"):
        ...     pass
    """
    text = _check_user_id(user_id)
    if text is not None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("enduser.id", text)
    _sentry_scope.set_user(text)  # the same value as USER: the framework's Sentry events carry it
    return Binding(USER.set(text))


# The baggage propagator strips surrounding whitespace from values on extract: escape what it
# would lose (and "%", the escape itself) so any user id round-trips exactly; plain ids are sent
# as they are, readable by services that do not use invariantkit.
def _encode_user(user: str) -> str:
    if "%" in user or user != user.strip():
        return quote(user, safe="")
    return user


def _decode_user(value: str) -> str:
    return unquote(value) if "%" in value else value


_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)


def sampled_parent(
    trace_id: int, span_id: int, ctx: otel_context.Context | None = None
) -> otel_context.Context:
    """``ctx`` with a sampled, non-recording span of these ids as the current span: the parent
    of spans made in a correlation that has no live span (bound ids, a violation's own span)."""
    parent = trace.NonRecordingSpan(trace.SpanContext(trace_id, span_id, False, _SAMPLED))
    return trace.set_span_in_context(parent, ctx)


def _current_context() -> otel_context.Context:
    ctx = otel_context.get_current()
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        ids = bound_ids()
        if ids is not None:
            ctx = sampled_parent(ids[0], ids[1], ctx)
    user = USER.get()
    if user is not None:
        ctx = otel_baggage.set_baggage(BAGGAGE_USER_KEY, _encode_user(user), ctx)
    return ctx


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write W3C ``traceparent`` (and ``baggage`` with the user id) into ``headers``.

    The next service calls ``extract()`` on them and continues the same correlation id. Returns
    ``headers`` for convenience.

    Example:
        >>> import invariantkit as ik
        >>> headers = ik.inject({})
    """
    ctx = _current_context()
    _TRACECONTEXT.inject(headers, context=ctx)
    _BAGGAGE.inject(headers, context=ctx)
    return headers


def extract(headers: Mapping[str, str] | None) -> Binding:
    """Continue the correlation id and user id that ``inject()`` wrote in another service.

    Attaches the remote trace context and binds the user id from ``baggage``; use it as a
    context manager around the handling of the request.

    Example:
        >>> import invariantkit as ik
        >>> with ik.extract({"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}):
        ...     assert ik.correlation_id() == "ab" * 16
    """
    lowered: dict[str, str] = {}
    try:
        items = list(headers.items()) if headers is not None else []
    except Exception:  # not a mapping: nothing to continue (never an error in request code)
        items = []
    for key, value in items:
        name = str(key).lower()
        if name not in lowered:
            lowered[name] = value
        elif name == "baggage":
            # Several baggage headers (ours and, say, Sentry's stdlib integration's) form one
            # list (W3C Baggage); the first traceparent wins, as the spec allows only one.
            lowered[name] = f"{lowered[name]},{value}"
    # Start from the current context: a request without traceparent keeps the server span (and
    # its trace id) that HTTP instrumentation already made current, and its baggage.
    ctx = _TRACECONTEXT.extract(lowered, context=otel_context.get_current())
    ctx = _BAGGAGE.extract(lowered, context=ctx)
    user = otel_baggage.get_baggage(BAGGAGE_USER_KEY, ctx)
    user_token = (
        USER.set(user_id_text(_decode_user(user))) if isinstance(user, str) and user else None
    )
    return Binding(user_token, otel_context.attach(ctx))
