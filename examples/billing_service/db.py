"""The schema, created at start-up when missing (the example's migration)."""

from __future__ import annotations

import sqlite3

from billing_service.monitoring import IDEMPOTENCY_INDEX

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    period_days INTEGER NOT NULL CHECK (period_days > 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'canceled')),
    current_period_end REAL NOT NULL,
    periods_completed INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS subscription_payment_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES subscriptions(id),
    idempotency_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    charge_id TEXT NOT NULL,
    charged_on TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS {IDEMPOTENCY_INDEX}
    ON subscription_payment_events (idempotency_key);
"""


def connect(path: str, *, migrate: bool = True) -> sqlite3.Connection:
    """Open the database (``":memory:"`` or a file); with ``migrate``, create what is missing.

    Autocommit, usable from the server's request threads (SQLite serializes the writes). A
    service whose migrations run elsewhere opens with ``migrate=False``: then a dropped index
    stays dropped, and only the start-up check notices.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.row_factory = sqlite3.Row
    if migrate:
        conn.executescript(SCHEMA)
    return conn
