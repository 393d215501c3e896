"""The environment variables read after ``configure()``, checked when it runs.

A bad value fails ``configure()`` with a ``ValueError`` naming the variable and what it takes,
before anything is installed; never later, in request code, at exit or in a timer thread.
"""

from __future__ import annotations

import math
import os

__all__ = ["check_environment", "flag", "seconds"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def seconds(name: str, default: float, *, maximum: float = 3600.0) -> float:
    """The number of seconds in environment variable ``name`` (``default`` when unset or blank).

    Raises:
        ValueError: not a number, negative, NaN or above ``maximum``; the message names ``name``.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= maximum:  # also rejects NaN
        raise ValueError(
            f"invariantkit: {name}={raw!r} must be a number of seconds from 0 to {maximum:g}"
        )
    return value


def flag(name: str, where: str) -> bool:
    """The boolean in environment variable ``name`` (false when unset or blank).

    Raises:
        ValueError: not one of 1/true/yes/on or 0/false/no/off (any case); the message names
            ``where`` (what read it) and ``name``.
    """
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{where}: {name}={os.environ[name]!r} must be true or false "
        "(1/true/yes/on or 0/false/no/off)"
    )


def check_environment() -> None:
    """Check every ``INVARIANTKIT_*``/``ALERT_*`` variable read after ``configure()``.

    ``INVARIANTKIT_MODE`` and ``ALERT_TEST_MODE`` are checked where ``configure()`` reads them.
    """
    from invariantkit._context import PSEUDONYM_KEY_ENV

    seconds("INVARIANTKIT_EXIT_TIMEOUT", 2.0, maximum=600.0)
    seconds("ALERT_TEST_DELAY_SECONDS", 0.0, maximum=86400.0)
    key = os.environ.get(PSEUDONYM_KEY_ENV)
    if key is not None and len(key.strip()) < 16:
        raise ValueError(
            f"invariantkit: {PSEUDONYM_KEY_ENV} must be a secret of at least 16 characters "
            "(the same in every process whose user pseudonyms must match), or unset"
        )
