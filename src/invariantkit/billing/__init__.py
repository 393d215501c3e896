"""The guide's three billing guarantees, ready-made, and helpers that check them.

- ``NO_DOUBLE_CHARGE`` (type ``double_charge``, critical), checked by
  :func:`check_no_double_charge`;
- ``CANCELED_NEVER_CHARGED`` (type ``canceled_charge_attempt``, critical), checked by
  :func:`guard_chargeable`;
- ``PERIOD_MUST_ADVANCE`` (type ``period_not_advanced``, error), checked by
  :func:`check_period_advanced`.

Importing this module declares the three invariants (their counters start at zero). Each helper
reports with the guide's tag names (``subscription_id``, ``charges_count``, ``status``) and
extra (``charge_events``, ``expected_period_end``/``actual_period_end``); the subscription id
is a Sentry tag, a span attribute, a PostHog property and a log field, never a metric label.

It also holds the guide's subscription lifecycle events for PostHog ("who was affected?"):
:func:`subscription_started`, :func:`renewal_succeeded`, :func:`renewal_failed` and
:func:`subscription_canceled`, counted in ``billing_subscription_events_total{event}`` and
``billing_renewal_failures_total{reason}``, and :func:`register_health` for the
``billing_active_subscriptions`` and ``billing_mrr`` gauges read at scrape time.

The same guarantees are proven at rest, against the data, by :mod:`invariantkit.billing.checks`
(``double_charges``, ``charges_on_canceled``, ``ledger_unbalanced``, ``balance_mismatch``), which
catches rows written behind the application's back. Store the trace id with every row you write
(``INSERT INTO charges (..., trace_id) VALUES (..., ik.correlation_id())``): a bad row found at
rest then links to the trace of the operation that wrote it.

Example:
    >>> from invariantkit import billing
    >>> billing.NO_DOUBLE_CHARGE.type
    'double_charge'
    >>> billing.check_no_double_charge("sub_1", charges_today=1)
    True
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any

from invariantkit._catalog import Invariant
from invariantkit._config import current_config
from invariantkit._invariant import InvariantViolation, assert_invariant, report_violation
from invariantkit._lifecycle import (
    RENEWAL_FAILURE_REASONS,
    register_health,
    renewal_failed,
    renewal_succeeded,
    subscription_canceled,
    subscription_started,
)
from invariantkit._safe import safe_str, safe_tags

__all__ = [
    "CANCELED_NEVER_CHARGED",
    "NOT_CHARGEABLE_STATUSES",
    "NO_DOUBLE_CHARGE",
    "PERIOD_MUST_ADVANCE",
    "RENEWAL_FAILURE_REASONS",
    "SubscriptionNotChargeableError",
    "check_no_double_charge",
    "check_period_advanced",
    "guard_chargeable",
    "register_health",
    "renewal_failed",
    "renewal_succeeded",
    "subscription_canceled",
    "subscription_started",
]

NO_DOUBLE_CHARGE = Invariant(
    "NO_DOUBLE_CHARGE",
    type="double_charge",
    severity="critical",
    summary="CRITICAL: Double charge detected",
    description="A subscription was charged more than once in one day.",
    team="billing",
)
"""The guide's Guarantee #2: no subscription has more than one successful charge per day.

Type ``double_charge``, severity critical (Sentry level fatal). Checked by
:func:`check_no_double_charge`.

Example:
    >>> import invariantkit as ik
    >>> from invariantkit import billing
    >>> ik.assert_invariant(1 <= 1, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"})
    True
"""

CANCELED_NEVER_CHARGED = Invariant(
    "CANCELED_NEVER_CHARGED",
    type="canceled_charge_attempt",
    severity="critical",
    summary="CRITICAL: Canceled subscription reached the charge path",
    description="A canceled subscription reached the charge function.",
    team="billing",
)
"""The guide's Guarantee #1: a canceled subscription never reaches the charge function.

Type ``canceled_charge_attempt``, severity critical (Sentry level fatal). Checked by
:func:`guard_chargeable`.

Example:
    >>> from invariantkit import billing
    >>> billing.CANCELED_NEVER_CHARGED.type
    'canceled_charge_attempt'
"""

PERIOD_MUST_ADVANCE = Invariant(
    "PERIOD_MUST_ADVANCE",
    type="period_not_advanced",
    severity="error",
    summary="Subscription period did not advance after a successful charge",
    description="After a successful charge, current_period_end is not in the future.",
    team="billing",
)
"""The guide's Guarantee #3: after a successful charge, the period end is in the future.

Type ``period_not_advanced``, severity error (Sentry level error). Checked by
:func:`check_period_advanced`.

Example:
    >>> from invariantkit import billing
    >>> billing.PERIOD_MUST_ADVANCE.level
    'error'
"""

NOT_CHARGEABLE_STATUSES: frozenset[str] = frozenset({"canceled", "cancelled"})
"""Statuses that must never reach the charge path, for :func:`guard_chargeable`.

Compared case-insensitively (the guide's ``"CANCELED"`` and Stripe's ``"canceled"`` both match;
an enum member by its str value, else by its name). Every other status is chargeable as far as
the guard is concerned: past-due and unpaid subscriptions are retried by design.

Example:
    >>> from invariantkit import billing
    >>> "cancelled" in billing.NOT_CHARGEABLE_STATUSES
    True
"""


# -- Guarantee #2: no subscription is charged twice in one day -----------------------------------


def _count(value: object) -> int:
    if isinstance(value, int):
        return value
    count: int | None
    try:
        count = int(value)  # type: ignore[call-overload]  # Decimal from SUM(), numpy ints...
    except (TypeError, ValueError, OverflowError):
        count = None
    if count is None or count != value:
        raise TypeError(
            "invariantkit.billing.check_no_double_charge(): charges_today must be a whole number "
            f"of charges (an int), not {type(value).__name__} {value!r}"
        )
    return count


def check_no_double_charge(
    subscription_id: object,
    charges_today: int,
    charge_events: Sequence[Any] | None = None,
) -> bool:
    """Check the guide's Guarantee #2: at most one successful charge per subscription per day.

    Call it after recording a payment, with the number of successful charges of the
    subscription today. Record the payment with ``trace_id = ik.correlation_id()`` in its row,
    so that :func:`invariantkit.billing.checks.double_charges` links a double charge found at
    rest to the trace that wrote it. More than one reports :data:`NO_DOUBLE_CHARGE` (Sentry level fatal, tags
    ``subscription_id`` and ``charges_count``, ``charge_events`` in the event's extra) and
    returns False; in enforce mode it raises :class:`~invariantkit.InvariantViolation`.

    Args:
        subscription_id: the subscription (a tag, never a metric label).
        charges_today: successful charges today, an int (an integral ``Decimal`` is accepted);
            anything else is reported as a violation with ``invariantkit.condition_error`` in
            the extra (it cannot be told that the guarantee holds), never raised.
        charge_events: today's charge events, for the person on call (the event's extra).

    Example:
        >>> from invariantkit import billing
        >>> billing.check_no_double_charge("sub_1", 1)
        True
    """
    extra: dict[str, Any] | None = (
        {"charge_events": charge_events} if charge_events is not None else None
    )
    try:
        count = _count(charges_today)
    except TypeError as exc:
        # Runtime data that cannot be counted: report it like a condition that cannot be told
        # (on call looks), never raise into the charge path.
        extra = {**(extra or {}), "invariantkit.condition_error": str(exc)}
        return assert_invariant(
            False,
            NO_DOUBLE_CHARGE,
            tags={"subscription_id": subscription_id, "charges_count": charges_today},
            extra=extra,
        )
    if count <= 1:
        return True
    return assert_invariant(
        False,
        NO_DOUBLE_CHARGE,
        tags={"subscription_id": subscription_id, "charges_count": count},
        extra=extra,
    )


# -- Guarantee #1: a canceled subscription never reaches the charge function --------------------


class SubscriptionNotChargeableError(InvariantViolation):
    """Raised by :func:`guard_chargeable` after it reported :data:`CANCELED_NEVER_CHARGED`.

    It is an :class:`~invariantkit.InvariantViolation` (``except ik.InvariantViolation`` catches
    it too) and is raised in report and enforce mode alike: a canceled subscription must not
    be charged, whatever the mode.

    Attributes:
        subscription_id: the subscription that reached the charge path.
        status: its current status, as given.
        invariant, tags, trace_id: as in :class:`~invariantkit.InvariantViolation`.

    Example:
        >>> from invariantkit import billing
        >>> try:
        ...     billing.guard_chargeable("sub_1", "canceled")
        ... except billing.SubscriptionNotChargeableError as exc:
        ...     print(exc.subscription_id, exc.status)
        sub_1 canceled
    """

    def __init__(
        self,
        subscription_id: object,
        status: object,
        *,
        trace_id: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(CANCELED_NEVER_CHARGED, tags or {}, trace_id)
        self.subscription_id = subscription_id
        self.status = status
        self.args = (
            (
                f"subscription {safe_str(subscription_id, 200)} is not chargeable: status "
                f"{safe_str(status, 100)} (trace_id={trace_id})"
            ),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_not_chargeable,
            (self.subscription_id, self.status, self.trace_id, self.tags),
        )


def _rebuild_not_chargeable(
    subscription_id: object, status: object, trace_id: str, tags: dict[str, str]
) -> SubscriptionNotChargeableError:
    return SubscriptionNotChargeableError(subscription_id, status, trace_id=trace_id, tags=tags)


def _status_text(status: object) -> str:
    if isinstance(status, enum.Enum):
        value = status.value
        return value if isinstance(value, str) else status.name
    return status if isinstance(status, str) else str(status)


def guard_chargeable(subscription_id: object, status: object) -> None:
    """Defense in depth for the guide's Guarantee #1, at the top of the charge function.

    Returns when ``status`` is chargeable (anything not in :data:`NOT_CHARGEABLE_STATUSES`).
    For a canceled subscription it reports :data:`CANCELED_NEVER_CHARGED` (Sentry level fatal,
    tags ``subscription_id`` and ``status``) and then raises
    :class:`SubscriptionNotChargeableError`, in every mode, so no charge is attempted.

    Args:
        subscription_id: the subscription about to be charged.
        status: its current status: a str (any case) or an enum member.

    Example:
        >>> from invariantkit import billing
        >>> billing.guard_chargeable("sub_1", "active")
    """
    text = _status_text(status)
    if text.strip().lower() not in NOT_CHARGEABLE_STATUSES:
        return
    tags = {"subscription_id": subscription_id, "status": text}
    try:
        trace_id = report_violation(CANCELED_NEVER_CHARGED, tags=tags)
    except InvariantViolation as exc:  # enforce mode: the same error either way
        trace_id = exc.trace_id
    raise SubscriptionNotChargeableError(
        subscription_id,
        status,
        trace_id=trace_id,
        tags=safe_tags(tags, current_config().scrubber),
    )


# -- Guarantee #3: after a successful charge, the period end is in the future -------------------


def _aware(value: object, name: str) -> dt.datetime:
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):  # fromisoformat() only reads "Z" from Python 3.11 on
            text = text[:-1] + "+00:00"
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"invariantkit.billing.check_period_advanced(): {name}={value!r} is not an "
                "ISO 8601 date-time"
            ) from None
    if not isinstance(value, dt.datetime):
        raise TypeError(
            f"invariantkit.billing.check_period_advanced(): {name} must be a datetime or an "
            f"ISO 8601 string, not {type(value).__name__}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive value is read as UTC: what databases hand back for UTC timestamps stored
        # without a zone. Local-time naive values would be wrong by the UTC offset.
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else value


def check_period_advanced(
    subscription_id: object,
    period_end: dt.datetime | str,
    now: dt.datetime | str | None = None,
    *,
    expected_period_end: dt.datetime | str | None = None,
) -> bool:
    """Check the guide's Guarantee #3: after a successful charge, the period end is in the future.

    Call it after updating the subscription's period. ``period_end <= now`` reports
    :data:`PERIOD_MUST_ADVANCE` (Sentry level error, tag ``subscription_id``, extra
    ``actual_period_end``, ``expected_period_end`` when given, and ``now``) and returns False;
    in enforce mode it raises :class:`~invariantkit.InvariantViolation`.

    Comparisons are between timezone-aware instants. A naive ``datetime`` (or an ISO string
    without an offset) is read as UTC; ISO 8601 strings, with ``Z`` or an offset, are accepted.

    Args:
        subscription_id: the subscription that was charged.
        period_end: its ``current_period_end`` as stored after the charge.
        now: the current time; default ``datetime.now(timezone.utc)``.
        expected_period_end: the period end the charge meant to set (reported in the extra).

    Example:
        >>> import datetime as dt
        >>> from invariantkit import billing
        >>> now = dt.datetime(2024, 1, 15, tzinfo=dt.timezone.utc)
        >>> billing.check_period_advanced("sub_1", now + dt.timedelta(days=30), now=now)
        True
    """
    extra: dict[str, Any] = {"actual_period_end": _iso(period_end)}
    try:
        end = _aware(period_end, "period_end")
        current = dt.datetime.now(dt.timezone.utc) if now is None else _aware(now, "now")
    except (TypeError, ValueError) as exc:
        # A period end that is missing or unreadable after a charge did not advance: report it
        # (with why), never raise into the charge path.
        extra["invariantkit.condition_error"] = str(exc)
        if expected_period_end is not None:
            extra["expected_period_end"] = _iso(expected_period_end)
        return assert_invariant(
            False, PERIOD_MUST_ADVANCE, tags={"subscription_id": subscription_id}, extra=extra
        )
    if end > current:
        return True
    if expected_period_end is not None:
        extra["expected_period_end"] = _iso(expected_period_end)
    extra["now"] = current.isoformat()
    return assert_invariant(
        False, PERIOD_MUST_ADVANCE, tags={"subscription_id": subscription_id}, extra=extra
    )
