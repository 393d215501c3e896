"""Scrubbing: card numbers, e-mail addresses, bearer tokens, secrets by key, DSNs and API keys
never leave the process, through any sink; allow and deny lists are configurable; no DSN or API
key appears in invariantkit's own log output."""

from __future__ import annotations

import json
import logging
import os
import re
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import invariantkit as ik
from invariantkit._safe import REDACTED, Scrubber, safe_json, safe_tags
from invariantkit.testing import Signals, capture_signals

# -- strategies ---------------------------------------------------------------------------------


def _luhn_check_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    """A 13 to 19 digit number passing Luhn, plain or grouped by 4 with spaces or dashes."""
    length = draw(st.integers(13, 19))
    body = draw(st.text(string.digits, min_size=length - 1, max_size=length - 1))
    digits = body + _luhn_check_digit(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


_TOKEN_CHARS = string.ascii_letters + string.digits + "-._~+/"
bearer_tokens = st.builds(
    lambda scheme, token, pad: f"{scheme} {token}{pad}",
    st.sampled_from(["Bearer", "bearer", "BEARER"]),
    st.text(_TOKEN_CHARS, min_size=8, max_size=64),
    st.sampled_from(["", "=", "=="]),
)
_HEX = "0123456789abcdef"
dsns = st.one_of(
    st.builds(
        lambda key, org, project: f"https://{key}@o{org}.ingest.sentry.io/{project}",
        st.text(_HEX, min_size=32, max_size=32),
        st.integers(1, 10**7),
        st.integers(1, 10**7),
    ),
    st.builds(
        lambda user, pw, port: f"postgresql://{user}:{pw}@db.internal:{port}/billing",
        st.text(string.ascii_lowercase, min_size=1, max_size=12),
        st.text(string.ascii_letters + string.digits + "!$*", min_size=1, max_size=24),
        st.integers(1, 65535),
    ),
)
_KEY_CHARS = string.ascii_letters + string.digits
api_keys = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["phc_", "phx_", "sk_live_", "sk_test_", "rk_live_", "ghp_", "sntrys_"]),
    st.text(_KEY_CHARS, min_size=20, max_size=48),
)
emails = st.emails()
secrets = st.one_of(card_numbers(), emails, bearer_tokens, dsns, api_keys)
_WORDS = st.text(string.ascii_letters + " ", max_size=20)
_SEPARATORS = st.sampled_from([" ", "\n", "(", ")", ",", ";", ": ", "= ", "\t", "<", ">"])


@st.composite
def in_text(draw: st.DrawFn) -> tuple[str, str]:
    """(secret, text containing it), the secret delimited as it would be in prose or a URL."""
    secret = draw(secrets)
    text = draw(_WORDS) + draw(_SEPARATORS) + secret + draw(_SEPARATORS) + draw(_WORDS)
    return secret, draw(st.sampled_from([secret, text]))


def _forms(secret: str) -> list[str]:
    """Every way the secret could appear in a sink's output."""
    forms = {secret, json.dumps(secret)[1:-1]}
    digits = re.sub(r"[ -]", "", secret)
    if digits.isdigit():
        forms.add(digits)
    return [f for f in forms if f]


def _everything(signals: Signals, own_logs: list[str]) -> str:
    """Every byte that left the process through any sink, as text."""
    parts: list[str] = []
    for envelope in signals.sentry_envelopes:
        parts.append(envelope.serialize().decode("utf-8", "replace"))
    parts.append(json.dumps(signals.posthog_events, default=str))
    for span in signals.spans:
        parts.append(span.to_json())
    parts.append(json.dumps(signals.logs, default=str))
    parts.extend(own_logs)
    return "\n".join(parts)


@contextmanager
def own_log_output() -> Iterator[list[str]]:
    """Every line invariantkit's logger writes, formatted as a handler would write it."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("invariantkit")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def _assert_absent(secret: str, output: str) -> None:
    for form in _forms(secret):
        assert form not in output, f"{form!r} escaped"


SCRUB_INVARIANT = "SCRUB_NO_LEAK"
_HYPOTHESIS = settings(
    max_examples=int(os.environ.get("SCRUB_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- properties -------------------------------------------------------------------------------


@_HYPOTHESIS
@given(secret_and_text=in_text(), key=st.sampled_from(["note", "customer", "reason", "detail"]))
def test_no_secret_escapes_through_any_sink(secret_and_text: tuple[str, str], key: str) -> None:
    """A card number, e-mail, bearer token, DSN or API key put in tags, extra, product event
    properties, span attributes or the exception of a failing operation is in none of the Sentry
    envelopes' raw bytes, PostHog messages, spans or log lines."""
    secret, text = secret_and_text
    with own_log_output() as own, capture_signals() as signals:
        invariant = ik.Invariant(SCRUB_INVARIANT, type="scrub", summary="x")
        ik.assert_invariant(
            False,
            invariant,
            tags={key: text, "subscription_id": "sub_1"},
            extra={key: text, "nested": {"list": [text, {"deeper": text}]}},
        )
        ik.track("subscription_started", **{key: text, "plan": "plus"})

        @ik.billing_operation("scrub_charge", user_facing=True)
        def charge() -> None:
            with ik.billing_operation("scrub_inner") as run:
                run.set_attribute(key, text)

        charge()
        output = _everything(signals, own)
        assert signals.violations  # the signals were produced...
        assert len(signals.sentry_events) == 1
        assert len(signals.posthog_events) == 3
    _assert_absent(secret, output)  # ...without the secret


@_HYPOTHESIS
@given(
    value=st.builds(
        "Zq9".__add__, st.text(string.ascii_letters + string.digits + "!#%&*", max_size=30)
    ),
    key=st.sampled_from(
        [
            "password",
            "db_password",
            "userPassword",
            "client_secret",
            "apiToken",
            "API_KEY",
            "authorization",
            "sentry_dsn",
            "card_number",
            "cvv",
            "refresh_token",
            "Cookie",
        ]
    ),
)
def test_values_under_secret_keys_never_escape(value: str, key: str) -> None:
    """Whatever the value, under a password/secret/token/key-like key it is redacted whole, in
    tags, extra, properties and span attributes, and as ``key=value`` inside text."""
    with own_log_output() as own, capture_signals() as signals:
        invariant = ik.Invariant(SCRUB_INVARIANT, type="scrub", summary="x")
        ik.report_violation(
            invariant,
            tags={key: value, "context": f"login failed {key}={value}"},
            extra={"request": {"headers": {key: value}}},
        )
        ik.track("login_failed", **{key: value})
        with ik.billing_operation("scrub_login") as run:
            run.set_attribute("query", f"?{key}={value}&x=1")
        output = _everything(signals, own)
        [violation] = signals.violations
        assert violation.attributes[key] == REDACTED
    assert value not in output


@given(value=in_text())
@settings(max_examples=200, deadline=None)
def test_scrubbed_values_keep_their_shape(value: tuple[str, str]) -> None:
    """``safe_tags`` and ``safe_json`` scrub every nesting and never raise."""
    secret, text = value
    scrubber = Scrubber()
    tags = safe_tags({"a": text, "b": [text], "c": {"d": text}}, scrubber)
    data = safe_json({"a": text, "b": [text, (text,)], "c": {"d": {"e": text}}}, scrubber)
    output = json.dumps(tags) + json.dumps(data)
    _assert_absent(secret, output)
    assert set(tags) == {"a", "b", "c"}


class _Text(str):
    """A str subclass: ``safe_tags`` reads it through its general path, not the str fast path."""


_SCRUBBERS = [
    Scrubber(),
    Scrubber(deny_keys=frozenset({"note"}), allow_keys=frozenset({"card_note"})),
    Scrubber(patterns=[r"EMP\d+"]),
]


@given(
    key=st.one_of(st.sampled_from(["note", "card_note", "password", "subscription_id"]), st.text()),
    value=st.one_of(
        in_text().map(lambda pair: pair[1]),
        st.text(),
        st.text(string.digits + " -", min_size=180, max_size=760),
        st.text(min_size=700, max_size=760),
    ),
    which=st.integers(0, len(_SCRUBBERS) - 1),
)
@settings(max_examples=300, deadline=None)
def test_str_tags_fast_path_equals_the_general_path(key: str, value: str, which: int) -> None:
    """Plain str tags take a shortcut in ``safe_tags``; it gives what the general path gives
    (same key, same scrubbing, same cut at 200), for any text up to and past its length limits."""
    scrubber = _SCRUBBERS[which]
    fast = safe_tags({key: value}, scrubber)
    general = safe_tags({_Text(key): _Text(value)}, scrubber)
    assert fast == general
    assert all(type(v) is str and len(v) <= 200 for v in fast.values())


@given(card=card_numbers())
@settings(max_examples=100, deadline=None)
def test_card_numbers_as_integers_are_redacted(card: str) -> None:
    """A card number passed as an int (or an integral float) is redacted too."""
    digits = re.sub(r"[ -]", "", card)
    if digits.startswith("0"):
        return  # an int cannot keep a leading zero: the number is a different one
    number = int(digits)
    scrubber = Scrubber()
    assert safe_tags({"card": number}, scrubber) == {"card": REDACTED}
    assert safe_json({"card": number}, scrubber) == {"card": REDACTED}
    if number < 2**53:
        assert safe_json([float(number)], scrubber) == [REDACTED]


# -- examples -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "sub_1234567890",
        "cus_NffrFeUfNV2Hib",
        "550e8400-e29b-41d4-a716-446655440000",
        "amount 4999 cents, 2024-01-15 12:30:00",
        "basic plan",
        "the token expired",
        "order 1234 5678",
        "ch_3MmlLrLkdIwHu7ix0snN0B15",
        "failureReason: insufficient_funds",
        "12345678901234567890123",  # 23 digits: an id, not a card
    ],
)
def test_ordinary_billing_values_are_kept(text: str) -> None:
    """Ids, amounts, dates and prose are not mistaken for secrets."""
    assert Scrubber().scrub_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a@b.io", REDACTED),  # the shortest values skip most patterns, never these
        ("secret=x1", f"secret={REDACTED}"),
        ("pwd:hunt", f"pwd:{REDACTED}"),
        ("basic dTpw", f"basic {REDACTED}"),  # "u:p", 10 characters: the shortest shape
        ("sub_123", "sub_123"),
    ],
)
def test_short_values_are_still_scrubbed(text: str, expected: str) -> None:
    """Short values take a fast path; it keeps every secret shape they can hold."""
    assert Scrubber().scrub_text(text) == expected


def test_short_values_go_through_custom_patterns() -> None:
    """A custom pattern sees every value, however short."""
    assert Scrubber(patterns=[r"EMP\d+"]).scrub_text("EMP42") == REDACTED


def test_tag_keys_are_scrubbed_and_judged_once() -> None:
    """Tag keys are cached per scrubber: same key, same verdict, and still configurable."""
    scrubber = Scrubber(deny_keys=frozenset({"iban"}), allow_keys=frozenset({"card_note"}))
    for _ in range(3):
        tags = safe_tags(
            {"iban": "DE44", "card_note": "4242 4242 4242 4242", "note": "4242 4242 4242 4242"},
            scrubber,
        )
        assert tags == {"iban": REDACTED, "card_note": "4242 4242 4242 4242", "note": REDACTED}


def test_deny_and_allow_lists_are_configurable() -> None:
    """``deny_keys`` adds keys redacted whole; ``allow_keys`` names safe fields sent as they are;
    ``patterns`` adds expressions; ``scrub=False`` sends everything as it is."""
    scrubber = ik.Scrubber(
        deny_keys={"iban"},
        allow_keys={"support_email"},
        patterns=[r"ACCT-\d{6}"],
    )
    with capture_signals(scrub=scrubber) as signals:
        invariant = ik.Invariant(SCRUB_INVARIANT, type="scrub", summary="x")
        ik.report_violation(
            invariant,
            tags={
                "customer_iban": "DE89370400440532013000",
                "support_email": "billing@example.com",
                "customer": "bob@example.com",
                "account": "ACCT-123456",
                "password": "kept-because-not-denied-anymore",
            },
        )
        [record] = signals.violations
        assert record.attributes["customer_iban"] == REDACTED
        assert record.attributes["support_email"] == "billing@example.com"
        assert record.attributes["customer"] == REDACTED
        assert record.attributes["account"] == REDACTED
        # deny_keys replaces the defaults: "password" is no longer denied by key.
        assert record.attributes["password"] == "kept-because-not-denied-anymore"
        [event] = signals.sentry_events
        assert event["tags"]["support_email"] == "billing@example.com"
        assert event["tags"]["customer_iban"] == REDACTED
    with capture_signals(scrub=False) as signals:
        invariant = ik.Invariant(SCRUB_INVARIANT, type="scrub", summary="x")
        ik.report_violation(invariant, tags={"customer": "bob@example.com"})
        assert signals.violations[0].attributes["customer"] == "bob@example.com"


def test_default_deny_keys_can_be_extended() -> None:
    """The documented way to add keys keeps the defaults."""
    from invariantkit._safe import DEFAULT_DENY_KEYS

    scrubber = ik.Scrubber(deny_keys=DEFAULT_DENY_KEYS | {"iban"})
    assert scrubber.key_is_denied("iban")
    assert scrubber.key_is_denied("password")


def test_sentry_exception_messages_and_frame_variables_are_scrubbed() -> None:
    """A failing operation's exception message and the local variables Sentry attaches to its
    frames carry no card number or e-mail address."""
    # Built at run time: Sentry also sends the source lines around each frame.
    card = " ".join(["4242"] * 4)
    email = "bob" + "@" + "example.com"
    with capture_signals() as signals:

        @ik.billing_operation("scrub_refund")
        def refund(customer_email: str) -> None:
            card_number = card  # noqa: F841 - a local variable Sentry would send
            note = f"refund for {customer_email} on {card}"
            raise ValueError(note)

        with pytest.raises(ValueError, match="4242"):  # the caller's exception is untouched
            refund(email)
        [envelope] = signals.sentry_envelopes
        raw = envelope.serialize().decode()
        [event] = signals.sentry_events
        assert event["exception"]["values"][0]["type"] == "ValueError"
    assert card not in raw
    assert card.replace(" ", "") not in raw
    assert email not in raw


def test_exception_messages_are_scrubbed_in_spans_and_logs() -> None:
    """The failing operation's exception message is scrubbed in its span and its log line."""
    with capture_signals() as signals:

        @ik.billing_operation("scrub_refund_2")
        def refund() -> None:
            raise ValueError("refund for bob@example.com")

        with pytest.raises(ValueError):
            refund()
        output = _everything(signals, [])
    assert "bob@example.com" not in output


def test_static_operation_attributes_and_int_cards_are_scrubbed() -> None:
    """``attributes=`` of a declared operation and int values given to ``set_attribute``."""
    with capture_signals() as signals:

        @ik.billing_operation("scrub_static", attributes={"owner": "bob@example.com"})
        def charge() -> None:
            with ik.billing_operation("scrub_static_inner") as run:
                run.set_attribute("card", 4242424242424242)
                run.set_attribute("password", "hunter22")

        charge()
        output = _everything(signals, [])
    assert "bob@example.com" not in output
    assert "4242424242424242" not in output
    assert "hunter22" not in output


# -- our own log output ---------------------------------------------------------------------

DSN = "https://0123456789abcdef0123456789abcdef@o42.ingest.sentry.io/4242"
API_KEY = "phc_AbCdEf0123456789AbCdEf0123456789"


class _LeakySink:
    """A sink whose exception quotes credentials, as SDK errors sometimes do."""

    name = "leaky"
    deferred = False

    def emit(self, record: ik.Record) -> None:
        if record.kind == "violation":
            raise RuntimeError(f"cannot post to {DSN} with key {API_KEY} (token=s3cr3t-value)")

    def flush(self, timeout: float) -> bool:
        raise RuntimeError(f"flush failed for {DSN}")

    def shutdown(self, timeout: float) -> bool:
        return True


def test_no_dsn_or_api_key_in_our_own_logs() -> None:
    """Sink failures, bad arguments and internal errors are logged without the DSN, API key or
    token they quote; the log line still says what failed."""
    with own_log_output() as lines:
        with capture_signals(extra_sinks=(_LeakySink(),)) as signals:
            invariant = ik.Invariant(SCRUB_INVARIANT, type="scrub", summary="x")
            ik.report_violation(invariant)
            ik.report_violation(invariant)
            ik.report_violation(DSN)  # type: ignore[arg-type]
            ik.track(API_KEY + " not an event name!")
            ik.flush(timeout=1)
            # Three reports and the flush.
            assert signals.metric("invariantkit_sink_errors_total", sink="leaky") == 4
        try:
            raise RuntimeError(f"connect {DSN}")
        except RuntimeError:
            logging.getLogger("invariantkit").exception("invariantkit: test traceback")
    text = "\n".join(lines)
    assert "sink 'leaky' failed (RuntimeError" in text
    assert sum("sink 'leaky' failed" in line for line in lines) == 1  # logged once per sink
    assert "UNDECLARED_INVARIANT" in text
    assert "test traceback" in text
    assert "RuntimeError" in text
    assert DSN not in text
    assert "0123456789abcdef0123456789abcdef" not in text
    assert API_KEY not in text
    assert "s3cr3t-value" not in text


@pytest.mark.parametrize(
    ("build", "secret"),
    [
        (lambda: ik.sinks.Sentry(DSN), DSN),
        (lambda: ik.sinks.PostHog(API_KEY), API_KEY),
    ],
)
def test_constructor_errors_do_not_quote_credentials(build: Any, secret: str) -> None:
    """Passing a DSN or API key where a client is expected fails clearly without echoing it."""
    with pytest.raises(TypeError) as info:
        build()
    assert secret not in str(info.value)
    assert "client" in str(info.value)


def test_static_attributes_follow_a_later_configure_scrub() -> None:
    """Operations are declared at import and configured later: their static attributes are
    scrubbed with the rules in force when they run, not those at decoration."""

    @ik.operation("scrub_static_later", attributes={"billing.plan_code": "tier-gold"})
    def charge() -> None:
        return None

    with capture_signals(scrub=ik.Scrubber(deny_keys=frozenset({"plan_code"}))) as signals:
        charge()
        [span] = [s for s in signals.spans if s.name == "billing.scrub_static_later"]
    assert span.attributes is not None
    assert span.attributes["billing.plan_code"] == "[redacted]"


# -- hostile text: cut first, linear patterns (DESIGN.md section 4) ------------------------------

#: Texts of a given length that made the scrubber quadratic (or slow) before.
_HOSTILE_SHAPES: dict[str, Callable[[int], str]] = {
    "digits and spaces": lambda n: ("1 " * n)[:n],
    "a digit run before an @": lambda n: "7" * (n - 2) + " @",
    "dotted words before ://": lambda n: ("a." * n)[: n - 4] + "://@",
    "a dashed domain": lambda n: "a@" + ("a-" * n)[: n - 2],
    "address characters before an @": lambda n: "a" * (n - 3) + " @x",
    "digits and dashes": lambda n: ("4-" * n)[:n],
    "full-width digits and no-break spaces": lambda n: ("\uff14\u00a0" * n)[:n],
}


class _Counting:
    """A compiled pattern that records the length of every text it is run on."""

    def __init__(self, pattern: re.Pattern[str], seen: list[int]) -> None:
        self._pattern = pattern
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._pattern, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            text = next((a for a in args if isinstance(a, str)), "")
            self._seen.append(len(text))
            return method(*args, **kwargs)

        return counted


@contextmanager
def _pattern_inputs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The length of every text any of the scrubber's built-in patterns is run on."""
    from invariantkit import _safe

    seen: list[int] = []
    for name, value in vars(_safe).items():
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(_safe, name, _Counting(value, seen))
    yield seen


@given(
    unit=st.one_of(
        st.sampled_from([shape(40) for shape in _HOSTILE_SHAPES.values()]),
        st.text(" .-@:/=a1\uff14\u00a0\t", min_size=1, max_size=6),
    )
)
@example(unit="1@1.")  # redactions longer than what they replace: the output is still cut
@settings(max_examples=30, deadline=None)
def test_scrubbing_beyond_the_limit_costs_what_the_limit_costs(unit: str) -> None:
    """Text 100 times longer than ``SCRUB_LIMIT`` is cut before any pattern runs: the patterns
    do no more work on it than on the text at the limit, and what is beyond changes nothing."""
    from invariantkit._safe import SCRUB_LIMIT

    scrubber = Scrubber(patterns=[r"EMP\d+"])
    at_limit = (unit * (SCRUB_LIMIT // len(unit) + 1))[:SCRUB_LIMIT]
    huge = at_limit + unit * (100 * SCRUB_LIMIT // len(unit))
    with pytest.MonkeyPatch.context() as mp, _pattern_inputs(mp) as work_at_limit:
        scrubber.scrub_text(at_limit)
    with pytest.MonkeyPatch.context() as mp, _pattern_inputs(mp) as work_huge:
        scrubbed = scrubber.scrub_text(huge)
    assert work_huge
    assert max(work_huge) <= SCRUB_LIMIT
    assert sum(work_huge) <= sum(work_at_limit) + len(work_huge)
    assert len(scrubbed) <= SCRUB_LIMIT
    assert scrubbed == scrubber.scrub_text(at_limit + "else")


def _best_of(fn: Any, repeat: int = 5) -> float:
    import timeit

    return min(timeit.repeat(fn, number=1, repeat=repeat))


@pytest.mark.parametrize("shape", list(_HOSTILE_SHAPES), ids=list(_HOSTILE_SHAPES))
def test_every_pattern_is_linear_in_its_input(shape: str) -> None:
    """Eight times more hostile text costs about eight times more, not 64 (quadratic): the
    ratio of the best of five runs, with a generous margin, never a wall-clock bound."""
    from invariantkit._safe import SCRUB_LIMIT

    scrubber = Scrubber()
    long = _HOSTILE_SHAPES[shape](SCRUB_LIMIT)
    short = _HOSTILE_SHAPES[shape](SCRUB_LIMIT // 8)
    ratio = _best_of(lambda: scrubber.scrub_text(long)) / _best_of(
        lambda: scrubber.scrub_text(short)
    )
    assert ratio < 24, f"{shape}: 8x the text took {ratio:.0f}x the time"


def test_hostile_text_is_cut_before_scrubbing_on_every_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100 KB of hostile text in a failing call's message, a tag, ``extra``, a product event and
    a span attribute: every sink receives it, cut, and no pattern ever runs on more than
    ``SCRUB_LIMIT`` characters (the span's stack trace, the Sentry event's exception value and
    frame variables included)."""
    from invariantkit._safe import SCRUB_LIMIT, STACK_LIMIT

    hostile = ("1 " * 50_000) + "bob@example.com"

    @ik.billing_operation("hostile_charge")
    def charge(note: str) -> None:
        raise ValueError(note)

    with capture_signals() as signals, _pattern_inputs(monkeypatch) as seen:
        invariant = ik.Invariant(SCRUB_INVARIANT, type="scrub", summary="x")
        ik.assert_invariant(False, invariant, tags={"note": hostile}, extra={"note": hostile})
        ik.track("hostile_event", note=hostile)
        with pytest.raises(ValueError):
            charge(hostile)
        ik.flush()
        assert len(signals.sentry_events) == 2
        [op_span] = [s for s in signals.spans if s.name == "billing.hostile_charge"]
        [event] = [e for e in op_span.events if e.name == "exception"]
        attributes = dict(event.attributes or {})
        assert len(str(attributes["exception.message"])) <= 500
        assert len(str(attributes["exception.stacktrace"])) <= STACK_LIMIT
    assert seen
    assert max(seen) <= SCRUB_LIMIT


# -- the shapes a new user's data takes (issue 18) ------------------------------------------------

#: Digits of other scripts: full-width, Arabic-Indic, Devanagari, mathematical bold.
_DIGIT_ZEROS = [0x30, 0xFF10, 0x660, 0x966, 0x1D7CE]
_CARD_SEPARATORS = ["", " ", ".", "-", "\t", "\u00a0", "\u202f", "\u3000", "\u2013", " - "]


@st.composite
def written_cards(draw: st.DrawFn) -> str:
    """A card number passing Luhn, in any script's digits, grouped by 4 (or 4-6-5) with any of
    the separators people and PDFs use."""
    digits = draw(card_numbers()).replace(" ", "").replace("-", "")
    zero = draw(st.sampled_from(_DIGIT_ZEROS))
    sep = draw(st.sampled_from(_CARD_SEPARATORS))
    written = "".join(chr(zero + int(d)) for d in digits)
    if len(written) == 15 and draw(st.booleans()):
        return sep.join((written[:4], written[4:10], written[10:]))
    return sep.join(written[i : i + 4] for i in range(0, len(written), 4))


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


jwts = st.builds(
    lambda sub, sig: ".".join(
        (
            _b64url(b'{"alg":"HS256","typ":"JWT"}'),
            _b64url(json.dumps({"sub": sub, "iat": 1700000000}).encode()),
            _b64url(sig),
        )
    ),
    st.text(string.ascii_letters + string.digits, min_size=1, max_size=20),
    st.binary(min_size=16, max_size=32),
)


def _iban(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(["DE", "GB", "FR", "NL", "ES", "CH"]))
    bban = draw(st.text(string.ascii_uppercase + string.digits, min_size=12, max_size=26))
    iban = _iban(country, bban)
    if draw(st.booleans()):
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


#: A value that cannot appear in the output by chance.
_SECRET_VALUES = st.builds(
    "Zq9".__add__, st.text(string.ascii_letters + string.digits, max_size=20)
)


@st.composite
def shaped_secrets(draw: st.DrawFn) -> tuple[str, str]:
    """(what must not leave, the text it is written in)."""
    value = draw(_SECRET_VALUES)
    kind = draw(st.integers(0, 8))
    if kind == 0:
        card = draw(written_cards())
        return card, card
    if kind == 1:
        token = draw(jwts)
        return token, draw(st.sampled_from([token, f"Authorization: Bearer {token}"]))
    if kind == 2:
        key = draw(st.sampled_from(["passphrase", "pin", "ssn", "PIN", "user_ssn", "iban"]))
        sep = draw(st.sampled_from(["=", ": ", '": "', "="]))
        return value, f"{key}{sep}{value}"
    if kind == 3:
        said = draw(
            st.sampled_from(
                [
                    "my password is {}",
                    "the PIN was {}",
                    "passphrase is {} (do not share)",
                    "Her SSN is {}",
                ]
            )
        )
        return value, said.format(value)
    if kind == 4:
        import base64

        basic = base64.b64encode(f"alice:{value}".encode()).decode()
        header = draw(st.sampled_from(["Authorization", "authorization", "Proxy-Authorization"]))
        return basic, f"{header}: Basic {basic}"
    if kind == 5:
        header = draw(st.sampled_from(["Cookie", "cookie", "Set-Cookie"]))
        return value, f"{header}: theme=dark; session={value}; Path=/; HttpOnly"
    if kind == 6:
        iban = draw(ibans())
        return iban, iban
    if kind == 7:
        return value, f"Authorization: Digest username=alice, response={value}"
    token = draw(jwts)
    return token, f"token={token}"


def _shaped_forms(secret: str) -> list[str]:
    forms = set(_forms(secret))
    ascii_digits = "".join(str(int(c)) for c in secret if c.isdecimal())
    if len(ascii_digits) >= 13:
        forms.add(ascii_digits)
        forms.add("".join(c for c in secret if c.isdecimal()))
    compact = secret.replace(" ", "")
    if compact != secret:
        forms.add(compact)
    return [f for f in forms if f]


@_HYPOTHESIS
@given(
    secret_and_text=shaped_secrets(),
    prose=_WORDS,
    key=st.sampled_from(["note", "customer", "detail"]),
)
def test_no_shaped_secret_escapes_through_any_sink(
    secret_and_text: tuple[str, str], prose: str, key: str
) -> None:
    """JWTs, cards in any script with any separator, ``passphrase=``/``pin=``/``ssn=``, a
    password said in prose, Authorization headers (Bearer, Basic, Digest), cookies and IBANs, in
    tags, extra, product events, span attributes and a failing call's message, reach none of
    the Sentry envelopes, PostHog messages, spans or log lines (the real SDKs' output)."""
    secret, written = secret_and_text
    text = f"{prose}\n{written}\n{prose}"
    with own_log_output() as own, capture_signals() as signals:
        invariant = ik.Invariant(SCRUB_INVARIANT, type="scrub", summary="x")
        ik.assert_invariant(False, invariant, tags={key: text}, extra={key: {"deep": [text]}})
        ik.track("subscription_started", **{key: text})

        @ik.billing_operation("scrub_shapes", user_facing=True)
        def charge() -> None:
            with ik.billing_operation("scrub_shapes_inner") as run:
                run.set_attribute(key, text)
            raise ValueError(f"declined: {text}")

        with pytest.raises(ValueError):
            charge()
        output = _everything(signals, own)
        assert len(signals.sentry_events) == 2
    for form in _shaped_forms(secret):
        at = output.find(form)
        assert at < 0, f"{form!r} escaped from {written!r}: {output[max(0, at - 300) : at + 40]}"


def test_card_numbers_in_event_names_and_emails_in_our_own_logs_are_scrubbed() -> None:
    """A card number inside a ``track()`` event name reaches no sink; an e-mail address or card
    in a bad event name is not quoted in invariantkit's own warning."""
    with own_log_output() as own, capture_signals() as signals:
        ik.track("paid with 4242 4242 4242 4242")
        ik.track("bob@example.com wants [this]")  # invalid name: logged, dropped
        output = _everything(signals, own)
        assert len(signals.posthog_events) == 1
        assert any("dropped" in line for line in own)
    assert "4242 4242 4242 4242" not in output
    assert "bob@example.com" not in output


class _CountingScrubber(Scrubber):
    """The default rules, counting each text and number it scrubs (shared by all instances)."""

    seen: ClassVar[list[str]] = []

    def scrub_text(self, text: str) -> str:
        _CountingScrubber.seen.append(text)
        return super().scrub_text(text)

    def scrub_number(self, value: int) -> int | str:
        _CountingScrubber.seen.append(str(value))
        return super().scrub_number(value)


# Built, not written: Sentry's source context of the test's own lines must not contain them.
OP_MARK, TAG_MARK, EXTRA_MARK = (f"{part}-mark" for part in ("opattr", "tagval", "extraval"))


def test_each_record_is_scrubbed_once_for_all_five_sinks() -> None:
    """A record's attributes, tags and extra are made safe once, where the record is made;
    traces, metrics, Sentry, PostHog and the JSON log line all send that result and none scrubs
    it again (each value would otherwise be scrubbed once per sink, on the worker)."""
    _CountingScrubber.seen.clear()
    with capture_signals(scrub=_CountingScrubber()) as signals:
        invariant = ik.Invariant(SCRUB_INVARIANT, type="scrub", summary="x")

        with (
            pytest.raises(ValueError),
            ik.billing_operation("scrub_once_renewal", user_facing=True) as run,
        ):
            run.set_attribute("plan_name", OP_MARK)
            raise ValueError("declined")
        ik.report_violation(invariant, tags={"plan_name": TAG_MARK}, extra={"note": EXTRA_MARK})
        # Every sink received the values...
        [failure] = [e for e in signals.sentry_events if e.get("exception")]
        [violation] = [e for e in signals.sentry_events if not e.get("exception")]
        assert failure["tags"]["plan_name"] == OP_MARK
        assert violation["tags"]["plan_name"] == TAG_MARK
        assert violation["extra"]["note"] == EXTRA_MARK
        posthog = {e["event"]: e["properties"] for e in signals.posthog_events}
        assert posthog["billing_scrub_once_renewal_failure"]["plan_name"] == OP_MARK
        assert posthog["invariant_violated"]["plan_name"] == TAG_MARK
        lines = {line["event"]: line for line in signals.logs}
        assert any(
            line.get("attributes", {}).get("plan_name") == OP_MARK for line in lines.values()
        )
        assert any(line.get("extra", {}).get("note") == EXTRA_MARK for line in lines.values())
    # ...and each value was scrubbed exactly once.
    for mark in (OP_MARK, TAG_MARK, EXTRA_MARK):
        assert sum(mark in text for text in _CountingScrubber.seen) == 1, mark
