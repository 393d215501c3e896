"""An example Alertmanager routing config: one receiver per team, a test route that never pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from invariantkit._catalog import Catalog
from invariantkit.alerts import _common as c

__all__ = ["alertmanager_config"]

TEST_RECEIVER = "invariantkit-test"
UNROUTED_RECEIVER = "invariantkit-unrouted"

ReceiverSpec = str | Mapping[str, Any] | None


def team_receiver(team: str) -> str:
    """The receiver name of ``team``."""
    return f"team-{team}"


def teams(catalog: Catalog, default_team: str, platform_team: str) -> list[str]:
    """Every team an invariantkit alert can carry, sorted."""
    found = {default_team, platform_team}
    found.update(inv.team for inv in catalog.invariants.values())
    found.update(c.check_team(f"cron {d.name!r}", d.team) for d in catalog.crons.values())
    found.update(d.team for d in catalog.constraints.values())
    found.update(d.team for d in catalog.idempotent.values())
    return sorted(found)


def _receiver(name: str, spec: ReceiverSpec, owner: str) -> dict[str, Any]:
    if spec is None:
        return {"name": name}
    if isinstance(spec, str):
        if not spec.startswith(("http://", "https://")):
            raise ValueError(f"{owner}={spec!r} must be a webhook URL or a receiver mapping")
        return {"name": name, "webhook_configs": [{"url": spec, "send_resolved": True}]}
    if isinstance(spec, Mapping):
        body = {k: v for k, v in spec.items() if k != "name"}
        return {"name": name, **body}
    raise TypeError(f"{owner} must be a webhook URL, a receiver mapping or None")


def alertmanager_config(
    catalog: Catalog | None = None,
    *,
    receivers: Mapping[str, ReceiverSpec] | None = None,
    test_receiver: ReceiverSpec = None,
    unrouted_receiver: ReceiverSpec = None,
    group_wait: str = "10s",
    group_interval: str = "1m",
    repeat_interval: str = "4h",
    default_team: str = c.DEFAULT_TEAM,
    platform_team: str = c.PLATFORM_TEAM,
) -> dict[str, Any]:
    """An example Alertmanager config routing the generated alerts by their ``team`` label.

    Alerts with ``severity="test"`` (alert test mode) go to the test receiver first and stop
    there, so a test never pages a team; every other alert goes to ``team-<team>``; an alert
    whose team has no route reaches ``invariantkit-unrouted``. A receiver is a webhook URL, a
    receiver body (``{"slack_configs": [...]}``, ``{"pagerduty_configs": [...]}``), or ``None``
    for a receiver with no integration yet (valid, but it notifies nobody: fill it in).

    Args:
        catalog: the declarations (their teams); default the process-wide catalog.
        receivers: team -> receiver. Teams of the catalog missing here get an empty receiver.
        test_receiver: where ``severity="test"`` alerts go.
        unrouted_receiver: where alerts with an unknown team go.
        group_wait: Alertmanager's wait before the first notification of a group.
        group_interval: wait before notifying about new alerts in a group.
        repeat_interval: wait before re-sending a still-firing alert.
        default_team: always routed (the team of the spike and undeclared test alerts).
        platform_team: always routed (the team of the sink health alerts).

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit.alerts import alertmanager_config
        >>> config = alertmanager_config(
        ...     ik.Catalog(), receivers={"billing": "http://127.0.0.1:9000/billing"})
        >>> [r["receiver"] for r in config["route"]["routes"]]
        ['invariantkit-test', 'team-billing', 'team-platform']
    """
    cat = c.catalog_or_global(catalog)
    c.check_team("default_team", default_team)
    c.check_team("platform_team", platform_team)
    given = dict(receivers or {})
    for team in given:
        c.check_team("receivers", team)
    for field_name, value in (
        ("group_wait", group_wait),
        ("group_interval", group_interval),
        ("repeat_interval", repeat_interval),
    ):
        if not isinstance(value, str) or not value or not value[0].isdigit():
            raise ValueError(f"{field_name}={value!r} must be a duration like '30s'")
    all_teams = sorted(set(teams(cat, default_team, platform_team)) | set(given))
    routes: list[dict[str, Any]] = [
        {
            "receiver": TEST_RECEIVER,
            "matchers": [f'severity="{c.TEST_SEVERITY}"'],
            "continue": False,
        }
    ]
    routes += [
        {"receiver": team_receiver(team), "matchers": [f'team="{team}"']} for team in all_teams
    ]
    receiver_list = [
        _receiver(UNROUTED_RECEIVER, unrouted_receiver, "unrouted_receiver"),
        _receiver(TEST_RECEIVER, test_receiver, "test_receiver"),
    ]
    receiver_list += [
        _receiver(team_receiver(team), given.get(team), f"receivers[{team!r}]")
        for team in all_teams
    ]
    return {
        "route": {
            "receiver": UNROUTED_RECEIVER,
            "group_by": ["alertname", "team"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
            "routes": routes,
        },
        "receivers": receiver_list,
    }
