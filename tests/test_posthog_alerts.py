"""The guide's three PostHog alerts as insight + alert payloads, watching the events the
lifecycle helpers really send."""

from __future__ import annotations

import json
from typing import Any

import pytest

from invariantkit._lifecycle import (
    renewal_failed,
    renewal_succeeded,
    subscription_canceled,
    subscription_started,
)
from invariantkit.alerts import posthog_alerts
from invariantkit.testing import capture_signals


def by_name(**kwargs: Any) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in posthog_alerts(**kwargs)}


def watched_events(item: dict[str, Any]) -> list[str]:
    return [node["event"] for node in item["insight"]["query"]["source"]["series"]]


class TestPayloads:
    """Insight bodies (POST /api/projects/{id}/insights/) and alert bodies
    (POST /api/projects/{id}/alerts/)."""

    def test_the_guides_three_alerts(self) -> None:
        """Subscription Start Drop, Renewal Failure Spike, Cancellation Spike."""
        items = posthog_alerts(subscribed_users=[1, 2])
        assert [i["name"] for i in items] == [
            "Subscription Start Drop",
            "Renewal Failure Spike",
            "Cancellation Spike",
        ]
        for item in items:
            insight, alert = item["insight"], item["alert"]
            assert insight["query"]["kind"] == "InsightVizNode"
            assert insight["name"]
            assert alert["insight"] is None  # set to the created insight's id
            assert alert["subscribed_users"] == [1, 2]
            assert alert["enabled"] is True
            assert alert["threshold"]["configuration"]["type"] == "percentage"
            assert json.loads(json.dumps(item)) == item

    def test_subscription_start_drop(self) -> None:
        """Funnel subscribe page -> subscription_started; conversion down > 20% week over week."""
        item = by_name()["Subscription Start Drop"]
        source = item["insight"]["query"]["source"]
        assert source["kind"] == "FunnelsQuery"
        visit, complete = source["series"]
        assert visit["event"] == "$pageview"
        assert visit["properties"] == [
            {"key": "$pathname", "value": "/subscribe", "operator": "icontains", "type": "event"}
        ]
        assert complete["event"] == "subscription_started"
        assert source["funnelsFilter"]["funnelVizType"] == "trends"
        alert = item["alert"]
        assert alert["condition"] == {"type": "relative_decrease"}
        assert alert["threshold"]["configuration"]["bounds"] == {"upper": 0.2}
        assert alert["calculation_interval"] == "weekly"
        assert alert["config"]["type"] == "FunnelsAlertConfig"

    @pytest.mark.parametrize(
        ("name", "event"),
        [
            ("Renewal Failure Spike", "subscription_renewal_failed"),
            ("Cancellation Spike", "subscription_canceled"),
        ],
    )
    def test_spikes(self, name: str, event: str) -> None:
        """A daily trend of the event; alert when it more than doubles."""
        item = by_name()[name]
        source = item["insight"]["query"]["source"]
        assert source["kind"] == "TrendsQuery"
        assert watched_events(item) == [event]
        assert source["interval"] == "day"
        alert = item["alert"]
        assert alert["condition"] == {"type": "relative_increase"}
        assert alert["threshold"]["configuration"]["bounds"] == {"upper": 1.0}
        assert alert["calculation_interval"] == "daily"
        assert alert["config"] == {
            "type": "TrendsAlertConfig",
            "series_index": 0,
            "check_ongoing_interval": False,
        }

    def test_parameters(self) -> None:
        """Subscribe path and thresholds are configurable."""
        items = by_name(subscribe_path="/pricing", funnel_drop=0.3, spike_increase=2.0)
        start = items["Subscription Start Drop"]
        assert (
            start["insight"]["query"]["source"]["series"][0]["properties"][0]["value"] == "/pricing"
        )
        assert start["alert"]["threshold"]["configuration"]["bounds"] == {"upper": 0.3}
        assert items["Cancellation Spike"]["alert"]["threshold"]["configuration"]["bounds"] == {
            "upper": 2.0
        }

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"subscribed_users": ["me@example.com"]}, TypeError, "subscribed_users"),
            ({"subscribe_path": "subscribe"}, ValueError, "subscribe_path"),
            ({"funnel_drop": 0}, ValueError, "funnel_drop"),
            ({"spike_increase": -1}, ValueError, "spike_increase"),
        ],
    )
    def test_bad_parameters_fail_loudly(
        self, kwargs: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        """Values PostHog would reject are refused here, naming the parameter."""
        with pytest.raises(error, match=message):
            posthog_alerts(**kwargs)


def test_alerts_watch_the_events_the_lifecycle_helpers_send() -> None:
    """Every event an alert watches (other than $pageview) is one the real PostHog client
    built from the lifecycle helpers."""
    with capture_signals() as signals:
        subscription_started("sub_1", tier="horoscope-plus", amount=5.0)
        renewal_succeeded("sub_1", period_number=2)
        renewal_failed("sub_1", reason="insufficient_funds")
        subscription_canceled("sub_1", reason="user_requested", periods_completed=3)
        sent = {message["event"] for message in signals.posthog_events}
    watched = {e for item in posthog_alerts() for e in watched_events(item)} - {"$pageview"}
    assert watched == {
        "subscription_started",
        "subscription_renewal_failed",
        "subscription_canceled",
    }
    assert watched <= sent
