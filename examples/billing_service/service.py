"""The billing logic: subscribe, renew, cancel, charge, payment events.

Each public method is an invariantkit operation (span, metrics, Sentry on failure, JSON log,
PostHog when user-facing). The guide's three guarantees are checked where they can break.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import invariantkit as ik
from invariantkit import billing

DAY = 86_400.0
TIERS: dict[str, tuple[int, int]] = {
    # tier: (price in cents, period in days)
    "horoscope-plus": (500, 30),
    "horoscope-plus-weekly": (150, 7),
}


class NotFound(LookupError):
    """No such subscription."""


class PaymentFailed(Exception):
    """The payments endpoint refused the charge (declined card, provider down)."""

    def __init__(self, reason: str, status: int = 402, trace_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.trace_id = trace_id


class CardProcessor:
    """Stands in for the payment provider; tests decline cards or take it down."""

    def __init__(self) -> None:
        self.declined: set[str] = set()
        self.down = False
        self.charges: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    def charge(self, subscription_id: str, amount_cents: int, idempotency_key: str) -> str:
        if self.down:
            raise PaymentFailed("provider_unavailable", status=503)
        if subscription_id in self.declined:
            raise PaymentFailed("card_declined")
        with self._lock:
            self.charges.append((subscription_id, amount_cents, idempotency_key))
        return f"ch_{uuid.uuid5(uuid.NAMESPACE_URL, idempotency_key).hex[:16]}"


class HttpPayments:
    """The client side of ``POST /payments/charge``: the trace and the user travel in headers."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def charge(self, subscription_id: str, idempotency_key: str) -> dict[str, Any]:
        body = json.dumps(
            {"subscription_id": subscription_id, "idempotency_key": idempotency_key}
        ).encode()
        headers = ik.inject({"Content-Type": "application/json"})  # traceparent + baggage
        request = urllib.request.Request(
            f"{self.base_url}/payments/charge", data=body, headers=dict(headers), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}")
            raise PaymentFailed(
                str(detail.get("error", exc.reason)),
                status=exc.code,
                trace_id=detail.get("trace_id"),
            ) from None


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).date().isoformat()


class Billing:
    """Subscriptions and payments on one SQLite connection.

    ``payments`` charges through the payments endpoint (over HTTP in the service); ``clock``
    returns the current time in epoch seconds.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        payments: HttpPayments | None = None,
        processor: CardProcessor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.payments = payments
        self.processor = processor or CardProcessor()
        self.clock = clock
        self._lock = threading.Lock()

    # -- reads ----------------------------------------------------------------------------------

    def get(self, subscription_id: str) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT * FROM subscriptions WHERE id = ?", (subscription_id,)
        ).fetchone()
        if row is None:
            raise NotFound(subscription_id)
        return dict(row)

    def due(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM subscriptions WHERE status = 'active' AND current_period_end <= ? "
            "ORDER BY current_period_end",
            (self.clock(),),
        ).fetchall()
        return [dict(r) for r in rows]

    def charges_today(self, subscription_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT idempotency_key, amount_cents, charge_id FROM subscription_payment_events "
            "WHERE subscription_id = ? AND kind = 'charge' AND charged_on = ? ORDER BY id",
            (subscription_id, _day(self.clock())),
        ).fetchall()
        return [dict(r) for r in rows]

    # -- writes ---------------------------------------------------------------------------------

    def record_payment_event(
        self,
        subscription_id: str,
        key: str,
        amount_cents: int,
        charge_id: str,
        kind: str = "charge",
    ) -> bool:
        """Write one payment event; True when new, False for a retry the unique index absorbed."""
        now = self.clock()
        with ik.idempotent_write("record_payment_event", key=key) as write:
            self.conn.execute(
                "INSERT INTO subscription_payment_events (subscription_id, idempotency_key, kind, "
                "amount_cents, charge_id, charged_on, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (subscription_id, key, kind, amount_cents, charge_id, _day(now), now),
            )
        return not write.duplicate

    @ik.billing_operation("subscribe", user_facing=True)
    def subscribe(self, user_id: str, tier: str) -> dict[str, Any]:
        """Start a subscription; the first period is paid at sign-up."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}")
        amount, days = TIERS[tier]
        sub_id = f"sub_{uuid.uuid4().hex[:12]}"
        now = self.clock()
        self.conn.execute(
            "INSERT INTO subscriptions (id, user_id, tier, amount_cents, period_days, status, "
            "current_period_end, created_at) VALUES (?, ?, ?, ?, ?, 'active', ?, ?)",
            (sub_id, user_id, tier, amount, days, now + days * DAY, now),
        )
        charge_id = self.processor.charge(sub_id, amount, f"signup:{sub_id}")
        self.record_payment_event(sub_id, f"signup:{sub_id}", amount, charge_id)
        billing.subscription_started(sub_id, tier=tier, amount=amount / 100)
        return self.get(sub_id)

    @ik.billing_operation("cancel", user_facing=True)
    def cancel(self, subscription_id: str, reason: str = "user_requested") -> dict[str, Any]:
        """Cancel: the subscription is never charged again."""
        sub = self.get(subscription_id)
        self.conn.execute(
            "UPDATE subscriptions SET status = 'canceled' WHERE id = ?", (subscription_id,)
        )
        billing.subscription_canceled(
            subscription_id, reason=reason, periods_completed=sub["periods_completed"]
        )
        return self.get(subscription_id)

    @ik.billing_operation("charge")
    def charge(self, subscription_id: str, idempotency_key: str) -> dict[str, Any]:
        """The payments side: charge one period once per idempotency key.

        A canceled subscription never reaches the processor (reported, then refused); a replay
        of the same key returns the first charge.
        """
        sub = self.get(subscription_id)  # the current status, not the caller's snapshot
        billing.guard_chargeable(subscription_id, sub["status"])
        existing = self.conn.execute(
            "SELECT charge_id FROM subscription_payment_events WHERE idempotency_key = ?",
            (idempotency_key,),
        ).fetchone()
        if existing is not None:
            return {"charge_id": existing["charge_id"], "replayed": True}
        charge_id = self.processor.charge(subscription_id, sub["amount_cents"], idempotency_key)
        written = self.record_payment_event(
            subscription_id, idempotency_key, sub["amount_cents"], charge_id
        )
        return {"charge_id": charge_id, "replayed": not written}

    @ik.billing_operation("renewal", user_facing=True)
    def renew(self, subscription_id: str) -> dict[str, Any]:
        """Charge the next period through the payments endpoint and advance the period."""
        sub = self.get(subscription_id)
        key = f"renewal:{subscription_id}:{int(sub['current_period_end'])}"
        try:
            if self.payments is not None:
                self.payments.charge(subscription_id, key)
            else:
                self.charge(subscription_id, key)
        except PaymentFailed as exc:
            billing.renewal_failed(subscription_id, reason=exc.reason)
            raise
        charges = self.charges_today(subscription_id)
        billing.check_no_double_charge(subscription_id, len(charges), charge_events=charges)
        new_end = sub["current_period_end"] + sub["period_days"] * DAY
        self.conn.execute(
            "UPDATE subscriptions SET current_period_end = ?, "
            "periods_completed = periods_completed + 1 WHERE id = ?",
            (new_end, subscription_id),
        )
        updated = self.get(subscription_id)
        billing.check_period_advanced(
            subscription_id,
            dt.datetime.fromtimestamp(updated["current_period_end"], tz=dt.timezone.utc),
            now=dt.datetime.fromtimestamp(self.clock(), tz=dt.timezone.utc),
            expected_period_end=dt.datetime.fromtimestamp(new_end, tz=dt.timezone.utc),
        )
        billing.renewal_succeeded(subscription_id, period_number=updated["periods_completed"])
        return updated

    @ik.billing_operation("payment_webhook")
    def payment_webhook(self, events: list[dict[str, Any]]) -> dict[str, int]:
        """The provider's webhook: payment events it may deliver more than once."""
        new = 0
        for event in events:
            new += self.record_payment_event(
                str(event["subscription_id"]),
                str(event["idempotency_key"]),
                int(event["amount_cents"]),
                str(event["charge_id"]),
                kind=str(event.get("kind", "charge")),
            )
        return {"received": len(events), "new": new, "retries": len(events) - new}

    def check_constraints(self) -> dict[str, bool]:
        """The start-up check: the unique index that stops double charges still exists."""
        from billing_service.monitoring import IDEMPOTENCY_INDEX

        return ik.verify_constraints(self.conn, [IDEMPOTENCY_INDEX])
