"""Correlation: ``correlation_id``, ``identify``, ``inject``/``extract``, with and without tracing."""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import json
import re
import threading
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry import trace

import invariantkit as ik
from invariantkit import billing
from invariantkit._context import CORRELATION, USER
from invariantkit._safe import REDACTED
from invariantkit.testing import Signals, capture_signals

HEX32 = re.compile(r"[0-9a-f]{32}\Z")


def _op_records(signals: Signals) -> list[ik.Record]:
    return [r for r in signals.records if r.kind == "operation"]


class TestCorrelationId:
    def test_is_32_lowercase_hex_and_fresh_outside_any_unit_of_work(self) -> None:
        """Outside an operation, nothing is bound: each call gives a new id."""
        ids = {ik.correlation_id() for _ in range(50)}
        assert len(ids) == 50
        assert all(HEX32.match(i) for i in ids)

    def test_is_the_current_span_trace_id(self, signals: Signals) -> None:
        """Inside an operation it is the span's trace id."""

        @ik.billing_operation("renewal")
        def renew() -> str:
            return ik.correlation_id()

        cid = renew()
        [span] = signals.spans
        assert cid == format(span.context.trace_id, "032x")

    def test_follows_a_span_the_application_opened_itself(self, signals: Signals) -> None:
        """A span from the application's own tracer is the correlation too."""
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("app")
        with tracer.start_as_current_span("request") as span:
            assert ik.correlation_id() == format(span.get_span_context().trace_id, "032x")


class TestCorrelationWithoutTracing:
    """``capture_signals(traces=False)``: no span, invariantkit's own fallback correlation."""

    def test_nested_calls_share_one_id(self) -> None:
        """An operation and everything it calls (operations, violations, events) share the id."""
        with capture_signals(traces=False) as signals:

            @ik.billing_operation("charge")
            def charge() -> str:
                ik.track("charge_attempted")
                return ik.correlation_id()

            @ik.billing_operation("renewal")
            def renew() -> tuple[str, str]:
                outer = ik.correlation_id()
                inner = charge()
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
                return outer, inner

            outer, inner = renew()
            assert outer == inner
            trace_ids = {r.trace_id for r in signals.records}
            assert trace_ids == {outer}
            kinds = sorted(r.kind for r in signals.records)
            assert kinds == [
                "event",
                "operation",
                "operation",
                "operation_start",
                "operation_start",
                "violation",
            ]
            assert {line["trace_id"] for line in signals.logs} == {outer}
            assert {e["contexts"]["trace"]["trace_id"] for e in signals.sentry_events} == {outer}
            assert {m["properties"]["trace_id"] for m in signals.posthog_events} == {outer}

    def test_separate_top_level_calls_get_different_ids(self) -> None:
        """Two calls one after the other are two units of work."""
        with capture_signals(traces=False) as signals:

            @ik.billing_operation("renewal")
            def renew() -> str:
                return ik.correlation_id()

            first, second = renew(), renew()
            assert first != second
            assert [r.trace_id for r in _op_records(signals)] == [first, second]

    def test_a_thread_never_keeps_one_id(self) -> None:
        """A worker thread's successive calls and violations each get their own id; nothing
        stays bound between them."""
        with capture_signals(traces=False) as signals:

            @ik.billing_operation("renewal")
            def renew() -> str:
                return ik.correlation_id()

            seen: list[Any] = []

            def worker() -> None:
                for _ in range(5):
                    seen.append(renew())
                    ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
                    seen.append(CORRELATION.get())

            thread = threading.Thread(target=worker)
            thread.start()
            thread.join()
            ops = seen[0::2]
            assert len(set(ops)) == 5
            assert seen[1::2] == [None] * 5
            violation_ids = [r.trace_id for r in signals.violations]
            assert len(set(violation_ids) | set(ops)) == 10

    def test_asyncio_tasks_get_their_own_ids(self) -> None:
        """Concurrent tasks interleaving at awaits keep separate ids."""
        with capture_signals(traces=False) as signals:

            @ik.billing_operation("renewal")
            async def renew() -> str:
                first = ik.correlation_id()
                await asyncio.sleep(0)
                assert ik.correlation_id() == first
                return first

            async def main() -> list[str]:
                return list(await asyncio.gather(*(renew() for _ in range(50))))

            ids = asyncio.run(main())
            assert len(set(ids)) == 50
            assert sorted(r.trace_id for r in _op_records(signals)) == sorted(ids)


class TestIdentify:
    def test_binds_and_restores(self) -> None:
        """As a context manager it restores the previous user; nested bindings stack."""
        assert USER.get() is None
        with ik.identify("user_1"):
            assert USER.get() == "user_1"
            with ik.identify("user_2"):
                assert USER.get() == "user_2"
            assert USER.get() == "user_1"
        assert USER.get() is None

    def test_without_with_it_stays_until_detached(self) -> None:
        """A plain call binds for the rest of the context; ``detach()`` undoes it."""
        binding = ik.identify(42)
        assert USER.get() == "42"
        binding.detach()
        binding.detach()  # idempotent
        assert USER.get() is None

    def test_none_means_no_user(self, signals: Signals) -> None:
        """``identify(None)`` (an anonymous request) unbinds the user: personless events."""
        with ik.identify("user_1"), ik.identify(None):
            assert USER.get() is None
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        [message] = signals.posthog_events
        assert message["properties"]["$process_person_profile"] is False

    def test_reaches_every_sink(self, signals: Signals) -> None:
        """Sentry user, PostHog distinct_id, span ``enduser.id`` and log ``user_id``."""
        with ik.identify("user_42"):
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        [event] = signals.sentry_events
        assert event["user"]["id"] == "user_42"
        [message] = signals.posthog_events
        assert message["distinct_id"] == "user_42"
        [span] = signals.spans
        assert (span.attributes or {})["enduser.id"] == "user_42"
        assert {line["user_id"] for line in signals.logs} == {"user_42"}
        signals.assert_correlated()

    @pytest.mark.parametrize(
        ("value", "error", "fragment"),
        [
            (True, TypeError, "must be a str"),
            (3.5, TypeError, "must be a str"),
        ],
    )
    def test_bad_user_ids_fail_loudly(
        self, value: Any, error: type[Exception], fragment: str
    ) -> None:
        """A user id that cannot be one is a clear error at the call."""
        with pytest.raises(error, match=fragment):
            ik.identify(value)


class TestInjectExtract:
    def test_round_trip_with_tracing(self, signals: Signals) -> None:
        """The second service's span is a child in the first one's trace, with its user."""

        @ik.billing_operation("checkout")
        def checkout() -> dict[str, str]:
            return dict(ik.inject({}))

        @ik.billing_operation("charge")
        def charge() -> tuple[str, str | None]:
            return ik.correlation_id(), USER.get()

        with ik.identify("user 42/é"):
            headers = checkout()
        assert set(headers) == {"traceparent", "baggage"}

        # The callee: a fresh context, as a request handler in another process would have.
        def callee() -> tuple[str, str | None]:
            with ik.extract(headers):
                return charge()

        cid, user = contextvars.Context().run(callee)
        first, second = signals.spans
        assert cid == format(first.context.trace_id, "032x")
        assert user == "user 42/é"
        assert second.parent is not None
        assert second.parent.span_id == first.context.span_id
        assert second.parent.is_remote
        assert (second.attributes or {})["enduser.id"] == "user 42/é"
        assert headers["traceparent"].startswith(
            f"00-{cid}-{format(first.context.span_id, '016x')}-"
        )
        assert int(headers["traceparent"][-2:], 16) & 1  # sampled

    @pytest.mark.parametrize("ours_first", [True, False])
    def test_two_baggage_headers_are_both_read(self, ours_first: bool) -> None:
        """Sentry's stdlib integration adds its own ``baggage`` header next to ours; an
        ``http.server`` handler sees two. W3C combines them; the user id survives either order."""
        with ik.identify("user_42"):
            ours = ik.inject({})
        sentry = "sentry-trace_id=" + "ef" * 16 + ",sentry-environment=production"
        message = http.client.HTTPMessage()
        message["traceparent"] = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
        for value in (ours["baggage"], sentry) if ours_first else (sentry, ours["baggage"]):
            message["baggage"] = value  # appends: two headers of that name

        def callee() -> tuple[str, str | None]:
            with ik.extract(message):
                return ik.correlation_id(), USER.get()

        cid, user = contextvars.Context().run(callee)
        assert user == "user_42"
        assert cid == "ab" * 16

    def test_round_trip_without_tracing(self) -> None:
        """Without spans the fallback correlation id crosses the boundary just the same."""
        with capture_signals(traces=False) as signals:
            with ik.identify("user_7"), ik.billing_operation("checkout"):
                headers = ik.inject({})
                sent = ik.correlation_id()

            def callee() -> None:
                with ik.extract(headers), ik.billing_operation("charge"):
                    ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)

            contextvars.Context().run(callee)
            checkout, charge = _op_records(signals)
            [violation] = signals.violations
            assert checkout.trace_id == charge.trace_id == violation.trace_id == sent
            assert charge.user_id == violation.user_id == "user_7"
            [event] = signals.sentry_events
            assert event["contexts"]["trace"]["trace_id"] == sent

    def test_header_names_are_case_insensitive(self) -> None:
        """``Traceparent`` from a framework that capitalizes headers still works."""
        tid = "ab" * 16
        with ik.extract({"Traceparent": f"00-{tid}-{'cd' * 8}-01", "BAGGAGE": "user_id=u1"}):
            assert ik.correlation_id() == tid
            assert USER.get() == "u1"
        assert USER.get() is None
        assert not trace.get_current_span().get_span_context().is_valid

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"traceparent": "garbage"},
            {"traceparent": "00-" + "0" * 32 + "-" + "cd" * 8 + "-01"},
            {"baggage": "%%%,,=="},
        ],
    )
    def test_garbage_headers_start_a_fresh_unit_of_work(self, headers: dict[str, str]) -> None:
        """Invalid or missing context never raises; the callee gets its own id."""
        with ik.extract(headers):
            cid = ik.correlation_id()
            assert HEX32.match(cid)
            assert cid != "0" * 32
            assert ik.correlation_id() != cid  # nothing bound: a fresh id each time
            assert not trace.get_current_span().get_span_context().is_valid
            assert USER.get() is None

    def test_inject_outside_any_unit_of_work_writes_only_the_user(self) -> None:
        """With nothing to continue there is no ``traceparent``; the user still travels."""
        with ik.identify("user_1"):
            headers = ik.inject({})
        assert "traceparent" not in headers
        assert headers["baggage"] == "user_id=user_1"

    @given(
        user=st.text(
            alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200
        ),
        trace_id=st.integers(1, 2**128 - 1),
        span_id=st.integers(1, 2**64 - 1),
    )
    def test_any_user_and_ids_survive_the_round_trip(
        self, user: str, trace_id: int, span_id: int
    ) -> None:
        """Property: whatever the user id and ids, extract(inject()) gives them back."""

        def caller() -> dict[str, str]:
            CORRELATION.set((trace_id, span_id))
            with ik.identify(user):
                return dict(ik.inject({}))

        headers = contextvars.Context().run(caller)

        def callee() -> tuple[str, str | None]:
            with ik.extract(headers):
                return ik.correlation_id(), USER.get()

        assert contextvars.Context().run(callee) == (format(trace_id, "032x"), user)


class TestTrack:
    def test_product_event_with_trace_and_user(self, signals: Signals) -> None:
        """``ik.track`` sends the event to PostHog with the trace id and the bound user, and
        scrubs its properties like tags."""

        @ik.billing_operation("signup")
        def signup() -> str:
            ik.track("subscription_started", tier="plus", email="jane@example.com", amount=5.0)
            return ik.correlation_id()

        with ik.identify("user_42"):
            cid = signup()
        [message] = signals.posthog_events
        assert message["event"] == "subscription_started"
        assert message["distinct_id"] == "user_42"
        assert message["properties"]["trace_id"] == cid
        assert message["properties"]["tier"] == "plus"
        assert message["properties"]["amount"] == 5.0
        assert "jane@example.com" not in str(message["properties"])
        [record] = [r for r in signals.records if r.kind == "event"]
        assert (record.trace_id, record.user_id) == (cid, "user_42")

    @pytest.mark.parametrize("name", ["", 42, "bad\nname", "x" * 201])
    def test_invalid_event_names_are_dropped_never_raised(
        self, signals: Signals, name: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A bad event name is logged and dropped: product analytics never break a request."""
        ik.track(name)
        assert signals.posthog_events == []
        assert any("track() event name" in r.getMessage() for r in caplog.records)


def test_extract_without_traceparent_keeps_the_current_trace() -> None:
    """A request with no traceparent continues the span HTTP instrumentation made current."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("server") as span:
        expected = format(span.get_span_context().trace_id, "032x")
        with ik.extract({"x-request-id": "r1"}):
            assert ik.correlation_id() == expected


class TestUserIdsAtTheEdges:
    @pytest.mark.parametrize("value", ["", None])
    def test_empty_ids_are_no_user(self, signals: Signals, value: Any) -> None:
        """``request.headers.get("x-user-id", "")``: no user, never an error."""
        invariant = ik.Invariant("EDGE_USER", type="edge_user", summary="x")
        with ik.identify(value):
            ik.report_violation(invariant)
        [record] = signals.violations
        assert record.user_id is None

    @pytest.mark.parametrize(
        "value",
        ["x" * 500, 10**5000, -(10**5000), "é" * 10_000],
        ids=["500 x", "10**5000", "-10**5000", "10,000 é"],
    )
    def test_over_long_ids_are_cut_and_kept_apart(self, signals: Signals, value: Any) -> None:
        """An over-long id is cut to 200 characters (a hash of the whole keeps ids apart)."""
        invariant = ik.Invariant("EDGE_USER", type="edge_user", summary="x")
        with ik.identify(value):
            ik.report_violation(invariant)
        with ik.identify(value + 1 if isinstance(value, int) else value + "y"):
            ik.report_violation(invariant)
        first, second = (r.user_id for r in signals.violations)
        assert first is not None
        assert 0 < len(first) <= 200
        assert first != second

    def test_extract_none_never_raises(self) -> None:
        """``ik.extract(None)`` (no headers at all) binds nothing and never raises."""
        with ik.extract(None):
            assert re.fullmatch("[0-9a-f]{32}", ik.correlation_id())


_PII_IDS = [
    "alice@example.com",
    "4242 4242 4242 4242",
    "4242-4242-4242-4242",
    "+1 415 555 0100",
    "(415) 555-0100",
]


#: Digits (ASCII, Arabic-Indic, mathematical; a superscript is no decimal) and what else ids,
#: e-mail addresses, card and phone numbers are made of.
_ID_PARTS = ("4", "2", "0", "\u0663", "\U0001d7d8", "\u00b2", " ", "-", "(", ")", "+", "@")
_ID_PARTS += ("a", "_", "x.io", REDACTED)


class TestPseudonyms:
    @pytest.mark.parametrize("pii", _PII_IDS)
    def test_pii_shaped_ids_leave_as_one_pseudonym_in_every_sink(
        self, signals: Signals, pii: str
    ) -> None:
        """An e-mail, card or phone number given to identify() is in no sink; the same keyed
        pseudonym stands for it in Sentry user.id, PostHog distinct_id, the span's enduser.id
        and the log lines."""
        invariant = ik.Invariant("PSEUDONYM_USER", type="pseudonym_user", summary="x")

        @ik.billing_operation("pseudonym_checkout", user_facing=True)
        def checkout() -> None:
            ik.report_violation(invariant)

        with ik.identify(pii):
            checkout()
        ik.flush()
        [event] = signals.sentry_events
        pseudonym = event["user"]["id"]
        assert pseudonym.startswith("pseudonym:")
        assert {m["distinct_id"] for m in signals.posthog_events} == {pseudonym}
        assert {(s.attributes or {}).get("enduser.id") for s in signals.spans} == {pseudonym}
        assert {line["user_id"] for line in signals.logs} == {pseudonym}
        output = json.dumps(
            [event, signals.posthog_events, signals.logs, [s.to_json() for s in signals.spans]]
        )
        assert pii not in output
        assert pii.replace(" ", "").replace("-", "") not in output

    def test_pseudonyms_are_stable_and_keyed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The same id gives the same pseudonym (case of an e-mail and a card's separators
        aside); another key (INVARIANTKIT_PSEUDONYM_KEY) gives another one."""
        from invariantkit._context import user_id_text

        monkeypatch.setenv("INVARIANTKIT_PSEUDONYM_KEY", "k1")
        one = user_id_text("Alice@Example.com")
        assert one == user_id_text("alice@example.com")
        assert user_id_text("4242 4242 4242 4242") == user_id_text("4242424242424242")
        monkeypatch.setenv("INVARIANTKIT_PSEUDONYM_KEY", "k2")
        assert user_id_text("alice@example.com") != one

    @pytest.mark.parametrize(
        "plain", ["user_42", "42", "1234567", "550e8400-e29b-41d4-a716-446655440000", "cus_NffrFe"]
    )
    def test_other_ids_are_unchanged(self, plain: str) -> None:
        """Ordinary ids (numbers, UUIDs, provider ids) are not pseudonymised."""
        from invariantkit._context import user_id_text

        assert user_id_text(plain) == plain

    @settings(max_examples=1000)
    @given(
        st.one_of(
            st.text(max_size=80),
            st.lists(
                st.sampled_from(_ID_PARTS),
                max_size=24,
            ).map("".join),
            st.from_regex(r"[+(]?[0-9\u0663 ().-]{4,20}", fullmatch=True),  # phone-like
        )
    )
    @example("+123 4567")
    @example("user_42")
    @example(f"{REDACTED}42")
    @example("\u0663" * 7)
    @example("\u00b2" * 13)
    @example("+1 415 555 0100")
    def test_the_fast_path_decides_as_the_patterns_do(self, text: str) -> None:
        """What identify() decides without the patterns (an id with few digits and no "@") is
        what the patterns decide: PII-shaped ids are still pseudonymised."""
        from invariantkit._context import _pii_form, _pii_form_general

        assert _pii_form(text) == _pii_form_general(text)
