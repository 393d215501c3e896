"""The simulation: N subscriptions over D days of a billing service, with seeded faults."""

from __future__ import annotations

import contextvars
import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import invariantkit as ik
from invariantkit._demo._pipeline import Pipeline
from invariantkit._demo._service import (
    DAY,
    IDEMPOTENCY_INDEX,
    RENEWAL_CRON,
    BillingService,
    Faults,
    PaymentProviderUnavailable,
)
from invariantkit._demo._timeline import Timeline
from invariantkit._record import Record

__all__ = ["FAULTS", "FaultRun", "FaultSpec", "SimResult", "Simulation"]

#: The simulated clock starts here (a Monday, UTC).
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp()
HOUR = 3600.0
#: The nightly renewal run starts at 00:01.
CRON_HOURS = 1 / 60
#: The retry storm: idempotent retries (webhook redeliveries of a batch of STORM_BATCH payment
#: events) over STORM_SECONDS simulated seconds: 11 per second, above the guide's 10 for 5 minutes.
STORM_RETRIES = 6_600
STORM_BATCH = 20
STORM_SECONDS = 600.0
SCRAPE_INTERVAL = 15.0


@dataclass(frozen=True)
class FaultSpec:
    """One seeded fault: what goes wrong, and the signal that must catch it."""

    key: str
    title: str
    signal: str  # the invariant, metric, cron or constraint that catches it
    story: str


FAULTS: tuple[FaultSpec, ...] = (
    FaultSpec(
        "retry_storm",
        "Retry storm (idempotent retries)",
        "billing_idempotent_retry_total",
        "The payment provider redelivers one payment webhook thousands of times; the unique "
        "index absorbs every duplicate (expected retries: counted and logged, no Sentry alert).",
    ),
    FaultSpec(
        "double_charge",
        "Double charge",
        "NO_DOUBLE_CHARGE",
        "A charge times out after the provider charged; the client retries with an idempotency "
        "key made per attempt, so the unique index cannot stop the second charge.",
    ),
    FaultSpec(
        "canceled_charge",
        "Canceled subscription reaches the charge path",
        "CANCELED_NEVER_CHARGED",
        "The user cancels while the renewal cron is running; the cron's snapshot still says "
        "active, the charge path's guard reads the current status.",
    ),
    FaultSpec(
        "period_not_advanced",
        "Period does not advance",
        "PERIOD_MUST_ADVANCE",
        "A bug computes the new period end from the old one without adding the period.",
    ),
    FaultSpec(
        "cron_failure",
        "Renewal cron run fails",
        "subscription_renewal",
        "The payment provider is down during the nightly renewal run; the run fails.",
    ),
    FaultSpec(
        "index_dropped",
        "Idempotency index dropped",
        IDEMPOTENCY_INDEX,
        "A migration drops the unique index; the start-up constraint check after the deploy "
        "catches it.",
    ),
    FaultSpec(
        "backdoor_write",
        "Charge written behind the application's back",
        "CANCELED_NEVER_CHARGED",
        "A support script inserts a charge for a canceled subscription straight into the "
        "database: no runtime check sees it; the nightly at-rest check finds the row, with the "
        "trace id of the script that wrote it.",
    ),
)
#: Faults injected outside the renewal run.
_OFF_CRON = ("retry_storm", "index_dropped", "backdoor_write")
FAULT_KEYS = tuple(f.key for f in FAULTS)


@dataclass
class FaultRun:
    """What happened when one fault was injected."""

    spec: FaultSpec
    day: int
    sim_time: float = 0.0
    records: list[Record] = field(default_factory=list)
    trace_id: str | None = None
    subscription_id: str | None = None
    user_id: str | None = None
    detail: str = ""
    before: dict[Any, float] = field(default_factory=dict)
    after: dict[Any, float] = field(default_factory=dict)
    exemplars: dict[Any, dict[str, str]] = field(default_factory=dict)


@dataclass
class SimResult:
    """The outcome of a simulation run."""

    subscriptions: int
    days: int
    seed: int
    faults: list[FaultRun]
    timeline: Timeline
    start: float
    end: float
    stats: dict[str, int]


class SimClock:
    """The simulated wall clock (epoch seconds)."""

    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class Simulation:
    """Run the billing service for ``days`` days with ``subscriptions`` subscribers.

    ``progress(done, total, text)`` is called as days pass; ``pace()`` after every fault (the
    ``--serve`` mode waits there for Prometheus to scrape).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        subscriptions: int,
        days: int,
        seed: int,
        progress: Callable[[int, int, str], None] | None = None,
        pace: Callable[[], None] | None = None,
        storm_retries: int = STORM_RETRIES,
        metric_names: set[str] | None = None,
    ) -> None:
        if subscriptions < 10:
            raise ValueError("subscriptions must be at least 10")
        if days < len(FAULTS) + 1:
            raise ValueError(
                f"days must be at least {len(FAULTS) + 1} (one day for each seeded fault)"
            )
        self.pipeline = pipeline
        self.n = subscriptions
        self.days = days
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - a seeded simulation, not secrets
        self.clock = SimClock(START)
        self.faults = Faults()
        self.service = BillingService.create(self.clock, self.faults)
        cron = f"cron_{RENEWAL_CRON}_"
        watched = {
            "billing_invariant_violation_total",
            "billing_idempotent_retry_total",
            "pg_constraint_exists",
            *(
                cron + suffix
                for suffix in ("last_run_timestamp", "last_status", "duration_seconds", "processed")
            ),
        }
        self.timeline = Timeline(
            pipeline.registry, None if metric_names is None else watched | metric_names
        )
        self.progress = progress or (lambda done, total, text: None)
        self.pace = pace or (lambda: None)
        self.storm_retries = storm_retries
        self.stats: dict[str, int] = {
            "subscribed": 0,
            "renewed": 0,
            "canceled": 0,
            "cron_runs": 0,
            "cron_failures": 0,
            "webhook_deliveries": 0,
            "idempotent_retries": 0,
        }
        fault_days = sorted(self.rng.sample(range(1, days), len(FAULTS)))
        self.plan: dict[int, list[FaultSpec]] = {}
        for spec, day in zip(FAULTS, fault_days, strict=True):
            self.plan.setdefault(day, []).append(spec)
        self.runs: list[FaultRun] = []

    # -- helpers --------------------------------------------------------------------------------

    def _at(self, day: int, hours: float) -> None:
        self.clock.t = max(self.clock.t, START + day * DAY + hours * HOUR)

    def _records(self) -> list[Record]:
        self.pipeline.dispatcher.flush(5.0)
        return list(self.pipeline.memory.records)

    def _begin(self, spec: FaultSpec, day: int) -> tuple[FaultRun, int]:
        run = FaultRun(spec, day, sim_time=self.clock.t)
        run.before = self.timeline.take(self.clock.t)
        return run, len(self.pipeline.memory.records)

    def _end(self, run: FaultRun, mark: int, match: Callable[[Record], bool]) -> None:
        run.after = self.timeline.take(self.clock.t)
        run.exemplars = {k: dict(v) for k, v in self.timeline.exemplars.items()}
        run.records = self._records()[mark:]
        hit = next((r for r in run.records if match(r)), None)
        if hit is not None:
            run.trace_id = hit.trace_id
            run.user_id = hit.user_id
            run.subscription_id = run.subscription_id or hit.attributes.get("subscription_id")
        self.runs.append(run)
        self.pace()

    def _make_due(self) -> str:
        """A subscription the next cron run will renew (one is made due if none is)."""
        due = self.service.due()
        if due:
            return self.rng.choice(due).id
        sub_id = self.rng.choice(self.service.active_ids())
        self.service.conn.execute(
            "UPDATE subscriptions SET current_period_end = ? WHERE id = ?",
            (self.clock.t - HOUR, sub_id),
        )
        return sub_id

    def _user_of(self, sub_id: str) -> str:
        return self.service.get(sub_id).user_id

    # -- the simulated world --------------------------------------------------------------------

    def _signup(self, index: int) -> None:
        user = f"user_{index:05d}"
        with ik.identify(user):
            self.service.subscribe(user, self.rng.randrange(3))
        self.stats["subscribed"] += 1

    def _cancel(self, sub_id: str, reason: str = "user_requested") -> None:
        with ik.identify(self._user_of(sub_id)):
            self.service.cancel(sub_id, reason)
        self.stats["canceled"] += 1

    def _cron(self) -> None:
        self.stats["cron_runs"] += 1
        try:
            renewed, _failed = self.service.renewal_cron()
        except PaymentProviderUnavailable:
            self.stats["cron_failures"] += 1
            return
        self.stats["renewed"] += renewed

    def _startup_check(self) -> dict[str, bool]:
        return self.service.check_constraints()

    # -- the faults -----------------------------------------------------------------------------

    def _retry_storm(self, spec: FaultSpec, day: int) -> None:
        self._at(day, 14)
        batch = self.service.recent_payment_events(STORM_BATCH)
        deliveries = max(1, -(-self.storm_retries // len(batch)))
        run, mark = self._begin(spec, day)
        run.subscription_id = batch[0][0]
        step = STORM_SECONDS / deliveries
        next_scrape = self.clock.t + SCRAPE_INTERVAL
        start = self.clock.t
        written = 0
        for i in range(deliveries):
            self.clock.t = start + i * step
            if self.clock.t >= next_scrape:
                self.timeline.take(self.clock.t, only=("billing_idempotent_retry_total",))
                next_scrape += SCRAPE_INTERVAL
            # The provider retries its webhook for the same batch of events, again and again.
            written += self.service.payment_webhook(batch)
        self.stats["webhook_deliveries"] += deliveries
        self.stats["idempotent_retries"] += deliveries * len(batch) - written
        self.clock.t = start + STORM_SECONDS
        run.detail = (
            f"{deliveries:,} redeliveries of a webhook batch of {len(batch)} payment events in "
            f"{STORM_SECONDS / 60:g} minutes: {deliveries * len(batch) - written:,} retries, "
            f"{written} written twice"
        )
        self._end(run, mark, lambda r: r.kind == "retry")

    def _cron_fault(self, spec: FaultSpec, day: int) -> None:
        self._at(day, CRON_HOURS)
        sub_id = self._make_due()
        user = self._user_of(sub_id)
        run, mark = self._begin(spec, day)
        run.subscription_id = sub_id
        if spec.key == "double_charge":
            self.faults.retry_with_new_key.add(sub_id)
            run.detail = f"{sub_id} charged twice on day {day}"
        elif spec.key == "canceled_charge":

            def cancel_during_run(current: str) -> None:
                if current != sub_id:
                    return
                self.faults.before_charge = None
                # The user's request is its own unit of work (its own trace), not the cron's.
                contextvars.Context().run(self._cancel, sub_id, "user_requested")

            self.faults.before_charge = cancel_during_run
            run.detail = f"{sub_id} canceled by its user while the renewal run was charging"
        elif spec.key == "period_not_advanced":
            self.faults.stale_period.add(sub_id)
            run.detail = f"{sub_id} renewed, but current_period_end stayed in the past"
        elif spec.key == "cron_failure":
            self.faults.provider_down = True
            run.detail = "payment provider down (HTTP 503) during the nightly renewal run"
        try:
            self._cron()
        finally:
            self.faults.provider_down = False
            self.faults.before_charge = None
        if spec.key == "cron_failure":
            run.subscription_id = None
            self._end(run, mark, lambda r: r.kind == "cron" and r.status == "error")
        else:
            self._end(run, mark, lambda r: r.kind == "violation" and r.name == spec.signal)
        if run.trace_id is not None and run.user_id is None:
            run.user_id = user if spec.key != "cron_failure" else None

    def _index_dropped(self, spec: FaultSpec, day: int) -> None:
        self._at(day, 22)
        run, mark = self._begin(spec, day)
        self.service.conn.execute(f"DROP INDEX {IDEMPOTENCY_INDEX}")
        # The deploy restarts the service: its start-up check runs.
        self._startup_check()
        run.detail = f"migration dropped {IDEMPOTENCY_INDEX}; the start-up check after the deploy"
        self._end(
            run,
            mark,
            lambda r: r.kind == "constraint" and r.name == spec.signal and r.status == "missing",
        )

    def _backdoor_write(self, spec: FaultSpec, day: int) -> None:
        self._at(day, 15)
        sub_id = self.rng.choice(self.service.active_ids())
        self._cancel(sub_id, "user_requested")
        self._at(day, 16)
        run, mark = self._begin(spec, day)
        run.subscription_id = sub_id

        # A support script, its own unit of work: it writes the charge row directly, with the
        # trace id of its run (as the service does), and checks nothing.
        def backfill() -> str:
            with ik.operation("support_charge_backfill", domain="support") as op:
                self.service.conn.execute(
                    "INSERT INTO subscription_payment_events (subscription_id, idempotency_key, "
                    "kind, amount_cents, charge_id, day, created_at, trace_id) "
                    "VALUES (?, ?, 'charge', 500, ?, ?, ?, ?)",
                    (
                        sub_id,
                        f"backfill:{sub_id}",
                        f"ch_backfill_{sub_id}",
                        day,
                        self.clock.t,
                        ik.correlation_id(),
                    ),
                )
                return op.correlation_id

        writer = contextvars.Context().run(backfill)
        self._at(day, 23)
        found = self.service.check_at_rest()
        result = next(iter(found))
        run.detail = (
            f"a charge for canceled {sub_id} written by the support script (trace {writer}); "
            f"the at-rest check {result.check} found {result.new} new row(s) and linked it to "
            "that trace (Sentry tag writer_trace_id)"
        )
        self._end(run, mark, lambda r: r.kind == "violation" and r.name == spec.signal)

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> SimResult:
        total = self.days
        self.timeline.take(self.clock.t)  # every declared series at zero, before anything
        self.clock.t += 30
        self._startup_check()
        signups = 0
        for day in range(self.days):
            self.progress(day, total, f"day {day + 1}/{self.days}")
            todays = {spec.key: spec for spec in self.plan.get(day, [])}
            cron_faults = [k for k in todays if k not in _OFF_CRON]
            self._at(day, CRON_HOURS)
            if cron_faults:
                self._cron_fault(todays[cron_faults[0]], day)
                for key in cron_faults[1:]:  # never more than one per day with days >= 7
                    self._cron_fault(todays[key], day)
            else:
                self._cron()
            self.service.check_at_rest()  # the nightly at-rest check, after the renewal run
            self.timeline.take(self.clock.t)
            if day == 0:  # the launch: everyone signs up during the first day
                for i in range(self.n):
                    self.clock.t = START + HOUR + (i / self.n) * DAY * 0.9
                    self._signup(i)
                signups = self.n
                self.timeline.take(self.clock.t)
            # During the day: a few cancellations and sign-ups.
            self._at(day, 10)
            active = self.service.active_ids()
            for sub_id in active:
                if self.rng.random() < 0.005:
                    self._cancel(sub_id)
            for _ in range(self.rng.randint(0, max(1, self.n // 50))):
                self._signup(signups)
                signups += 1
            self.timeline.take(self.clock.t)
            if "retry_storm" in todays:
                self._retry_storm(todays["retry_storm"], day)
                self.timeline.take(self.clock.t)
            if "index_dropped" in todays:
                self._index_dropped(todays["index_dropped"], day)
                self.timeline.take(self.clock.t)
            if "backdoor_write" in todays:
                self._backdoor_write(todays["backdoor_write"], day)
                self.timeline.take(self.clock.t)
        self.progress(total, total, "done")
        self._at(self.days, 0)
        self.timeline.take(self.clock.t)
        self.pipeline.flush()
        return SimResult(
            subscriptions=self.n,
            days=self.days,
            seed=self.seed,
            faults=sorted(self.runs, key=lambda r: FAULT_KEYS.index(r.spec.key)),
            timeline=self.timeline,
            start=START,
            end=self.clock.t,
            stats=dict(self.stats),
        )
