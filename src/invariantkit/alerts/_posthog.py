"""The guide's three PostHog alerts, as insight + alert payloads for PostHog's API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from invariantkit.alerts import _common as c

__all__ = ["posthog_alerts"]


def _events_node(event: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "EventsNode", "event": event, "name": name, "math": "total", **extra}


def _trends(event: str, label: str) -> dict[str, Any]:
    """A daily count of ``event`` over the last 30 days (what the spike alerts watch)."""
    return {
        "kind": "InsightVizNode",
        "source": {
            "kind": "TrendsQuery",
            "series": [_events_node(event, label)],
            "interval": "day",
            "dateRange": {"date_from": "-30d"},
            "trendsFilter": {"display": "ActionsLineGraph"},
        },
    }


def _alert(  # noqa: PLR0917 - private, called three times with every part
    users: list[int], name: str, condition: str, bound: float, interval: str, config: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "insight": None,
        "subscribed_users": users,
        "enabled": True,
        "calculation_interval": interval,
        "condition": {"type": condition},
        "threshold": {"configuration": {"type": "percentage", "bounds": {"upper": bound}}},
        "config": config,
    }


def posthog_alerts(
    *,
    subscribed_users: Sequence[int] = (),
    subscribe_path: str = "/subscribe",
    funnel_drop: float = 0.2,
    spike_increase: float = 1.0,
) -> list[dict[str, Any]]:
    """The guide's PostHog alerts, each ``{"name", "insight", "alert"}``.

    ``insight`` is the body for ``POST /api/projects/{project_id}/insights/``; ``alert`` the body
    for ``POST /api/projects/{project_id}/alerts/`` once ``alert["insight"]`` is set to the id
    of the insight created (the ``invariantkit posthog-alerts`` command does both).

    1. **Subscription Start Drop**: funnel "visit the subscribe page" (``$pageview`` on
       ``subscribe_path``) -> ``subscription_started``, conversion over weekly intervals; alert
       when it decreases by more than ``funnel_drop`` (20 %) week over week.
    2. **Renewal Failure Spike**: daily count of ``subscription_renewal_failed``; alert when it
       increases by more than ``spike_increase`` (100 %: more than twice) over the previous day.
    3. **Cancellation Spike**: the same for ``subscription_canceled``, over 24 h.

    PostHog's relative alerts compare an interval with the one before it, not with a multi-day
    average: the Prometheus rules ``RenewalFailureSpike`` and ``CancellationSpike`` compare
    the last 24 h with the 7-day daily average (and page teams without PostHog alerts).

    Args:
        subscribed_users: PostHog user ids notified (the API needs at least one).
        subscribe_path: the subscribe page's path (the funnel's first step).
        funnel_drop: the relative week-over-week conversion drop that alerts (0.2 = 20 %).
        spike_increase: the relative day-over-day increase that alerts (1.0 = doubling).

    Example:
        >>> from invariantkit.alerts import posthog_alerts
        >>> [a["alert"]["condition"]["type"] for a in posthog_alerts(subscribed_users=[1])]
        ['relative_decrease', 'relative_increase', 'relative_increase']
    """
    users = list(subscribed_users)
    if not all(isinstance(u, int) and not isinstance(u, bool) for u in users):
        raise TypeError("posthog_alerts: subscribed_users must be PostHog user ids (ints)")
    if not isinstance(subscribe_path, str) or not subscribe_path.startswith("/"):
        raise ValueError(f"posthog_alerts: subscribe_path={subscribe_path!r} must start with /")
    for field_name, value in (("funnel_drop", funnel_drop), ("spike_increase", spike_increase)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"posthog_alerts: {field_name}={value!r} must be a positive ratio")

    trends_config = {
        "type": "TrendsAlertConfig",
        "series_index": 0,
        "check_ongoing_interval": False,
    }
    funnel = {
        "name": "Subscription start funnel",
        "description": (
            "Visit the subscribe page -> complete a subscription, weekly conversion "
            "(invariantkit: the guide's Subscription Start Drop alert)."
        ),
        "tags": ["billing", "invariantkit"],
        "query": {
            "kind": "InsightVizNode",
            "source": {
                "kind": "FunnelsQuery",
                "series": [
                    _events_node(
                        "$pageview",
                        "Visit subscribe page",
                        properties=[
                            {
                                "key": "$pathname",
                                "value": subscribe_path,
                                "operator": "icontains",
                                "type": "event",
                            }
                        ],
                    ),
                    _events_node(c.EVENT_STARTED, "Complete subscription"),
                ],
                "interval": "week",
                "dateRange": {"date_from": "-90d"},
                "funnelsFilter": {
                    "funnelVizType": "trends",
                    "funnelWindowInterval": 1,
                    "funnelWindowIntervalUnit": "day",
                },
            },
        },
    }
    return [
        {
            "name": "Subscription Start Drop",
            "insight": funnel,
            "alert": _alert(
                users,
                f"Subscription Start Drop: conversion down > {funnel_drop:.0%} week over week",
                "relative_decrease",
                float(funnel_drop),
                "weekly",
                {
                    "type": "FunnelsAlertConfig",
                    "metric": "conversion_from_start",
                    "funnel_step": None,
                },
            ),
        },
        {
            "name": "Renewal Failure Spike",
            "insight": {
                "name": "Renewal failures per day",
                "description": "subscription_renewal_failed per day (invariantkit).",
                "tags": ["billing", "invariantkit"],
                "query": _trends(c.EVENT_RENEWAL_FAILED, "Renewal failed"),
            },
            "alert": _alert(
                users,
                f"Renewal Failure Spike: up > {spike_increase:.0%} day over day",
                "relative_increase",
                float(spike_increase),
                "daily",
                trends_config,
            ),
        },
        {
            "name": "Cancellation Spike",
            "insight": {
                "name": "Cancellations per day",
                "description": "subscription_canceled per day (invariantkit).",
                "tags": ["billing", "invariantkit"],
                "query": _trends(c.EVENT_CANCELED, "Canceled"),
            },
            "alert": _alert(
                users,
                f"Cancellation Spike: up > {spike_increase:.0%} in 24h",
                "relative_increase",
                float(spike_increase),
                "daily",
                trends_config,
            ),
        },
    ]
