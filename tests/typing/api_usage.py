"""Typed usage of the public API, checked by ``mypy --strict`` (tests/test_api_surface.py).

Each assignment to an annotated variable states a typing promise: decorated functions keep their
parameters and return types, context managers give the documented handle, functions return what
their docs say. A ``# type: ignore[...]`` marks a call that must stay a type error; under
``--strict`` (``warn_unused_ignores``) the ignore itself fails the check if the promise weakens
(for example if a decorator turned a signature into ``Callable[..., Any]``).

The file also runs (under ``capture_signals()``), so every line is true at runtime too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import sentry_sdk

import invariantkit as ik
from invariantkit import alerts, billing
from invariantkit.sentry import BeforeSend, before_send, make_before_send
from invariantkit.testing import Signals, capture_signals

# --- configuration -----------------------------------------------------------------------------

flushed: bool = ik.flush(timeout=0.5)
version: str = ik.__version__

# --- declarations ------------------------------------------------------------------------------

REFUND_LIMIT: ik.Invariant = ik.Invariant(
    "REFUND_NOT_ABOVE_CHARGE",
    type="refund_above_charge",
    severity="error",
    summary="A refund exceeded the charge it refunds",
)
level: str = REFUND_LIMIT.level
guarantees: tuple[ik.Invariant, ...] = (
    billing.NO_DOUBLE_CHARGE,
    billing.CANCELED_NEVER_CHARGED,
    billing.PERIOD_MUST_ADVANCE,
)
IDEMPOTENCY_IDX: ik.Constraint = ik.Constraint("subscription_payment_events_idempotency_idx")
catalog: ik.Catalog = ik.get_catalog()
declared: dict[str, ik.Invariant] = catalog.invariants

# --- operations keep their signatures ------------------------------------------------------------


@ik.billing_operation("renewal", user_facing=True)
def renew(subscription_id: str, *, attempt: int = 1) -> bool:
    return attempt == 1


@ik.operation("lookup", domain="payments")
async def lookup(subscription_id: str) -> int:
    await asyncio.sleep(0)
    return len(subscription_id)


@ik.billing_operation("scan")
def scan(limit: int) -> Iterator[str]:
    for i in range(limit):
        yield f"sub_{i}"


@ik.billing_operation("stream")
async def stream(limit: int) -> AsyncIterator[int]:
    for i in range(limit):
        yield i


renewed: bool = renew("sub_1", attempt=2)
renew_fn: Callable[[str], bool] = renew
# An async operation stays a coroutine function: asyncio.run() accepts what it returns.
lookup_fn: Callable[[str], Coroutine[Any, Any, int]] = lookup
scan_fn: Callable[[int], Iterator[str]] = scan
stream_fn: Callable[[int], AsyncIterator[int]] = stream
if TYPE_CHECKING:  # type errors, and so never run
    renew(42)  # type: ignore[arg-type]
    renew("sub_1", attempts=2)  # type: ignore[call-arg]
scanned: list[str] = list(scan(2))


async def _consume() -> list[int]:
    return [i async for i in stream(2)]


found: int = asyncio.run(lookup("sub_1"))
streamed: list[int] = asyncio.run(_consume())

refund: ik.Operation = ik.billing_operation("refund", attributes={"refund.kind": "full"})
with refund as run:
    handle: ik.OperationRun = run
    run.set_attribute("refund.reason", "duplicate")
    run_id: str = run.correlation_id

# --- invariants --------------------------------------------------------------------------------

held: bool = ik.assert_invariant(True, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "s"})
violated: bool = ik.assert_invariant(
    False,
    billing.NO_DOUBLE_CHARGE,
    tags={"subscription_id": "sub_1", "charges_count": 2},
    extra={"charge_events": [{"id": "ch_1"}, {"id": "ch_2"}]},
)
reported: str = ik.report_violation(billing.PERIOD_MUST_ADVANCE, tags={"subscription_id": "sub_1"})
error: type[Exception] = ik.InvariantViolation

checked_charges: bool = billing.check_no_double_charge("sub_1", 1)
advanced: bool = billing.check_period_advanced(
    "sub_1", dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
)
billing.guard_chargeable("sub_1", "active")
not_chargeable: type[ik.InvariantViolation] = billing.SubscriptionNotChargeableError

# --- idempotent writes, cron jobs, constraints --------------------------------------------------

db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE events (idempotency_key TEXT NOT NULL)")
db.execute("CREATE UNIQUE INDEX events_idempotency_idx ON events (idempotency_key)")
for _attempt in range(2):
    with ik.idempotent_write("record_payment_event", key="renewal:sub_1:1") as write:
        with db:
            db.execute("INSERT INTO events VALUES ('renewal:sub_1:1')")
duplicate: bool = write.duplicate
ik.idempotent_write.declare("record_refund_event")

present: dict[str, bool] = ik.verify_constraints(db, ["events_idempotency_idx"])

renewal = ik.monitor_cron("subscription_renewal", every=dt.timedelta(days=1), max_runtime=300)
with renewal as cron_run:
    cron_run.processed += 2


@renewal
def renew_all(limit: int) -> int:
    renewal.run.processed += limit
    return limit


@renewal
async def renew_all_async(limit: int) -> int:
    await asyncio.sleep(0)
    return limit


renewed_count: int = renew_all(3)
renew_all_fn: Callable[[int], int] = renew_all
renew_all_async_fn: Callable[[int], Coroutine[Any, Any, int]] = renew_all_async
renewed_async: int = asyncio.run(renew_all_async(1))

# --- lifecycle events and health gauges ---------------------------------------------------------

billing.subscription_started("sub_1", tier="horoscope-plus", amount=5.0)
billing.renewal_succeeded("sub_1", period_number=2)
billing.renewal_failed("sub_1", reason="insufficient_funds")
billing.subscription_canceled("sub_1", reason="user_requested", periods_completed=3)
reasons: frozenset[str] = billing.RENEWAL_FAILURE_REASONS

# --- generated alerts, dashboards, playbooks -----------------------------------------------------

rule_file: str = alerts.prometheus_rules()
rule_tests: str = alerts.prometheus_rule_tests()
dashboards: dict[str, dict[str, Any]] = alerts.grafana_dashboards()
sentry_rules: list[dict[str, Any]] = alerts.sentry_alert_rules()
posthog_rules: list[dict[str, Any]] = alerts.posthog_alerts()
runbooks: dict[str, str] = alerts.playbooks()
test_alerts: dict[str, str] = ik.fire_test_alert(billing.NO_DOUBLE_CHARGE)

# --- Sentry hooks ------------------------------------------------------------------------------

hook: BeforeSend = make_before_send(patterns=["/api/subscriptions"], then=before_send)
tagged: dict[str, Any] | None = hook({"transaction": "/api/subscriptions/renew"}, {})
if TYPE_CHECKING:  # the documented set-up type-checks (not run: it would install a global client)
    sentry_sdk.init(dsn="https://key@o1.ingest.sentry.io/1", before_send=before_send)
    sentry_sdk.init(dsn="https://key@o1.ingest.sentry.io/1", before_send=hook)

# --- correlation and product events ------------------------------------------------------------

cid: str = ik.correlation_id()
with ik.identify("user_42") as binding:
    bound: ik.Binding = binding
    headers: dict[str, str] = {}
    ik.inject(headers)
    ik.track("subscription_started", subscription_id="sub_1", tier="plus", amount=5.0)
continued: ik.Binding = ik.extract(headers)
continued.detach()

# --- testing -----------------------------------------------------------------------------------

with capture_signals(mode="enforce") as signals:
    captured: Signals = signals
    try:
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_2"})
    except ik.InvariantViolation as exc:
        failed: ik.Invariant = exc.invariant
        failed_trace: str = exc.trace_id
    record: ik.Record = signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_2")
    count: float = signals.metric("billing_invariant_violation_total", invariant="NO_DOUBLE_CHARGE")
    events: list[dict[str, Any]] = signals.sentry_events

# --- sinks -------------------------------------------------------------------------------------

memory: ik.sinks.Sink = ik.sinks.Memory()
logs: ik.sinks.Sink = ik.sinks.JsonLogs()
scrubber: ik.Scrubber = ik.Scrubber(emails=False)
clean: str = scrubber.scrub_text("card 4242 4242 4242 4242")
context: ik.sinks.SinkContext = ik.sinks.SinkContext(service="billing-api", scrubber=scrubber)
context.count_dropped("audit", 1, "error")
counters: ik.Stats = ik.stats()
lost: int = counters.dropped.get(("audit", "error"), 0) + counters.dropped_total

checked = True
