"""Property: under 8 threads and 1,000 concurrent asyncio tasks, every signal (span, Sentry
event, PostHog event, log line, record) carries its own task's trace id and user id, and every
count is exact."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import invariantkit as ik
from invariantkit import billing
from invariantkit.testing import Signals, capture_signals

TASKS = 1_000
THREADS = 8
CALLS_PER_THREAD = 40


class TaskFailed(Exception):
    """Raised by the task whose number is in the message."""


@dataclass(frozen=True)
class Plan:
    """What each unit of work does: its user (None: anonymous), whether it fails, whether it
    reports a violation, how many times it yields to the others in the middle."""

    users: tuple[str | None, ...]
    fails: frozenset[int]
    violates: frozenset[int]
    yields: tuple[int, ...]
    traces: bool


def plans(count: int) -> st.SearchStrategy[Plan]:
    indices = st.integers(0, count - 1)
    return st.builds(
        lambda n_users, anonymous_every, fails, violates, yield_seed, traces: Plan(
            users=tuple(
                None if anonymous_every and i % anonymous_every == 0 else f"user_{i % n_users}"
                for i in range(count)
            ),
            fails=frozenset(fails),
            violates=frozenset(violates),
            yields=tuple((i * yield_seed) % 4 for i in range(count)),
            traces=traces,
        ),
        st.integers(1, count),
        st.integers(0, 7),
        st.sets(indices, max_size=count // 4),
        st.sets(indices, max_size=count // 10),
        st.integers(0, 97),
        st.booleans(),
    )


@dataclass
class Seen:
    """What each unit of work saw from inside: its trace id and the user it ran as."""

    trace_ids: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, index: int) -> None:
        with self.lock:
            self.trace_ids[index] = ik.correlation_id()


def check(signals: Signals, plan: Plan, seen: Seen) -> None:
    """Every signal of unit ``i`` carries ``seen.trace_ids[i]`` and ``plan.users[i]``."""
    count = len(plan.users)
    assert len(seen.trace_ids) == count
    by_trace = {tid: i for i, tid in seen.trace_ids.items()}
    assert len(by_trace) == count, "two units of work shared a trace id"

    def user_of(tid: str) -> str | None:
        return plan.users[by_trace[tid]]

    # Records: one operation per unit, with its trace id and user; violations too.
    records = signals.records
    ops = [r for r in records if r.kind == "operation"]
    assert len(ops) == count
    for r in ops:
        i = by_trace[r.trace_id]
        assert r.user_id == plan.users[i]
        assert r.status == ("failure" if i in plan.fails else "success")
    violations = [r for r in records if r.kind == "violation"]
    assert sorted(by_trace[r.trace_id] for r in violations) == sorted(plan.violates)
    for r in violations:
        assert r.attributes["unit"] == str(by_trace[r.trace_id])
        assert r.user_id == user_of(r.trace_id)

    # Spans (with tracing): one per unit, in its trace, with its user.
    if plan.traces:
        spans = signals.spans
        assert len(spans) == count
        for span in spans:
            tid = format(span.context.trace_id, "032x")
            assert (span.attributes or {}).get("enduser.id") == user_of(tid)

    # Sentry: one exception per failing unit, one message per violating unit.
    events = signals.sentry_events
    assert len(events) == len(plan.fails) + len(plan.violates)
    for event in events:
        tid = event["contexts"]["trace"]["trace_id"]
        assert event["tags"]["trace_id"] == tid
        assert (event.get("user") or {}).get("id") == user_of(tid)
        if "exception" in event:
            assert event["exception"]["values"][-1]["value"] == f"unit {by_trace[tid]}"
        else:
            assert event["tags"]["unit"] == str(by_trace[tid])

    # PostHog: one outcome event per unit, one invariant_violated per violating unit.
    messages = signals.posthog_events
    assert len(messages) == count + len(plan.violates)
    for message in messages:
        tid = message["properties"]["trace_id"]
        user = user_of(tid)
        assert message["distinct_id"] == (user if user is not None else tid)
        if message["event"] != "invariant_violated":
            outcome = "failure" if by_trace[tid] in plan.fails else "success"
            assert message["event"] == f"billing_work_{outcome}"

    # Log lines: start, end, and the violation's, each with the unit's trace id and user.
    lines = signals.logs
    assert len(lines) == 2 * count + len(plan.violates)
    per_trace = Counter(line["trace_id"] for line in lines)
    for line in lines:
        assert line["user_id"] == user_of(line["trace_id"])
    for i, tid in seen.trace_ids.items():
        assert per_trace[tid] == 2 + (i in plan.violates)

    # Metrics: exact counts.
    failures = len(plan.fails)
    assert signals.metric("billing_operation_total", operation="work", outcome="failure") == (
        failures
    )
    assert signals.metric("billing_operation_total", operation="work", outcome="success") == (
        count - failures
    )
    assert (
        signals.metric("billing_operation_errors_total", operation="work", error_type="TaskFailed")
        == failures
    )
    assert signals.metric("billing_invariant_violation_total", invariant="NO_DOUBLE_CHARGE") == len(
        plan.violates
    )
    signals.assert_correlated()


_SETTINGS = settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@_SETTINGS
@given(plan=plans(TASKS))
def test_asyncio_tasks_keep_their_own_trace_and_user(plan: Plan) -> None:
    """1,000 concurrent tasks interleaving at awaits inside their operations."""
    seen = Seen()
    with capture_signals(traces=plan.traces) as signals:

        @ik.billing_operation("work", user_facing=True)
        async def work(i: int) -> int:
            seen.add(i)
            for _ in range(plan.yields[i]):
                await asyncio.sleep(0)
                assert ik.correlation_id() == seen.trace_ids[i]
            if i in plan.violates:
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"unit": i})
            await asyncio.sleep(0)
            if i in plan.fails:
                raise TaskFailed(f"unit {i}")
            return i

        async def unit(i: int) -> Any:
            with ik.identify(plan.users[i]):
                try:
                    return await work(i)
                except TaskFailed as exc:
                    return exc

        async def main() -> list[Any]:
            return list(await asyncio.gather(*(unit(i) for i in range(TASKS))))

        results = asyncio.run(main())
        for i, result in enumerate(results):
            if i in plan.fails:
                assert isinstance(result, TaskFailed)
                assert str(result) == f"unit {i}"
            else:
                assert result == i
        check(signals, plan, seen)


@_SETTINGS
@given(plan=plans(THREADS * CALLS_PER_THREAD))
def test_threads_keep_their_own_trace_and_user(plan: Plan) -> None:
    """8 threads started together, each running its share of operations back to back."""
    seen = Seen()
    with capture_signals(traces=plan.traces) as signals:

        @ik.billing_operation("work", user_facing=True)
        def work(i: int) -> int:
            seen.add(i)
            if i in plan.violates:
                ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"unit": i})
            if i in plan.fails:
                raise TaskFailed(f"unit {i}")
            return i

        barrier = threading.Barrier(THREADS)
        errors: list[BaseException] = []

        def thread_main(t: int) -> None:
            try:
                barrier.wait(30)
                for i in range(t, THREADS * CALLS_PER_THREAD, THREADS):
                    with ik.identify(plan.users[i]):
                        try:
                            result: Any = work(i)
                        except TaskFailed as exc:
                            result = exc
                    if i in plan.fails:
                        assert isinstance(result, TaskFailed)
                        assert str(result) == f"unit {i}"
                    else:
                        assert result == i
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        check(signals, plan, seen)
