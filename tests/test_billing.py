"""``invariantkit.billing``: the guide's three guarantees and the helpers that check them."""

from __future__ import annotations

import datetime as dt
import enum
import pickle
from collections.abc import Iterator
from decimal import Decimal

import pytest

import invariantkit as ik
from invariantkit import billing
from invariantkit.testing import Signals, capture_signals

UTC = dt.timezone.utc
NOW = dt.datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
VIOLATIONS = "billing_invariant_violation_total"


@pytest.fixture
def signals() -> Iterator[Signals]:
    with capture_signals() as captured:
        yield captured


class TestDeclarations:
    """The three guarantees, as the guide names them."""

    @pytest.mark.parametrize(
        ("inv", "name", "type_", "level"),
        [
            (billing.NO_DOUBLE_CHARGE, "NO_DOUBLE_CHARGE", "double_charge", "fatal"),
            (
                billing.CANCELED_NEVER_CHARGED,
                "CANCELED_NEVER_CHARGED",
                "canceled_charge_attempt",
                "fatal",
            ),
            (billing.PERIOD_MUST_ADVANCE, "PERIOD_MUST_ADVANCE", "period_not_advanced", "error"),
        ],
    )
    def test_guarantees(self, inv: ik.Invariant, name: str, type_: str, level: str) -> None:
        """Names, metric types and Sentry levels match the guide; billing owns them."""
        assert (inv.name, inv.type, inv.level, inv.team) == (name, type_, level, "billing")
        assert ik.get_catalog().invariants[name] is inv

    def test_counters_exist_at_zero(self, signals: Signals) -> None:
        """All three counters are exposed at zero before any violation."""
        for inv in (
            billing.NO_DOUBLE_CHARGE,
            billing.CANCELED_NEVER_CHARGED,
            billing.PERIOD_MUST_ADVANCE,
        ):
            samples = [
                s
                for f in signals.registry.collect()  # type: ignore[union-attr]
                for s in f.samples
                if s.name == VIOLATIONS and s.labels["invariant"] == inv.name
            ]
            assert [(s.labels["type"], s.value) for s in samples] == [(inv.type, 0.0)]


class TestCheckNoDoubleCharge:
    """Guarantee #2: at most one successful charge per subscription per day."""

    @pytest.mark.parametrize("count", [0, 1, Decimal(1), 1.0, True])
    def test_holds(self, signals: Signals, count: int) -> None:
        """Zero or one charge: True and nothing reported."""
        assert billing.check_no_double_charge("sub_1", count) is True
        signals.assert_no_violations()

    def test_violation(self, signals: Signals) -> None:
        """Two charges: NO_DOUBLE_CHARGE with the guide's tags and the charge events in extra."""
        events = [{"id": "evt_1"}, {"id": "evt_2"}]
        assert billing.check_no_double_charge("sub_1", 2, charge_events=events) is False
        violation = signals.assert_violation(
            "NO_DOUBLE_CHARGE", count=1, subscription_id="sub_1", charges_count="2"
        )
        assert violation.extra == {"charge_events": events}
        [event] = signals.sentry_events
        assert event["level"] == "fatal"
        assert event["tags"]["charges_count"] == "2"
        assert event["extra"]["charge_events"] == events
        assert signals.metric(VIOLATIONS, type="double_charge") == 1

    def test_without_events_there_is_no_extra(self, signals: Signals) -> None:
        """``charge_events`` is optional."""
        billing.check_no_double_charge("sub_1", Decimal(3))
        [violation] = signals.violations
        assert violation.attributes["charges_count"] == "3"
        assert dict(violation.extra) == {}

    @pytest.mark.parametrize("bad", [None, "2", 1.5, Decimal("2.5"), object()])
    def test_a_count_that_is_not_whole_is_reported_never_raised(self, bad: object) -> None:
        """Runtime data that cannot be counted: reported (it cannot be told that the guarantee
        holds) with the reason, never an exception in the charge path."""
        with capture_signals() as signals:
            assert billing.check_no_double_charge("sub_1", bad) is False  # type: ignore[arg-type]
            [violation] = signals.violations
        assert violation.name == "NO_DOUBLE_CHARGE"
        assert (
            "charges_today must be a whole number"
            in violation.extra["invariantkit.condition_error"]
        )

    def test_enforce_mode(self) -> None:
        """In enforce mode a double charge raises InvariantViolation."""
        with capture_signals(mode="enforce"), pytest.raises(ik.InvariantViolation) as info:
            billing.check_no_double_charge("sub_1", 2)
        assert info.value.tags["subscription_id"] == "sub_1"


class Status(enum.Enum):
    ACTIVE = "active"
    CANCELED = "CANCELED"


class IntStatus(enum.Enum):
    ACTIVE = 1
    CANCELLED = 2


class TestGuardChargeable:
    """Guarantee #1: a canceled subscription never reaches the charge function."""

    @pytest.mark.parametrize(
        "status",
        [
            "active",
            "trialing",
            "past_due",
            "unpaid",
            "ACTIVE",
            None,
            Status.ACTIVE,
            IntStatus.ACTIVE,
        ],
    )
    def test_chargeable(self, signals: Signals, status: object) -> None:
        """Anything but canceled passes silently."""
        assert billing.guard_chargeable("sub_1", status) is None
        signals.assert_no_violations()

    @pytest.mark.parametrize(
        ("status", "text"),
        [
            ("canceled", "canceled"),
            ("CANCELED", "CANCELED"),
            ("cancelled", "cancelled"),
            (" Canceled ", " Canceled "),
            (Status.CANCELED, "CANCELED"),
            (IntStatus.CANCELLED, "CANCELLED"),
        ],
    )
    def test_canceled_is_reported_then_refused(
        self, signals: Signals, status: object, text: str
    ) -> None:
        """Reported as CANCELED_NEVER_CHARGED (tags subscription_id and status), then
        SubscriptionNotChargeableError carries the id, the status and the trace id."""
        with pytest.raises(billing.SubscriptionNotChargeableError) as info:
            billing.guard_chargeable("sub_1", status)
        violation = signals.assert_violation(
            "CANCELED_NEVER_CHARGED", count=1, subscription_id="sub_1", status=text
        )
        exc = info.value
        assert exc.subscription_id == "sub_1"
        assert exc.status is status
        assert exc.trace_id == violation.trace_id
        assert exc.invariant is billing.CANCELED_NEVER_CHARGED
        assert exc.tags == {"subscription_id": "sub_1", "status": text}
        [event] = signals.sentry_events
        assert (event["message"], event["level"]) == ("CANCELED_NEVER_CHARGED", "fatal")
        assert event["tags"]["status"] == text
        assert signals.metric(VIOLATIONS, type="canceled_charge_attempt") == 1

    def test_error_is_an_invariant_violation(self) -> None:
        """``except ik.InvariantViolation`` catches the refusal too; its message says why."""
        with capture_signals(), pytest.raises(ik.InvariantViolation) as info:
            billing.guard_chargeable("sub_7", "canceled")
        assert "subscription sub_7 is not chargeable: status canceled" in str(info.value)

    def test_enforce_mode_raises_the_same_error(self) -> None:
        """Enforce mode reports once and raises the same SubscriptionNotChargeableError."""
        with capture_signals(mode="enforce") as signals:
            with pytest.raises(billing.SubscriptionNotChargeableError) as info:
                billing.guard_chargeable("sub_1", "canceled")
            [violation] = signals.violations
            assert info.value.trace_id == violation.trace_id

    def test_inside_the_charge_operation(self, signals: Signals) -> None:
        """The charge operation fails with the refusal, in the violation's trace."""

        @ik.billing_operation("charge")
        def charge(subscription_id: str, status: str) -> str:
            billing.guard_chargeable(subscription_id, status)
            return "charged"

        assert charge("sub_1", "active") == "charged"
        with pytest.raises(billing.SubscriptionNotChargeableError):
            charge("sub_2", "canceled")
        assert (
            signals.metric(
                "billing_operation_errors_total",
                operation="charge",
                error_type="SubscriptionNotChargeableError",
            )
            == 1
        )
        signals.assert_correlated()

    def test_pickles(self, signals: Signals) -> None:
        """The error survives pickling with its fields."""
        with pytest.raises(billing.SubscriptionNotChargeableError) as info:
            billing.guard_chargeable("sub_1", "canceled")
        copy = pickle.loads(pickle.dumps(info.value))
        assert (copy.subscription_id, copy.status, copy.trace_id) == (
            "sub_1",
            "canceled",
            info.value.trace_id,
        )
        assert str(copy) == str(info.value)

    def test_unprintable_ids_do_not_break_the_guard(self, signals: Signals) -> None:
        """An id whose str raises still produces the report and the refusal."""

        class Weird:
            def __str__(self) -> str:
                raise RuntimeError("no str")

            __repr__ = __str__

        with pytest.raises(billing.SubscriptionNotChargeableError):
            billing.guard_chargeable(Weird(), "canceled")
        signals.assert_violation("CANCELED_NEVER_CHARGED", count=1)


class TestCheckPeriodAdvanced:
    """Guarantee #3: after a successful charge, the period end is in the future."""

    def test_future_holds(self, signals: Signals) -> None:
        """A period end after now: True, nothing reported."""
        assert billing.check_period_advanced("sub_1", NOW + dt.timedelta(days=30), now=NOW) is True
        signals.assert_no_violations()

    @pytest.mark.parametrize(
        "delta", [dt.timedelta(0), -dt.timedelta(seconds=1), -dt.timedelta(days=30)]
    )
    def test_not_in_the_future(self, signals: Signals, delta: dt.timedelta) -> None:
        """Equal to now or earlier: PERIOD_MUST_ADVANCE, level error, the ends in extra."""
        end = NOW + delta
        expected = NOW + dt.timedelta(days=30)
        assert (
            billing.check_period_advanced("sub_1", end, now=NOW, expected_period_end=expected)
            is False
        )
        violation = signals.assert_violation(
            "PERIOD_MUST_ADVANCE", count=1, subscription_id="sub_1"
        )
        assert violation.extra == {
            "actual_period_end": end.isoformat(),
            "expected_period_end": expected.isoformat(),
            "now": NOW.isoformat(),
        }
        [event] = signals.sentry_events
        assert (event["message"], event["level"]) == ("PERIOD_MUST_ADVANCE", "error")
        assert event["extra"]["actual_period_end"] == end.isoformat()

    def test_default_now_is_the_current_time(self, signals: Signals) -> None:
        """Without ``now``, the current UTC time is used."""
        current = dt.datetime.now(UTC)
        assert billing.check_period_advanced("sub_1", current + dt.timedelta(hours=1)) is True
        assert billing.check_period_advanced("sub_1", current - dt.timedelta(seconds=1)) is False

    def test_offsets_are_compared_as_instants(self, signals: Signals) -> None:
        """13:00+02:00 is 11:00 UTC: before 12:00 UTC, so a violation."""
        end = dt.datetime(2024, 1, 15, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        assert billing.check_period_advanced("sub_1", end, now=NOW) is False

    def test_naive_datetimes_are_utc(self, signals: Signals) -> None:
        """A naive period end (or now) is read as UTC."""
        assert (
            billing.check_period_advanced("sub_1", dt.datetime(2024, 1, 15, 12, 30), now=NOW)
            is True
        )
        assert (
            billing.check_period_advanced("sub_1", dt.datetime(2024, 1, 15, 11, 30), now=NOW)
            is False
        )
        naive_now = dt.datetime(2024, 1, 15, 12, 0)
        assert (
            billing.check_period_advanced("sub_1", NOW + dt.timedelta(minutes=1), now=naive_now)
            is True
        )

    @pytest.mark.parametrize(
        ("text", "holds"),
        [
            ("2024-02-15T12:00:00Z", True),
            ("2024-02-15T12:00:00+00:00", True),
            ("2024-01-15T11:59:59Z", False),
            ("2024-01-15 12:00:01", True),
        ],
    )
    def test_iso_strings(self, signals: Signals, text: str, holds: bool) -> None:
        """ISO 8601 strings (as JSON APIs return them) are accepted, ``Z`` included."""
        assert billing.check_period_advanced("sub_1", text, now=NOW) is holds

    @pytest.mark.parametrize(
        ("period_end", "now", "reason"),
        [
            ("next month", NOW, "period_end='next month' is not an ISO 8601 date-time"),
            (None, NOW, "period_end must be a datetime or an ISO 8601 string, not NoneType"),
            (1705320000, NOW, "period_end must be a datetime or an ISO 8601 string, not int"),
            (NOW, dt.date(2024, 1, 15), "now must be a datetime"),
        ],
    )
    def test_unreadable_values_are_reported_never_raised(
        self, period_end: object, now: object, reason: str
    ) -> None:
        """A period end missing or unreadable after a charge did not advance: reported with the
        reason, naming the argument; never an exception in the charge path."""
        with capture_signals() as signals:
            assert billing.check_period_advanced("sub_1", period_end, now=now) is False  # type: ignore[arg-type]
            [violation] = signals.violations
        assert violation.name == "PERIOD_MUST_ADVANCE"
        assert reason in violation.extra["invariantkit.condition_error"]

    def test_enforce_mode(self) -> None:
        """Enforce mode raises InvariantViolation after reporting."""
        with capture_signals(mode="enforce"), pytest.raises(ik.InvariantViolation):
            billing.check_period_advanced("sub_1", NOW, now=NOW)
