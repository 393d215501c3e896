"""What every integration shares: traceparent parsing, OpenTelemetry's own instrumentation first,
bad input from the request, and the extra named when a framework is missing."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import invariantkit as ik
from invariantkit._context import USER
from invariantkit.integrations._common import RequestContext, _parse_traceparent, require
from invariantkit.integrations.asgi import InvariantkitMiddleware

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def otel(value: str) -> tuple[int, int, int] | None:
    ctx = TraceContextTextMapPropagator().extract({"traceparent": value})
    span = trace.get_current_span(ctx).get_span_context()
    return (span.trace_id, span.span_id, int(span.trace_flags)) if span.is_valid else None


LOWER_HEX = "0123456789abcdef"


def hex_of(size: int) -> st.SearchStrategy[str]:
    """Mostly well-formed lowercase hex of ``size``; sometimes a wrong length or upper case."""
    valid = st.text(LOWER_HEX, min_size=size, max_size=size)
    return st.one_of(
        valid,
        valid,
        valid,
        st.text(LOWER_HEX, min_size=size, max_size=size).map(str.upper),
        st.text(LOWER_HEX, min_size=size - 1, max_size=size + 1),
        st.just("0" * size),
    )


traceparents = st.one_of(
    st.builds(
        lambda v, t, s, f, rest, pad: f"{pad}{v}-{t}-{s}-{f}{rest}{pad}",
        st.sampled_from(["00", "01", "ff", "0g", "cc", "0"]),
        hex_of(32),
        hex_of(16),
        hex_of(2),
        st.sampled_from(["", "-", "-what-ever"]),
        st.sampled_from(["", " ", "\t", "\n"]),
    ),
    st.text(max_size=60),
)


@settings(max_examples=500)
@given(traceparents)
@example(f"ff-{TRACE_ID}-00f067aa0ba902b7-01")
@example(f"{TRACEPARENT}-more")
@example(f"cc-{TRACE_ID}-00f067aa0ba902b7-01-more")
@example(f" \t{TRACEPARENT}\n")
def test_traceparent_parsing_agrees_with_opentelemetrys_propagator(value: str) -> None:
    """The fast parser accepts exactly what OpenTelemetry's propagator accepts, with the same ids;
    from the header's bytes (an ASGI scope's) as from its text."""
    assert _parse_traceparent(value) == otel(value)
    raw = value.encode()
    assert _parse_traceparent(raw) == otel(raw.decode("latin-1"))


def test_opentelemetrys_own_server_span_wins_over_the_header() -> None:
    """With OpenTelemetry's instrumentation (a valid span is current), the middleware keeps its
    trace and only binds the user."""
    tracer = TracerProvider().get_tracer("test")
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(trace_id=ik.correlation_id(), user=USER.get())

    middleware = InvariantkitMiddleware(app, user_id=lambda conn: conn.headers.get("x-user"))
    scope = {
        "type": "http",
        "headers": [(b"traceparent", TRACEPARENT.encode()), (b"x-user", b"u1")],
    }
    with tracer.start_as_current_span("GET /") as span:
        asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
        server_trace = format(span.get_span_context().trace_id, "032x")
    assert seen == {"trace_id": server_trace, "user": "u1"}
    assert server_trace != TRACE_ID
    assert span.attributes is not None
    assert span.attributes["enduser.id"] == "u1"  # as identify() sets it


def test_every_baggage_header_counts_and_the_first_traceparent_wins() -> None:
    """Several ``baggage`` headers form one list (W3C Baggage); only one ``traceparent`` is
    valid, the first, as ``ik.extract()`` takes it."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(trace_id=ik.correlation_id(), user=USER.get(), next_hop=ik.inject({}))

    scope = {
        "type": "http",
        "headers": [
            (b"baggage", b"user_id=u1"),
            (b"traceparent", TRACEPARENT.encode()),
            (b"traceparent", f"00-{'1' * 32}-00f067aa0ba902b7-01".encode()),
            (b"baggage", b"tenant=acme"),
        ],
    }
    asyncio.run(InvariantkitMiddleware(app)(scope, None, None))  # type: ignore[arg-type]
    assert seen["trace_id"] == TRACE_ID
    assert seen["user"] == "u1"
    assert "tenant=acme" in seen["next_hop"]["baggage"]


@pytest.mark.parametrize(
    "baggage", ["user_id=alice%40example.com", "t=1,user_id=alice%40example.com"]
)
def test_a_pii_shaped_user_in_baggage_is_pseudonymised_as_by_extract(baggage: str) -> None:
    """The user from ``baggage`` gets identify()'s PII handling, as with ``ik.extract()``."""
    context = RequestContext()
    context.enter(TRACEPARENT, baggage)
    try:
        bound = USER.get()
    finally:
        context.leave()
    with ik.extract({"baggage": baggage}):
        assert bound == USER.get()
    assert bound is not None
    assert bound.startswith("pseudonym:")


def test_a_raising_user_function_or_a_bad_user_id_leaves_the_request_anonymous(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bad input at request time is logged, never raised into the request."""
    # (An over-long id is no longer refused: identify() cuts it, tests/test_context.py.)
    for bad in (lambda r: 1 / 0, lambda r: ["not", "an", "id"], lambda r: True):
        context = RequestContext()
        context.enter(TRACEPARENT, "user_id=from_baggage", bad, None)
        try:
            assert USER.get() == "from_baggage"
            assert ik.correlation_id() == TRACE_ID
        finally:
            context.leave()
        assert USER.get() is None
    assert "user_id" in caplog.text or "user id" in caplog.text


def test_an_over_long_user_id_is_cut_not_raised() -> None:
    """``request.headers.get("x-user-id")`` of 500 characters: bound cut, never raised."""
    context = RequestContext()
    context.enter(TRACEPARENT, None, lambda r: "x" * 500, None)
    try:
        bound = USER.get()
        assert bound is not None
        assert bound.startswith("x")
        assert len(bound) < 500
    finally:
        context.leave()
    assert USER.get() is None


def test_a_pii_shaped_user_in_baggage_leaves_as_its_pseudonym() -> None:
    """The middleware binds the baggage user with the same PII handling as ``extract()``."""
    context = RequestContext()
    context.enter(TRACEPARENT, "user_id=bob%40example.com", None, None)
    try:
        bound = USER.get()
        assert bound is not None
        assert "bob" not in bound
        assert bound.startswith("pseudonym:")
    finally:
        context.leave()


def test_a_malformed_traceparent_gets_a_fresh_trace_id() -> None:
    context = RequestContext()
    context.enter("00-nothex-01", None)
    try:
        first = ik.correlation_id()
        assert first == ik.correlation_id() != TRACE_ID  # bound: one id for the request
    finally:
        context.leave()


def test_baggage_with_other_members_keeps_them_for_the_next_hop() -> None:
    """Other baggage members travel on through ``ik.inject()``, as with ``ik.extract()``."""
    context = RequestContext()
    context.enter(TRACEPARENT, "tenant=acme,user_id=u%202")
    try:
        assert USER.get() == "u 2"
        headers = ik.inject({})
    finally:
        context.leave()
    assert "tenant=acme" in headers["baggage"]
    assert headers["traceparent"].split("-")[1] == TRACE_ID


def test_a_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "starlette.requests", None)
    with pytest.raises(ImportError, match=r"pip install 'invariantkit\[fastapi\]'"):
        InvariantkitMiddleware(lambda s, r, se: None, user_id=lambda conn: None)  # type: ignore[arg-type]
    with pytest.raises(ImportError, match=r"invariantkit\[celery\]"):
        require("no_such_celery_module", "celery", "instrument()")


def test_user_id_must_be_callable() -> None:
    with pytest.raises(TypeError, match="user_id"):
        InvariantkitMiddleware(lambda s, r, se: None, user_id="x-user")  # type: ignore[arg-type]


def _connection_of(scope: dict[str, Any]) -> Any:
    """The connection the middleware gives ``user_id`` for ``scope``."""
    given: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    def user_id(conn: Any) -> Any:
        given.append(conn)
        return conn.headers.get("x-user")

    middleware = InvariantkitMiddleware(app, user_id=user_id)
    asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
    assert len(given) == 1
    return given[0]


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "root_path": "",
        "path": "/renewal",
        "raw_path": b"/renewal",
        "query_string": b"plan=pro",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"x-user", b"u1"),
            (b"x-user", b"u2"),
            (b"cookie", b"session=s1"),
        ],
    }


def test_user_id_gets_the_connection_starlette_would_build() -> None:
    """``user_id`` is given a real ``HTTPConnection`` of the scope, in the state Starlette's own
    constructor leaves it once ``.headers`` was read: everything reads the same."""
    from starlette.requests import HTTPConnection

    scope = _scope()
    conn = _connection_of(scope)
    own = HTTPConnection(scope)
    assert type(conn) is HTTPConnection
    assert conn.scope is scope
    assert conn.headers.getlist("x-user") == ["u1", "u2"] == own.headers.getlist("x-user")
    assert conn.headers.raw == own.headers.raw
    assert conn.url == own.url
    assert conn.cookies == own.cookies == {"session": "s1"}
    assert conn.query_params == own.query_params
    assert vars(conn).keys() == vars(own).keys()


def test_a_starlette_that_keeps_other_state_gets_its_own_constructor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When ``HTTPConnection`` does not keep its headers as this one does, the middleware makes
    the connection with Starlette's own constructor: still the right user."""
    from starlette.datastructures import Headers
    from starlette.requests import HTTPConnection

    monkeypatch.setattr(HTTPConnection, "headers", property(lambda self: Headers(scope=self.scope)))
    conn = _connection_of(_scope())
    assert "_headers" not in vars(conn)
    assert conn.headers.get("x-user") == "u1"


def test_the_traceparent_is_parsed_only_when_invariantkit_reads_the_correlation() -> None:
    """Without Sentry or an OpenTelemetry SDK, a request that never reaches invariantkit never
    parses its traceparent; the first read gets the incoming trace."""
    parsed: list[object] = []

    def counting(value: object) -> tuple[int, int, int] | None:
        parsed.append(value)
        return _parse_traceparent(value)  # type: ignore[arg-type]

    from invariantkit.integrations import _common

    context = RequestContext()
    original = _common._parse_traceparent
    _common._parse_traceparent = counting  # type: ignore[assignment]
    try:
        context.enter(TRACEPARENT, None)
        assert parsed == []
        assert ik.correlation_id() == TRACE_ID
        assert ik.correlation_id() == TRACE_ID
        assert parsed == [TRACEPARENT]
    finally:
        _common._parse_traceparent = original
        context.leave()


def test_threads_of_one_request_read_one_correlation() -> None:
    """No traceparent: the ids are made at the first read, and threads that read at the same
    moment all get the same ones."""
    import threading

    from invariantkit._context import PendingIds

    for _ in range(50):
        pending = PendingIds(None, _parse_traceparent)
        start = threading.Barrier(8)
        seen: list[tuple[int, int]] = []

        def read(
            pending: PendingIds = pending,
            start: threading.Barrier = start,
            seen: list[tuple[int, int]] = seen,
        ) -> None:
            start.wait()
            seen.append(pending.ids())

        threads = [threading.Thread(target=read) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert len(seen) == 8
        assert len(set(seen)) == 1


def test_a_task_started_in_the_request_shares_its_lazy_correlation() -> None:
    """asyncio tasks copy the request's context: one correlation id for the request and its
    tasks, whichever reads it first."""

    async def main() -> tuple[str, str]:
        context = RequestContext()
        context.enter(None, None)
        try:
            in_task = await asyncio.create_task(_read_later())  # the first read, in the task
            return in_task, ik.correlation_id()
        finally:
            context.leave()

    in_task, in_request = asyncio.run(main())
    assert in_task == in_request


async def _read_later() -> str:
    await asyncio.sleep(0)
    return ik.correlation_id()
