"""At-rest checks (``ik.Check``) in the generated artifacts: the ``<Check>Stale`` and
``<Check>Failing`` rules, their promtool tests, dashboard panels and playbook.

A check's new violations fire its invariant's own ``<Name>Violated`` rule (they increment the
same counter); these rules watch the check itself: a check that silently stopped running reads
as "all good", which is the failure mode this module exists for.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from invariantkit.alerts import _common as c

if TYPE_CHECKING:
    from invariantkit._catalog import Catalog
    from invariantkit._checks import Check
    from invariantkit.alerts import _rules as r

__all__ = [
    "LAST_RUN",
    "RUNS",
    "VIOLATING",
    "check_playbook",
    "check_playbooks",
    "check_rules",
    "checks",
    "dashboard_panels",
    "healthy_series",
    "playbook",
    "rule_test_groups",
]

RUNS = "invariant_check_runs_total"
VIOLATING = "invariant_check_violating_entities"
LAST_RUN = "invariant_check_last_run_timestamp_seconds"
DURATION = "invariant_check_duration_seconds"
GROUP = "invariant_checks"


def checks(catalog: Catalog) -> list[Check]:
    """The declared checks, by name."""
    table = getattr(catalog, "checks", {})
    return [table[k] for k in sorted(table)]


def check_playbook(check: Check) -> str:
    return f"check-{c.kebab(check.name)}.md"


def _window(check: Check) -> str:
    after = check.stale_after
    # Over a window, not the instant (as for crons): a pushed series that went away for a
    # restart must not page, and a check that never reported must.
    return f"{int(after + min(after, 3600.0))}s"


def _for(check: Check) -> float:
    return min(check.every, 300.0)


def check_rules(catalog: Catalog, s: r.RuleSettings) -> list[r.AlertRule]:
    """``<Check>Stale`` (no completed run in 2x ``every``, never-reported included) and
    ``<Check>Failing`` (the query failed) for every declared check."""
    from invariantkit.alerts._rules import _rule, first_increase

    rules = []
    for check in checks(catalog):
        base = c.camel(check.name)
        team = check.invariant.team
        c.check_team(f"Check({check.name!r})", team)
        ts = c.selector(LAST_RUN, [("check", "=", check.name)])
        errors = c.selector(RUNS, [("check", "=", check.name), ("outcome", "=", "error")])
        window = _window(check)
        after = check.stale_after
        book = check_playbook(check)
        rules += [
            _rule(
                s,
                group=GROUP,
                alert=f"{base}Stale",
                expr=(
                    f"absent_over_time({ts}[{window}])\nor\n"
                    f"(time() - max by (check) (max_over_time({ts}[{window}]))) > "
                    f"{c.number(after)}\n"
                ),
                for_=c.duration(_for(check)),
                severity="warning",
                team=team,
                summary=f"At-rest check {check.name} has not completed in {c.human(after)}+",
                description=(
                    f"No run of the check {check.name} (invariant {check.invariant.name}) "
                    f"completed in {c.human(after)} (twice its schedule), or it never reported: "
                    "bad rows of that invariant are not being looked for. Check the "
                    "`invariantkit check` job (CronJob, crontab) and its Pushgateway."
                ),
                kind="check_stale",
                playbook=book,
                subject=check,
            ),
            _rule(
                s,
                group=GROUP,
                alert=f"{base}Failing",
                expr=first_increase(errors, "check", c.duration(max(300.0, check.every))),
                severity="warning",
                team=team,
                summary=f"At-rest check {check.name} fails to run",
                description=(
                    f"The query of the check {check.name} (invariant {check.invariant.name}) "
                    "failed: a syntax error after a migration, a statement timeout, a "
                    "permission or the database down. The error is in the check.run log line "
                    "and on the check's span (status ERROR)."
                ),
                kind="check_failing",
                playbook=book,
                subject=check,
            ),
        ]
    return rules


# -- promtool tests -------------------------------------------------------------------------------


def healthy_series(catalog: Catalog, series: Any) -> list[dict[str, str]]:
    """Series of checks that run on schedule and succeed (``series`` builds one)."""
    out = []
    for check in checks(catalog):
        out.append(series(LAST_RUN, {"check": check.name}, "0+60x15"))
        out.append(series(RUNS, {"check": check.name, "outcome": "error"}, "0x15"))
        out.append(series(RUNS, {"check": check.name, "outcome": "ok"}, "0+1x15"))
    return out


def rule_test_groups(builder: Any, series: Any, check_: Any, expect: Any) -> list[dict[str, Any]]:
    """Per check: Stale fires 2x ``every`` after the last completed run (and not before),
    Failing fires on the first failed run; every Stale fires when its check never reported."""
    groups: list[dict[str, Any]] = []
    absent: list[dict[str, Any]] = []
    longest = 0
    for check in checks(builder.catalog):
        stale = builder.one("check_stale", check)
        failing = builder.one("check_failing", check)
        labels = {"check": check.name}
        # The last completed run ended so that at 1m it is 30 s short of stale, at 2m past it.
        last_run = 90.0 - check.stale_after
        fire_at = 2 + math.ceil(_for(check) / 60 - 1e-9)
        n = fire_at + 3
        groups.append(
            {
                "name": f"check {check.name}: {stale.alert} after {c.human(check.stale_after)} "
                f"without a completed run, {failing.alert} on a failed run",
                "interval": "1m",
                "input_series": [
                    series(LAST_RUN, labels, f"{c.number(last_run)}+0x{n}"),
                    series(RUNS, {**labels, "outcome": "error"}, f"0 0 1x{n}"),
                ],
                "alert_rule_test": [
                    check_("1m", stale),
                    check_(f"{fire_at - 1}m", stale),
                    check_(f"{fire_at}m", stale, expect(stale, labels)),
                    check_("1m", failing),
                    check_("2m", failing, expect(failing, labels)),
                ],
            }
        )
        at = math.ceil(_for(check) / 60 - 1e-9)
        longest = max(longest, at)
        absent.append(check_(f"{at}m", stale, expect(stale, labels)))
    if absent:
        groups.append(
            {
                "name": "every check's Stale fires when the check never reported",
                "interval": "1m",
                "input_series": [series("up", {}, f"1x{longest + 2}")],
                "alert_rule_test": absent,
            }
        )
    return groups


# -- playbooks ------------------------------------------------------------------------------------


def playbook(check: Check, rules: list[r.AlertRule]) -> Any:
    """The playbook of one check: answers its Stale and Failing alerts."""
    from invariantkit.alerts._playbooks import Playbook, _alerts_cell

    name = check.name
    inv = check.invariant
    return Playbook(
        f"At-rest check {name} stale or failing",
        "WARNING - the check is blind: bad rows of its invariant are not being looked for",
        [
            ("Alerts", _alerts_cell(rules)),
            (
                "Metrics",
                f'`{RUNS}{{check="{name}"}}`, `{LAST_RUN}`, `{VIOLATING}`, `{DURATION}`',
            ),
            ("Invariant", f"`{inv.name}` (its own alert fires for new violating rows)"),
            (
                "Where to look",
                (
                    f'The `check.run` log line and the `check.{name}` span; Grafana "Billing '
                    'Invariant Monitor" (At-rest checks)'
                ),
            ),
        ],
        f"The check `{name}` proves `{inv.name}` against the data every "
        f"{c.human(check.every)}. Stale: no run completed in {c.human(check.stale_after)}. "
        "Failing: its query failed.",
        [
            "Acknowledge the alert",
            "Find the last `check.run` log line of the check (field `error` when it failed)",
            "Is the `invariantkit check` job scheduled and running (CronJob events, crontab)?",
        ],
        [
            (
                "Failing: run the check's SQL by hand, read-only, against a replica; did a migration "
                "rename a table or column? Did it hit its statement timeout (table growth)?"
            ),
            "Stale: did the job stop, or does it run without a Pushgateway configured?",
            f"While blind: query the table by hand for rows violating `{inv.name}`",
        ],
        [
            "Fix the SQL or the schema mismatch and redeploy the declaration",
            "A timeout: add an index for the check's query or raise `timeout=`",
            "Run `invariantkit check -m <module> --dsn ... --check " + name + "` once by hand",
        ],
        [
            "Add the check's query to the migration review checklist",
            "Keep the job's schedule and the check's `every=` in step",
        ],
    )


def check_playbooks(catalog: Catalog, rules: list[r.AlertRule]) -> dict[str, str]:
    """``check-<name>.md`` for every declared check."""
    return {
        check_playbook(check): playbook(check, [x for x in rules if x.subject is check]).markdown()
        for check in checks(catalog)
    }


# -- dashboard ------------------------------------------------------------------------------------


def dashboard_panels(catalog: Catalog, playbook_url: Any) -> list[tuple[dict[str, Any], int, int]]:
    """Panels for the Billing Invariant Monitor: per check, violating entities and time since
    its last completed run; one panel of runs by outcome. ``(panel, width, height)``."""
    from invariantkit.alerts._grafana import RED_AT_ONE, Doc, _stat, _target, _timeseries

    out: list[tuple[dict[str, Any], int, int]] = []
    decls = checks(catalog)
    for check in decls:
        book = playbook_url(check_playbook(check))
        sel = c.selector(VIOLATING, [("check", "=", check.name)])
        out.append(
            (
                _stat(
                    f"{check.name}: violating entities",
                    Doc(
                        f"Entities the at-rest check {check.name} found violating "
                        f"{check.invariant.name} at its last completed run.",
                        "0.",
                        "Any value: rows in the database break the invariant. New ones were "
                        f"reported to Sentry (tag check:{check.name}); the list is in the "
                        "invariantkit_violations table (resolved_at IS NULL).",
                        check.invariant.name,
                        playbook_url(
                            c.invariant_playbook(check.invariant), check.invariant.runbook_url
                        ),
                    ),
                    f"max({sel})",
                    thresholds=RED_AT_ONE,
                ),
                6,
                5,
            )
        )
        ts = c.selector(LAST_RUN, [("check", "=", check.name)])
        out.append(
            (
                _stat(
                    f"{check.name}: since last completed run",
                    Doc(
                        f"Time since the check {check.name} last completed ({LAST_RUN}).",
                        f"Under {c.human(check.every)} (its schedule).",
                        f"Over {c.human(check.stale_after)} {c.camel(check.name)}Stale fires; "
                        "no value: it never reported.",
                        f"Check {check.name}",
                        book,
                    ),
                    f"time() - max({ts})",
                    unit="s",
                    thresholds={
                        "mode": "absolute",
                        "steps": [
                            {"color": "green", "value": None},
                            {"color": "orange", "value": float(check.every)},
                            {"color": "red", "value": check.stale_after},
                        ],
                    },
                ),
                6,
                5,
            )
        )
    if decls:
        out.append(
            (
                _timeseries(
                    "At-rest check runs by outcome",
                    Doc(
                        "Runs of every at-rest check by outcome (ok, violations, error).",
                        "One run per check per schedule, no errors.",
                        "Errors: the check's query fails; follow the check's playbook.",
                        "Playbooks",
                        playbook_url(c.PLAYBOOK_INDEX),
                    ),
                    [
                        _target(
                            f"sum by (check, outcome) (increase({RUNS}[$__rate_interval]))",
                            "{{check}} {{outcome}}",
                        )
                    ],
                    bars=True,
                ),
                24,
                6,
            )
        )
    return out
