"""``ik.monitor_cron``: declaration, the guide's four gauges, Sentry Crons check-ins, the span
of a run, and failures that are reported and re-raised unchanged."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import sentry_sdk
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit._cron import Cron, missing_after
from invariantkit.sinks._sentry_crons import checkin_margin_seconds, monitor_config
from invariantkit.testing import Signals, capture_signals

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.receivers import SentryReceiver

GAUGES = ("last_run_timestamp", "last_status", "duration_seconds", "processed")
UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800}


class RenewalFailed(Exception):
    """A job's own exception."""


def _samples(signals: Signals, prefix: str) -> dict[str, float]:
    assert signals.registry is not None
    signals.records  # noqa: B018 - drains the dispatcher
    return {
        s.name: s.value
        for family in signals.registry.collect()
        for s in family.samples
        if s.name.startswith(prefix)
    }


def _gauges(signals: Signals, name: str) -> dict[str, float]:
    return {
        key.removeprefix(f"cron_{name}_"): value
        for key, value in _samples(signals, f"cron_{name}_").items()
    }


def _cron_records(signals: Signals) -> list[ik.Record]:
    return [r for r in signals.records if r.kind == "cron"]


# --- declaration ---------------------------------------------------------------------------------


class TestDeclaration:
    @pytest.mark.parametrize(
        ("every", "max_runtime", "expected"),
        [
            (86400, 300, (86400.0, 300.0)),
            (90.5, 1.5, (90.5, 1.5)),
            (dt.timedelta(days=1), dt.timedelta(minutes=5), (86400.0, 300.0)),
        ],
    )
    def test_declares_the_job_in_seconds(
        self, signals: Signals, every: Any, max_runtime: Any, expected: tuple[float, float]
    ) -> None:
        """Seconds and timedeltas are accepted; the catalog holds the job, in seconds, at once."""
        cron = ik.monitor_cron("subscription_renewal", every=every, max_runtime=max_runtime)
        decl = ik.get_catalog().crons["subscription_renewal"]
        assert decl is cron.decl
        assert (decl.every, decl.max_runtime) == expected
        assert decl.team == "platform"
        assert decl.sentry_slug == "subscription-renewal"

    def test_team_slug_and_runbook_are_kept(self, signals: Signals) -> None:
        """``team``, ``sentry_slug`` and ``runbook_url`` reach the declaration unchanged."""
        cron = ik.monitor_cron(
            "subscription_renewal",
            every=86400,
            max_runtime=300,
            team="billing",
            sentry_slug="renewal-prod",
            runbook_url="https://docs.internal/runbooks/renewal-cron",
        )
        assert cron.decl.team == "billing"
        assert cron.decl.sentry_slug == "renewal-prod"
        assert cron.decl.runbook_url == "https://docs.internal/runbooks/renewal-cron"

    def test_declaration_creates_no_series(self, signals: Signals) -> None:
        """No gauge exists before the first run ends: a 0 timestamp or status would fire the
        guide's Missing and Failed alerts, while an absent series is what ``absent()`` expects."""
        ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300)
        assert _samples(signals, "cron_") == {}

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"name": "Renewal"}, ValueError, "name='Renewal' must be lower_snake"),
            ({"name": "renewal-job"}, ValueError, "lower_snake"),
            ({"name": 3}, TypeError, "name must be a str"),
            ({"every": 0}, ValueError, "every=0 must be a positive"),
            ({"every": -5}, ValueError, "every=-5 must be a positive"),
            ({"every": math.nan}, ValueError, "every=nan must be a positive, finite"),
            ({"every": math.inf}, ValueError, "finite"),
            ({"every": True}, TypeError, "every must be seconds"),
            ({"every": "1d"}, TypeError, "every must be seconds (an int or float) or a datetime"),
            ({"max_runtime": dt.timedelta(0)}, ValueError, "max_runtime=datetime.timedelta(0)"),
            ({"max_runtime": None}, TypeError, "max_runtime must be seconds"),
            ({"team": "Billing Team"}, ValueError, "team='Billing Team' must be a label value"),
            ({"sentry_slug": "Renewal Job"}, ValueError, "sentry_slug='Renewal Job' must be"),
            ({"runbook_url": "runbook"}, ValueError, "runbook_url='runbook'"),
        ],
    )
    def test_bad_arguments_fail_at_declaration(
        self, kwargs: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        """A bad argument raises at once, naming the field and the rule; nothing is declared."""
        args: dict[str, Any] = {"name": "subscription_renewal", "every": 86400, "max_runtime": 300}
        args.update(kwargs)
        name = args.pop("name")
        before = dict(ik.get_catalog().crons)
        with pytest.raises(error) as info:
            ik.monitor_cron(name, **args)
        assert message in str(info.value)
        assert "monitor_cron" in str(info.value)
        assert ik.get_catalog().crons == before

    def test_missing_after_matches_the_guides_25_hours(self) -> None:
        """A daily job is missing after 90000 s, the guide's RenewalCronMissing threshold."""
        cron = ik.monitor_cron("subscription_renewal", every=dt.timedelta(days=1), max_runtime=300)
        assert cron.missing_after == missing_after(cron.decl) == 90000
        assert ik.monitor_cron("minutely", every=60, max_runtime=30).missing_after == 120

    def test_repr_names_the_schedule(self) -> None:
        """The repr shows the job and its bounds in seconds."""
        cron = ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300)
        assert repr(cron) == "<Cron subscription_renewal every=86400s max_runtime=300s>"


# --- Sentry monitor config -----------------------------------------------------------------------


class TestMonitorConfig:
    @pytest.mark.parametrize(
        ("every", "schedule"),
        [
            (86400, {"type": "interval", "value": 1, "unit": "day"}),
            (7 * 86400, {"type": "interval", "value": 1, "unit": "week"}),
            (2 * 86400, {"type": "interval", "value": 2, "unit": "day"}),
            (3600, {"type": "interval", "value": 1, "unit": "hour"}),
            (300, {"type": "interval", "value": 5, "unit": "minute"}),
            (90, {"type": "interval", "value": 2, "unit": "minute"}),
            (10, {"type": "interval", "value": 1, "unit": "minute"}),
        ],
    )
    def test_schedule_uses_the_largest_exact_unit(
        self, every: float, schedule: dict[str, Any]
    ) -> None:
        """Whole days, weeks and hours keep their unit; anything else is minutes, rounded up."""
        assert monitor_config(every, 60)["schedule"] == schedule

    @given(
        every=st.floats(min_value=0.001, max_value=400 * 86400),
        max_runtime=st.floats(min_value=0.001, max_value=60 * 86400),
    )
    def test_config_never_expects_a_run_early_and_stays_in_sentrys_bounds(
        self, every: float, max_runtime: float
    ) -> None:
        """The interval is never shorter than ``every`` (no false "missed") nor more than a
        minute longer; margin and max_runtime are whole minutes within Sentry's limits."""
        config = monitor_config(every, max_runtime)
        schedule = config["schedule"]
        interval = schedule["value"] * UNIT_SECONDS[schedule["unit"]]
        assert every <= interval < max(every, 60) + 60
        assert 1 <= config["checkin_margin"] <= 60
        assert config["checkin_margin"] * 60 >= checkin_margin_seconds(every)
        assert 1 <= config["max_runtime"] <= 28 * 24 * 60
        assert config["max_runtime"] * 60 >= min(max_runtime, 28 * 86400)
        assert all(isinstance(config[k], int) for k in ("checkin_margin", "max_runtime"))


# --- runs ----------------------------------------------------------------------------------------


@pytest.fixture
def renewal(signals: Signals) -> Cron:
    return ik.monitor_cron(
        "subscription_renewal", every=dt.timedelta(days=1), max_runtime=dt.timedelta(minutes=5)
    )


def assert_checkins(
    signals: Signals, status: str, *, duration: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    start, end = signals.sentry_checkins
    assert start["status"] == "in_progress"
    assert end["status"] == status
    for checkin in (start, end):
        assert checkin["monitor_slug"] == "subscription-renewal"
        assert checkin["monitor_config"] == {
            "schedule": {"type": "interval", "value": 1, "unit": "day"},
            "checkin_margin": 60,
            "max_runtime": 5,
        }
    assert start["check_in_id"] == end["check_in_id"]
    assert len(start["check_in_id"]) == 32
    assert start["duration"] is None
    if duration:
        assert end["duration"] > 0
    return start, end


class TestSuccessfulRun:
    def test_context_manager_sets_the_four_gauges(self, signals: Signals, renewal: Cron) -> None:
        """The guide's exact metric names: end time in unix seconds, status 1, duration, count."""
        before = time.time()
        with renewal as run:
            run.processed += 40
            run.processed += 2
        after = time.time()
        gauges = _gauges(signals, "subscription_renewal")
        assert set(gauges) == set(GAUGES)
        assert before <= gauges["last_run_timestamp"] <= after
        assert gauges["last_status"] == 1
        assert 0 < gauges["duration_seconds"] <= after - before
        assert gauges["processed"] == 42

    def test_checkins_in_progress_then_ok(self, signals: Signals, renewal: Cron) -> None:
        """Sentry gets in_progress then ok with one check-in id, the duration and the config."""
        with renewal as run:
            pass
        start, end = assert_checkins(signals, "ok")
        assert start["check_in_id"] == run.check_in_id
        assert end["contexts"]["trace"]["trace_id"] == run.correlation_id
        assert signals.sentry_events == []

    def test_records_carry_check_in_id_and_processed(self, signals: Signals, renewal: Cron) -> None:
        """Two ``cron`` records: in_progress with the check-in id, then ok with duration and
        processed, both with the run's trace id."""
        with renewal as run:
            run.processed = 7
        start, end = _cron_records(signals)
        assert (start.status, end.status) == ("in_progress", "ok")
        assert start.attributes == {"check_in_id": run.check_in_id}
        assert end.attributes == {"check_in_id": run.check_in_id, "processed": 7}
        assert end.duration is not None
        assert end.duration > 0
        assert start.trace_id == end.trace_id == run.correlation_id
        assert end.declaration is renewal.decl

    def test_span_wraps_the_run_and_operations_inside_share_its_trace(
        self, signals: Signals, renewal: Cron
    ) -> None:
        """A ``cron.<name>`` span with status OK; operations inside are its children."""

        @ik.billing_operation("renewal")
        def renew(subscription_id: str) -> str:
            return subscription_id

        with renewal as run:
            renew("sub_1")
            renew("sub_2")
            run.processed += 2
        spans = {s.name: s for s in signals.spans}
        cron_span = spans["cron.subscription_renewal"]
        assert cron_span.status.status_code is StatusCode.UNSET
        assert dict(cron_span.attributes or {})["cron.processed"] == 2
        assert dict(cron_span.attributes or {})["cron.check_in_id"] == run.check_in_id
        op_spans = [s for s in signals.spans if s.name == "billing.renewal"]
        assert len(op_spans) == 2
        for span in op_spans:
            assert span.context.trace_id == cron_span.context.trace_id
            assert span.parent is not None
            assert span.parent.span_id == cron_span.context.span_id

    def test_log_lines_for_both_check_ins(self, signals: Signals, renewal: Cron) -> None:
        """One JSON line per check-in, with the run's trace id and what it processed."""
        with renewal as run:
            run.processed += 3
        lines = [line for line in signals.logs if line.get("event") == "cron.checkin"]
        assert [(line["status"], line["level"]) for line in lines] == [
            ("in_progress", "info"),
            ("ok", "info"),
        ]
        assert {line["trace_id"] for line in lines} == {run.correlation_id}
        assert lines[1]["attributes"]["processed"] == 3

    def test_without_tracing_the_run_binds_one_correlation_id(self) -> None:
        """With no traces sink, everything inside a run shares the run's correlation id."""
        with capture_signals(traces=False) as signals:
            cron = ik.monitor_cron("nightly_export", every=86400, max_runtime=60)
            with cron as run:
                inside = ik.correlation_id()
            assert inside == run.correlation_id
            assert {r.trace_id for r in _cron_records(signals)} == {inside}
            assert ik.correlation_id() != inside

    def test_decorator_plain_function_with_cron_run(self, signals: Signals, renewal: Cron) -> None:
        """The decorated function returns its value; ``cron.run`` reaches the active run."""

        @renewal
        def renew_all(due: list[str]) -> int:
            for _ in due:
                renewal.run.processed += 1
            return len(due)

        assert renew_all.__name__ == "renew_all"
        assert renew_all(["a", "b", "c"]) == 3
        assert _gauges(signals, "subscription_renewal")["processed"] == 3
        assert_checkins(signals, "ok")

    async def test_decorator_async_function(self, signals: Signals, renewal: Cron) -> None:
        """An async job is one run around the awaited body."""

        @renewal
        async def renew_all(due: list[str]) -> int:
            for _ in due:
                await asyncio.sleep(0)
                renewal.run.processed += 1
            return len(due)

        assert asyncio.iscoroutinefunction(renew_all)
        assert await renew_all(["a", "b"]) == 2
        assert _gauges(signals, "subscription_renewal")["processed"] == 2
        assert_checkins(signals, "ok")

    async def test_async_context_manager(self, signals: Signals, renewal: Cron) -> None:
        """``async with cron as run`` works like the sync form."""
        async with renewal as run:
            await asyncio.sleep(0)
            run.processed += 5
        assert _gauges(signals, "subscription_renewal")["processed"] == 5

    async def test_concurrent_async_runs_keep_their_own_run(
        self, signals: Signals, renewal: Cron
    ) -> None:
        """Runs in concurrent tasks each see their own ``cron.run``."""

        @renewal
        async def job(n: int) -> str:
            await asyncio.sleep(0)
            renewal.run.processed += n
            await asyncio.sleep(0)
            return renewal.run.check_in_id

        ids = await asyncio.gather(*(job(n) for n in range(1, 6)))
        assert len(set(ids)) == 5
        ends = [r for r in _cron_records(signals) if r.status == "ok"]
        assert sorted(r.attributes["processed"] for r in ends) == [1, 2, 3, 4, 5]
        assert {r.attributes["check_in_id"] for r in ends} == set(ids)

    def test_second_run_replaces_the_first(self, signals: Signals, renewal: Cron) -> None:
        """Gauges describe the last run: processed and timestamp are overwritten, not summed."""
        with renewal as run:
            run.processed = 10
        first = _gauges(signals, "subscription_renewal")["last_run_timestamp"]
        with renewal as run:
            run.processed = 4
        gauges = _gauges(signals, "subscription_renewal")
        assert gauges["processed"] == 4
        assert gauges["last_run_timestamp"] >= first

    def test_sys_exit_zero_is_a_successful_end(self, signals: Signals, renewal: Cron) -> None:
        """``sys.exit(0)`` inside a job is re-raised and counts as ok."""
        with pytest.raises(SystemExit), renewal:
            sys.exit(0)
        assert _gauges(signals, "subscription_renewal")["last_status"] == 1
        assert_checkins(signals, "ok")


class TestFailingRun:
    def test_failure_sets_status_0_reports_and_reraises_the_same_exception(
        self, signals: Signals, renewal: Cron
    ) -> None:
        """Status 0, an error check-in, the exception in Sentry, and the very same object raised."""
        error = RenewalFailed("Base Pay is down")
        with pytest.raises(RenewalFailed) as info, renewal as run:
            run.processed += 3
            raise error
        assert info.value is error
        gauges = _gauges(signals, "subscription_renewal")
        assert gauges["last_status"] == 0
        assert gauges["processed"] == 3
        assert gauges["last_run_timestamp"] > 0
        _, end = assert_checkins(signals, "error")
        [event] = signals.sentry_events
        [exc_value] = event["exception"]["values"]
        assert exc_value["type"] == "RenewalFailed"
        assert exc_value["value"] == "Base Pay is down"
        assert event["tags"]["cron"] == "subscription_renewal"
        assert event["tags"]["monitor_slug"] == "subscription-renewal"
        assert event["tags"]["trace_id"] == run.correlation_id
        assert event["contexts"]["trace"]["trace_id"] == run.correlation_id
        assert event["contexts"]["monitor"]["check_in_id"] == run.check_in_id
        assert end["contexts"]["trace"]["trace_id"] == run.correlation_id

    def test_failure_keeps_the_traceback(self, signals: Signals, renewal: Cron) -> None:
        """The re-raised exception's traceback still ends in the job's own frame."""

        @renewal
        def job() -> None:
            raise RenewalFailed("boom")

        with pytest.raises(RenewalFailed) as info:
            job()
        assert info.traceback[-1].name == "job"

    def test_failure_marks_span_error_and_logs_at_error(
        self, signals: Signals, renewal: Cron
    ) -> None:
        """The span records the exception with status ERROR; the end log line is at error."""
        with pytest.raises(RenewalFailed), renewal:
            raise RenewalFailed("boom")
        [span] = [s for s in signals.spans if s.name == "cron.subscription_renewal"]
        assert span.status.status_code is StatusCode.ERROR
        assert [e.name for e in span.events] == ["exception"]
        [end] = [
            line
            for line in signals.logs
            if line.get("event") == "cron.checkin" and line["status"] == "error"
        ]
        assert end["level"] == "error"
        assert end["error_type"] == "RenewalFailed"

    async def test_async_failure_is_reraised(self, signals: Signals, renewal: Cron) -> None:
        """An async job's exception is reported and re-raised unchanged."""
        error = RenewalFailed("async boom")

        @renewal
        async def job() -> None:
            await asyncio.sleep(0)
            raise error

        with pytest.raises(RenewalFailed) as info:
            await job()
        assert info.value is error
        assert _gauges(signals, "subscription_renewal")["last_status"] == 0

    @pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(2)])
    def test_interrupts_are_failed_runs_without_a_sentry_issue(
        self, signals: Signals, renewal: Cron, exc: BaseException
    ) -> None:
        """Ctrl-C or a non-zero exit: status 0 and an error check-in, re-raised; no issue."""
        with pytest.raises(type(exc)) as info, renewal:
            raise exc
        assert info.value is exc
        assert _gauges(signals, "subscription_renewal")["last_status"] == 0
        assert_checkins(signals, "error")
        assert signals.sentry_events == []


class TestMisuse:
    def test_run_outside_a_run_is_a_clear_error(self, signals: Signals, renewal: Cron) -> None:
        """``cron.run`` outside a run says where it can be used."""
        with pytest.raises(RuntimeError, match="no run is active here"):
            renewal.run  # noqa: B018

    @pytest.mark.parametrize("kind", ["gen", "async_gen"])
    def test_generator_functions_are_refused_at_decoration(self, renewal: Cron, kind: str) -> None:
        """A generator would end the run when created: refused with the fix in the message."""

        def gen() -> Iterator[int]:
            yield 1

        async def agen() -> Any:
            yield 1

        with pytest.raises(TypeError, match="cannot decorate the generator function"):
            renewal(gen if kind == "gen" else agen)

    def test_non_callable_is_refused(self, renewal: Cron) -> None:
        """Decorating something that is not a function fails at once."""
        with pytest.raises(TypeError, match="decorates a function"):
            renewal(42)  # type: ignore[call-overload]

    def test_processed_not_a_number_is_reported_as_0(
        self, signals: Signals, renewal: Cron, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A non-numeric ``processed`` never breaks the job: 0 and a warning naming the job."""
        with caplog.at_level(logging.WARNING, logger="invariantkit"), renewal as run:
            run.processed = "many"  # type: ignore[assignment]
        assert _gauges(signals, "subscription_renewal")["processed"] == 0
        assert _gauges(signals, "subscription_renewal")["last_status"] == 1
        assert any("run.processed='many'" in r.getMessage() for r in caplog.records)

    def test_a_failing_sink_never_reaches_the_job(self, renewal: Cron) -> None:
        """A sink that raises on every record: the job's result and gauges are unaffected."""

        class Broken:
            name: ClassVar[str] = "broken"
            deferred: ClassVar[bool] = False

            def emit(self, record: ik.Record) -> None:
                raise RuntimeError("sink down")

            def flush(self, timeout: float) -> bool:
                return True

            def shutdown(self, timeout: float) -> bool:
                return True

        with capture_signals(extra_sinks=(Broken(),)) as signals:
            cron = ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300)

            @cron
            def job() -> str:
                return "done"

            assert job() == "done"
            assert _gauges(signals, "subscription_renewal")["last_status"] == 1
            assert signals.metric("invariantkit_sink_errors_total", sink="broken") >= 2


# --- through a real Sentry receiver --------------------------------------------------------------


@pytest.fixture
def sentry_client(sentry_receiver: SentryReceiver) -> Iterator[Any]:
    client = sentry_sdk.Client(dsn=sentry_receiver.dsn, default_integrations=False)
    try:
        yield client
    finally:
        client.close(timeout=2)


def test_checkins_and_the_exception_arrive_at_a_sentry_receiver(
    sentry_receiver: SentryReceiver, sentry_client: Any
) -> None:
    """Over HTTP: two ok check-ins, two error check-ins and the failing run's exception."""
    ik.configure(
        sinks=[ik.sinks.Sentry(sentry_client), ik.sinks.PrometheusMetrics(CollectorRegistry())]
    )
    try:
        cron = ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300)
        with cron as ok_run:
            ok_run.processed += 1
        with pytest.raises(RenewalFailed), cron as failed_run:
            raise RenewalFailed("card processor timeout")
        assert ik.flush(timeout=5)
    finally:
        ik.shutdown(timeout=2)
    check_ins = sentry_receiver.wait_for(4, item_type="check_in")
    by_run: dict[str, list[str]] = {}
    for check_in in check_ins:
        assert check_in["monitor_slug"] == "subscription-renewal"
        assert check_in["monitor_config"]["schedule"] == {
            "type": "interval",
            "value": 1,
            "unit": "day",
        }
        by_run.setdefault(check_in["check_in_id"], []).append(check_in["status"])
    assert by_run == {
        ok_run.check_in_id: ["in_progress", "ok"],
        failed_run.check_in_id: ["in_progress", "error"],
    }
    [event] = sentry_receiver.wait_for(1)
    assert event["exception"]["values"][-1]["type"] == "RenewalFailed"
    assert event["tags"]["cron"] == "subscription_renewal"
    assert event["contexts"]["trace"]["trace_id"] == failed_run.correlation_id
    assert not sentry_receiver.errors


@given(st.floats(min_value=0.001, max_value=400 * 86400))
def test_missing_after_is_the_generated_alerts_threshold(every: float) -> None:
    """The Missing alert and Sentry's margin agree for every interval (one figure, two places)."""
    from invariantkit._catalog import CronDecl
    from invariantkit.alerts._common import cron_missing_after

    decl = CronDecl("job", every, 60.0)
    assert missing_after(decl) == cron_missing_after(decl)


def test_the_failed_runs_exception_is_scrubbed(signals: Signals, renewal: Cron) -> None:
    """A card number in the job's exception message never reaches Sentry (the same scrubbing as
    every other exception), while the job still gets its exception unchanged."""
    error = RenewalFailed("card 4242 4242 4242 4242 declined for jane@example.com")
    with pytest.raises(RenewalFailed) as info, renewal:
        raise error
    assert str(info.value) == "card 4242 4242 4242 4242 declined for jane@example.com"
    [event] = signals.sentry_events
    value = event["exception"]["values"][-1]["value"]
    assert "4242 4242 4242 4242" not in value
    assert "jane@example.com" not in value
    assert "declined" in value


def test_a_failing_runs_exception_message_is_scrubbed_on_its_span() -> None:
    """The cron span's recorded exception and status never carry card numbers or e-mails."""
    cron = ik.monitor_cron("scrubbed_export", every=3600, max_runtime=60)
    with capture_signals() as signals:
        with pytest.raises(ValueError), cron:
            raise ValueError("card 4242 4242 4242 4242 for bob@example.com")
        [span] = [s for s in signals.spans if s.name == "cron.scrubbed_export"]
        texts = [span.status.description or ""] + [
            str(value) for event in span.events for value in (event.attributes or {}).values()
        ]
    assert all("4242 4242" not in t and "bob@example.com" not in t for t in texts), texts
