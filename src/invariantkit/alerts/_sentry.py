"""The guide's three Sentry issue alert rules, as payloads for Sentry's issue-alert API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["sentry_alert_rules"]

FIRST_SEEN = "sentry.rules.conditions.first_seen_event.FirstSeenEventCondition"
REGRESSION = "sentry.rules.conditions.regression_event.RegressionEventCondition"
EVENT_FREQUENCY = "sentry.rules.conditions.event_frequency.EventFrequencyCondition"
TAGGED_EVENT = "sentry.rules.filters.tagged_event.TaggedEventFilter"
EVENT_ATTRIBUTE = "sentry.rules.filters.event_attribute.EventAttributeFilter"
SLACK = "sentry.integrations.slack.notify_action.SlackNotifyServiceAction"
PAGERDUTY = "sentry.integrations.pagerduty.notify_action.PagerDutyNotifyServiceAction"

#: Placeholders for the ids only your Sentry organization knows (integration and service ids).
SLACK_WORKSPACE_PLACEHOLDER = "<slack-integration-id>"
PAGERDUTY_ACCOUNT_PLACEHOLDER = "<pagerduty-integration-id>"
PAGERDUTY_SERVICE_PLACEHOLDER = "<pagerduty-service-id>"

#: Sentry's bounds for ``frequency`` (minutes between two notifications for one issue).
FREQUENCY_RANGE = (5, 43200)


def _slack(workspace: int | str, channel: str, tags: str) -> dict[str, Any]:
    return {"id": SLACK, "workspace": workspace, "channel": channel, "tags": tags}


def sentry_alert_rules(
    *,
    channel: str = "#billing-alerts",
    slack_workspace: int | str = SLACK_WORKSPACE_PLACEHOLDER,
    on_call: Mapping[str, Any] | None = None,
    domain: str = "billing",
    payment_error_type: str = "BasePayError",
    payment_error_count: int = 5,
    environment: str | None = None,
    frequency: int = 5,
) -> list[dict[str, Any]]:
    """The guide's three Sentry alert rules, each a body for ``POST
    /api/0/projects/{organization}/{project}/rules/`` (Sentry's issue-alert API).

    1. **New Issue in Billing Code**: a new issue with tag ``domain:billing`` notifies
       ``channel``.
    2. **Invariant Violation**: any event with an ``invariant`` tag (``tags.invariant:*``)
       pages on-call and notifies ``channel``; events tagged ``test:true`` (alert test mode)
       are left out so a test never pages.
    3. **Payment Provider Errors**: more than ``payment_error_count`` events of exception type
       ``payment_error_type`` in 5 minutes notify ``channel``.

    Args:
        channel: the Slack channel to notify.
        slack_workspace: the id of your Slack integration in Sentry (Settings > Integrations).
        on_call: the paging action; default PagerDuty with placeholder ids. Pass e.g.
            ``{"id": "sentry.integrations.opsgenie.notify_action.OpsgenieNotifyTeamAction",
            "account": ..., "team": ..., "priority": "P1"}``.
        domain: the ``domain`` tag value of billing events (invariantkit sets it).
        payment_error_type: the payment provider's exception class name.
        payment_error_count: how many of them in 5 minutes is too many.
        environment: restrict the rules to one environment (``None``: all).
        frequency: minutes before the same issue notifies again (Sentry allows 5 to 43200).

    Example:
        >>> from invariantkit.alerts import sentry_alert_rules
        >>> [rule["name"] for rule in sentry_alert_rules(slack_workspace=123)]
        ['New Issue in Billing Code', 'Invariant Violation', 'Payment Provider Errors']
    """
    for field_name, value in (
        ("channel", channel),
        ("domain", domain),
        ("payment_error_type", payment_error_type),
    ):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"sentry_alert_rules: {field_name}={value!r} must be a non-empty str")
    if not isinstance(frequency, int) or not (
        FREQUENCY_RANGE[0] <= frequency <= FREQUENCY_RANGE[1]
    ):
        raise ValueError(
            f"sentry_alert_rules: frequency={frequency!r} must be minutes between "
            f"{FREQUENCY_RANGE[0]} and {FREQUENCY_RANGE[1]}"
        )
    if not isinstance(payment_error_count, int) or payment_error_count < 1:
        raise ValueError(
            f"sentry_alert_rules: payment_error_count={payment_error_count!r} must be >= 1"
        )
    page = (
        dict(on_call)
        if on_call is not None
        else {
            "id": PAGERDUTY,
            "account": PAGERDUTY_ACCOUNT_PLACEHOLDER,
            "service": PAGERDUTY_SERVICE_PLACEHOLDER,
            "severity": "critical",
        }
    )
    if "id" not in page:
        raise ValueError("sentry_alert_rules: on_call must have the action's 'id'")
    env: dict[str, Any] = {"environment": environment} if environment is not None else {}
    return [
        {
            "name": "New Issue in Billing Code",
            "actionMatch": "all",
            "filterMatch": "all",
            "frequency": frequency,
            "conditions": [{"id": FIRST_SEEN}],
            "filters": [{"id": TAGGED_EVENT, "key": "domain", "match": "eq", "value": domain}],
            "actions": [_slack(slack_workspace, channel, "operation,trace_id,environment")],
            **env,
        },
        {
            "name": "Invariant Violation",
            # "Any event": a new issue, a regression, or one more event (more than 0 in 1m).
            "actionMatch": "any",
            "filterMatch": "all",
            "frequency": frequency,
            "conditions": [
                {"id": FIRST_SEEN},
                {"id": REGRESSION},
                {"id": EVENT_FREQUENCY, "value": 0, "comparisonType": "count", "interval": "1m"},
            ],
            "filters": [
                {"id": TAGGED_EVENT, "key": "invariant", "match": "is"},
                {"id": TAGGED_EVENT, "key": "test", "match": "ne", "value": "true"},
            ],
            "actions": [page, _slack(slack_workspace, channel, "invariant,trace_id,environment")],
            **env,
        },
        {
            "name": "Payment Provider Errors",
            "actionMatch": "all",
            "filterMatch": "all",
            "frequency": frequency,
            "conditions": [
                {
                    "id": EVENT_FREQUENCY,
                    "value": payment_error_count,
                    "comparisonType": "count",
                    "interval": "5m",
                }
            ],
            "filters": [
                {
                    "id": EVENT_ATTRIBUTE,
                    "attribute": "exception.type",
                    "match": "eq",
                    "value": payment_error_type,
                }
            ],
            "actions": [_slack(slack_workspace, channel, "operation,trace_id,environment")],
            **env,
        },
    ]
