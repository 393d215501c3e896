"""Sentry ``before_send`` hooks: the guide's tagging of billing transactions.

The guide's ``sentry.config.js`` tags every error whose transaction is a billing route with
``domain=billing`` and ``critical=true``, so the Sentry alert rule "New Issue in Billing Code"
(filter ``domain:billing``) sees it. :func:`before_send` is that hook; :func:`make_before_send`
builds one with your own routes, tags, and your own hook run after it.

Use it as ``sentry_sdk.init(dsn=..., before_send=invariantkit.sentry.before_send)``.

Example:
    >>> from invariantkit.sentry import before_send
    >>> before_send({"transaction": "/api/subscriptions/renew"}, {})["tags"]
    {'domain': 'billing', 'critical': 'true'}
    >>> before_send({"transaction": "/api/users"}, {}).get("tags") is None
    True
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast, overload

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

__all__ = [
    "DEFAULT_PATTERNS",
    "DEFAULT_TAGS",
    "BeforeSend",
    "before_send",
    "make_before_send",
]

logger = logging.getLogger("invariantkit")

_Dict: TypeAlias = dict[str, Any]  # an event or a hint as a plain dict


class BeforeSend(Protocol):
    """**Protocol:** a Sentry ``before_send(event, hint)`` hook: return the event, or None to drop
    it. What :func:`make_before_send` returns and accepts as ``then``.

    Typed both ways: with ``sentry_sdk.types.Event``/``Hint`` (so it type-checks as
    ``sentry_sdk.init(before_send=...)``) and with plain dicts (so you can call it in tests).

    Example:
        >>> from invariantkit.sentry import BeforeSend, make_before_send
        >>> hook: BeforeSend = make_before_send()
        >>> hook({"transaction": "/api/users"}, {})
        {'transaction': '/api/users'}
    """

    # The overlap is the point: plain dicts in, plain dicts out; Sentry's types in, Sentry's out.
    @overload
    def __call__(self, event: _Dict, hint: _Dict, /) -> _Dict | None: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, event: Event, hint: Hint, /) -> Event | None: ...


#: What ``then`` may be: a hook typed with plain dicts, with Sentry's types, or a BeforeSend.
UserHook: TypeAlias = (
    "Callable[[_Dict, _Dict], _Dict | None] | Callable[[Event, Hint], Event | None] | BeforeSend"
)

DEFAULT_PATTERNS: tuple[str, ...] = ("/api/subscriptions", "/api/cron/subscription-renewal")
"""The guide's billing routes: an event whose ``transaction`` contains one of them is billing.

Example:
    >>> from invariantkit.sentry import DEFAULT_PATTERNS, make_before_send
    >>> hook = make_before_send(patterns=[*DEFAULT_PATTERNS, "/api/invoices"])
"""

DEFAULT_TAGS: Mapping[str, str] = MappingProxyType({"domain": "billing", "critical": "true"})
"""The guide's tags for billing events (read-only).

Example:
    >>> from invariantkit.sentry import DEFAULT_TAGS
    >>> dict(DEFAULT_TAGS)
    {'domain': 'billing', 'critical': 'true'}
"""

_TAG_KEY_LIMIT = 32  # Sentry's limits for tag keys and values
_TAG_VALUE_LIMIT = 200


def _check_patterns(patterns: object) -> tuple[str | re.Pattern[str], ...]:
    if isinstance(patterns, (str, re.Pattern)):
        patterns = (patterns,)
    if not isinstance(patterns, Iterable):
        raise TypeError(
            "invariantkit.sentry.make_before_send(patterns=...) must be a list of substrings "
            f"or compiled regular expressions, not {type(patterns).__name__}"
        )
    checked: list[str | re.Pattern[str]] = []
    for pattern in patterns:
        if isinstance(pattern, str):
            if not pattern:
                raise ValueError(
                    "invariantkit.sentry.make_before_send(patterns=...): an empty pattern would "
                    "match every transaction"
                )
            checked.append(pattern)
        elif isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):
            checked.append(pattern)
        else:
            raise TypeError(
                "invariantkit.sentry.make_before_send(patterns=...): each pattern must be a "
                f"substring (str) or a compiled str regular expression, not {pattern!r}"
            )
    if not checked:
        raise ValueError(
            "invariantkit.sentry.make_before_send(patterns=...) must hold at least one pattern"
        )
    return tuple(checked)


def _check_tags(tags: object) -> dict[str, str]:
    if not isinstance(tags, Mapping) or not tags:
        raise TypeError(
            "invariantkit.sentry.make_before_send(tags=...) must be a non-empty mapping of "
            "str to str"
        )
    checked: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                "invariantkit.sentry.make_before_send(tags=...): tag "
                f"{key!r}={value!r} must map a str to a str (Sentry tag values are strings)"
            )
        if not key or len(key) > _TAG_KEY_LIMIT:
            raise ValueError(
                f"invariantkit.sentry.make_before_send(tags=...): tag key {key!r} must be 1 to "
                f"{_TAG_KEY_LIMIT} characters long"
            )
        if not value or len(value) > _TAG_VALUE_LIMIT:
            raise ValueError(
                f"invariantkit.sentry.make_before_send(tags=...): the value of tag {key!r} must "
                f"be 1 to {_TAG_VALUE_LIMIT} characters long"
            )
        checked[key] = value
    return checked


def _matches(transaction: str, patterns: tuple[str | re.Pattern[str], ...]) -> bool:
    for pattern in patterns:
        if isinstance(pattern, str):
            if pattern in transaction:
                return True
        elif pattern.search(transaction):
            return True
    return False


def _tag(event: _Dict, tags: dict[str, str]) -> None:
    existing = event.get("tags")
    if isinstance(existing, Mapping):
        merged = dict(existing)
    elif isinstance(existing, list):  # the wire format also allows [[key, value], ...]
        merged = {
            str(pair[0]): pair[1]
            for pair in existing
            if isinstance(pair, (list, tuple)) and len(pair) == 2
        }
    else:
        merged = {}
    merged.update(tags)  # as the guide's {...event.tags, domain, critical}: ours win
    event["tags"] = merged


def make_before_send(
    *,
    patterns: Iterable[str | re.Pattern[str]] = DEFAULT_PATTERNS,
    tags: Mapping[str, str] = DEFAULT_TAGS,
    then: UserHook | None = None,
) -> BeforeSend:
    """Build a Sentry ``before_send`` hook that tags events of billing transactions.

    An event whose ``transaction`` contains one of ``patterns`` (a substring, as the guide's
    ``includes``; or a compiled regular expression, matched with ``search``) gets ``tags``
    merged into its tags (ours win on a clash, as in the guide). Then ``then``, your own
    hook, runs on the result and decides: it may change the event or return None to drop it.
    Our tagging never raises and never drops an event; an exception raised by ``then``
    propagates to the SDK, which drops the event (Sentry's own rule for a failing hook).

    Arguments are checked here, at configuration time: ``TypeError``/``ValueError`` name the
    argument and the rule.

    Args:
        patterns: billing routes; default :data:`DEFAULT_PATTERNS`.
        tags: tags to add; default :data:`DEFAULT_TAGS` (``domain=billing``, ``critical=true``).
        then: your own ``before_send(event, hint)``, run after ours.

    Returns:
        A ``before_send(event, hint)`` for ``sentry_sdk.init`` (it also works as
        ``before_send_transaction``).

    Example:
        >>> import re
        >>> from invariantkit.sentry import make_before_send
        >>> def drop_health_checks(event, hint):
        ...     return None if event.get("transaction") == "/healthz" else event
        >>> hook = make_before_send(
        ...     patterns=["/api/subscriptions", re.compile(r"^/billing/")],
        ...     then=drop_health_checks,
        ... )
        >>> hook({"transaction": "/billing/invoices"}, {})["tags"]["domain"]
        'billing'
        >>> hook({"transaction": "/healthz"}, {}) is None
        True
    """
    checked_patterns = _check_patterns(patterns)
    checked_tags = _check_tags(tags)
    if then is not None and not callable(then):
        raise TypeError(
            "invariantkit.sentry.make_before_send(then=...) must be a callable "
            f"before_send(event, hint) or None, not {type(then).__name__}"
        )

    def hook(event: Any, hint: Any) -> Any:
        try:
            transaction = event.get("transaction")
            if isinstance(transaction, str) and _matches(transaction, checked_patterns):
                _tag(event, checked_tags)
        except Exception:  # a malformed event is sent as it is, never dropped by us
            logger.debug("invariantkit: before_send could not tag an event", exc_info=True)
        if then is None:
            return event
        return then(event, hint)

    hook.__doc__ = (
        "Sentry before_send built by invariantkit.sentry.make_before_send: tags "
        f"{checked_tags} when the transaction matches {checked_patterns}."
    )
    return cast("BeforeSend", hook)


_GUIDE_HOOK: BeforeSend = make_before_send()


@overload
def before_send(event: _Dict, hint: _Dict) -> _Dict | None: ...  # type: ignore[overload-overlap]
@overload
def before_send(event: Event, hint: Hint) -> Event | None: ...


def before_send(event: Any, hint: Any) -> Any:
    """The guide's ``beforeSend``: events of billing transactions get tags ``domain=billing``
    and ``critical=true``.

    An event whose ``transaction`` contains ``/api/subscriptions`` or
    ``/api/cron/subscription-renewal`` is tagged; every event is returned (none is dropped).
    Pass it to ``sentry_sdk.init(before_send=...)``; use :func:`make_before_send` to change the
    routes or tags, or to run your own hook too.

    Example:
        >>> from invariantkit.sentry import before_send
        >>> event = {"transaction": "/api/cron/subscription-renewal", "tags": {"region": "eu"}}
        >>> before_send(event, {})["tags"]
        {'region': 'eu', 'domain': 'billing', 'critical': 'true'}
    """
    return _GUIDE_HOOK(event, hint)
