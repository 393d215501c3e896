"""Prometheus alerting rules generated from the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from invariantkit._catalog import Catalog, Constraint, CronDecl, Invariant
from invariantkit.alerts import _common as c

if TYPE_CHECKING:
    from invariantkit._checks import Check

__all__ = ["AlertRule", "RuleSettings", "build_rules", "prometheus_rules"]

#: Alert names that are not derived from a declaration.
RETRIES_ALERT = "ExcessiveIdempotentRetries"
RENEWAL_SPIKE_ALERT = "RenewalFailureSpike"
CANCELLATION_SPIKE_ALERT = "CancellationSpike"
SINK_ERRORS_ALERT = "InvariantkitSinkErrors"
SINK_DROPPED_ALERT = "InvariantkitSignalsDropped"
TEST_ALERT = "InvariantTestAlert"

#: The guide's retry-storm threshold: more than 10 idempotent retries per second for 5 minutes.
RETRY_RATE_THRESHOLD = 10
#: Spike rules: the last 24 h against the daily average of the 7 days before.
SPIKE_WINDOW = "24h"
SPIKE_BASELINE = "7d"
SPIKE_BASELINE_DAYS = 7
SPIKE_FACTOR = 2
SPIKE_FOR = "15m"

GROUP_INVARIANTS = "billing_invariants"
GROUP_HEALTH = "billing_health"
GROUP_CRONS = "cron_health"
GROUP_CONSTRAINTS = "billing_constraints"
GROUP_SELF = "invariantkit_health"
GROUP_TEST = "invariantkit_test_alerts"


@dataclass(frozen=True)
class RuleSettings:
    """The knobs shared by the rule generator and its test generator."""

    links: c.Links = field(default_factory=c.Links)
    default_team: str = c.DEFAULT_TEAM
    platform_team: str = c.PLATFORM_TEAM
    spike_min_count: int = 3

    @classmethod
    def make(
        cls,
        *,
        runbook_base_url: str | None,
        sentry_url: str | None,
        default_team: str,
        platform_team: str,
        spike_min_count: int,
    ) -> RuleSettings:
        c.check_team("default_team", default_team)
        c.check_team("platform_team", platform_team)
        if (
            not isinstance(spike_min_count, int)
            or isinstance(spike_min_count, bool)
            or spike_min_count < 1
        ):
            raise ValueError(f"spike_min_count={spike_min_count!r} must be a positive int")
        return cls(
            c.Links.make(runbook_base_url, sentry_url), default_team, platform_team, spike_min_count
        )


@dataclass(frozen=True)
class AlertRule:
    """One generated alerting rule, with what the test and dashboard generators need to know.

    ``kind`` says which family it belongs to (``invariant``, ``test``, ``retries``,
    ``renewal_spike``, ``cancellation_spike``, ``cron_missing``, ``cron_failed``, ``cron_slow``,
    ``constraint``, ``sink_errors``, ``sink_dropped``); ``subject`` is the declaration it was
    made from (if any); ``scope`` the names a per-team rule covers (``op`` ``=~`` or ``!~``).
    """

    group: str
    alert: str
    expr: str
    for_: str
    labels: dict[str, str]
    annotations: dict[str, str]
    kind: str
    playbook: str
    subject: Invariant | CronDecl | Constraint | Check | None = None
    scope: tuple[str, tuple[str, ...]] = ("!~", ())

    def to_dict(self) -> dict[str, Any]:
        """The rule as it appears in a Prometheus rule file."""
        return {
            "alert": self.alert,
            "expr": self.expr,
            "for": self.for_,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }


def first_increase(sel: str, by: str, window: str = c.WINDOW) -> str:
    """True when a counter increased within ``window``, including the first increment of a
    series that appeared already above zero (a process that reported before its first scrape,
    or a label child created by its first increment), which ``increase()`` alone never sees."""
    return (
        f"sum by ({by}) (increase({sel}[{window}])) > 0\n"
        f"or\n"
        f"sum by ({by}) ({sel} unless {sel} offset {window}) > 0\n"
    )


def counted(sel: str, window: str) -> str:
    """How much counter ``sel`` grew within ``window``, per series, including the first value of
    a series that appeared within it (the idea of :func:`first_increase`: a process that reported
    before its first scrape shows its first violation). Series older than the window give their
    ``increase()``; series born within it give their whole value (a counter starts at 0)."""
    born = f"({sel} unless {sel} offset {window})"
    return f"((increase({sel}[{window}]) unless {born}) or {born})"


def _scoped(
    metric: str, label: str, op: str, names: tuple[str, ...], *extra: tuple[str, str, str]
) -> str:
    matchers = list(extra)
    if names:
        matchers.append((label, op, c.promql_regex(names)))
    return c.selector(metric, matchers)


def _rule(
    s: RuleSettings,
    *,
    group: str,
    alert: str,
    expr: str,
    severity: str,
    team: str,
    summary: str,
    description: str,
    kind: str,
    playbook: str,
    for_: str = "0m",
    runbook_url: str | None = None,
    sentry_query: str | None = None,
    subject: Invariant | CronDecl | Constraint | Check | None = None,
    scope: tuple[str, tuple[str, ...]] = ("!~", ()),
) -> AlertRule:
    """One rule with the labels and annotations every rule carries: ``severity`` and ``team``;
    ``summary``, ``description`` and ``runbook_url`` (``runbook_url`` if the declaration names
    one, else the generated ``playbook`` the rule also records), and ``sentry_url`` for a
    Sentry search."""
    annotations = {
        "summary": summary,
        "description": description,
        "runbook_url": s.links.runbook(runbook_url, playbook),
    }
    if sentry_query is not None:
        annotations["sentry_url"] = s.links.sentry_search(sentry_query)
    return AlertRule(
        group=group,
        alert=alert,
        expr=expr,
        for_=for_,
        labels={"severity": severity, "team": team},
        annotations=annotations,
        kind=kind,
        playbook=playbook,
        subject=subject,
        scope=scope,
    )


def _invariant_rule(inv: Invariant, s: RuleSettings) -> AlertRule:
    sel = c.selector(c.VIOLATIONS, [("invariant", "=", inv.name), ("test", "!=", "true")])
    what = inv.description or inv.summary
    description = (
        f"{c.template_text(what)} Invariant {c.label_ref('invariant')} (type "
        f"{c.label_ref('type')}) was violated in the last {c.WINDOW}. The affected ids "
        f"(subscription, user, trace) are in the Sentry events tagged "
        f"invariant:{inv.name}, not in metric labels: follow sentry_url."
    )
    playbook = c.invariant_playbook(inv)
    return _rule(
        s,
        group=GROUP_INVARIANTS,
        alert=f"{c.camel(inv.name)}Violated",
        expr=first_increase(sel, "invariant, type"),
        severity=inv.severity,
        team=inv.team,
        summary=c.template_text(inv.summary),
        description=description,
        kind="invariant",
        playbook=playbook,
        runbook_url=inv.runbook_url,
        sentry_query=f"invariant:{inv.name}",
        subject=inv,
    )


def _test_rules(invs: list[Invariant], s: RuleSettings) -> list[AlertRule]:
    rules = []
    for team, op, names in c.team_split(((i.name, i.team) for i in invs), s.default_team):
        sel = _scoped(c.VIOLATIONS, "invariant", op, tuple(names), ("test", "=", "true"))
        rules.append(
            _rule(
                s,
                group=GROUP_TEST,
                alert=TEST_ALERT,
                expr=first_increase(sel, "invariant, type"),
                severity=c.TEST_SEVERITY,
                team=team,
                summary=(
                    f"TEST alert (ignore): {c.label_ref('invariant')} reported in alert test mode"
                ),
                description=(
                    f"A synthetic violation of {c.label_ref('invariant')} labelled "
                    f'test="true" (type {c.label_ref("type")}) went through Prometheus and '
                    'Alertmanager: the alert path works. Route severity="test" to a test '
                    "receiver: it must never page."
                ),
                kind="test",
                playbook=c.PLAYBOOK_TEST,
                sentry_query="test:true",
                scope=(op, tuple(names)),
            )
        )
    return rules


def _retry_rules(catalog: Catalog, s: RuleSettings) -> list[AlertRule]:
    decls = [catalog.idempotent[k] for k in sorted(catalog.idempotent)]
    for d in decls:
        c.check_team(f"idempotent_write {d.name!r}", d.team)
    rules = []
    for team, op, names in c.team_split(((d.name, d.team) for d in decls), s.default_team):
        sel = _scoped(c.RETRIES, "operation", op, tuple(names))
        rules.append(
            _rule(
                s,
                group=GROUP_HEALTH,
                alert=RETRIES_ALERT,
                expr=(f"sum by (operation) (rate({sel}[{c.WINDOW}])) > {RETRY_RATE_THRESHOLD}\n"),
                for_="5m",
                severity="warning",
                team=team,
                summary="High rate of idempotent payment retries",
                description=(
                    f"{c.label_ref('operation')} hit its unique constraint more than "
                    f"{RETRY_RATE_THRESHOLD} times per second for 5 minutes. May indicate "
                    "a cron job running too frequently or a retry storm."
                ),
                kind="retries",
                playbook=c.PLAYBOOK_RETRIES,
                scope=(op, tuple(names)),
            )
        )
    return rules


def spike_expr(sel: str, min_count: int) -> str:
    """The last 24 h above twice the daily average of the 7 days before, and at least
    ``min_count`` (a quiet week would otherwise make any single event a spike)."""
    current = f"sum(increase({sel}[{SPIKE_WINDOW}]))"
    baseline = (
        f"(sum(increase({sel}[{SPIKE_BASELINE}] offset {SPIKE_WINDOW})) or vector(0))"
        f" / {SPIKE_BASELINE_DAYS}"
    )
    return f"(\n  {current}\n  > {SPIKE_FACTOR} * {baseline}\n)\nand\n{current} >= {min_count}\n"


def _spike_rules(s: RuleSettings) -> list[AlertRule]:
    failures = c.RENEWAL_FAILURES
    canceled = c.selector(c.SUBSCRIPTION_EVENTS, [("event", "=", c.EVENT_CANCELED)])
    return [
        _rule(
            s,
            group=GROUP_HEALTH,
            alert=RENEWAL_SPIKE_ALERT,
            expr=spike_expr(failures, s.spike_min_count),
            for_=SPIKE_FOR,
            severity="warning",
            team=s.default_team,
            summary="Renewal failures above twice their daily average",
            description=(
                f"More than {SPIKE_FACTOR}x the daily average of the previous "
                f"{SPIKE_BASELINE_DAYS} days failed to renew in the last 24h (and at least "
                f"{s.spike_min_count}). Break it down by reason on the Billing Health "
                "Overview dashboard (billing_renewal_failures_total{reason}); the "
                "affected users are in PostHog (subscription_renewal_failed)."
            ),
            kind="renewal_spike",
            playbook=c.PLAYBOOK_RENEWAL_SPIKE,
        ),
        _rule(
            s,
            group=GROUP_HEALTH,
            alert=CANCELLATION_SPIKE_ALERT,
            expr=spike_expr(canceled, s.spike_min_count),
            for_=SPIKE_FOR,
            severity="warning",
            team=s.default_team,
            summary="Cancellations above twice their daily average in 24h",
            description=(
                f"More than {SPIKE_FACTOR}x the daily average of the previous "
                f"{SPIKE_BASELINE_DAYS} days canceled in the last 24h (and at least "
                f"{s.spike_min_count}). Who and why: PostHog subscription_canceled "
                "(reason, periodsCompleted)."
            ),
            kind="cancellation_spike",
            playbook=c.PLAYBOOK_CANCELLATION_SPIKE,
        ),
    ]


def _cron_rules(decl: CronDecl, s: RuleSettings) -> list[AlertRule]:
    name = c.cron_name(decl)
    base = c.camel(name)
    playbook = c.cron_playbook(decl)
    ts = c.cron_metric(decl, "last_run_timestamp")
    status = c.cron_metric(decl, "last_status")
    took = c.cron_metric(decl, "duration_seconds")
    after = c.cron_missing_after(decl)
    # Over a window, not the instant: a scheduler inside a long-running service loses its gauges
    # on restart, and plain absent() would page until the next run although the job is fine.
    window = f"{int(after + min(after, 3600.0))}s"
    return [
        _rule(
            s,
            group=GROUP_CRONS,
            alert=f"{base}CronMissing",
            expr=(
                f"absent_over_time({ts}[{window}])\nor\n"
                f"(time() - max(max_over_time({ts}[{window}]))) > {c.number(after)}\n"
            ),
            for_=c.duration(c.cron_missing_for(decl)),
            severity="warning",
            team=decl.team,
            summary=f"Cron job {name} hasn't run in {c.human(after)}+",
            description=(
                f"{name} is scheduled every {c.human(decl.every)}; its last run "
                f"({ts}) is older than {c.human(after)}, or it never reported (a cron "
                "process is short-lived: check its Pushgateway or textfile)."
            ),
            kind="cron_missing",
            playbook=playbook,
            runbook_url=decl.runbook_url,
            subject=decl,
        ),
        _rule(
            s,
            group=GROUP_CRONS,
            alert=f"{base}CronFailed",
            expr=f"{status} != 1\n",
            severity="critical",
            team=decl.team,
            summary=f"Cron job {name} failed",
            description=(
                f"The last run of {name} failed ({status} = 0). The exception is in "
                f"Sentry (cron.{name} span, Crons check-in with status error)."
            ),
            kind="cron_failed",
            playbook=playbook,
            runbook_url=decl.runbook_url,
            subject=decl,
        ),
        _rule(
            s,
            group=GROUP_CRONS,
            alert=f"{base}CronSlow",
            expr=f"{took} > {c.number(decl.max_runtime)}\n",
            severity="warning",
            team=decl.team,
            summary=f"Cron job {name} took > {c.human(decl.max_runtime)}",
            description=(
                f"The last run of {name} took longer than its max_runtime of "
                f"{c.human(decl.max_runtime)} ({took})."
            ),
            kind="cron_slow",
            playbook=playbook,
            runbook_url=decl.runbook_url,
            subject=decl,
        ),
    ]


def _constraint_rule(decl: Constraint, s: RuleSettings) -> AlertRule:
    c.check_team(f"Constraint({decl.name!r})", decl.team)
    sel = c.selector(c.CONSTRAINT_EXISTS, [("constraint", "=", decl.name)])
    playbook = c.constraint_playbook(decl)
    description = decl.description or (
        f"The database constraint {decl.name} that protects a billing guarantee is missing "
        "(verify_constraints set pg_constraint_exists to 0). Restore it immediately."
    )
    return _rule(
        s,
        group=GROUP_CONSTRAINTS,
        alert=f"{c.camel(decl.name, 'Constraint')}ConstraintMissing",
        expr=f"min by (constraint) ({sel}) != 1\n",
        for_="5m",
        severity=decl.severity,
        team=decl.team,
        summary=c.template_text(decl.summary),
        description=c.template_text(description),
        kind="constraint",
        playbook=playbook,
        runbook_url=decl.runbook_url,
        subject=decl,
    )


def _sink_rules(s: RuleSettings) -> list[AlertRule]:
    return [
        _rule(
            s,
            group=GROUP_SELF,
            alert=SINK_ERRORS_ALERT,
            expr=first_increase(c.SINK_ERRORS, "sink"),
            severity="warning",
            team=s.platform_team,
            summary=f"invariantkit sink {c.label_ref('sink')} is failing",
            description=(
                f"The {c.label_ref('sink')} sink raised: the signals it should have sent "
                "(violations included) were lost for that backend. The first failure is "
                "logged by the invariantkit logger."
            ),
            kind="sink_errors",
            playbook=c.PLAYBOOK_SINKS,
        ),
        _rule(
            s,
            group=GROUP_SELF,
            alert=SINK_DROPPED_ALERT,
            expr=first_increase(c.SINK_DROPPED, "sink"),
            severity="warning",
            team=s.platform_team,
            summary=f"invariantkit dropped signals for {c.label_ref('sink')}",
            description=(
                f"Signals for {c.label_ref('sink')} were dropped (a full queue or a failed "
                "delivery). Check the backend's health and its SDK queue sizes "
                "(invariantkit verify warns about queues that cannot hold a burst)."
            ),
            kind="sink_dropped",
            playbook=c.PLAYBOOK_SINKS,
        ),
    ]


def build_rules(catalog: Catalog, settings: RuleSettings) -> list[AlertRule]:
    """Every rule for ``catalog``, in file order. Raises ``ValueError`` on clashing names."""
    from invariantkit.alerts._checks import check_rules

    invs = c.invariants(catalog)
    rules: list[AlertRule] = [_invariant_rule(inv, settings) for inv in invs]
    rules += _retry_rules(catalog, settings)
    rules += _spike_rules(settings)
    for decl in c.crons(catalog):
        rules += _cron_rules(decl, settings)
    rules += [_constraint_rule(d, settings) for d in c.constraints(catalog)]
    rules += check_rules(catalog, settings)  # at-rest checks: <Check>Stale, <Check>Failing
    rules += _sink_rules(settings)
    rules += _test_rules(invs, settings)
    _check_unique(rules)
    return rules


def _check_unique(rules: list[AlertRule]) -> None:
    seen: dict[str, AlertRule] = {}
    for rule in rules:
        if rule.kind in ("test", "retries"):
            continue  # one rule per team on purpose
        other = seen.get(rule.alert)
        if other is not None:
            a = other.subject.name if other.subject is not None else other.kind
            b = rule.subject.name if rule.subject is not None else rule.kind
            raise ValueError(
                f"alert name {rule.alert!r} would be generated for both {a!r} and {b!r}: "
                "rename one of them"
            )
        seen[rule.alert] = rule


HEADER = (
    "# Prometheus alerting rules generated by invariantkit from the declared invariants,\n"
    "# crons and constraints. Regenerate instead of editing (invariantkit rules -m <module>).\n"
    "# Load with `rule_files:` (Prometheus), `mimirtool rules load` (Mimir) or import into\n"
    '# Grafana-managed alerting. Route by the `team` label; severity="test" never pages.\n'
)


def rule_groups(rules: list[AlertRule]) -> dict[str, Any]:
    """The rule-file document: ``{"groups": [{"name": ..., "rules": [...]}, ...]}``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        groups.setdefault(rule.group, []).append(rule.to_dict())
    return {"groups": [{"name": name, "rules": items} for name, items in groups.items()]}


def dump_yaml(document: Any) -> str:
    """YAML through PyYAML, multi-line strings as literal blocks, keys in insertion order."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError(
            "invariantkit.alerts needs PyYAML to write YAML: pip install 'invariantkit[cli]'"
        ) from exc

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        if "\n" in value:
            return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
        return dumper.represent_scalar("tag:yaml.org,2002:str", value)

    _Dumper.add_representer(str, _str)
    return yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1000,
    )


def prometheus_rules(
    catalog: Catalog | None = None,
    *,
    runbook_base_url: str | None = None,
    sentry_url: str | None = None,
    default_team: str = c.DEFAULT_TEAM,
    platform_team: str = c.PLATFORM_TEAM,
    spike_min_count: int = 3,
) -> str:
    """A Prometheus rule file (YAML) for everything declared in ``catalog``.

    One rule per invariant (``<Name>Violated``, ``for: 0m``, firing on the first violation
    after a process start, test-mode series excluded), ``ExcessiveIdempotentRetries``, the
    renewal-failure and cancellation spike rules, ``<Cron>CronMissing``/``Failed``/``Slow`` per
    cron, ``<Constraint>ConstraintMissing`` per constraint, ``InvariantkitSinkErrors`` and
    ``InvariantkitSignalsDropped``, and ``InvariantTestAlert`` (severity ``test``). Every rule
    has the labels ``severity`` and ``team`` and the annotations ``summary``, ``description``
    and ``runbook_url`` (the generated playbook unless the declaration names one); invariant
    rules add ``sentry_url``, the Sentry search for their ``invariant`` tag.

    Args:
        catalog: the declarations; default the process-wide catalog.
        runbook_base_url: prefix of the generated playbooks' URLs (default ``playbooks/``).
        sentry_url: the Sentry issues page searched by ``sentry_url`` annotations.
        default_team: team of the rules not tied to one declaration (spikes), and of
            test alerts and retries whose series were never declared.
        platform_team: team of the sink health rules.
        spike_min_count: the least events in 24 h a spike rule fires on.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> from invariantkit.alerts import prometheus_rules
        >>> catalog = ik.Catalog()
        >>> _ = catalog.add(billing.NO_DOUBLE_CHARGE)
        >>> text = prometheus_rules(catalog)
        >>> "alert: NoDoubleChargeViolated" in text
        True
    """
    settings = RuleSettings.make(
        runbook_base_url=runbook_base_url,
        sentry_url=sentry_url,
        default_team=default_team,
        platform_team=platform_team,
        spike_min_count=spike_min_count,
    )
    rules = build_rules(c.catalog_or_global(catalog), settings)
    return HEADER + dump_yaml(rule_groups(rules))
