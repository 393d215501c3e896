"""The guide's three Grafana dashboards, as dashboard JSON models."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from invariantkit._catalog import Catalog, CronDecl, Invariant
from invariantkit.alerts import _common as c
from invariantkit.alerts import _rules as r

__all__ = ["GRAFANA_VARIABLES", "SCHEMA_VERSION", "grafana_dashboards", "panel_queries"]

#: Grafana's dashboard JSON schema version the dashboards are written in (Grafana 10.4/11).
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana's built-in interval variables the queries use (a test substitutes them).
GRAFANA_VARIABLES = ("$__rate_interval", "$__range")

HEALTH = "billing-health-overview"
INVARIANTS = "billing-invariant-monitor"
CRONS = "cron-job-health"

#: The guide's panel titles for its three invariants.
BUILTIN_TITLES = {
    "NO_DOUBLE_CHARGE": "Double charge count (should be 0)",
    "CANCELED_NEVER_CHARGED": "Canceled charge attempts (should be 0)",
    "PERIOD_MUST_ADVANCE": "Period advancement failures (should be 0)",
}

RED_AT_ONE = {
    "mode": "absolute",
    "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
}


@dataclass(frozen=True)
class Doc:
    """The guide's four fields every panel must carry."""

    shows: str
    normal: str
    action: str
    playbook: str
    playbook_url: str

    def markdown(self) -> str:
        return (
            f"**What it shows:** {self.shows}\n\n"
            f"**What normal looks like:** {self.normal}\n\n"
            f"**What to do:** {self.action}\n\n"
            f"**Playbook:** [{self.playbook}]({self.playbook_url})"
        )

    def links(self) -> list[dict[str, Any]]:
        """The panel's link to its playbook (Grafana's panel ``links``)."""
        return [_link(f"Playbook: {self.playbook}", self.playbook_url)]


def _link(title: str, url: str) -> dict[str, Any]:
    """A Grafana link (dashboard or panel ``links``) to a playbook, opened in a new tab."""
    return {
        "title": title,
        "type": "link",
        "url": url,
        "targetBlank": True,
        "asDropdown": False,
        "icon": "doc",
        "includeVars": False,
        "keepTime": False,
        "tags": [],
        "tooltip": "Playbook",
    }


class _Layout:
    """Places panels left to right, top to bottom, on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[dict[str, Any]] = []

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = self.next_id
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def newline(self) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def row(self, title: str) -> None:
        self.newline()
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.newline()


def _target(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": dict(DATASOURCE),
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }


def _panel(
    kind: str, title: str, doc: Doc, targets: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": doc.markdown(),
        "datasource": dict(DATASOURCE),
        "targets": targets,
        "links": doc.links(),
    }
    panel.update(extra)
    return panel


def _stat(
    title: str,
    doc: Doc,
    expr: str,
    *,
    unit: str = "short",
    thresholds: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    legend: str = "",
    decimals: int | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds
        or {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
        "mappings": mappings or [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return _panel(
        "stat",
        title,
        doc,
        [_target(expr, legend, instant=True)],
        fieldConfig={"defaults": defaults, "overrides": []},
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
            "showPercentChange": False,
            "wideLayout": True,
        },
    )


def _timeseries(
    title: str,
    doc: Doc,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    bars: bool = False,
    stacked: bool = False,
    threshold: float | None = None,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 80 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        "thresholdsStyle": {"mode": "line" if threshold is not None else "off"},
    }
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    return _panel(
        "timeseries",
        title,
        doc,
        targets,
        fieldConfig={
            "defaults": {
                "unit": unit,
                "color": {"mode": "palette-classic"},
                "custom": custom,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        options={
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def _header(meta: dict[str, str], links: list[tuple[str, str]]) -> dict[str, Any]:
    lines = [
        (
            f"**Owner:** {meta['owner']} · **Purpose:** {meta['purpose']} · "
            f"**Updated:** {meta['updated']}"
        ),
        "",
        (
            "Every panel's description (the ⓘ next to its title) says what it shows, what normal "
            "looks like, what to do, and links its playbook. Generated by invariantkit from the "
            "declarations: regenerate rather than edit."
        ),
    ]
    if links:
        lines += ["", "**Playbooks:** " + " · ".join(f"[{t}]({u})" for t, u in links)]
    return {
        "type": "text",
        "title": "About this dashboard",
        "description": "Owner, purpose, last update and playbooks of this dashboard.",
        "options": {"mode": "markdown", "content": "\n".join(lines)},
    }


def _dashboard(  # noqa: PLR0917 - private, one call per dashboard
    uid: str,
    title: str,
    meta: dict[str, str],
    layout: _Layout,
    links: list[tuple[str, str]],
    annotations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    owner_tag = meta["owner"].lstrip("@")
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": (f"{meta['purpose']}. Owner: {meta['owner']}. Updated: {meta['updated']}."),
        "tags": ["billing", "invariantkit", f"owner:{owner_tag}", f"updated:{meta['updated']}"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "weekStart": "",
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    # Grafana's default Prometheus data source until the user picks one.
                    "current": {"selected": False, "text": "default", "value": "default"},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "skipUrlSync": False,
                }
            ]
        },
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                *(annotations or []),
            ]
        },
        "links": [_link(t, u) for t, u in links],
        "panels": layout.panels,
    }


class _Builder:
    def __init__(self, catalog: Catalog, links: c.Links, meta: dict[str, dict[str, str]]) -> None:
        self.catalog = catalog
        self.links = links
        self.meta = meta

    def playbook(self, filename: str, declared: str | None = None) -> str:
        return self.links.runbook(declared, filename)

    # -- Billing Health Overview ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        spike_pb = self.playbook(c.PLAYBOOK_RENEWAL_SPIKE)
        cancel_pb = self.playbook(c.PLAYBOOK_CANCELLATION_SPIKE)
        ops_pb = self.playbook(c.PLAYBOOK_INDEX)
        events = c.SUBSCRIPTION_EVENTS
        ok = c.selector(events, [("event", "=", c.EVENT_RENEWAL_SUCCESS)])
        failed = c.selector(events, [("event", "=", c.EVENT_RENEWAL_FAILED)])
        canceled = c.selector(events, [("event", "=", c.EVENT_CANCELED)])
        renewals = c.selector(
            events,
            [("event", "=~", c.promql_regex([c.EVENT_RENEWAL_SUCCESS, c.EVENT_RENEWAL_FAILED]))],
        )
        layout = _Layout()
        links = [("Renewal failure spike", spike_pb), ("Cancellation spike", cancel_pb)]
        layout.add(_header(self.meta[HEALTH], links), 24, 4)
        success = f"sum(increase({ok}[$__range]))"
        layout.add(
            _stat(
                "Renewal success rate",
                Doc(
                    "Share of renewal attempts that charged successfully over the dashboard's "
                    "time range (subscription_renewal_success / all renewal attempts).",
                    "Steady, typically above 95 %; card declines and insufficient funds make up "
                    "the rest.",
                    "If it drops, open 'Failed renewals by reason': one reason growing points at "
                    "the payment provider or a code change; check Sentry for new billing issues.",
                    "Renewal failure spike",
                    spike_pb,
                ),
                f"{success} / ({success} + sum(increase({failed}[$__range])))",
                unit="percentunit",
                decimals=1,
                thresholds={
                    "mode": "absolute",
                    "steps": [
                        {"color": "red", "value": None},
                        {"color": "orange", "value": 0.9},
                        {"color": "green", "value": 0.95},
                    ],
                },
            ),
            6,
            6,
        )
        layout.add(
            _stat(
                "Active subscriptions",
                Doc(
                    "Subscriptions active now (billing_active_subscriptions, read from the "
                    "database at scrape time by billing.register_health).",
                    "Moves slowly: grows with starts, shrinks with cancellations and failed "
                    "renewals.",
                    "A sudden drop: check the cancellation and renewal failure panels and the "
                    "renewal cron; no value: the health collector is not registered or failed.",
                    "Cancellation spike",
                    cancel_pb,
                ),
                f"sum({c.ACTIVE_SUBSCRIPTIONS})",
            ),
            6,
            6,
        )
        layout.add(
            _stat(
                "MRR",
                Doc(
                    "Monthly recurring revenue per currency (billing_mrr is in the currency's "
                    "minor unit; shown divided by 100, right for 2-decimal currencies).",
                    "Moves slowly with starts, cancellations and price changes.",
                    "A drop without matching cancellations: check failed renewals and the "
                    "renewal cron; no value: billing.register_health(mrr=...) is not set up.",
                    "Renewal failure spike",
                    spike_pb,
                ),
                f"sum by (currency) ({c.MRR}) / 100",
                legend="{{currency}}",
                decimals=2,
            ),
            6,
            6,
        )
        layout.add(
            _stat(
                "Cancellations (24h)",
                Doc(
                    "Subscriptions canceled in the last 24 hours.",
                    "Close to the daily average; the CancellationSpike alert fires above twice "
                    "the 7-day daily average.",
                    "If it spikes: PostHog subscription_canceled (reason, periodsCompleted) "
                    "says who and why.",
                    "Cancellation spike",
                    cancel_pb,
                ),
                f"sum(increase({canceled}[24h]))",
            ),
            6,
            6,
        )
        layout.add(
            _timeseries(
                "Renewals per hour",
                Doc(
                    "Successful and failed renewal attempts per hour.",
                    "A burst when the renewal cron runs, mostly successes.",
                    "Failures rising relative to successes: see 'Failed renewals by reason'.",
                    "Renewal failure spike",
                    spike_pb,
                ),
                [_target(f"sum by (event) (increase({renewals}[1h]))", "{{event}}")],
                bars=True,
            ),
            12,
            8,
        )
        layout.add(
            _timeseries(
                "Failed renewals by reason",
                Doc(
                    "Failed renewals per hour by bounded reason (billing_renewal_failures_total; "
                    "unknown reasons are counted as 'other').",
                    "A few card_declined / insufficient_funds per run.",
                    "One reason growing (provider_unavailable, processing_error): check the "
                    "payment provider's status and Sentry 'Payment Provider Errors'.",
                    "Renewal failure spike",
                    spike_pb,
                ),
                [_target(f"sum by (reason) (increase({c.RENEWAL_FAILURES}[1h]))", "{{reason}}")],
                bars=True,
                stacked=True,
            ),
            12,
            8,
        )
        op_total = c.OPERATIONS
        layout.add(
            _timeseries(
                "Billing operation failure ratio",
                Doc(
                    "Share of each billing operation's calls that raised.",
                    "Close to 0; short bumps when a provider hiccups.",
                    "A sustained rise: open 'Errors by type' and the Sentry issues of that "
                    "operation (tag operation).",
                    "Playbooks",
                    ops_pb,
                ),
                [
                    _target(
                        f'sum by (operation) (rate({op_total}{{outcome="failure"}}[$__rate_interval]))'
                        f" / sum by (operation) (rate({op_total}[$__rate_interval]))",
                        "{{operation}}",
                    )
                ],
                unit="percentunit",
            ),
            8,
            8,
        )
        layout.add(
            _timeseries(
                "Errors by type",
                Doc(
                    "Failed billing operations by operation and exception class.",
                    "Empty or a trickle of known provider errors.",
                    "A new error_type: a regression, find it in Sentry (same trace id in logs).",
                    "Playbooks",
                    ops_pb,
                ),
                [
                    _target(
                        f"sum by (operation, error_type) (increase({c.OPERATION_ERRORS}[$__rate_interval]))",
                        "{{operation}} {{error_type}}",
                    )
                ],
                bars=True,
                stacked=True,
            ),
            8,
            8,
        )
        layout.add(
            _timeseries(
                "Billing operation latency p99",
                Doc(
                    "99th percentile duration of each billing operation.",
                    "Stable; provider calls dominate.",
                    "A step up: the payment provider or the database is slow; check traces of "
                    "the slow operation.",
                    "Playbooks",
                    ops_pb,
                ),
                [
                    _target(
                        "histogram_quantile(0.99, sum by (le, operation) "
                        f"(rate({c.OPERATION_DURATION}_bucket[$__rate_interval])))",
                        "{{operation}}",
                    )
                ],
                unit="s",
            ),
            8,
            8,
        )
        return _dashboard(
            "ik-billing-health", "Billing Health Overview", self.meta[HEALTH], layout, links
        )

    # -- Billing Invariant Monitor --------------------------------------------------------------

    def invariants(self) -> dict[str, Any]:
        from invariantkit.alerts._checks import dashboard_panels

        invs = c.invariants(self.catalog)
        layout = _Layout()
        links = [
            (inv.name, self.playbook(c.invariant_playbook(inv), inv.runbook_url)) for inv in invs
        ]
        links.append(("Idempotent retries", self.playbook(c.PLAYBOOK_RETRIES)))
        layout.add(_header(self.meta[INVARIANTS], links), 24, 4)
        for inv in invs:
            layout.add(self.invariant_stat(inv), 6, 5)
        layout.newline()
        for panel, w, h in dashboard_panels(self.catalog, self.playbook):  # at-rest checks
            layout.add(panel, w, h)
        layout.newline()
        real = c.selector(c.VIOLATIONS, [("test", "!=", "true")])
        index = self.playbook(c.PLAYBOOK_INDEX)
        layout.add(
            _timeseries(
                "Invariant violations",
                Doc(
                    "Violations per invariant over time (test-mode signals excluded).",
                    "Flat at 0: every invariant is a guarantee that should never break.",
                    "Any bar is an incident: follow the playbook of that invariant; ids are in "
                    "Sentry (tag invariant), not in metric labels.",
                    "Playbooks",
                    index,
                ),
                [
                    _target(
                        f"sum by (invariant) {r.counted(real, '$__rate_interval')}",
                        "{{invariant}}",
                    )
                ],
                bars=True,
                threshold=1,
            ),
            12,
            8,
        )
        layout.add(
            _timeseries(
                "Idempotent retry rate",
                Doc(
                    "Idempotent writes that hit their unique constraint, per second "
                    "(expected retries, not errors).",
                    "Near 0, small bursts when a cron retries; ExcessiveIdempotentRetries fires "
                    f"above {r.RETRY_RATE_THRESHOLD}/s for 5 minutes.",
                    "A storm: check whether a cron runs too often or a client retries in a loop.",
                    "Idempotent retries",
                    self.playbook(c.PLAYBOOK_RETRIES),
                ),
                [
                    _target(
                        f"sum by (operation) (rate({c.RETRIES}[$__rate_interval]))", "{{operation}}"
                    )
                ],
                unit="ops",
                threshold=r.RETRY_RATE_THRESHOLD,
            ),
            12,
            8,
        )
        cons = c.constraints(self.catalog)
        con_pb = self.playbook(c.constraint_playbook(cons[0])) if cons else index
        layout.add(
            _stat(
                "Database constraints present",
                Doc(
                    "Whether each declared constraint exists (pg_constraint_exists, set by "
                    "verify_constraints).",
                    "PRESENT for every constraint.",
                    "MISSING: restore the constraint immediately, it is what prevents double "
                    "charges; no value: verify_constraints is not running.",
                    "Constraint missing",
                    con_pb,
                ),
                f"min by (constraint) ({c.CONSTRAINT_EXISTS})",
                legend="{{constraint}}",
                thresholds={
                    "mode": "absolute",
                    "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
                },
                mappings=[
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "MISSING", "color": "red", "index": 0},
                            "1": {"text": "PRESENT", "color": "green", "index": 1},
                        },
                    }
                ],
            ),
            8,
            6,
        )
        sinks_pb = self.playbook(c.PLAYBOOK_SINKS)
        layout.add(
            _timeseries(
                "invariantkit sink errors and drops",
                Doc(
                    "Signals invariantkit could not deliver, per sink: sink exceptions and "
                    "drops (full queues, failed deliveries).",
                    "Empty.",
                    "Any value means some violations or errors did not reach that backend: "
                    "check its health and queue sizes (invariantkit verify).",
                    "invariantkit sinks",
                    sinks_pb,
                ),
                [
                    _target(
                        f"sum by (sink) (increase({c.SINK_ERRORS}[$__rate_interval]))",
                        "errors {{sink}}",
                    ),
                    _target(
                        f"sum by (sink) (increase({c.SINK_DROPPED}[$__rate_interval]))",
                        "dropped {{sink}}",
                        "B",
                    ),
                ],
                bars=True,
            ),
            8,
            6,
        )
        test = c.selector(c.VIOLATIONS, [("test", "=", "true")])
        layout.add(
            _stat(
                "Alert test runs",
                Doc(
                    "Test-mode violations (ALERT_TEST_MODE / fire-test-alert) in the time range.",
                    "A number after each periodic alert test; 0 otherwise.",
                    "After a test, check that the test receiver got InvariantTestAlert and "
                    "that nobody was paged.",
                    "Test alert",
                    self.playbook(c.PLAYBOOK_TEST),
                ),
                f"sum {r.counted(test, '$__range')} or vector(0)",
            ),
            8,
            6,
        )
        annotation = {
            "name": "Invariant violations",
            "datasource": dict(DATASOURCE),
            "enable": True,
            "hide": False,
            "iconColor": "red",
            # The query in ``target`` (Grafana 10+); the formats are the Prometheus data
            # source's own annotation fields.
            "target": {
                "refId": "Anno",
                "expr": f"sum by (invariant) {r.counted(real, '1m')} > 0",
                "interval": "1m",
            },
            "titleFormat": "{{invariant}} violated",
            "textFormat": "Open the Sentry search for invariant:{{invariant}}",
            "useValueForTime": False,
        }
        return _dashboard(
            "ik-billing-invariants",
            "Billing Invariant Monitor",
            self.meta[INVARIANTS],
            layout,
            links,
            [annotation],
        )

    def invariant_stat(self, inv: Invariant) -> dict[str, Any]:
        sel = c.selector(c.VIOLATIONS, [("invariant", "=", inv.name), ("test", "!=", "true")])
        alert = f"{c.camel(inv.name)}Violated"
        return _stat(
            BUILTIN_TITLES.get(inv.name, f"{inv.name} violations (should be 0)"),
            Doc(
                f"Violations of {inv.name} ({inv.summary}) in the time range.",
                "0. Always.",
                f"Any value is an incident (alert {alert}, severity {inv.severity}, team "
                f"{inv.team}): follow the playbook; the affected ids are in the [Sentry events "
                f"tagged invariant:{inv.name}]({self.links.sentry_search('invariant:' + inv.name)}).",
                inv.name,
                self.playbook(c.invariant_playbook(inv), inv.runbook_url),
            ),
            f"sum {r.counted(sel, '$__range')}",
            thresholds=RED_AT_ONE,
        )

    # -- Cron Job Health ------------------------------------------------------------------------

    def crons(self) -> dict[str, Any]:
        decls = c.crons(self.catalog)
        layout = _Layout()
        links = [(d.name, self.playbook(c.cron_playbook(d), d.runbook_url)) for d in decls]
        layout.add(_header(self.meta[CRONS], links), 24, 4)
        if not decls:
            layout.add(
                {
                    "type": "text",
                    "title": "No cron jobs declared",
                    "description": "Declare jobs with ik.monitor_cron(...) and regenerate.",
                    "options": {
                        "mode": "markdown",
                        "content": "No cron job was declared when this dashboard was generated.",
                    },
                },
                24,
                3,
            )
        for decl in decls:
            self.cron_row(layout, decl)
        return _dashboard("ik-cron-health", "Cron Job Health", self.meta[CRONS], layout, links)

    def cron_row(self, layout: _Layout, decl: CronDecl) -> None:
        name = decl.name
        pb = self.playbook(c.cron_playbook(decl), decl.runbook_url)
        after = c.cron_missing_after(decl)
        layout.row(f"{name} (every {c.human(decl.every)}, team {decl.team})")
        layout.add(
            _stat(
                "Last run",
                Doc(
                    f"Time since the last run of {name} ended "
                    f"({c.cron_metric(decl, 'last_run_timestamp')}).",
                    f"Under {c.human(decl.every)} (the schedule).",
                    f"Over {c.human(after)} the {c.camel(name)}CronMissing alert fires: check the "
                    "scheduler and the job's logs; no value: the job never reported (Pushgateway "
                    "or textfile not configured?).",
                    f"Cron {name}",
                    pb,
                ),
                f"time() - max({c.cron_metric(decl, 'last_run_timestamp')})",
                unit="s",
                thresholds={
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "orange", "value": float(decl.every)},
                        {"color": "red", "value": after},
                    ],
                },
            ),
            6,
            6,
        )
        layout.add(
            _stat(
                "Status",
                Doc(
                    f"Whether the last run of {name} succeeded "
                    f"({c.cron_metric(decl, 'last_status')}: 1 ok, 0 failed).",
                    "OK.",
                    "FAILED: the exception is in Sentry (Crons check-in error); follow the "
                    "playbook.",
                    f"Cron {name}",
                    pb,
                ),
                f"min({c.cron_metric(decl, 'last_status')})",
                thresholds={
                    "mode": "absolute",
                    "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
                },
                mappings=[
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "FAILED", "color": "red", "index": 0},
                            "1": {"text": "OK", "color": "green", "index": 1},
                        },
                    }
                ],
            ),
            6,
            6,
        )
        layout.add(
            _timeseries(
                "Run duration",
                Doc(
                    f"How long each run of {name} took "
                    f"({c.cron_metric(decl, 'duration_seconds')}).",
                    f"Stable, under max_runtime ({c.human(decl.max_runtime)}, the red line).",
                    "Growing: more work per run or a slow dependency; above the line the "
                    f"{c.camel(name)}CronSlow alert fires.",
                    f"Cron {name}",
                    pb,
                ),
                [_target(f"max({c.cron_metric(decl, 'duration_seconds')})", "duration")],
                unit="s",
                threshold=float(decl.max_runtime),
            ),
            6,
            6,
        )
        layout.add(
            _timeseries(
                "Processed per run",
                Doc(
                    f"Items (subscriptions) the last run of {name} processed "
                    f"({c.cron_metric(decl, 'processed')}).",
                    "Roughly the number of items due per run; follows the business.",
                    "0 while work is due, or a sudden drop: the job's selection query or its "
                    "input changed.",
                    f"Cron {name}",
                    pb,
                ),
                [_target(f"max({c.cron_metric(decl, 'processed')})", "processed")],
            ),
            6,
            6,
        )


def _meta(owner: str, purpose: str, updated: str) -> dict[str, str]:
    return {"owner": owner, "purpose": purpose, "updated": updated}


def grafana_dashboards(
    catalog: Catalog | None = None,
    *,
    owner: str = "@billing-team",
    cron_owner: str | None = None,
    updated: str | dt.date | None = None,
    runbook_base_url: str | None = None,
    sentry_url: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The guide's three dashboards as Grafana dashboard JSON models, by file stem:
    ``billing-health-overview`` (renewal success rate, failed renewals by reason, active
    subscriptions, MRR, cancellations, billing operations), ``billing-invariant-monitor`` (one
    "should be 0" panel per invariant, violations over time, idempotent retry rate, database
    constraints, invariantkit's own delivery, alert test runs) and ``cron-job-health`` (last
    run, status, duration and items processed per cron).

    Each dashboard carries the guide's metadata (owner, purpose, updated) in fields Grafana
    keeps: its ``description``, its ``tags`` (``owner:...``, ``updated:...``), its ``links``
    (the playbooks) and a header panel; every panel's ``description`` says what it shows, what
    normal looks like, what to do, and links its playbook, which is also the panel's ``links``
    entry. Panels and the annotation that count violations include a process's first
    violation even when it happened before Prometheus's first scrape (as the alert rules do).
    Queries use the ``${datasource}`` variable (a Prometheus data source, Grafana's default
    until one is picked) and Grafana's ``$__rate_interval`` and ``$__range``.

    Args:
        catalog: the declarations; default the process-wide catalog.
        owner: owner of the two billing dashboards (the guide's ``@billing-team``).
        cron_owner: owner of Cron Job Health; default ``@<team>-team`` when every cron has
            the same team, else ``@platform-team``.
        updated: the date shown as "updated" (default today).
        runbook_base_url: where the generated playbooks are published (default ``playbooks/``).
        sentry_url: the Sentry issues page the invariant panels link to.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit.alerts import grafana_dashboards
        >>> boards = grafana_dashboards(ik.Catalog(), updated="2024-01-15")
        >>> [t for t in boards["billing-health-overview"]["tags"] if t.startswith("owner:")]
        ['owner:billing-team']
    """
    cat = c.catalog_or_global(catalog)
    links = c.Links.make(runbook_base_url, sentry_url)
    day = updated if isinstance(updated, str) else (updated or dt.date.today()).isoformat()
    for field_name, value in (("owner", owner), ("updated", day)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"grafana_dashboards: {field_name}={value!r} must be a non-empty str")
    if cron_owner is None:
        cron_teams = {d.team for d in cat.crons.values()}
        cron_owner = f"@{cron_teams.pop()}-team" if len(cron_teams) == 1 else "@platform-team"
    meta = {
        HEALTH: _meta(
            owner,
            "Monitor subscription billing health: renewals, failures by reason, active "
            "subscriptions, MRR and billing operations",
            day,
        ),
        INVARIANTS: _meta(
            owner,
            "Monitor the billing invariants (all should stay at 0), idempotent retries, "
            "database constraints and the delivery of invariantkit's own signals",
            day,
        ),
        CRONS: _meta(
            cron_owner,
            "Monitor every declared cron job: last run, status, duration and items processed",
            day,
        ),
    }
    builder = _Builder(cat, links, meta)
    return {HEALTH: builder.health(), INVARIANTS: builder.invariants(), CRONS: builder.crons()}


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL query of ``dashboard`` as ``(where, expr)``: panel targets and annotations."""
    out: list[tuple[str, str]] = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = (annotation.get("target") or {}).get("expr")
        if expr:
            out.append((f"annotation {annotation['name']}", expr))
    return out
