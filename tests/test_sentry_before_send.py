"""``invariantkit.sentry.before_send``: the guide's tagging of billing transactions, through a
real ``sentry_sdk.Client`` posting to a Sentry receiver on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sentry_sdk

import invariantkit as ik
from invariantkit import billing
from invariantkit.sentry import DEFAULT_PATTERNS, DEFAULT_TAGS, before_send, make_before_send
from support.receivers import SentryReceiver

BILLING_TAGS = {"domain": "billing", "critical": "true"}


@pytest.fixture
def send(sentry_receiver: SentryReceiver) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """``send(transaction, hook=..., **client_options)``: capture one message in a scope whose
    transaction is ``transaction`` through a real client; return what the receiver got."""
    clients: list[sentry_sdk.Client] = []

    def run(
        transaction: str | None,
        hook: Any = before_send,
        tags: dict[str, str] | None = None,
        expect: int = 1,
    ) -> list[dict[str, Any]]:
        client = sentry_sdk.Client(
            dsn=sentry_receiver.dsn, before_send=hook, default_integrations=False
        )
        clients.append(client)
        with sentry_sdk.new_scope() as scope:
            scope.set_client(client)
            if transaction is not None:
                scope.set_transaction_name(transaction)
            for key, value in (tags or {}).items():
                scope.set_tag(key, value)
            scope.capture_message("something broke", level="error")
        client.flush(timeout=5)
        if expect == 0:
            assert sentry_receiver.events == []
            return []
        return sentry_receiver.wait_for(expect)

    yield run
    for client in clients:
        client.close(timeout=2)


class TestGuideHook:
    """The guide's ``beforeSend``, as ``invariantkit.sentry.before_send``."""

    @pytest.mark.parametrize(
        "transaction",
        [
            "/api/subscriptions",
            "/api/subscriptions/{id}/renew",
            "POST /api/subscriptions",
            "/api/cron/subscription-renewal",
        ],
    )
    def test_billing_transactions_are_tagged(self, send: Any, transaction: str) -> None:
        """An event of a billing route arrives with ``domain=billing`` and ``critical=true``."""
        [event] = send(transaction)
        assert event["transaction"] == transaction
        assert {k: event["tags"][k] for k in BILLING_TAGS} == BILLING_TAGS

    @pytest.mark.parametrize("transaction", ["/api/users", "/api/subscription", "/healthz", None])
    def test_other_events_are_untouched(self, send: Any, transaction: str | None) -> None:
        """Other routes, and events without a transaction, are sent as they are."""
        [event] = send(transaction)
        assert "domain" not in event.get("tags", {})
        assert "critical" not in event.get("tags", {})

    def test_existing_tags_are_kept_and_ours_win(self, send: Any) -> None:
        """As the guide's ``{...event.tags, domain, critical}``: the event's tags stay, ours win
        a clash."""
        [event] = send("/api/subscriptions", tags={"region": "eu", "domain": "payments"})
        assert event["tags"]["region"] == "eu"
        assert event["tags"]["domain"] == "billing"

    def test_inside_a_real_transaction(self, sentry_receiver: SentryReceiver) -> None:
        """An error raised inside a started Sentry transaction carries its name and the tags."""
        client = sentry_sdk.Client(
            dsn=sentry_receiver.dsn,
            before_send=before_send,
            traces_sample_rate=1.0,
            default_integrations=False,
        )
        try:
            with sentry_sdk.new_scope() as scope:
                scope.set_client(client)
                with sentry_sdk.start_transaction(name="/api/cron/subscription-renewal"):
                    try:
                        raise RuntimeError("provider timeout")
                    except RuntimeError as exc:
                        sentry_sdk.capture_exception(exc)
            client.flush(timeout=5)
            [event] = sentry_receiver.wait_for(1)
            assert event["transaction"] == "/api/cron/subscription-renewal"
            assert event["tags"]["critical"] == "true"
        finally:
            client.close(timeout=2)

    def test_invariantkit_violations_get_the_tags_too(
        self, sentry_receiver: SentryReceiver
    ) -> None:
        """A violation reported during a billing request is tagged like any other event."""
        client = sentry_sdk.Client(
            dsn=sentry_receiver.dsn, before_send=before_send, default_integrations=False
        )
        try:
            ik.configure(sinks=[ik.sinks.Sentry(client)])
            with sentry_sdk.new_scope() as scope:
                scope.set_transaction_name("/api/subscriptions/renew")
                ik.report_violation(billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"})
            ik.flush(5)
            [event] = sentry_receiver.wait_for(1)
            assert event["message"] == "NO_DOUBLE_CHARGE"
            assert event["tags"]["critical"] == "true"
            assert event["tags"]["invariant"] == "NO_DOUBLE_CHARGE"
        finally:
            ik.shutdown()
            client.close(timeout=2)

    def test_defaults_are_the_guides(self) -> None:
        """The default routes and tags are the guide's."""
        assert DEFAULT_PATTERNS == ("/api/subscriptions", "/api/cron/subscription-renewal")
        assert dict(DEFAULT_TAGS) == BILLING_TAGS
        with pytest.raises(TypeError):
            DEFAULT_TAGS["domain"] = "x"  # type: ignore[index]


class TestMakeBeforeSend:
    """Configurable routes and tags, composed with the user's own hook."""

    def test_custom_patterns_and_tags(self, send: Any) -> None:
        """Substrings and compiled regular expressions; the tags given."""
        hook = make_before_send(
            patterns=["/api/invoices", re.compile(r"^/billing/v\d+/")],
            tags={"domain": "billing", "team": "payments"},
        )
        [event] = send("/billing/v2/refunds", hook=hook)
        assert event["tags"]["team"] == "payments"
        assert "critical" not in event["tags"]

    def test_a_single_string_pattern(self) -> None:
        """One pattern may be given as a plain string."""
        hook = make_before_send(patterns="/checkout")
        event = hook({"transaction": "/checkout/confirm"}, {})
        assert event is not None
        assert event["tags"] == BILLING_TAGS

    def test_user_hook_runs_after_ours(self, send: Any) -> None:
        """The user's hook sees our tags and may change the event."""
        seen: list[dict[str, Any]] = []

        def mine(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
            seen.append(dict(event["tags"]))
            event["tags"]["owner"] = "billing-oncall"
            return event

        [event] = send("/api/subscriptions", hook=make_before_send(then=mine))
        assert seen[0]["domain"] == "billing"
        assert event["tags"]["owner"] == "billing-oncall"

    def test_user_hook_may_drop(self, send: Any) -> None:
        """A user hook returning None drops the event."""
        send("/api/subscriptions", hook=make_before_send(then=lambda event, hint: None), expect=0)

    def test_user_hook_gets_the_hint(self) -> None:
        """The hint is passed through unchanged."""
        hints: list[Any] = []
        hint = {"exc_info": None}
        make_before_send(then=lambda e, h: hints.append(h) or e)({}, hint)
        assert hints == [hint]

    def test_a_failing_user_hook_is_sentrys_rule(self, send: Any) -> None:
        """An exception in the user's hook propagates to the SDK, which drops the event (a
        hook that scrubs data must not be bypassed)."""

        def broken(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
            raise RuntimeError("bug in the user's hook")

        send("/api/subscriptions", hook=make_before_send(then=broken), expect=0)

    @pytest.mark.parametrize(
        "event",
        [
            {"transaction": "/api/subscriptions", "tags": "not-a-dict"},
            {"transaction": 42},
            {"transaction": "/api/subscriptions", "tags": [["region", "eu"], "junk"]},
        ],
    )
    def test_malformed_events_are_never_dropped(self, event: dict[str, Any]) -> None:
        """Whatever the event looks like, ours returns it."""
        assert before_send(event, {}) is event

    def test_list_form_tags_are_merged(self) -> None:
        """Tags given as ``[[key, value], ...]`` are merged too."""
        event = before_send({"transaction": "/api/subscriptions", "tags": [["region", "eu"]]}, {})
        assert event is not None
        assert event["tags"] == {"region": "eu", **BILLING_TAGS}


class TestValidation:
    """Bad arguments fail when the hook is built, naming the argument and the rule."""

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"patterns": []}, ValueError, "at least one pattern"),
            ({"patterns": [""]}, ValueError, "would match every transaction"),
            ({"patterns": [3]}, TypeError, "each pattern must be a substring"),
            ({"patterns": [re.compile(rb"/api")]}, TypeError, "compiled str regular expression"),
            ({"patterns": 3}, TypeError, "must be a list of substrings"),
            ({"tags": {}}, TypeError, "non-empty mapping"),
            ({"tags": ["domain"]}, TypeError, "non-empty mapping"),
            ({"tags": {"critical": True}}, TypeError, "must map a str to a str"),
            ({"tags": {"k" * 33: "v"}}, ValueError, "1 to 32 characters"),
            ({"tags": {"domain": ""}}, ValueError, "1 to 200 characters"),
            ({"then": "not callable"}, TypeError, "then=.* must be a callable"),
        ],
    )
    def test_errors(self, kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
        """Each rule has its message."""
        with pytest.raises(error, match=message):
            make_before_send(**kwargs)
