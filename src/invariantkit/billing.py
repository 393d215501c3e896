"""The guide's three billing guarantees, ready-made, and helpers that check them.

Example:
    >>> from invariantkit import billing
    >>> billing.NO_DOUBLE_CHARGE.type
    'double_charge'
"""

from __future__ import annotations

from invariantkit._catalog import Invariant

__all__ = ["CANCELED_NEVER_CHARGED", "NO_DOUBLE_CHARGE", "PERIOD_MUST_ADVANCE"]

NO_DOUBLE_CHARGE = Invariant(
    "NO_DOUBLE_CHARGE",
    type="double_charge",
    severity="critical",
    summary="CRITICAL: Double charge detected",
    description="A subscription was charged more than once in one day.",
    team="billing",
)

CANCELED_NEVER_CHARGED = Invariant(
    "CANCELED_NEVER_CHARGED",
    type="canceled_charge_attempt",
    severity="critical",
    summary="CRITICAL: Canceled subscription reached the charge path",
    description="A canceled subscription reached the charge function.",
    team="billing",
)

PERIOD_MUST_ADVANCE = Invariant(
    "PERIOD_MUST_ADVANCE",
    type="period_not_advanced",
    severity="error",
    summary="Subscription period did not advance after a successful charge",
    description="After a successful charge, current_period_end is not in the future.",
    team="billing",
)
