"""The demo's embedded billing service: subscriptions and payment events on SQLite.

It is written the way the guide asks a billing service to be written: every operation
instrumented, the three billing guarantees checked as defense in depth, payment events written
idempotently behind the unique index ``subscription_payment_events_idempotency_idx``, the renewal
cron monitored, the constraint verified. Faults are switched on by the simulation through
:class:`Faults`; the service itself never knows it is a demo.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import invariantkit as ik
from invariantkit import billing
from invariantkit._catalog import Declaration, IdempotentDecl, get_catalog
from invariantkit._cron import Cron
from invariantkit._lifecycle import (
    renewal_failed,
    renewal_succeeded,
    subscription_canceled,
    subscription_started,
)
from invariantkit._operation import Operation
from invariantkit.billing import checks

__all__ = [
    "IDEMPOTENCY_INDEX",
    "BillingService",
    "Declared",
    "Faults",
    "PaymentProvider",
    "PaymentProviderUnavailable",
    "Subscription",
    "declare",
]

DAY = 86_400.0
IDEMPOTENCY_INDEX = "subscription_payment_events_idempotency_idx"
RENEWAL_CRON = "subscription_renewal"

SCHEMA = f"""
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    period_days INTEGER NOT NULL CHECK (period_days > 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'canceled')),
    current_period_end REAL NOT NULL,
    periods_completed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    canceled_at REAL
);
CREATE TABLE subscription_payment_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES subscriptions(id),
    idempotency_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    charge_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    created_at REAL NOT NULL,
    trace_id TEXT  -- ik.correlation_id() of the operation that wrote the row
);
CREATE UNIQUE INDEX {IDEMPOTENCY_INDEX}
    ON subscription_payment_events (idempotency_key);
CREATE INDEX subscription_payment_events_by_day ON subscription_payment_events (subscription_id, day);
"""

TIERS: tuple[tuple[str, int, int], ...] = (
    # tier, price in cents, period in days
    ("horoscope-plus", 500, 7),
    ("horoscope-plus-monthly", 1500, 30),
    ("horoscope-pro", 1200, 14),
)


@dataclass(frozen=True)
class Declared:
    """The service's declarations: made on first use, not at import (importing this module
    must not add a cron, a constraint and six operations to an application's catalog)."""

    constraint: ik.Constraint
    renewal: Cron
    subscribe: Operation
    cancel: Operation
    charge: Operation
    renew: Operation
    webhook: Operation
    check_constraints: Operation
    at_rest: ik.Check  # the nightly at-rest check: charges on canceled subscriptions


_DECLARED: list[Declared] = []


def declare() -> Declared:
    """Make the service's declarations (first call) and put them in the catalog again: the
    generated rules and the metrics at zero depend on them, even after a catalog reset."""
    if not _DECLARED:
        _DECLARED.append(
            Declared(
                constraint=ik.Constraint(
                    IDEMPOTENCY_INDEX,
                    team="platform",
                    summary="CRITICAL: Billing idempotency constraint missing from database",
                    description="The unique index that prevents double-charging is missing.",
                ),
                renewal=ik.monitor_cron(RENEWAL_CRON, every=DAY, max_runtime=300.0, team="billing"),
                subscribe=ik.billing_operation("subscribe", user_facing=True),
                cancel=ik.billing_operation("cancel", user_facing=True),
                charge=ik.billing_operation("charge"),
                renew=ik.billing_operation("renewal", user_facing=True),
                webhook=ik.billing_operation("payment_webhook"),
                check_constraints=ik.billing_operation("verify_billing_constraints"),
                at_rest=checks.charges_on_canceled(
                    charges="subscription_payment_events",
                    subscriptions="subscriptions",
                    charge_id="charge_id",
                    charged_at="created_at",
                    trace_id="trace_id",
                    every=DAY,
                ),
            )
        )
    d = _DECLARED[0]
    catalog = get_catalog()
    decls: list[Declaration] = [
        billing.NO_DOUBLE_CHARGE,
        billing.CANCELED_NEVER_CHARGED,
        billing.PERIOD_MUST_ADVANCE,
        d.constraint,
        d.renewal.decl,
        IdempotentDecl("record_payment_event"),
        *(
            op.decl
            for op in (d.subscribe, d.cancel, d.charge, d.renew, d.webhook, d.check_constraints)
        ),
        d.at_rest,
    ]
    for decl in decls:
        catalog.add(decl)
    return d


class PaymentProviderUnavailable(Exception):
    """The payment provider did not answer (the demo's outage)."""


@dataclass
class Faults:
    """Switches the simulation flips to inject faults into the service."""

    provider_down: bool = False
    #: subscription ids whose charge times out once and is retried with a fresh idempotency key
    retry_with_new_key: set[str] = field(default_factory=set)
    #: subscription ids whose new period end is computed from the old one without advancing
    stale_period: set[str] = field(default_factory=set)
    #: called in the cron between loading a subscription and charging it (a race with the user)
    before_charge: Callable[[str], None] | None = None


class PaymentProvider:
    """A payment provider that charges cards; it can be down, or time out after charging."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.charges: list[tuple[str, int]] = []

    def charge(self, subscription_id: str, amount_cents: int, idempotency_key: str) -> str:
        if self.faults.provider_down:
            raise PaymentProviderUnavailable("payment provider unavailable (HTTP 503)")
        self.charges.append((subscription_id, amount_cents))
        return f"ch_{uuid.uuid5(uuid.NAMESPACE_URL, idempotency_key).hex[:16]}"


@dataclass(frozen=True)
class Subscription:
    """One row of ``subscriptions``."""

    id: str
    user_id: str
    tier: str
    amount_cents: int
    period_days: int
    status: str
    current_period_end: float
    periods_completed: int


class BillingService:
    """Subscriptions, renewals and payment events on one SQLite connection.

    ``clock`` returns the (simulated) current time in epoch seconds.
    """

    subscribe: Callable[[str, int], Subscription]
    cancel: Callable[..., None]
    payment_webhook: Callable[[list[tuple[str, str, int, str]]], int]
    charge: Callable[[str, str], str]
    renew: Callable[[str], None]
    check_constraints: Callable[[], dict[str, bool]]

    def __init__(
        self, conn: sqlite3.Connection, clock: Callable[[], float], faults: Faults
    ) -> None:
        self.conn = conn
        self.clock = clock
        self.faults = faults
        self.provider = PaymentProvider(faults)
        self._ids = 0
        d = declare()
        self._renewal = d.renewal
        # Each public method is an operation: span, metrics, Sentry, logs, PostHog.
        self.subscribe = d.subscribe(self._subscribe)
        self.cancel = d.cancel(self._cancel)
        self.payment_webhook = d.webhook(self._payment_webhook)
        self.charge = d.charge(self._charge)
        self.renew = d.renew(self._renew)
        self.check_constraints = d.check_constraints(self._check_constraints)

    @classmethod
    def create(cls, clock: Callable[[], float], faults: Faults | None = None) -> BillingService:
        """A service on a fresh in-memory database with the schema and its unique index."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.executescript(SCHEMA)
        return cls(conn, clock, faults or Faults())

    # -- reads ----------------------------------------------------------------------------------

    def get(self, subscription_id: str) -> Subscription:
        row = self.conn.execute(
            "SELECT id, user_id, tier, amount_cents, period_days, status, current_period_end, "
            "periods_completed FROM subscriptions WHERE id = ?",
            (subscription_id,),
        ).fetchone()
        if row is None:
            raise KeyError(subscription_id)
        return Subscription(*row)

    def due(self) -> list[Subscription]:
        rows = self.conn.execute(
            "SELECT id, user_id, tier, amount_cents, period_days, status, current_period_end, "
            "periods_completed FROM subscriptions WHERE status = 'active' "
            "AND current_period_end <= ? ORDER BY current_period_end, id",
            (self.clock(),),
        ).fetchall()
        return [Subscription(*row) for row in rows]

    def active_ids(self) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM subscriptions WHERE status = 'active' ORDER BY id"
            )
        ]

    def active_count(self) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM subscriptions WHERE status = 'active'"
            ).fetchone()[0]
        )

    def mrr_cents(self) -> int:
        """Monthly recurring revenue of active subscriptions, in cents."""
        total = self.conn.execute(
            "SELECT coalesce(sum(amount_cents * 30.0 / period_days), 0) FROM subscriptions "
            "WHERE status = 'active'"
        ).fetchone()[0]
        return round(float(total))

    def charges_on(self, subscription_id: str, day: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT idempotency_key, amount_cents, charge_id FROM subscription_payment_events "
            "WHERE subscription_id = ? AND day = ? AND kind = 'charge' ORDER BY id",
            (subscription_id, day),
        ).fetchall()
        return [{"idempotency_key": k, "amount_cents": a, "charge_id": c} for k, a, c in rows]

    def payment_events(self) -> int:
        return int(
            self.conn.execute("SELECT count(*) FROM subscription_payment_events").fetchone()[0]
        )

    def _day(self) -> int:
        return int(self.clock() // DAY)

    # -- operations -----------------------------------------------------------------------------

    def _subscribe(self, user_id: str, tier_index: int) -> Subscription:
        """Start a subscription; the first period is paid at sign-up."""
        tier, amount, period_days = TIERS[tier_index % len(TIERS)]
        self._ids += 1
        sub_id = f"sub_{self._ids:05d}"
        now = self.clock()
        self.conn.execute(
            "INSERT INTO subscriptions (id, user_id, tier, amount_cents, period_days, status, "
            "current_period_end, created_at) VALUES (?, ?, ?, ?, ?, 'active', ?, ?)",
            (sub_id, user_id, tier, amount, period_days, now + period_days * DAY, now),
        )
        self.record_payment_event(sub_id, f"signup:{sub_id}", amount, "ch_signup_" + sub_id)
        subscription_started(sub_id, tier=tier, amount=amount / 100)
        return self.get(sub_id)

    def _cancel(self, subscription_id: str, reason: str = "user_requested") -> None:
        """Cancel a subscription; it is never charged again."""
        sub = self.get(subscription_id)
        self.conn.execute(
            "UPDATE subscriptions SET status = 'canceled', canceled_at = ? WHERE id = ?",
            (self.clock(), subscription_id),
        )
        subscription_canceled(
            subscription_id, reason=reason, periods_completed=sub.periods_completed
        )

    def record_payment_event(
        self, subscription_id: str, key: str, amount_cents: int, charge_id: str
    ) -> bool:
        """Write one payment event; a retry with the same key is absorbed. True when written.

        Runs inside the operation that called it (charge, sign-up, webhook), in its trace.
        """
        with ik.idempotent_write("record_payment_event", key=key) as write:
            self.conn.execute(
                "INSERT INTO subscription_payment_events (subscription_id, idempotency_key, kind, "
                "amount_cents, charge_id, day, created_at, trace_id) "
                "VALUES (?, ?, 'charge', ?, ?, ?, ?, ?)",
                (
                    subscription_id,
                    key,
                    amount_cents,
                    charge_id,
                    self._day(),
                    self.clock(),
                    ik.correlation_id(),  # links a bad row found at rest to this trace
                ),
            )
        return not write.duplicate

    def _payment_webhook(self, events: list[tuple[str, str, int, str]]) -> int:
        """The payment provider's webhook: a batch of payment events (subscription id,
        idempotency key, amount, charge id), each recorded idempotently. Returns how many were
        new; a redelivered event is absorbed by the unique index."""
        return sum(self.record_payment_event(*event) for event in events)

    def recent_payment_events(self, limit: int) -> list[tuple[str, str, int, str]]:
        """The last ``limit`` payment events, as the provider would redeliver them."""
        rows = self.conn.execute(
            "SELECT subscription_id, idempotency_key, amount_cents, charge_id "
            "FROM subscription_payment_events ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [(str(a), str(b), int(c), str(d)) for a, b, c, d in rows]

    def _charge(self, subscription_id: str, key: str) -> str:
        """Charge one period. Canceled subscriptions never reach the provider."""
        sub = self.get(subscription_id)  # the current status, not the cron's snapshot
        billing.guard_chargeable(subscription_id, sub.status)
        attempt_key = key
        if subscription_id in self.faults.retry_with_new_key:
            # The bug: the client times out after the provider charged, and retries with an
            # idempotency key made per attempt instead of per period.
            self.faults.retry_with_new_key.discard(subscription_id)
            charge_id = self.provider.charge(subscription_id, sub.amount_cents, attempt_key)
            self.record_payment_event(subscription_id, attempt_key, sub.amount_cents, charge_id)
            attempt_key = f"{key}:retry:{uuid.uuid4().hex[:8]}"
        charge_id = self.provider.charge(subscription_id, sub.amount_cents, attempt_key)
        self.record_payment_event(subscription_id, attempt_key, sub.amount_cents, charge_id)
        return charge_id

    def _renew(self, subscription_id: str) -> None:
        """Charge the next period and advance it; check the three guarantees on the way."""
        sub = self.get(subscription_id)
        key = f"renewal:{sub.id}:{int(sub.current_period_end)}"
        try:
            self.charge(sub.id, key)
        except PaymentProviderUnavailable:
            renewal_failed(sub.id, reason="provider_unavailable")
            raise
        charges = self.charges_on(sub.id, self._day())
        billing.check_no_double_charge(sub.id, len(charges), charge_events=charges)
        if sub.id in self.faults.stale_period:
            self.faults.stale_period.discard(sub.id)
            new_end = sub.current_period_end  # the bug: the period is not advanced
        else:
            new_end = sub.current_period_end + sub.period_days * DAY
        self.conn.execute(
            "UPDATE subscriptions SET current_period_end = ?, "
            "periods_completed = periods_completed + 1 WHERE id = ?",
            (new_end, sub.id),
        )
        updated = self.get(sub.id)
        billing.check_period_advanced(
            sub.id,
            dt.datetime.fromtimestamp(updated.current_period_end, tz=dt.timezone.utc),
            now=dt.datetime.fromtimestamp(self.clock(), tz=dt.timezone.utc),
        )
        renewal_succeeded(sub.id, period_number=updated.periods_completed + 1)

    def _check_constraints(self) -> dict[str, bool]:
        """The start-up (and daily) check that the idempotency index still exists."""
        return ik.verify_constraints(self.conn, [IDEMPOTENCY_INDEX])

    def check_at_rest(self) -> ik.CheckReport:
        """The nightly at-rest check (``invariantkit check`` in production): finds what was
        written behind the service's back, each bad row reported once."""
        return ik.run_checks(self.conn, [declare().at_rest])

    def renewal_cron(self) -> tuple[int, int]:
        """Renew every due subscription; returns (renewed, failed). Raises when the provider is
        down: the run (its own trace) is then reported as failed, and the next run catches up."""
        renewed = failed = 0
        with self._renewal as run:
            for sub in self.due():
                if self.faults.before_charge is not None:
                    self.faults.before_charge(sub.id)
                with ik.identify(sub.user_id):
                    try:
                        self.renew(sub.id)
                    except billing.SubscriptionNotChargeableError:
                        failed += 1
                        continue
                renewed += 1
                run.processed += 1
        return renewed, failed
