"""``ik.operation`` / ``ik.billing_operation``: the signals of each outcome, for every kind of
function and for the context manager, through the real SDK pipelines of ``capture_signals``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import traceback
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import invariantkit as ik
from invariantkit.testing import Signals, capture_signals

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from opentelemetry.sdk.trace import ReadableSpan


class PaymentDeclined(Exception):
    """A business exception (its class name becomes the ``error_type`` label)."""


def _tid(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def _ops(signals: Signals) -> list[ik.Record]:
    return [r for r in signals.records if r.kind == "operation"]


def assert_success_signals(
    signals: Signals, name: str, *, user: str | None, user_facing: bool
) -> str:
    """Exactly what DESIGN.md lists for a success; returns the trace id."""
    [span] = signals.spans
    assert span.name == f"billing.{name}"
    attributes = dict(span.attributes or {})
    assert attributes["billing.operation"] == name
    assert attributes.get("enduser.id") == user
    assert span.status.status_code is StatusCode.UNSET
    tid = _tid(span)
    assert signals.metric("billing_operation_total", operation=name, outcome="success") == 1
    assert signals.metric("billing_operation_total", operation=name, outcome="failure") == 0
    assert signals.metric("billing_operation_errors_total", operation=name) == 0
    assert (
        signals.metric(
            "billing_operation_duration_seconds_count", operation=name, outcome="success"
        )
        == 1
    )
    assert signals.sentry_events == []
    if user_facing:
        [event] = signals.posthog_events
        assert event["event"] == f"billing_{name}_success"
        assert event["properties"]["trace_id"] == tid
        assert event["distinct_id"] == (user if user is not None else tid)
    else:
        assert signals.posthog_events == []
    start, end = signals.logs
    assert (start["level"], start["event"]) == ("debug", "operation.start")
    assert (end["level"], end["event"], end["outcome"]) == ("info", "operation.end", "success")
    for line in (start, end):
        assert line["trace_id"] == tid
        assert line["user_id"] == user
        assert line["operation"] == name
    [record] = _ops(signals)
    assert (record.status, record.trace_id, record.user_id) == ("success", tid, user)
    return tid


def assert_failure_signals(
    signals: Signals, name: str, exc: BaseException, *, user: str | None, user_facing: bool
) -> str:
    """Exactly what DESIGN.md lists for a failure; returns the trace id."""
    error_type = type(exc).__name__
    [span] = signals.spans
    assert span.name == f"billing.{name}"
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {}).get("enduser.id") == user
    assert (span.attributes or {})["error.type"] == error_type  # OTel semconv
    [exc_event] = [e for e in span.events if e.name == "exception"]
    assert (exc_event.attributes or {})["exception.type"].endswith(error_type)
    assert "exception.escaped" not in (exc_event.attributes or {})  # deprecated
    tid = _tid(span)
    assert signals.metric("billing_operation_total", operation=name, outcome="failure") == 1
    assert signals.metric("billing_operation_total", operation=name, outcome="success") == 0
    assert (
        signals.metric("billing_operation_errors_total", operation=name, error_type=error_type) == 1
    )
    assert (
        signals.metric(
            "billing_operation_duration_seconds_count", operation=name, outcome="failure"
        )
        == 1
    )
    [event] = signals.sentry_events
    assert event["exception"]["values"][-1]["type"] == error_type
    assert event["tags"]["operation"] == name
    assert event["tags"]["domain"] == "billing"
    assert event["tags"]["trace_id"] == tid
    assert event["contexts"]["trace"]["trace_id"] == tid
    assert (event.get("user") or {}).get("id") == user
    if user_facing:
        [ph] = signals.posthog_events
        assert ph["event"] == f"billing_{name}_failure"
        assert ph["properties"]["trace_id"] == tid
        assert ph["properties"]["error_type"] == error_type
        assert ph["distinct_id"] == (user if user is not None else tid)
    else:
        assert signals.posthog_events == []
    start, end = signals.logs
    assert (start["level"], start["event"]) == ("debug", "operation.start")
    assert (end["level"], end["outcome"], end["error_type"]) == ("error", "failure", error_type)
    assert {start["trace_id"], end["trace_id"]} == {tid}
    assert {start["user_id"], end["user_id"]} == {user}
    return tid


# ---------------------------------------------------------------------------------- plain


class TestPlainFunction:
    def test_success_emits_the_design_signals(self, signals: Signals) -> None:
        """Span, counters, histogram, PostHog and log lines of a success, one trace id."""

        @ik.billing_operation("renewal", user_facing=True)
        def renew(subscription_id: str) -> str:
            return f"renewed {subscription_id}"

        with ik.identify("user_42"):
            assert renew("sub_1") == "renewed sub_1"
        assert_success_signals(signals, "renewal", user="user_42", user_facing=True)
        signals.assert_correlated()

    def test_not_user_facing_sends_nothing_to_posthog(self, signals: Signals) -> None:
        """PostHog only hears about user-facing operations."""

        @ik.billing_operation("ledger_sync")
        def sync() -> None:
            return None

        sync()
        assert_success_signals(signals, "ledger_sync", user=None, user_facing=False)

    def test_failure_emits_the_design_signals(self, signals: Signals) -> None:
        """Span ERROR with the exception, failure counters, one Sentry event, PostHog, log."""
        original = PaymentDeclined("card declined")

        @ik.billing_operation("renewal", user_facing=True)
        def renew() -> None:
            raise original

        with ik.identify("user_42"), pytest.raises(PaymentDeclined):
            renew()
        assert_failure_signals(signals, "renewal", original, user="user_42", user_facing=True)
        signals.assert_correlated()

    def test_failure_without_user_is_personless_in_posthog(self, signals: Signals) -> None:
        """No bound user: PostHog is keyed by the trace id; nobody's profile is touched."""

        @ik.billing_operation("renewal", user_facing=True)
        def renew() -> None:
            raise PaymentDeclined

        with pytest.raises(PaymentDeclined):
            renew()
        tid = assert_failure_signals(
            signals, "renewal", PaymentDeclined(), user=None, user_facing=True
        )
        [ph] = signals.posthog_events
        assert ph["distinct_id"] == tid
        assert ph["properties"]["$process_person_profile"] is False

    def test_reraises_the_same_object_with_its_traceback(self, signals: Signals) -> None:
        """The caller catches the very exception the function raised, frames intact."""
        to_raise: list[PaymentDeclined] = [PaymentDeclined("bare"), PaymentDeclined("decorated")]

        def charge(amount: int) -> int:
            if amount > 0:
                raise to_raise.pop()  # the raising line
            return amount

        decorated = ik.billing_operation("charge")(charge)
        original = to_raise[-1]
        with pytest.raises(PaymentDeclined) as info:
            decorated(5)
        assert info.value is original
        assert original.__cause__ is None
        assert original.__context__ is None
        frames = traceback.extract_tb(original.__traceback__)
        assert frames[-1].name == "charge"
        assert frames[-1].line == "raise to_raise.pop()  # the raising line"
        # Compared with the undecorated call: the same frames, plus only the wrapper's.
        try:
            charge(5)
        except PaymentDeclined as bare_exc:
            bare = traceback.extract_tb(bare_exc.__traceback__)
        assert [(f.name, f.line) for f in frames[-len(bare) + 1 :]] == [
            (f.name, f.line) for f in bare[1:]
        ]
        assert [f.name for f in frames] == [
            "test_reraises_the_same_object_with_its_traceback",
            "wrapper",
            "charge",
        ]

    def test_returns_the_same_object(self, signals: Signals) -> None:
        """The return value is passed through, not copied."""
        sentinel = object()

        @ik.billing_operation("lookup")
        def lookup() -> object:
            return sentinel

        assert lookup() is sentinel

    @pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit])
    def test_base_exception_is_cancellation_not_failure(
        self, signals: Signals, kind: type[BaseException]
    ) -> None:
        """KeyboardInterrupt, SystemExit, GeneratorExit propagate unchanged (same object) with
        outcome "cancelled": no error counted, span status UNSET, no Sentry event."""
        raised = kind()

        @ik.billing_operation("shutdown_hook", user_facing=True)
        def stop() -> None:
            raise raised

        with pytest.raises(kind) as info:
            stop()
        assert info.value is raised
        assert vars(raised) == {}
        ik.flush()
        signals.assert_operation("shutdown_hook", "cancelled", count=1)
        metric = signals.metric
        assert (
            metric("billing_operation_total", operation="shutdown_hook", outcome="cancelled") == 1
        )
        assert metric("billing_operation_total", operation="shutdown_hook", outcome="failure") == 0
        assert (
            metric(
                "billing_operation_errors_total",
                operation="shutdown_hook",
                error_type=kind.__name__,
            )
            == 0
        )
        [span] = signals.spans
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in (span.attributes or {})
        assert signals.sentry_events == []
        assert signals.posthog_events == []
        with pytest.raises(kind):  # a second one counts on the same series
            stop()
        ik.flush()
        assert (
            metric("billing_operation_total", operation="shutdown_hook", outcome="cancelled") == 2
        )

    def test_generator_exit_inside_a_with_block_is_cancellation(self, signals: Signals) -> None:
        """A generator closed while inside ``with ik.operation(...)``: the block was cut short."""

        def items() -> Iterator[int]:
            with ik.billing_operation("paged"):
                yield 1
                yield 2

        gen = items()
        assert next(gen) == 1
        gen.close()
        signals.assert_operation("paged", "cancelled", count=1)

    def test_the_users_exception_is_never_changed(self, signals: Signals) -> None:
        """A failure through nested operations is one Sentry event, and the exception object
        gets no attribute of ours (its ``__dict__`` is what the application made)."""
        raised = ValueError("declined")

        @ik.billing_operation("inner_charge")
        def charge() -> None:
            raise raised

        @ik.billing_operation("outer_renewal")
        def renew() -> None:
            charge()

        with pytest.raises(ValueError):
            renew()
        ik.flush()
        assert vars(raised) == {}
        assert len(signals.sentry_events) == 1

    def test_nested_operations_share_the_trace(self, signals: Signals) -> None:
        """An operation called from another is a child span in the same trace."""

        @ik.billing_operation("charge")
        def charge() -> str:
            return ik.correlation_id()

        @ik.billing_operation("renewal")
        def renew() -> tuple[str, str]:
            return ik.correlation_id(), charge()

        outer_id, inner_id = renew()
        assert outer_id == inner_id
        inner, outer = signals.spans
        assert inner.parent is not None
        assert inner.parent.span_id == outer.context.span_id
        assert _tid(inner) == _tid(outer) == outer_id

    def test_the_span_is_current_during_the_call(self, signals: Signals) -> None:
        """Code inside sees the operation's span (so nested instrumentation attaches to it)."""
        seen: list[int] = []

        @ik.billing_operation("renewal")
        def renew() -> None:
            seen.append(trace.get_current_span().get_span_context().span_id)

        renew()
        [span] = signals.spans
        assert seen == [span.context.span_id]
        assert not trace.get_current_span().get_span_context().is_valid

    def test_static_attributes_are_on_the_span(self, signals: Signals) -> None:
        """``attributes=`` are set on every span of the operation."""

        @ik.billing_operation("renewal", attributes={"billing.provider": "stripe", "tier": 2})
        def renew() -> None:
            return None

        renew()
        [span] = signals.spans
        assert span.attributes is not None
        assert span.attributes["billing.provider"] == "stripe"
        assert span.attributes["tier"] == 2

    def test_identify_inside_the_call_reaches_the_span(self, signals: Signals) -> None:
        """A user identified inside the operation is on its span as ``enduser.id``."""

        @ik.billing_operation("signup")
        def signup() -> None:
            ik.identify("user_7")

        signup()
        [span] = signals.spans
        assert (span.attributes or {}).get("enduser.id") == "user_7"


class TestDecoratorMetadata:
    @pytest.mark.parametrize("kind", ["plain", "async", "gen", "async_gen"])
    def test_signature_and_wraps_metadata_are_kept(self, kind: str) -> None:
        """``inspect.signature``, name, qualname, doc, module, ``__wrapped__`` and ``__dict__``."""

        def plain(a: int, /, b: str = "x", *args: float, c: bool, **kw: object) -> int:
            """Plain doc."""
            return a

        async def async_(a: int, /, b: str = "x", *args: float, c: bool, **kw: object) -> int:
            """Async doc."""
            return a

        def gen(a: int, /, b: str = "x", *args: float, c: bool, **kw: object) -> Iterator[int]:
            """Gen doc."""
            yield a

        async def async_gen(
            a: int, /, b: str = "x", *args: float, c: bool, **kw: object
        ) -> AsyncIterator[int]:
            """Async gen doc."""
            yield a

        fn: Any = {"plain": plain, "async": async_, "gen": gen, "async_gen": async_gen}[kind]
        fn.custom_marker = "kept"
        wrapped: Any = ik.billing_operation(f"meta_{kind}")(fn)
        assert inspect.signature(wrapped) == inspect.signature(fn)
        for attr in ("__name__", "__qualname__", "__doc__", "__module__", "__annotations__"):
            assert getattr(wrapped, attr) == getattr(fn, attr)
        assert wrapped.__wrapped__ is fn
        assert wrapped.custom_marker == "kept"
        assert inspect.iscoroutinefunction(wrapped) == (kind == "async")
        assert inspect.isgeneratorfunction(wrapped) == (kind == "gen")
        assert inspect.isasyncgenfunction(wrapped) == (kind == "async_gen")

    def test_methods_keep_binding(self, signals: Signals) -> None:
        """Decorated methods still receive ``self``."""

        class Billing:
            rate = 3

            @ik.billing_operation("invoice")
            def invoice(self, qty: int) -> int:
                return self.rate * qty

        assert Billing().invoice(2) == 6
        assert (
            signals.metric("billing_operation_total", operation="invoice", outcome="success") == 1
        )

    def test_partial_objects_can_be_decorated(self, signals: Signals) -> None:
        """Any callable works, not only functions."""
        wrapped = ik.billing_operation("partial")(functools.partial(pow, 2))
        assert wrapped(5) == 32
        assert (
            signals.metric("billing_operation_total", operation="partial", outcome="success") == 1
        )

    @pytest.mark.parametrize(
        ("kwargs", "error", "fragment"),
        [
            ({"name": "Renewal"}, ValueError, "name='Renewal' must be lower_snake"),
            ({"name": 5}, TypeError, "name must be a str"),
            ({"name": "x", "domain": "Billing"}, ValueError, "domain='Billing'"),
            ({"name": "x", "user_facing": "yes"}, TypeError, "user_facing must be True or False"),
            ({"name": "x", "attributes": [("a", 1)]}, TypeError, "attributes must be a mapping"),
            ({"name": "x", "attributes": {"a": [1]}}, TypeError, "attribute 'a'=[1]"),
        ],
    )
    def test_bad_declarations_fail_loudly(
        self, kwargs: dict[str, Any], error: type[Exception], fragment: str
    ) -> None:
        """A mistake in the declaration is a clear error naming the field and the rule."""
        with pytest.raises(error, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            ik.operation(**kwargs)

    def test_decorating_a_non_callable_fails_loudly(self) -> None:
        """``@billing_operation("x")`` on something that is not callable is a TypeError."""
        with pytest.raises(TypeError, match="decorates a function"):
            ik.billing_operation("x")(42)  # type: ignore[call-overload]

    def test_counters_exist_at_zero_once_decorated(self, signals: Signals) -> None:
        """Decoration creates both outcome children at zero, so ``increase()`` sees the first."""

        @ik.billing_operation("never_called")
        def never_called() -> None:
            return None

        samples = {
            (s.labels["operation"], s.labels["outcome"])
            for family in signals.registry.collect()  # type: ignore[union-attr]
            for s in family.samples
            if s.name == "billing_operation_total"
        }
        assert {("never_called", "success"), ("never_called", "failure")} <= samples


# ---------------------------------------------------------------------------------- async


class TestAsyncFunction:
    async def test_success(self, signals: Signals) -> None:
        """A coroutine function emits the success signals when awaited."""

        @ik.billing_operation("renewal", user_facing=True)
        async def renew() -> str:
            await asyncio.sleep(0)
            return "ok"

        with ik.identify("user_42"):
            assert await renew() == "ok"
        assert_success_signals(signals, "renewal", user="user_42", user_facing=True)

    async def test_failure_reraises_identity_and_traceback(self, signals: Signals) -> None:
        """Same object, original frames, failure signals."""
        original = PaymentDeclined("no")

        @ik.billing_operation("renewal", user_facing=True)
        async def renew() -> None:
            await asyncio.sleep(0)
            raise original

        with ik.identify("user_42"), pytest.raises(PaymentDeclined) as info:
            await renew()
        assert info.value is original
        assert traceback.extract_tb(original.__traceback__)[-1].line == "raise original"
        assert_failure_signals(signals, "renewal", original, user="user_42", user_facing=True)

    async def test_calling_without_awaiting_emits_nothing(self, signals: Signals) -> None:
        """The operation starts when the coroutine runs, not when it is created."""

        @ik.billing_operation("renewal")
        async def renew() -> int:
            return 1

        coro = renew()
        assert _ops(signals) == []
        assert await coro == 1
        assert len(_ops(signals)) == 1

    async def test_cancellation_propagates(self, signals: Signals) -> None:
        """A cancelled operation re-raises CancelledError; outcome "cancelled", not a failure:
        no error counted, no Sentry event."""
        started = asyncio.Event()

        @ik.billing_operation("slow")
        async def slow() -> None:
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.ensure_future(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (
            signals.metric(
                "billing_operation_errors_total", operation="slow", error_type="CancelledError"
            )
            == 0
        )
        assert signals.metric("billing_operation_total", operation="slow", outcome="cancelled") == 1
        assert signals.metric("billing_operation_total", operation="slow", outcome="failure") == 0
        assert signals.sentry_events == []

    async def test_concurrent_tasks_keep_their_own_span(self, signals: Signals) -> None:
        """Two interleaved tasks each see their own span and user."""

        @ik.billing_operation("renewal")
        async def renew(user: str) -> tuple[str, str]:
            with ik.identify(user):
                first = ik.correlation_id()
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                assert ik.correlation_id() == first
                return user, first

        results = await asyncio.gather(*(renew(f"user_{i}") for i in range(20)))
        assert len({tid for _, tid in results}) == 20
        by_trace = {_tid(s): s for s in signals.spans}
        for user, tid in results:
            assert (by_trace[tid].attributes or {})["enduser.id"] == user


# ---------------------------------------------------------------------------------- generators


class TestGenerator:
    def test_one_span_current_in_each_step_never_in_the_consumer(self, signals: Signals) -> None:
        """Inside each step the span is current; between yields the consumer does not see it."""
        inside: list[int] = []

        @ik.billing_operation("export")
        def export(n: int) -> Iterator[int]:
            for i in range(n):
                inside.append(trace.get_current_span().get_span_context().span_id)
                yield i

        consumer_ids: list[bool] = []
        for _ in export(3):
            consumer_ids.append(trace.get_current_span().get_span_context().is_valid)
        [span] = signals.spans
        assert inside == [span.context.span_id] * 3
        assert consumer_ids == [False, False, False]
        assert span.status.status_code is StatusCode.UNSET
        assert signals.metric("billing_operation_total", operation="export", outcome="success") == 1

    def test_creating_the_generator_does_not_start_the_operation(self, signals: Signals) -> None:
        """Nothing is emitted until the first ``next()``."""

        @ik.billing_operation("export")
        def export() -> Iterator[int]:
            yield 1

        gen = export()
        assert _ops(signals) == []
        assert list(gen) == [1]
        assert len(_ops(signals)) == 1

    def test_send_and_return_value_pass_through(self, signals: Signals) -> None:
        """``send()`` values reach the generator; its return value reaches ``yield from``."""

        @ik.billing_operation("accumulate")
        def accumulate() -> Iterator[int]:
            total = 0
            while True:
                value = yield total
                if value is None:
                    return total
                total += value

        def driver() -> Iterator[int]:
            result = yield from accumulate()
            yield result * 100

        gen = driver()
        assert next(gen) == 0
        assert gen.send(2) == 2
        assert gen.send(3) == 5
        assert gen.send(None) == 500
        assert (
            signals.metric("billing_operation_total", operation="accumulate", outcome="success")
            == 1
        )

    def test_early_close_counts_success_and_runs_finally_in_the_span(
        self, signals: Signals
    ) -> None:
        """A consumer that stops early ends the operation as a success; cleanup sees the span."""
        cleanup: list[int] = []

        @ik.billing_operation("export")
        def export() -> Iterator[int]:
            try:
                yield 1
                yield 2
            finally:
                cleanup.append(trace.get_current_span().get_span_context().span_id)

        gen = export()
        assert next(gen) == 1
        gen.close()
        [span] = signals.spans
        assert cleanup == [span.context.span_id]
        assert span.status.status_code is StatusCode.UNSET
        assert signals.metric("billing_operation_total", operation="export", outcome="success") == 1
        assert not trace.get_current_span().get_span_context().is_valid

    def test_break_out_of_for_loop_counts_success(self, signals: Signals) -> None:
        """``break`` (the generator is closed when dropped) is a success too."""

        @ik.billing_operation("export")
        def export() -> Iterator[int]:
            yield from range(10)

        for item in export():
            if item == 2:
                break
        assert signals.metric("billing_operation_total", operation="export", outcome="success") == 1
        assert len(signals.spans) == 1

    def test_exception_thrown_in_and_not_handled_is_a_failure(self, signals: Signals) -> None:
        """``gen.throw(exc)`` that the generator does not handle: failure, same object out."""
        thrown = PaymentDeclined("thrown in")

        @ik.billing_operation("export")
        def export() -> Iterator[int]:
            yield 1
            yield 2

        gen = export()
        next(gen)
        with pytest.raises(PaymentDeclined) as info:
            gen.throw(thrown)
        assert info.value is thrown
        assert_failure_signals(signals, "export", thrown, user=None, user_facing=False)

    def test_exception_thrown_in_and_handled_continues(self, signals: Signals) -> None:
        """A generator that handles the thrown exception keeps going, in its span."""
        handled_in: list[int] = []

        @ik.billing_operation("export")
        def export() -> Iterator[str]:
            try:
                yield "first"
            except PaymentDeclined:
                handled_in.append(trace.get_current_span().get_span_context().span_id)
                yield "recovered"
            yield "last"

        gen = export()
        assert next(gen) == "first"
        assert gen.throw(PaymentDeclined()) == "recovered"
        assert list(gen) == ["last"]
        [span] = signals.spans
        assert handled_in == [span.context.span_id]
        assert span.status.status_code is StatusCode.UNSET

    def test_exception_raised_midway_is_a_failure(self, signals: Signals) -> None:
        """An exception from the generator's own code: failure, original traceback."""
        original = PaymentDeclined("midway")

        @ik.billing_operation("export", user_facing=True)
        def export() -> Iterator[int]:
            yield 1
            raise original

        gen = export()
        with ik.identify("user_9"):
            next(gen)
            with pytest.raises(PaymentDeclined) as info:
                next(gen)
        assert info.value is original
        assert traceback.extract_tb(original.__traceback__)[-1].line == "raise original"
        assert_failure_signals(signals, "export", original, user="user_9", user_facing=True)

    def test_cleanup_that_raises_on_close_is_a_failure(self, signals: Signals) -> None:
        """An exception from the generator's ``finally`` during close propagates and is counted."""

        @ik.billing_operation("export")
        def export() -> Iterator[int]:
            try:
                yield 1
            finally:
                raise PaymentDeclined("cleanup failed")

        gen = export()
        next(gen)
        with pytest.raises(PaymentDeclined, match="cleanup failed"):
            gen.close()
        assert signals.metric("billing_operation_total", operation="export", outcome="failure") == 1
        assert signals.metric("billing_operation_total", operation="export", outcome="success") == 0
        assert not trace.get_current_span().get_span_context().is_valid

    def test_without_tracing_each_step_sees_the_runs_correlation(self) -> None:
        """No tracing: inside each step the correlation id is the run's; outside it is not."""
        with capture_signals(traces=False) as signals:
            inside: list[str] = []
            outside: list[str] = []

            @ik.billing_operation("export")
            def export() -> Iterator[int]:
                for i in range(3):
                    inside.append(ik.correlation_id())
                    yield i

            for _ in export():
                outside.append(ik.correlation_id())
            [record] = _ops(signals)
            assert inside == [record.trace_id] * 3
            assert record.trace_id not in outside


class TestAsyncGenerator:
    async def test_one_span_current_in_each_step_never_in_the_consumer(
        self, signals: Signals
    ) -> None:
        """Inside each step the span is current; between yields the consumer does not see it."""
        inside: list[int] = []

        @ik.billing_operation("stream", user_facing=True)
        async def stream(n: int) -> AsyncIterator[int]:
            for i in range(n):
                await asyncio.sleep(0)
                inside.append(trace.get_current_span().get_span_context().span_id)
                yield i

        seen: list[bool] = []
        with ik.identify("user_42"):
            async for _ in stream(3):
                seen.append(trace.get_current_span().get_span_context().is_valid)
        [span] = signals.spans
        assert inside == [span.context.span_id] * 3
        assert seen == [False] * 3
        assert_success_signals(signals, "stream", user="user_42", user_facing=True)

    async def test_early_aclose_counts_success(self, signals: Signals) -> None:
        """``aclose()`` after the first item: success, cleanup ran inside the span."""
        cleanup: list[int] = []

        @ik.billing_operation("stream")
        async def stream() -> AsyncIterator[int]:
            try:
                yield 1
                yield 2
            finally:
                cleanup.append(trace.get_current_span().get_span_context().span_id)

        agen = stream()
        assert await agen.__anext__() == 1
        await agen.aclose()
        [span] = signals.spans
        assert cleanup == [span.context.span_id]
        assert span.status.status_code is StatusCode.UNSET

    async def test_athrow_unhandled_is_a_failure(self, signals: Signals) -> None:
        """``athrow(exc)`` not handled by the generator: failure, same object out."""
        thrown = PaymentDeclined("thrown")

        @ik.billing_operation("stream")
        async def stream() -> AsyncIterator[int]:
            yield 1
            yield 2

        agen = stream()
        await agen.__anext__()
        with pytest.raises(PaymentDeclined) as info:
            await agen.athrow(thrown)
        assert info.value is thrown
        assert_failure_signals(signals, "stream", thrown, user=None, user_facing=False)

    async def test_athrow_handled_continues_and_asend_passes_values(self, signals: Signals) -> None:
        """A handled thrown exception and sent values both reach the generator."""

        @ik.billing_operation("stream")
        async def stream() -> AsyncIterator[str]:
            try:
                received = yield "first"
                yield f"got {received}"
            except PaymentDeclined:
                yield "recovered"

        agen = stream()
        assert await agen.asend(None) == "first"
        assert await agen.asend("x") == "got x"
        assert await agen.athrow(PaymentDeclined()) == "recovered"
        with pytest.raises(StopAsyncIteration):
            await agen.__anext__()
        assert signals.metric("billing_operation_total", operation="stream", outcome="success") == 1

    async def test_exception_raised_midway_is_a_failure(self, signals: Signals) -> None:
        """An exception from the generator's own code: failure, same object and frames."""
        original = PaymentDeclined("midway")

        @ik.billing_operation("stream")
        async def stream() -> AsyncIterator[int]:
            yield 1
            raise original

        with pytest.raises(PaymentDeclined) as info:
            async for _ in stream():
                pass
        assert info.value is original
        assert traceback.extract_tb(original.__traceback__)[-1].line == "raise original"
        assert_failure_signals(signals, "stream", original, user=None, user_facing=False)


# ---------------------------------------------------------------------------------- with


class TestContextManager:
    def test_success_with_attributes(self, signals: Signals) -> None:
        """``with billing_operation(...) as op``: the success signals plus ``op`` attributes."""
        with ik.identify("user_42"), ik.billing_operation("refund", user_facing=True) as op:
            op.set_attribute("refund.reason", "duplicate")
            assert op.correlation_id == ik.correlation_id()
        tid = assert_success_signals(signals, "refund", user="user_42", user_facing=True)
        [span] = signals.spans
        assert (span.attributes or {})["refund.reason"] == "duplicate"
        assert signals.logs[-1]["attributes"]["refund.reason"] == "duplicate"
        assert signals.posthog_events[0]["properties"]["refund.reason"] == "duplicate"
        assert op.correlation_id == tid

    def test_failure_propagates_unchanged(self, signals: Signals) -> None:
        """An exception in the block is reported and propagates (never suppressed)."""
        original = PaymentDeclined("refund failed")
        with ik.identify("user_42"), pytest.raises(PaymentDeclined) as info:
            with ik.billing_operation("refund", user_facing=True) as op:
                op.set_attribute("refund.reason", "fraud")
                raise original
        assert info.value is original
        assert_failure_signals(signals, "refund", original, user="user_42", user_facing=True)
        [event] = signals.sentry_events
        assert event["tags"]["refund.reason"] == "fraud"

    def test_scrubbed_attributes(self, signals: Signals) -> None:
        """Attribute values are scrubbed like tags before they leave the process: patterns in
        text, card numbers given as integers, whole values under a denied key."""
        with ik.billing_operation("refund") as op:
            op.set_attribute("customer", "jane@example.com")
            op.set_attribute("card", 4242424242424242)
            op.set_attribute("password", "hunter22")
            op.set_attribute("amount_cents", 1250)
        [span] = signals.spans
        attributes = dict(span.attributes or {})
        assert "jane@example.com" not in str(attributes["customer"])
        assert attributes["card"] == attributes["password"] == "[redacted]"
        assert attributes["amount_cents"] == 1250
        [end] = [line for line in signals.logs if line["event"] == "operation.end"]
        assert "hunter22" not in str(end)
        assert "4242424242424242" not in str(end)

    def test_static_attributes_are_scrubbed_once(self, signals: Signals) -> None:
        """``attributes=`` of the declaration are scrubbed when declared."""

        @ik.billing_operation("scrub_static", attributes={"owner": "bob@example.com", "tier": 2})
        def charge() -> None:
            raise PaymentDeclined

        with pytest.raises(PaymentDeclined):
            charge()
        [span] = signals.spans
        assert (span.attributes or {})["owner"] == "[redacted]"
        assert (span.attributes or {})["tier"] == 2
        [event] = signals.sentry_events
        assert event["tags"]["owner"] == "[redacted]"

    def test_exception_message_is_scrubbed_in_the_span(self, signals: Signals) -> None:
        """The span's exception event and status carry the scrubbed message; the caller's
        exception is untouched."""
        secret = "bob" + "@" + "example.com"

        @ik.billing_operation("refund")
        def refund() -> None:
            raise PaymentDeclined(f"refund for {secret}")

        with pytest.raises(PaymentDeclined, match=secret):
            refund()
        [span] = signals.spans
        assert secret not in span.to_json()
        [exc_event] = [e for e in span.events if e.name == "exception"]
        assert (exc_event.attributes or {})["exception.message"] == "refund for [redacted]"
        assert "Traceback" in str((exc_event.attributes or {})["exception.stacktrace"])
        assert span.status.description == "PaymentDeclined: refund for [redacted]"
        assert secret not in str(signals.logs)

    def test_one_operation_object_reused_nested_and_across_threads(self, signals: Signals) -> None:
        """A module-level operation used re-entrantly and from threads keeps each run apart."""
        refund = ik.billing_operation("refund")
        with refund as outer:
            with refund as inner:
                assert inner is not outer
            assert trace.get_current_span().get_span_context().span_id == outer.span_id

        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(20):
                    with refund:
                        pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert (
            signals.metric("billing_operation_total", operation="refund", outcome="success") == 82
        )

    async def test_async_with(self, signals: Signals) -> None:
        """``async with`` works the same, for success and failure."""
        async with ik.billing_operation("refund", user_facing=True) as op:
            await asyncio.sleep(0)
            op.set_attribute("refund.reason", "late")
        original = PaymentDeclined()
        with pytest.raises(PaymentDeclined) as info:
            async with ik.billing_operation("refund", user_facing=True):
                await asyncio.sleep(0)
                raise original
        assert info.value is original
        assert signals.metric("billing_operation_total", operation="refund", outcome="success") == 1
        assert signals.metric("billing_operation_total", operation="refund", outcome="failure") == 1
        assert [e["event"] for e in signals.posthog_events] == [
            "billing_refund_success",
            "billing_refund_failure",
        ]

    def test_non_billing_domain(self, signals: Signals) -> None:
        """``ik.operation(name, domain=...)``: the domain names the span and the Sentry tag."""

        @ik.operation("capture", domain="payments")
        def capture() -> None:
            raise PaymentDeclined

        with pytest.raises(PaymentDeclined):
            capture()
        [span] = signals.spans
        assert span.name == "payments.capture"
        assert (span.attributes or {})["billing.operation"] == "capture"
        [event] = signals.sentry_events
        assert event["tags"]["domain"] == "payments"
