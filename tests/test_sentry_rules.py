"""The guide's three Sentry alert rules: the issue-alert API's shape, and filters that match
(or skip) the events the real Sentry SDK builds for invariantkit's signals."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

import invariantkit as ik
from invariantkit import billing
from invariantkit._invariant import fire_test_alert
from invariantkit.alerts import sentry_alert_rules
from invariantkit.alerts._sentry import (
    EVENT_ATTRIBUTE,
    EVENT_FREQUENCY,
    FIRST_SEEN,
    PAGERDUTY,
    REGRESSION,
    SLACK,
    TAGGED_EVENT,
)
from invariantkit.testing import capture_signals

#: Class ids Sentry documents for issue alert rules (conditions, filters, actions).
DOCUMENTED = {
    FIRST_SEEN,
    REGRESSION,
    EVENT_FREQUENCY,
    TAGGED_EVENT,
    EVENT_ATTRIBUTE,
    SLACK,
    PAGERDUTY,
}


class BasePayError(Exception):
    """The guide's payment provider error."""


def by_name(**kwargs: Any) -> dict[str, dict[str, Any]]:
    return {rule["name"]: rule for rule in sentry_alert_rules(**kwargs)}


def passes(rule: dict[str, Any], event: dict[str, Any]) -> bool:
    """Sentry's evaluation of a rule's filters on one event (filterMatch all), for the filter
    kinds the rules use: TaggedEventFilter (eq, ne, is) and EventAttributeFilter on
    exception.type (eq)."""
    tags = {str(k).lower(): str(v).lower() for k, v in (event.get("tags") or {}).items()}
    results = []
    for f in rule["filters"]:
        if f["id"] == TAGGED_EVENT:
            key, match = f["key"].lower(), f["match"]
            if match == "is":
                results.append(key in tags)
            elif match == "eq":
                results.append(tags.get(key) == f["value"].lower())
            elif match == "ne":
                results.append(tags.get(key) != f["value"].lower())
            else:  # pragma: no cover - the rules use only these
                raise AssertionError(f"unexpected match {match}")
        elif f["id"] == EVENT_ATTRIBUTE:
            assert (f["attribute"], f["match"]) == ("exception.type", "eq")
            types = [v.get("type") for v in (event.get("exception") or {}).get("values", [])]
            results.append(f["value"] in types)
        else:  # pragma: no cover
            raise AssertionError(f"unexpected filter {f['id']}")
    assert rule["filterMatch"] == "all"
    return all(results)


class TestShape:
    """Bodies for POST /api/0/projects/{org}/{project}/rules/."""

    def test_the_guides_three_rules(self) -> None:
        """Names in the guide's order, every required field, documented class ids only."""
        rules = sentry_alert_rules(slack_workspace=123)
        assert [r["name"] for r in rules] == [
            "New Issue in Billing Code",
            "Invariant Violation",
            "Payment Provider Errors",
        ]
        for rule in rules:
            assert rule["actionMatch"] in ("all", "any", "none")
            assert rule["filterMatch"] in ("all", "any", "none")
            assert 5 <= rule["frequency"] <= 43200
            for part in ("conditions", "filters", "actions"):
                assert rule[part], (rule["name"], part)
                assert {item["id"] for item in rule[part]} <= DOCUMENTED
            assert "environment" not in rule
            assert json.loads(json.dumps(rule)) == rule

    def test_new_issue_in_billing_code(self) -> None:
        """Filter domain:billing, trigger new issue, notify #billing-alerts."""
        rule = by_name(slack_workspace=123)["New Issue in Billing Code"]
        assert rule["conditions"] == [{"id": FIRST_SEEN}]
        assert rule["filters"] == [
            {"id": TAGGED_EVENT, "key": "domain", "match": "eq", "value": "billing"}
        ]
        [slack] = rule["actions"]
        assert (slack["id"], slack["workspace"], slack["channel"]) == (
            SLACK,
            123,
            "#billing-alerts",
        )

    def test_invariant_violation_pages_on_call_and_notifies(self) -> None:
        """Filter tags.invariant:*, any event, page on-call + notify #billing-alerts."""
        rule = by_name(slack_workspace=123)["Invariant Violation"]
        assert rule["actionMatch"] == "any"
        assert {c["id"] for c in rule["conditions"]} == {FIRST_SEEN, REGRESSION, EVENT_FREQUENCY}
        frequency = next(c for c in rule["conditions"] if c["id"] == EVENT_FREQUENCY)
        assert (frequency["value"], frequency["interval"]) == (0, "1m")
        assert {"id": TAGGED_EVENT, "key": "invariant", "match": "is"} in rule["filters"]
        assert [a["id"] for a in rule["actions"]] == [PAGERDUTY, SLACK]

    def test_payment_provider_errors(self) -> None:
        """error.type:BasePayError, more than 5 events in 5 minutes."""
        rule = by_name(slack_workspace=123)["Payment Provider Errors"]
        assert rule["conditions"] == [
            {"id": EVENT_FREQUENCY, "value": 5, "comparisonType": "count", "interval": "5m"}
        ]
        assert rule["filters"][0]["value"] == "BasePayError"

    def test_parameters(self) -> None:
        """Channel, workspace, on-call action, environment, error type and frequency."""
        opsgenie = {
            "id": "sentry.integrations.opsgenie.notify_action.OpsgenieNotifyTeamAction",
            "account": 7,
            "team": "9",
            "priority": "P1",
        }
        rules = by_name(
            channel="#payments-oncall",
            slack_workspace="WS1",
            on_call=opsgenie,
            environment="production",
            payment_error_type="StripeError",
            payment_error_count=10,
            frequency=30,
        )
        violation = rules["Invariant Violation"]
        assert violation["actions"][0] == opsgenie
        assert violation["actions"][1]["channel"] == "#payments-oncall"
        assert all(
            r["environment"] == "production" and r["frequency"] == 30 for r in rules.values()
        )
        payment = rules["Payment Provider Errors"]
        assert payment["filters"][0]["value"] == "StripeError"
        assert payment["conditions"][0]["value"] == 10

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"frequency": 1}, "frequency"),
            ({"channel": ""}, "channel"),
            ({"payment_error_count": 0}, "payment_error_count"),
            ({"on_call": {"account": 1}}, "on_call"),
        ],
    )
    def test_bad_parameters_fail_loudly(self, kwargs: dict[str, Any], message: str) -> None:
        """Values Sentry would reject are refused here, naming the parameter."""
        with pytest.raises(ValueError, match=message):
            sentry_alert_rules(**kwargs)


class TestAgainstRealEvents:
    """The filters select the events the Sentry SDK builds for invariantkit's signals."""

    def test_violations_page_test_alerts_do_not(self) -> None:
        """A violation passes Invariant Violation's filters; a test alert does not."""
        rule = by_name()["Invariant Violation"]
        with capture_signals() as signals:
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "sub_1"})
            fire_test_alert(billing.NO_DOUBLE_CHARGE)
            events = signals.sentry_events
        violation = [e for e in events if (e.get("tags") or {}).get("test") != "true"]
        test = [e for e in events if (e.get("tags") or {}).get("test") == "true"]
        assert len(violation) == 1
        assert len(test) == 1
        assert passes(rule, violation[0])
        assert not passes(rule, test[0])

    def test_billing_errors_and_payment_errors(self) -> None:
        """A failing billing operation is billing code; a BasePayError is a payment error;
        neither is an invariant violation; another domain is not billing code."""
        rules = by_name()

        @ik.billing_operation("charge")
        def charge() -> None:
            raise BasePayError("card network timeout")

        @ik.operation("export", domain="reports")
        def export() -> None:
            raise ValueError("bad row")

        with capture_signals() as signals:
            with contextlib.suppress(BasePayError):
                charge()
            with contextlib.suppress(ValueError):
                export()
            events = signals.sentry_events
        pay, other = events
        assert passes(rules["New Issue in Billing Code"], pay)
        assert passes(rules["Payment Provider Errors"], pay)
        assert not passes(rules["Invariant Violation"], pay)
        assert not passes(rules["New Issue in Billing Code"], other)
        assert not passes(rules["Payment Provider Errors"], other)
