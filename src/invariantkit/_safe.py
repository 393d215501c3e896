"""Make arbitrary user values safe to report, and scrub secrets and PII before they leave.

Nothing here may raise: it runs at violation time, where the library reports what it can.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import logging
import math
import re
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "NO_SCRUB",
    "CredentialFilter",
    "Scrubber",
    "safe_json",
    "safe_mapping",
    "safe_str",
    "safe_tags",
]

TAG_VALUE_LIMIT = 200  # Sentry truncates tag values at 200 characters
# Sentry keeps 32-character keys of [A-Za-z0-9_.:-]: ``sentry_tags`` makes them so, without
# collisions; other sinks keep keys up to ``KEY_LIMIT``.
KEY_LIMIT = 128
STRING_LIMIT = 8192
DEPTH_LIMIT = 6
ITEMS_LIMIT = 100
#: Values visited in one reported structure: shared references (``[x] * 100`` nested four deep)
#: would otherwise multiply into 10**8 nodes on the caller's thread.
NODES_LIMIT = 2000
REDACTED = "[redacted]"
_REDACTED_STEM = REDACTED[:-1]
# Text is scrubbed on a window a little longer than what is kept, so that a secret cut in two
# by the length limit is still recognised whole (an e-mail is at most 254 characters).
_SCRUB_MARGIN = 512
#: ``Scrubber.scrub_text`` cuts a longer text to this before any pattern runs: scrubbing costs
#: the same for 100 KB as for 9 KB.
SCRUB_LIMIT = STRING_LIMIT + _SCRUB_MARGIN

# Where a word may start: also right after an escaped newline or tab ("\\n" in a repr, as Sentry
# serialises frame variables), where the "n" would otherwise hide the word boundary.
_ESC = r"(?<=\\[ntr])"
#: What may stand between the digit groups of a card number: whitespace (tabs, no-break and
#: ideographic spaces included), dots, dashes and hyphens of every width, middle dots and
#: invisible joiners.
_SEP = r"[\s.\-\u00ad\u00b7\u2010-\u2015\u2212\u200b-\u200d\u2060\ufeff\uff0d\uff0e\u30fb]"
# A run of digits (any script's: full-width and Arabic-Indic digits too) with up to three
# separators between groups; card numbers are searched inside. Separators and digits are
# disjoint, so the run is matched in one pass.
_DIGIT_RUN = re.compile(r"(?<!\d)\d+(?:" + _SEP + r"{1,3}\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")
# RFC 5322 "atext" local part (a little of the text before an address may go with it). The
# look-behind makes each run of address characters a candidate once, not once per character
# (which was quadratic in a long run of them).
_ATEXT = r"\w!#$%&'*+/=?^`{|}~.-"
_EMAIL = re.compile(r"(?<![" + _ATEXT + r"])[" + _ATEXT + r"]+@[\w-]+(?:\.[\w-]+)+")
_BEARER = re.compile(r"(?i)(?:\b|" + _ESC + r")(bearer)(\s+)[A-Za-z0-9._~+/-]{8,}=*")
_BASIC = re.compile(r"(?i)(?:\b|" + _ESC + r")(basic)(\s+)([A-Za-z0-9+/]{4,}={0,2})")
_TOKEN_SCHEME = re.compile(r"(?i)(?:\b|" + _ESC + r")(token)(\s+)([A-Za-z0-9._~+/-]{16,}=*)")
# A URL with credentials in its userinfo: Sentry DSNs, database URLs, basic-auth URLs. A scheme
# starts after a character that cannot be part of one (linear, as for e-mail addresses).
_DSN = re.compile(r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s/@]+@[^\s\"'<>]+")
# Well-known API key and token shapes (PostHog, Stripe, GitHub, GitLab, Slack, Sentry, AWS,
# Google, OpenAI-style "sk-").
_API_KEY = re.compile(
    r"(?:(?<![A-Za-z0-9])|" + _ESC + r")(?:"
    r"(?:phc|phx|sk_live|sk_test|rk_live|rk_test|whsec|ghp|gho|ghu|ghs|ghr|github_pat|"
    r"sntrys|sntryu|sntryi)_[A-Za-z0-9_]{8,}"
    r"|(?:glpat|xox[abpsr]|sk)-[A-Za-z0-9_-]{16,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r")"
)
# A JSON Web Token: base64url header (always '{"...', so "eyJ") and payload, and a signature.
_JWT = re.compile(r"(?:(?<![\w-])|" + _ESC + r")eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
# An IBAN: country, check digits, 11 to 30 letters and digits, grouped or not; confirmed by its
# mod-97 check in _redact_iban (the longest valid prefix of the candidate).
_IBAN = re.compile(
    r"(?:(?<![A-Za-z0-9])|" + _ESC + r")[A-Za-z]{2}[0-9]{2}(?:[ \t\u00a0-]?[A-Za-z0-9]){11,30}"
)
_IBAN_SEP = re.compile(r"[ \t\u00a0-]")
# An HTTP header line whose whole value is a credential (Authorization: Basic/Bearer/Digest...,
# the cookies of Cookie and Set-Cookie): the value is redacted up to the end of the line.
_HEADER = re.compile(
    r"(?im)(?:(?<![\w-])|"
    + _ESC
    + r")(proxy-authorization|authorization|set-cookie|cookie)(\s*:[ \t]*)(\S[^\r\n]*)"
)
# A secret said in prose: "my password is hunter2", "the PIN was 1234", "ssn: ...".
_PROSE = re.compile(
    r"(?i)(?:\b|" + _ESC + r")(password|passphrase|passcode|passwd|pin|ssn|secret|cvv|cvc)"
    r"((?:\s+(?:number|code))?\s+(?:is|was|=|:)\s+)(\S+)"
)
_PROSE_WORDS = ("pass", "pin", "ssn", "secret", "cvv", "cvc")
# key=value or key: value inside free text ("password=hunter2", '"token": "abc"', "?api_key=x").
# The value is matched only after a denied key, and only then consumed: the value of any other
# key is searched again ("reason: passphrase=x" must still find "passphrase").
_KEY_SEP = re.compile(
    r"(?:(?<![A-Za-z0-9_.\\-])|" + _ESC + r")([A-Za-z][A-Za-z0-9_.-]{0,63})([\"']?\s*[:=]\s*)"
)
_VALUE = re.compile(r"\"[^\"]*\"|'[^']*'|[\"']?[^\s\"',;&)}\]]+")  # quoted, or not (or left open)
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest"})
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_KEY_PARTS = re.compile(r"[^a-z0-9]+")

DEFAULT_DENY_KEYS: frozenset[str] = frozenset(
    {
        "password",
        "passphrase",
        "passcode",
        "passwd",
        "pin",
        "ssn",
        "iban",
        "pwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "auth",
        "credentials",
        "dsn",
        "card_number",
        "cardnumber",
        "cvv",
        "cvc",
        "pan",
        "private_key",
        "access_token",
        "refresh_token",
        "cookie",
        "set_cookie",
        "session_id",
        "sessionid",
    }
)


#: Luhn doubles every second digit from the right; as a digit (9 subtracted above 9).
_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")


def _luhn_ok(digits: str) -> bool:
    """The Luhn check of an ASCII digit string."""
    doubled = digits[-2::-2].translate(_LUHN_DOUBLE)
    return (sum(map(int, digits[-1::-2])) + sum(map(int, doubled))) % 10 == 0


def _normal_key(key: str) -> str:
    return _KEY_PARTS.sub("", key.lower())


def _ascii_digits(group: str) -> str:
    """A group of digits of any script as ASCII digits (a group longer than a card, which no
    window can hold, as zeros: ``int()`` refuses over 4,300 digits)."""
    if group.isascii():
        return group
    if len(group) > 19:
        return "0" * len(group)
    return str(int(group)).zfill(len(group))


#: Group-aligned windows a text's long digit runs may cost (see ``_Cards``); past it, a run
#: that would need more is redacted whole. Real text never comes near; hostile text is bounded.
_WINDOW_BUDGET = 1024


class _Cards:
    """The card-number pass over one text: a ``re.sub`` callback for each run of digits."""

    __slots__ = ("budget",)

    def __init__(self) -> None:
        self.budget = _WINDOW_BUDGET

    def __call__(self, match: re.Match[str]) -> str:
        run = match.group(0)
        if len(run) < 13:
            return run
        originals = _DIGIT_GROUP.findall(run)
        if len(originals) > _WINDOW_BUDGET // 4:
            return REDACTED  # more groups than can be checked: hostile or a dump, not prose
        groups = originals if run.isascii() else [_ascii_digits(g) for g in originals]
        digits = "".join(groups)
        if len(digits) < 13:
            return run
        if len(digits) <= 19:
            return REDACTED if _luhn_ok(digits) else run
        if len(groups) == 1:
            return run  # one long number: an id, not a card
        # A longer run ("4242 4242 4242 4242 12"): redact every group-aligned window of 13 to 19
        # digits that passes Luhn. Windows never split a group, so a long opaque number is kept.
        covered = [False] * len(groups)
        for i in range(len(groups)):
            count = 0
            for j in range(i, len(groups)):
                self.budget -= 1
                if self.budget < 0:
                    return REDACTED
                count += len(groups[j])
                if count > 19:
                    break
                if count >= 13 and _luhn_ok("".join(groups[i : j + 1])):
                    for k in range(i, j + 1):
                        covered[k] = True
        if not any(covered):
            return run
        seps = _DIGIT_GROUP.split(run)[1:-1]
        out: list[str] = []
        for i, group in enumerate(originals):
            if covered[i]:
                if not (i > 0 and covered[i - 1]):
                    out.append(REDACTED)
            else:
                out.append(group)
            if i < len(seps) and not (covered[i] and covered[i + 1]):
                out.append(seps[i])
        return "".join(out)


def _redact_iban(match: re.Match[str]) -> str:
    """The longest prefix of the candidate that passes the IBAN mod-97 check, redacted."""
    text = match.group(0)
    compact = _IBAN_SEP.sub("", text).upper()
    head = compact[:4]
    head_value = int("".join(str(int(c, 36)) for c in head))
    head_scale = 10 ** sum(2 if c.isalpha() else 1 for c in head)
    remainder = 0
    longest = 0
    for n, ch in enumerate(compact[4:], start=5):
        value = int(ch, 36)
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
        if n >= 15 and (remainder * head_scale + head_value) % 97 == 1:
            longest = n
    if not longest:
        return text
    # Back to a position in the text: the ``longest``-th letter or digit, separators between.
    seen = 0
    for end, ch in enumerate(text, start=1):
        if ch.isalnum():
            seen += 1
            if seen == longest:
                return REDACTED + text[end:]
    return REDACTED


def _redact_basic(match: re.Match[str]) -> str:
    try:
        decoded = base64.b64decode(match.group(3), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    if b":" in decoded:
        return f"{match.group(1)}{match.group(2)}{REDACTED}"
    return match.group(0)


def _redact_token_scheme(match: re.Match[str]) -> str:
    if any(c.isdigit() for c in match.group(3)):
        return f"{match.group(1)}{match.group(2)}{REDACTED}"
    return match.group(0)


@dataclass(frozen=True)
class Scrubber:
    """What to redact from tags, extra, properties, span attributes and log fields before they
    leave the process.

    Values are searched for card numbers (13 to 19 digits passing the Luhn check, in any
    script's digits, with or without spaces, dots, dashes, tabs or no-break spaces, also as
    integers), e-mail addresses, bearer/basic/token credentials, JSON Web Tokens, IBANs,
    ``Authorization`` headers and cookies, passwords said in prose ("my password is ..."), URLs
    with credentials in them (Sentry DSNs, database URLs) and well-known API key shapes (PostHog
    ``phc_``, Stripe ``sk_live_``, GitHub ``ghp_``, AWS ``AKIA``...); each match is replaced by
    ``[redacted]``. A text is cut to ``SCRUB_LIMIT`` characters before any pattern runs.

    A value under a key in ``deny_keys`` is redacted whole: keys match case-insensitively, as a
    word of the key (``db_password``, ``userPassword``), and ``key=value`` pairs inside text are
    found too. Keys in ``allow_keys`` are "safe fields": their values are
    sent as they are. ``patterns`` adds your own regular expressions.

    Pass one to ``ik.configure(scrub=...)``; ``scrub=False`` turns scrubbing off.

    Example:
        >>> import invariantkit as ik
        >>> ik.Scrubber().scrub_text("card 4242 4242 4242 4242, mail bob@example.com")
        'card [redacted], mail [redacted]'
        >>> scrubber = ik.Scrubber(deny_keys={"iban"}, allow_keys={"auth_method"})
        >>> scrubber.key_is_denied("customer_iban"), scrubber.key_is_denied("auth_method")
        (True, False)
    """

    cards: bool = True
    emails: bool = True
    bearer_tokens: bool = True
    credentials: bool = True
    deny_keys: frozenset[str] = DEFAULT_DENY_KEYS
    allow_keys: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = field(default=())
    _key_cache: dict[str, bool] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _tag_keys: dict[str, tuple[str, int]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _deny_normal: frozenset[str] = field(
        default=frozenset(), init=False, repr=False, compare=False, hash=False
    )
    _deny_long: tuple[str, ...] = field(
        default=(), init=False, repr=False, compare=False, hash=False
    )
    _allow_normal: frozenset[str] = field(
        default=frozenset(), init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        for name in ("cards", "emails", "bearer_tokens", "credentials"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Scrubber({name}=...) must be True or False")
        for name in ("deny_keys", "allow_keys"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise TypeError(
                    f"Scrubber({name}=...) must be a set of key names (str), not {value!r}"
                )
            keys = list(value)
            for key in keys:
                if not isinstance(key, str) or not key.strip():
                    raise TypeError(
                        f"Scrubber({name}=...) must contain non-empty key names (str), not {key!r}"
                    )
            object.__setattr__(self, name, frozenset(k.lower() for k in keys))
        raw: object = self.patterns
        if isinstance(raw, (str, re.Pattern)) or not isinstance(raw, Iterable):
            raise TypeError(
                "Scrubber(patterns=...) must be a list of regular expressions (str or "
                f"re.Pattern), not {raw!r}"
            )
        compiled: list[re.Pattern[str]] = []
        for pattern in raw:
            if isinstance(pattern, re.Pattern):
                if not isinstance(pattern.pattern, str):
                    raise TypeError("Scrubber(patterns=...): byte patterns cannot scrub text")
                compiled.append(pattern)
            elif isinstance(pattern, str):
                try:
                    compiled.append(re.compile(pattern))
                except re.error as exc:
                    raise ValueError(
                        f"Scrubber(patterns=...): {pattern!r} is not a valid regular "
                        f"expression ({exc})"
                    ) from None
            else:
                raise TypeError(
                    f"Scrubber(patterns=...) must contain str or re.Pattern, not {pattern!r}"
                )
        object.__setattr__(self, "patterns", tuple(compiled))
        normal = frozenset(_normal_key(k) for k in self.deny_keys) - {""}
        object.__setattr__(self, "_deny_normal", normal)
        object.__setattr__(self, "_deny_long", tuple(k for k in normal if len(k) >= 6))
        object.__setattr__(
            self, "_allow_normal", frozenset(_normal_key(k) for k in self.allow_keys)
        )

    # -- keys -----------------------------------------------------------------------------------

    def key_is_allowed(self, key: str) -> bool:
        """True when ``key`` is a safe field (in ``allow_keys``): its value is not scrubbed."""
        return bool(self.allow_keys) and (
            key.lower() in self.allow_keys or _normal_key(key) in self._allow_normal
        )

    def tag_key(self, raw: str) -> tuple[str, int]:
        """``raw`` as a tag key (scrubbed, cut to 128) and what its value gets: ``KEY_ALLOWED``
        (kept), ``KEY_DENIED`` (redacted whole) or ``KEY_SCRUBBED`` (scrubbed by pattern).

        Cached: a service reports the same few tag keys over and over.
        """
        cached = self._tag_keys.get(raw)
        if cached is None:
            if self.key_is_allowed(raw):
                verdict = KEY_ALLOWED
            elif self.key_is_denied(raw):
                verdict = KEY_DENIED
            else:
                verdict = KEY_SCRUBBED
            cached = (_key_text(raw, self), verdict)
            if len(self._tag_keys) > 4096:
                self._tag_keys.clear()
            self._tag_keys[raw] = cached
        return cached

    def key_is_denied(self, key: str) -> bool:
        """True when values under ``key`` are redacted whole."""
        cached = self._key_cache.get(key)
        if cached is not None:
            return cached
        result = self._key_is_denied(key)
        if len(self._key_cache) > 4096:
            self._key_cache.clear()
        self._key_cache[key] = result
        return result

    def _key_is_denied(self, key: str) -> bool:
        deny = self._deny_normal
        if not deny or self.key_is_allowed(key):
            return False
        parts = [p for p in _KEY_PARTS.split(_CAMEL.sub(r"\1_\2", key).lower()) if p]
        # A word of the key, or two or three adjacent words ("api_key" in "stripe_api_key_2").
        for size in (1, 2, 3):
            for i in range(len(parts) - size + 1):
                if "".join(parts[i : i + size]) in deny:
                    return True
        joined = "".join(parts)
        return any(k in joined for k in self._deny_long)

    # -- values ---------------------------------------------------------------------------------

    def scrub_text(self, text: str) -> str:
        """Redact every sensitive substring of ``text``.

        A text longer than ``SCRUB_LIMIT`` (8,704) characters is cut, with ``…``, before any
        pattern runs; every built-in pattern runs in time linear in what is left.
        """
        if len(text) > SCRUB_LIMIT:
            text = text[: SCRUB_LIMIT - 1] + "…"
        if len(text) < _SHORTEST_SECRET and not self.patterns and not _MAY_HOLD_SHORT(text):
            return text  # too short for a card, key, token or DSN; no "@", "=" or ":"
        if self.cards and _has_digit(text):
            text = _DIGIT_RUN.sub(_Cards(), text)
        if self.credentials:
            if "://" in text and "@" in text:
                text = _DSN.sub(REDACTED, text)
            if "_" in text or "-" in text or "AKIA" in text or "AIza" in text:
                text = _API_KEY.sub(REDACTED, text)
            if "eyJ" in text:
                text = _JWT.sub(REDACTED, text)
            if len(text) >= 15:
                text = _IBAN.sub(_redact_iban, text)
        if self.emails and "@" in text:
            text = _EMAIL.sub(REDACTED, text)
        lowered = text.lower()
        if self.deny_keys and ":" in text and ("authorization" in lowered or "cookie" in lowered):
            text = _HEADER.sub(self._redact_header, text)
        if self.bearer_tokens:
            if "bearer" in lowered:
                text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
            if "basic" in lowered:
                text = _BASIC.sub(_redact_basic, text)
            if "token" in lowered:
                text = _TOKEN_SCHEME.sub(_redact_token_scheme, text)
        if self.deny_keys:
            if any(word in lowered for word in _PROSE_WORDS):
                text = _PROSE.sub(self._redact_prose, text)
            if ("=" in text or ":" in text) and self._may_name_denied(lowered):
                text = self._redact_pairs(text)
        for pattern in self.patterns:
            text = pattern.sub(REDACTED, text)
        if len(text) > SCRUB_LIMIT:  # each redaction may be longer than what it replaced
            text = text[: SCRUB_LIMIT - 1] + "…"
        return text

    def _redact_header(self, match: re.Match[str]) -> str:
        if not self.key_is_denied(match.group(1)):
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{REDACTED}"

    def _redact_prose(self, match: re.Match[str]) -> str:
        if match.group(3) == REDACTED or not self.key_is_denied(match.group(1)):
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{REDACTED}"

    def _may_name_denied(self, lowered: str) -> bool:
        """False when no key in ``lowered`` text can be denied (none of the denied words is in
        it, separators removed): the ``key=value`` search is skipped."""
        squashed = _KEY_PARTS.sub("", lowered)
        return any(word in squashed for word in self._deny_normal)

    def _redact_pairs(self, text: str) -> str:
        out: list[str] = []
        pos = last = 0
        search = _KEY_SEP.search
        value_at = _VALUE.match
        while (match := search(text, pos)) is not None:
            pos = match.end()
            if not self.key_is_denied(match.group(1)):
                continue
            value = value_at(text, pos)
            if value is None:
                continue
            found = value.group(0)
            if found.startswith(_REDACTED_STEM) or found.lower() in _AUTH_SCHEMES:
                continue  # scrubbed already; "Authorization: Bearer ..." is the scheme's to scrub
            quote = found[0] if found[:1] in ("'", '"') else ""
            out.append(text[last:pos])
            out.append(f"{quote}{REDACTED}{quote}")
            last = pos = value.end()
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def scrub_number(self, value: int) -> int | str:
        """``value``, or ``[redacted]`` when it is a card number written as an integer."""
        if self.cards and (10**12 <= value < 10**19 or -(10**19) < value <= -(10**12)):
            return REDACTED if _luhn_ok(str(abs(value))) else value
        return value

    def scrub_value(self, key: str, value: str) -> str:
        """Scrub ``value`` found under ``key``: whole when the key is denied, by pattern else."""
        if self.key_is_allowed(key):
            return value
        if self.key_is_denied(key):
            return REDACTED
        return self.scrub_text(value)


_ANY_DIGIT = re.compile(r"\d")
#: Every built-in shape but e-mail addresses and ``key=value`` pairs is at least this long
#: ("basic" + space + 4 characters).
_SHORTEST_SECRET = 10
_MAY_HOLD_SHORT = re.compile(r"[@=:]").search
#: What ``Scrubber.tag_key`` says to do with a tag's value.
KEY_ALLOWED, KEY_DENIED, KEY_SCRUBBED = 0, 1, 2


def _has_digit(text: str) -> bool:
    return _ANY_DIGIT.search(text) is not None


#: Scrubbing that does nothing (``configure(scrub=False)``).
NO_SCRUB = Scrubber(
    cards=False, emails=False, bearer_tokens=False, credentials=False, deny_keys=frozenset()
)
#: What is removed from invariantkit's own log lines, whatever the configuration: credentials,
#: card numbers and e-mail addresses (a bad event name or tag quoted in a warning may hold them).
_LOG_SCRUBBER = Scrubber()


def safe_str(value: object, limit: int = STRING_LIMIT) -> str:
    """``str(value)`` that never raises and is at most ``limit`` characters long."""
    text: str
    try:
        if isinstance(value, str):
            text = value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            text = bytes(value[:limit]).decode("utf-8", "backslashreplace")
        else:
            text = str(value)
    except BaseException:
        try:
            text = object.__repr__(value)
        except BaseException:
            text = "<unprintable>"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def scrubbed_str(value: object, scrubber: Scrubber, limit: int = STRING_LIMIT) -> str:
    """``safe_str`` then scrub, on a window longer than ``limit`` so nothing is cut mid-secret."""
    text = safe_str(value, limit + _SCRUB_MARGIN)
    try:
        text = scrubber.scrub_text(text)
    except BaseException:
        return "<unreportable>"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


#: An operation's stack trace, as it leaves the process (its end: the innermost frames and the
#: message), and each of its parts (a frame, a message) at most.
STACK_LIMIT = 8192
_STACK_PART_LIMIT = 1000


def scrubbed_traceback(exc: BaseException, scrubber: Scrubber, limit: int = STACK_LIMIT) -> str:
    """The formatted traceback of ``exc``, cut then scrubbed: each part (a frame, an exception
    message, 100 KB long perhaps) to 1,000 characters, the whole to ``limit`` from its end."""
    try:
        parts = traceback.format_exception(type(exc), exc, exc.__traceback__)
        text = "".join(
            part
            if len(part) <= _STACK_PART_LIMIT
            else scrubbed_str(part, scrubber, _STACK_PART_LIMIT) + "\n"
            for part in parts
        )
        if len(text) <= limit:
            return scrubber.scrub_text(text)
        # Scrubbed on a window longer than what is kept: nothing is cut in the middle of a secret.
        text = scrubber.scrub_text(text[-(limit + _SCRUB_MARGIN) :])
        return "…" + text[-(limit - 1) :]
    except BaseException:
        return "<unreportable>"


def _key_text(key: object, scrubber: Scrubber, limit: int = KEY_LIMIT) -> str:
    return scrubbed_str(key, scrubber, limit)


def safe_tags(tags: Mapping[Any, Any] | None, scrubber: Scrubber) -> dict[str, str]:
    """Tags as ``{str: str}``, each value stringified, scrubbed and cut to 200 characters."""
    if tags is None:
        return {}
    out: dict[str, str] = {}
    try:
        items = list(tags.items())
    except BaseException:
        return {"invariantkit.error": "tags could not be read"}
    if len(items) > ITEMS_LIMIT:
        del items[ITEMS_LIMIT:]
    for raw_key, raw_value in items:
        try:
            if (
                type(raw_value) is str
                and type(raw_key) is str
                and len(raw_value) <= _FAST_VALUE
                and len(raw_key) <= _KEY_WINDOW
            ):
                # The common case, a str under a str key, short enough that the general path
                # below would not cut either before scrubbing: the same, without conversions.
                key, verdict = scrubber.tag_key(raw_key)
                if verdict == KEY_SCRUBBED:
                    try:
                        text = scrubber.scrub_text(raw_value)
                    except BaseException:
                        text = "<unreportable>"
                elif verdict == KEY_DENIED:
                    text = REDACTED
                else:
                    text = raw_value
                out[key] = text if len(text) <= TAG_VALUE_LIMIT else _cut(text)
                continue
            key, verdict = scrubber.tag_key(safe_str(raw_key, _KEY_WINDOW))
            if verdict == KEY_ALLOWED:
                out[key] = safe_str(_scalar_text(raw_value), TAG_VALUE_LIMIT)
            elif verdict == KEY_DENIED:
                out[key] = REDACTED
            elif isinstance(raw_value, int) and not isinstance(raw_value, bool):
                out[key] = safe_str(scrubber.scrub_number(raw_value), TAG_VALUE_LIMIT)
            elif isinstance(raw_value, (Mapping, list, tuple, set, frozenset)):
                nested = safe_json(raw_value, scrubber)
                out[key] = scrubbed_str(nested, scrubber, TAG_VALUE_LIMIT)
            else:
                out[key] = scrubbed_str(_scalar_text(raw_value), scrubber, TAG_VALUE_LIMIT)
        except BaseException:
            out["invariantkit.error"] = "a tag could not be read"
    return out


#: ``safe_tags``: keys and str values are read up to these lengths (the values scrubbed on a
#: window longer than what is kept, so that nothing is cut in the middle of a secret).
_KEY_WINDOW = KEY_LIMIT + _SCRUB_MARGIN
_FAST_VALUE = TAG_VALUE_LIMIT + _SCRUB_MARGIN


def _cut(text: str) -> str:
    return text[: TAG_VALUE_LIMIT - 1] + "…"


def _scalar_text(value: object) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return safe_str(value, STRING_LIMIT + _SCRUB_MARGIN)


class _Budget:
    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes = NODES_LIMIT


def safe_json(
    value: Any, scrubber: Scrubber, _depth: int = 0, _budget: _Budget | None = None
) -> Any:
    """A JSON-serialisable, scrubbed copy of ``value``: depth, length, node count and size
    bounded (at most ``NODES_LIMIT`` values are visited, whatever the structure)."""
    budget = _budget if _budget is not None else _Budget()
    try:
        budget.nodes -= 1
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if -(2**63) <= value < 2**63:
                return scrubber.scrub_number(value)
            return scrubbed_str(value, scrubber, 64)
        if isinstance(value, float):
            if not math.isfinite(value):
                return safe_str(value)
            if value.is_integer() and abs(value) >= 1e12:
                scrubbed = scrubber.scrub_number(int(value))
                return REDACTED if scrubbed == REDACTED else value
            return value
        if budget.nodes < 0:
            return f"<{type(value).__name__} left out: the value is too large to report>"
        if isinstance(value, str):
            return scrubbed_str(value, scrubber)
        if _depth >= DEPTH_LIMIT:
            # Never str() a deep container: its repr would carry unscrubbed keys and values.
            return f"<{type(value).__name__} nested deeper than {DEPTH_LIMIT} levels>"
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            items = list(itertools.islice(value.items(), ITEMS_LIMIT + 1))
            for i, (k, v) in enumerate(items):
                if i >= ITEMS_LIMIT:
                    out["…"] = f"{len(value) - ITEMS_LIMIT} more"
                    break
                raw_key = safe_str(k, KEY_LIMIT + _SCRUB_MARGIN)
                key = _key_text(raw_key, scrubber)
                if scrubber.key_is_allowed(raw_key):
                    out[key] = safe_json(v, NO_SCRUB, _depth + 1, budget)
                elif scrubber.key_is_denied(raw_key):
                    out[key] = REDACTED
                else:
                    out[key] = safe_json(v, scrubber, _depth + 1, budget)
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            seq = list(itertools.islice(value, ITEMS_LIMIT))
            result = [safe_json(v, scrubber, _depth + 1, budget) for v in seq]
            if len(value) > ITEMS_LIMIT:
                result.append(f"… {len(value) - ITEMS_LIMIT} more")
            return result
        return scrubbed_str(value, scrubber)
    except BaseException:
        return "<unreportable>"


def safe_mapping(data: Mapping[Any, Any] | None, scrubber: Scrubber) -> dict[str, Any]:
    """``safe_json`` for a mapping at the top level, always returning a dict."""
    if data is None:
        return {}
    result = safe_json(data, scrubber) if isinstance(data, Mapping) else None
    if isinstance(result, dict):
        return result
    return {"value": scrubbed_str(data, scrubber, 200)}


def scrub_for_log(text: str) -> str:
    """Remove credentials (DSNs, API keys, tokens, ``password=...``), card numbers and e-mail
    addresses from one of our log lines."""
    try:
        return _LOG_SCRUBBER.scrub_text(text)
    except BaseException:
        return "<unloggable>"


class CredentialFilter(logging.Filter):
    """A logging filter that removes DSNs, API keys and tokens from invariantkit's own messages
    and tracebacks (installed on the ``invariantkit`` logger). JSON signal lines, which were
    scrubbed when they were built, pass untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "invariantkit", None) is not None:
            return True
        try:
            message = record.getMessage()
        except BaseException:
            message = safe_str(record.msg)
        record.msg = scrub_for_log(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            try:
                record.exc_text = scrub_for_log(
                    "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
                )
            except BaseException:
                pass
        if record.stack_info:
            record.stack_info = scrub_for_log(record.stack_info)
        return True


# Sentry's ingestion (Relay) drops a tag whose key is not 1 to 32 of these characters, or whose
# value holds a newline or is over 200 characters: the event would arrive without it.
_SENTRY_TAG_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,32}\Z")
_SENTRY_TAG_BAD = re.compile(r"[^A-Za-z0-9_.:-]")
_sentry_keys: dict[str, str] = {}


def sentry_tag_key(key: str) -> str:
    """``key`` as a tag key Sentry keeps: unchanged when valid, else its characters replaced by
    ``_`` and cut to 23, then ``-`` and 8 hex digits of a hash of the whole key (deterministic;
    two keys never become one)."""
    valid = _sentry_keys.get(key)
    if valid is None:
        if _SENTRY_TAG_KEY.match(key):
            valid = key
        else:
            digest = hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()[:8]
            valid = f"{_SENTRY_TAG_BAD.sub('_', key[:23]) or 'tag'}-{digest}"
        if len(_sentry_keys) > 4096:
            _sentry_keys.clear()
        _sentry_keys[key] = valid
    return valid


def sentry_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags Sentry keeps: valid keys (:func:`sentry_tag_key`), values on one line, at most 200
    characters."""
    out: dict[str, str] = {}
    for key, value in tags.items():
        text = value if isinstance(value, str) else safe_str(value, TAG_VALUE_LIMIT)
        if not text.isprintable():  # a newline (or another line break) in it
            text = " ".join(text.splitlines())
        if len(text) > TAG_VALUE_LIMIT:
            text = _cut(text)
        out[sentry_tag_key(key if isinstance(key, str) else safe_str(key, 64))] = text
    return out


def install_log_filter(logger: logging.Logger) -> None:
    """Install one :class:`CredentialFilter` on ``logger`` (idempotent)."""
    if not any(isinstance(f, CredentialFilter) for f in logger.filters):
        logger.addFilter(CredentialFilter())
