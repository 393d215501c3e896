"""Make arbitrary user values safe to report, and scrub secrets and PII before they leave.

Nothing here may raise: it runs at violation time, where the library reports what it can.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Scrubber", "safe_json", "safe_str", "safe_tags"]

TAG_VALUE_LIMIT = 200  # Sentry truncates tag values at 200 characters
STRING_LIMIT = 8192
DEPTH_LIMIT = 6
ITEMS_LIMIT = 100
REDACTED = "[redacted]"

_CARD = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")
_DSN = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@]+(?::[^/\s@]*)?@[^\s]+")
_API_KEY = re.compile(r"\b(?:phc_|phx_|sk_live_|sk_test_|rk_live_|ghp_|xox[bp]-)[A-Za-z0-9_-]{8,}")

DEFAULT_DENY_KEYS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "auth",
        "dsn",
        "card_number",
        "cvv",
        "cvc",
        "pan",
        "private_key",
        "access_token",
        "refresh_token",
        "cookie",
        "set_cookie",
    }
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class Scrubber:
    """What to redact from tags, extra, properties, span attributes and log fields.

    Card-number-shaped values (13 to 19 digits passing Luhn), e-mail addresses, bearer tokens,
    DSNs and well-known API keys are redacted from values; any value under a key in
    ``deny_keys`` (matched case-insensitively, also as a part of a key such as ``db_password``)
    is redacted whole, unless the key is in ``allow_keys``.

    Example:
        >>> import invariantkit as ik
        >>> ik.Scrubber(emails=False).scrub_text("card 4242 4242 4242 4242")
        'card [redacted]'
    """

    cards: bool = True
    emails: bool = True
    bearer_tokens: bool = True
    credentials: bool = True
    deny_keys: frozenset[str] = DEFAULT_DENY_KEYS
    allow_keys: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("deny_keys", "allow_keys"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TypeError(f"Scrubber({name}=...) must be a set of key names, not {value!r}")
            object.__setattr__(self, name, frozenset(str(k).lower() for k in value))
        object.__setattr__(
            self,
            "patterns",
            tuple(re.compile(p) if isinstance(p, str) else p for p in self._raw_patterns()),
        )

    def _raw_patterns(self) -> tuple[object, ...]:
        return tuple(self.patterns)

    def key_is_denied(self, key: str) -> bool:
        """True when values under ``key`` are redacted whole."""
        lowered = key.lower()
        if lowered in self.allow_keys:
            return False
        if lowered in self.deny_keys:
            return True
        return any(part in self.deny_keys for part in re.split(r"[^a-z0-9]+", lowered) if part)

    def scrub_text(self, text: str) -> str:
        """Redact every sensitive substring of ``text``."""
        if self.cards and any(c.isdigit() for c in text):
            text = _CARD.sub(self._card, text)
        if self.emails and "@" in text:
            text = _EMAIL.sub(REDACTED, text)
        if self.credentials:
            if "@" in text and "://" in text:
                text = _DSN.sub(REDACTED, text)
            text = _API_KEY.sub(REDACTED, text)
        if self.bearer_tokens:
            text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        for pattern in self.patterns:
            text = pattern.sub(REDACTED, text)
        return text

    @staticmethod
    def _card(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            return REDACTED
        return match.group(0)


#: Scrubbing that does nothing (``configure(scrub=False)``).
NO_SCRUB = Scrubber(
    cards=False, emails=False, bearer_tokens=False, credentials=False, deny_keys=frozenset()
)


def safe_str(value: object, limit: int = STRING_LIMIT) -> str:
    """``str(value)`` that never raises and is at most ``limit`` characters long."""
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


def safe_tags(tags: Mapping[Any, Any] | None, scrubber: Scrubber) -> dict[str, str]:
    """Tags as ``{str: str}``, each value stringified, scrubbed and cut to 200 characters."""
    if not tags:
        return {}
    out: dict[str, str] = {}
    try:
        items = list(tags.items())
    except BaseException:
        return {"invariantkit.error": "tags could not be read"}
    for raw_key, raw_value in items[:ITEMS_LIMIT]:
        key = safe_str(raw_key, 32)
        if scrubber.key_is_denied(key):
            out[key] = REDACTED
            continue
        value = raw_value if isinstance(raw_value, str) else _scalar_text(raw_value)
        out[key] = safe_str(scrubber.scrub_text(safe_str(value)), TAG_VALUE_LIMIT)
    return out


def _scalar_text(value: object) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return safe_str(value)


def safe_json(value: Any, scrubber: Scrubber, _depth: int = 0) -> Any:
    """A JSON-serialisable, scrubbed copy of ``value``: depth, length and size bounded."""
    try:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value if -(2**63) <= value < 2**63 else safe_str(value, 64)
        if isinstance(value, float):
            return value if math.isfinite(value) else safe_str(value)
        if isinstance(value, str):
            return scrubber.scrub_text(safe_str(value))
        if _depth >= DEPTH_LIMIT:
            return safe_str(value, 200)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= ITEMS_LIMIT:
                    out["…"] = f"{len(value) - ITEMS_LIMIT} more"
                    break
                key = safe_str(k, 128)
                out[key] = (
                    REDACTED if scrubber.key_is_denied(key) else safe_json(v, scrubber, _depth + 1)
                )
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            seq = list(value)
            items = [safe_json(v, scrubber, _depth + 1) for v in seq[:ITEMS_LIMIT]]
            if len(seq) > ITEMS_LIMIT:
                items.append(f"… {len(seq) - ITEMS_LIMIT} more")
            return items
        return scrubber.scrub_text(safe_str(value))
    except BaseException:
        return "<unreportable>"


def safe_mapping(data: Mapping[Any, Any] | None, scrubber: Scrubber) -> dict[str, Any]:
    """``safe_json`` for a mapping at the top level, always returning a dict."""
    if not data:
        return {}
    result = safe_json(data, scrubber) if isinstance(data, Mapping) else None
    if isinstance(result, dict):
        return result
    return {"value": safe_str(data, 200)}
