"""Alerts, dashboards, Sentry and PostHog alert rules, and playbooks, generated from the catalog.

Declaring an invariant, a cron or a constraint is enough to be paged for it: every generator
reads the process-wide catalog (or the :class:`~invariantkit.Catalog` you pass) and returns a
string or plain data, ready to write to a file or post to an API.

Example:
    >>> import invariantkit as ik
    >>> from invariantkit import alerts, billing
    >>> catalog = ik.Catalog()
    >>> _ = catalog.add(billing.NO_DOUBLE_CHARGE)
    >>> "NoDoubleChargeViolated" in alerts.prometheus_rules(catalog)
    True
    >>> sorted(alerts.grafana_dashboards(catalog, updated="2024-01-15"))
    ['billing-health-overview', 'billing-invariant-monitor', 'cron-job-health']
"""

from invariantkit.alerts._alertmanager import alertmanager_config
from invariantkit.alerts._grafana import grafana_dashboards
from invariantkit.alerts._playbooks import playbooks
from invariantkit.alerts._posthog import posthog_alerts
from invariantkit.alerts._rule_tests import prometheus_rule_tests
from invariantkit.alerts._rules import prometheus_rules
from invariantkit.alerts._sentry import sentry_alert_rules

__all__ = [
    "alertmanager_config",
    "grafana_dashboards",
    "playbooks",
    "posthog_alerts",
    "prometheus_rule_tests",
    "prometheus_rules",
    "sentry_alert_rules",
]
