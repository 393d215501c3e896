"""``promtool test rules`` files proving each generated rule fires on the library's series and
stays silent on healthy ones."""

from __future__ import annotations

import math
from typing import Any

from invariantkit._catalog import Catalog, Constraint, CronDecl, Invariant
from invariantkit.alerts import _checks
from invariantkit.alerts import _common as c
from invariantkit.alerts import _rules as r

__all__ = ["prometheus_rule_tests"]

#: Labels a scrape adds to every series (aggregating rules drop them; the others keep them).
SCRAPE = {"job": "billing"}
DEFAULT_RULE_FILE = "invariantkit-rules.yml"


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f"{k}={c.promql_string(v)}" for k, v in {**labels, **SCRAPE}.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _minutes(m: int) -> str:
    return f"{m}m"


def _expect(rule: r.AlertRule, sample_labels: dict[str, str]) -> dict[str, Any]:
    """The alert Prometheus raises for ``rule`` on a sample with ``sample_labels``."""
    return {
        "exp_labels": {**sample_labels, **rule.labels},
        "exp_annotations": {
            k: c.render_template(v, sample_labels) for k, v in rule.annotations.items()
        },
    }


def _check(eval_time: str, rule: r.AlertRule, *fired: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": eval_time, "alertname": rule.alert, "exp_alerts": list(fired)}


def _group(
    name: str, series: list[dict[str, str]], tests: list[dict[str, Any]], interval: str = "1m"
) -> dict[str, Any]:
    return {"name": name, "interval": interval, "input_series": series, "alert_rule_test": tests}


class _Builder:
    def __init__(self, catalog: Catalog, rules: list[r.AlertRule], settings: r.RuleSettings):
        self.catalog = catalog
        self.rules = rules
        self.settings = settings
        self.groups: list[dict[str, Any]] = []

    def one(self, kind: str, subject: object = None) -> r.AlertRule:
        for rule in self.rules:
            if rule.kind == kind and (subject is None or rule.subject is subject):
                return rule
        raise LookupError(kind)  # pragma: no cover - build_rules makes one of each

    def test_rule_for(self, name: str) -> r.AlertRule:
        """The InvariantTestAlert rule whose scope covers invariant ``name``."""
        for rule in self.rules:
            if rule.kind != "test":
                continue
            op, names = rule.scope
            if (op == "=~" and name in names) or (op == "!~" and name not in names):
                return rule
        raise LookupError(name)  # pragma: no cover - the default team's rule takes the rest

    def retry_ops(self) -> list[tuple[r.AlertRule, str]]:
        """One operation name per ExcessiveIdempotentRetries rule, inside its scope."""
        out = []
        for rule in self.rules:
            if rule.kind != "retries":
                continue
            op, names = rule.scope
            if op == "=~":
                out.append((rule, names[0]))
                continue
            own = [
                d.name
                for d in self.catalog.idempotent.values()
                if d.team == rule.labels["team"] and d.name not in names
            ]
            candidates = [*sorted(own), "record_payment_event", "undeclared_write"]
            out.append((rule, next(n for n in candidates if n not in names)))
        return out

    # -- healthy --------------------------------------------------------------------------------

    def healthy(self) -> None:
        series = []
        for inv in c.invariants(self.catalog):
            series.append(_series(c.VIOLATIONS, _violation_labels(inv, test=False), "0x15"))
        for _, op in self.retry_ops():
            series.append(_series(c.RETRIES, {"operation": op}, "0+30x15"))
        series.append(_series(c.RENEWAL_FAILURES, {"reason": "card_declined"}, "0x5 1x10"))
        series.append(_series(c.SUBSCRIPTION_EVENTS, {"event": c.EVENT_CANCELED}, "0x5 1x10"))
        for decl in c.crons(self.catalog):
            series += [
                _series(c.cron_metric(decl, "last_run_timestamp"), {}, "0+60x15"),
                _series(c.cron_metric(decl, "last_status"), {}, "1x15"),
                _series(
                    c.cron_metric(decl, "duration_seconds"),
                    {},
                    f"{c.number(decl.max_runtime / 2)}x15",
                ),
                _series(c.cron_metric(decl, "processed"), {}, "10x15"),
            ]
        for con in c.constraints(self.catalog):
            series.append(_series(c.CONSTRAINT_EXISTS, {"constraint": con.name}, "1x15"))
        series.append(_series(c.SINK_ERRORS, {"sink": "sentry"}, "0x15"))
        series.append(_series(c.SINK_DROPPED, {"sink": "sentry"}, "0x15"))
        series += _checks.healthy_series(self.catalog, _series)
        names = sorted({rule.alert for rule in self.rules})
        tests: list[dict[str, Any]] = [
            {"eval_time": t, "alertname": name, "exp_alerts": []}
            for t in ("5m", "10m")
            for name in names
        ]
        self.groups.append(_group("every rule stays silent on healthy series", series, tests))

    # -- invariants -----------------------------------------------------------------------------

    def invariant(self, inv: Invariant) -> None:
        rule = self.one("invariant", inv)
        test_rule = self.test_rule_for(inv.name)
        real = _violation_labels(inv, test=False)
        test = _violation_labels(inv, test=True)
        agg = {"invariant": inv.name, "type": inv.type}
        agg_test = {"invariant": inv.name, "type": test["type"]}
        self.groups += [
            _group(
                f"{rule.alert}: fires on the first violation after a process start",
                [_series(c.VIOLATIONS, real, "0 0 1x10")],
                [
                    _check("1m", rule),
                    _check("2m", rule, _expect(rule, agg)),
                    _check("2m", test_rule),
                    _check("9m", rule),
                ],
            ),
            _group(
                f"{rule.alert}: fires when the violation came before the first scrape",
                [_series(c.VIOLATIONS, real, "_ _ 1x10")],
                [
                    _check("1m", rule),
                    _check("2m", rule, _expect(rule, agg)),
                    _check("8m", rule),
                ],
            ),
            _group(
                f"{rule.alert}: a restart alone stays silent, a violation after it fires",
                [_series(c.VIOLATIONS, real, "3x10 0 0 0 1x5")],
                [
                    _check("12m", rule),
                    _check("13m", rule),
                    _check("14m", rule, _expect(rule, agg)),
                ],
            ),
            _group(
                f"{rule.alert}: test-mode violations never fire it, they fire {test_rule.alert}",
                [
                    _series(c.VIOLATIONS, real, "0x12"),
                    _series(c.VIOLATIONS, test, "_ _ 1x10"),
                ],
                [
                    _check("2m", rule),
                    _check("2m", test_rule, _expect(test_rule, agg_test)),
                    _check("5m", rule),
                ],
            ),
        ]

    def undeclared_test(self) -> None:
        name = next(
            n
            for n in ("TEST", "TEST_ALERT", "INVARIANTKIT_TEST")
            if n not in self.catalog.invariants
        )
        rule = self.test_rule_for(name)
        labels = {"type": "test_double_charge", "invariant": name, "test": "true"}
        self.groups.append(
            _group(
                f"{rule.alert}: a test alert for an undeclared invariant goes to team "
                f"{rule.labels['team']}",
                [_series(c.VIOLATIONS, labels, "_ _ 1x10")],
                [
                    _check("1m", rule),
                    _check(
                        "2m", rule, _expect(rule, {"invariant": name, "type": "test_double_charge"})
                    ),
                ],
            )
        )

    # -- retries and spikes ---------------------------------------------------------------------

    def retries(self) -> None:
        for rule, op in self.retry_ops():
            self.groups.append(
                _group(
                    f"{rule.alert} (team {rule.labels['team']}): fires on a retry storm of {op}",
                    [_series(c.RETRIES, {"operation": op}, "0+1200x15")],
                    [
                        _check("2m", rule),
                        _check("9m", rule, _expect(rule, {"operation": op})),
                    ],
                )
            )

    def spikes(self) -> None:
        renewal = self.one("renewal_spike")
        cancel = self.one("cancellation_spike")
        failed = {"reason": "card_declined"}
        canceled = {"event": c.EVENT_CANCELED}
        # Hour 1: 72 events, a daily average of ~10.4 over the 7-day baseline (threshold ~21).
        # Hours 2-25: 12 events in the 24 h window (silent at 25h: under twice the average).
        # Hours 26-27: 40 more (at 27h the window [3h, 27h] holds 51: both fire).
        history = "0 72 72.5+0.5x23 104 124"
        min_count = self.settings.spike_min_count
        below = f"0 1x{min_count - 2} {min_count - 1}x30" if min_count > 1 else "0x32"
        at = f"0 1x{min_count - 2} {min_count - 1} {min_count}x30" if min_count > 1 else "0 1x30"
        self.groups += [
            _group(
                f"{renewal.alert} and {cancel.alert} stay silent under twice the 7-day daily "
                "average and fire above it",
                [
                    _series(c.RENEWAL_FAILURES, failed, history),
                    _series(c.SUBSCRIPTION_EVENTS, canceled, history),
                ],
                [
                    _check("25h", renewal),
                    _check("25h", cancel),
                    _check("27h", renewal, _expect(renewal, {})),
                    _check("27h", cancel, _expect(cancel, {})),
                ],
                interval="1h",
            ),
            _group(
                f"spike rules need at least {min_count} events in 24h when there is no history",
                [
                    _series(c.RENEWAL_FAILURES, failed, below),
                    _series(c.SUBSCRIPTION_EVENTS, canceled, at),
                ],
                [
                    _check("25m", renewal),
                    _check("25m", cancel, _expect(cancel, {})),
                ],
            ),
        ]

    # -- crons, constraints, sinks --------------------------------------------------------------

    def cron(self, decl: CronDecl) -> None:
        missing = self.one("cron_missing", decl)
        failed = self.one("cron_failed", decl)
        slow = self.one("cron_slow", decl)
        after = c.cron_missing_after(decl)
        # The last run ended so that at 1m it is 30 s short of "missing" and at 2m 30 s past it.
        last_run = 90.0 - after
        fire_at = 2 + math.ceil(c.cron_missing_for(decl) / 60 - 1e-9)
        half, double = decl.max_runtime / 2, decl.max_runtime * 2
        n = fire_at + 3
        self.groups.append(
            _group(
                f"cron {decl.name}: {missing.alert} after {c.human(after)} without a run, "
                f"{failed.alert} on a failed run, {slow.alert} on a run over "
                f"{c.human(decl.max_runtime)}",
                [
                    _series(
                        c.cron_metric(decl, "last_run_timestamp"), {}, f"{c.number(last_run)}+0x{n}"
                    ),
                    _series(c.cron_metric(decl, "last_status"), {}, f"1 1 0 0 1x{n}"),
                    _series(
                        c.cron_metric(decl, "duration_seconds"),
                        {},
                        f"{c.number(half)} {c.number(half)} {c.number(double)} "
                        f"{c.number(double)} {c.number(half)}x{n}",
                    ),
                ],
                [
                    _check("1m", missing),
                    _check(_minutes(fire_at - 1), missing),
                    _check(_minutes(fire_at), missing, _expect(missing, {})),
                    _check("1m", failed),
                    _check("2m", failed, _expect(failed, dict(SCRAPE))),
                    _check("4m", failed),
                    _check("1m", slow),
                    _check("2m", slow, _expect(slow, dict(SCRAPE))),
                    _check("4m", slow),
                ],
            )
        )

    def crons_absent(self, decls: list[CronDecl]) -> None:
        if not decls:
            return
        tests = []
        longest = 0
        for decl in decls:
            missing = self.one("cron_missing", decl)
            fire_at = math.ceil(c.cron_missing_for(decl) / 60 - 1e-9)
            longest = max(longest, fire_at)
            tests.append(_check(_minutes(fire_at), missing, _expect(missing, {})))
        self.groups.append(
            _group(
                "every CronMissing fires when its cron never reported",
                [_series("up", {}, f"1x{longest + 2}")],
                tests,
            )
        )

    def constraint(self, decl: Constraint) -> None:
        rule = self.one("constraint", decl)
        labels = {"constraint": decl.name}
        self.groups.append(
            _group(
                f"{rule.alert}: fires 5m after verify_constraints found it missing",
                [_series(c.CONSTRAINT_EXISTS, labels, "1 1 0x10")],
                [
                    _check("1m", rule),
                    _check("6m", rule),
                    _check("7m", rule, _expect(rule, labels)),
                ],
            )
        )

    def sinks(self) -> None:
        errors = self.one("sink_errors")
        dropped = self.one("sink_dropped")
        sentry, posthog = {"sink": "sentry"}, {"sink": "posthog"}
        self.groups.append(
            _group(
                f"{errors.alert} and {dropped.alert} fire on the first error or drop",
                [
                    # The sentry children appear with their first error (created at 1, not 0).
                    _series(c.SINK_ERRORS, sentry, "_ _ 1x10"),
                    _series(c.SINK_ERRORS, posthog, "0 0 0 2x10"),
                    _series(c.SINK_DROPPED, sentry, "_ _ 5x10"),
                ],
                [
                    _check("1m", errors),
                    _check("2m", errors, _expect(errors, sentry)),
                    _check("3m", errors, _expect(errors, sentry), _expect(errors, posthog)),
                    _check("9m", errors),
                    _check("2m", dropped, _expect(dropped, sentry)),
                    _check("9m", dropped),
                ],
            )
        )

    def build(self) -> list[dict[str, Any]]:
        self.healthy()
        for inv in c.invariants(self.catalog):
            self.invariant(inv)
        self.undeclared_test()
        self.retries()
        self.spikes()
        decls = c.crons(self.catalog)
        for decl in decls:
            self.cron(decl)
        self.crons_absent(decls)
        for con in c.constraints(self.catalog):
            self.constraint(con)
        self.sinks()
        self.groups += _checks.rule_test_groups(self, _series, _check, _expect)
        return self.groups


def _violation_labels(inv: Invariant, *, test: bool) -> dict[str, str]:
    """The labels the Prometheus sink puts on the violation counter (test children: the
    guide's ``test_<type>`` and ``test="true"``)."""
    if test:
        kind = inv.type if inv.type.startswith("test_") else f"test_{inv.type}"
        return {"type": kind, "invariant": inv.name, "test": "true"}
    return {"type": inv.type, "invariant": inv.name, "test": "false"}


def prometheus_rule_tests(
    catalog: Catalog | None = None,
    *,
    rule_file: str = DEFAULT_RULE_FILE,
    runbook_base_url: str | None = None,
    sentry_url: str | None = None,
    default_team: str = c.DEFAULT_TEAM,
    platform_team: str = c.PLATFORM_TEAM,
    spike_min_count: int = 3,
) -> str:
    """A ``promtool test rules`` file for the rules :func:`prometheus_rules` generates with the
    same arguments (write those to ``rule_file``, next to this file).

    For each rule it feeds the series the library emits, with the labels it emits them with,
    and checks that the rule fires with the expected labels and annotations, and stays silent
    on healthy series: the first violation after a start (counter child at zero), a violation
    reported before the first scrape (a series that appears above zero), a restart, test-mode
    series (which fire only ``InvariantTestAlert``), a retry storm, renewal-failure and
    cancellation spikes against their 7-day average, a cron that stopped running, failed or ran
    too long, a cron that never reported, a missing constraint, and sink errors and drops.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> from invariantkit.alerts import prometheus_rule_tests
        >>> catalog = ik.Catalog()
        >>> _ = catalog.add(billing.NO_DOUBLE_CHARGE)
        >>> "rule_files:\\n- invariantkit-rules.yml" in prometheus_rule_tests(catalog)
        True
    """
    if not isinstance(rule_file, str) or not rule_file:
        raise ValueError(f"rule_file={rule_file!r} must be a file name")
    settings = r.RuleSettings.make(
        runbook_base_url=runbook_base_url,
        sentry_url=sentry_url,
        default_team=default_team,
        platform_team=platform_team,
        spike_min_count=spike_min_count,
    )
    cat = c.catalog_or_global(catalog)
    rules = r.build_rules(cat, settings)
    document = {
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": _Builder(cat, rules, settings).build(),
    }
    header = (
        "# promtool unit tests generated by invariantkit for the rules in "
        f"{rule_file}.\n# Run: promtool test rules <this file>\n"
    )
    return header + r.dump_yaml(document)
