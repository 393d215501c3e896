"""``invariantkit verify`` and ``invariantkit fire-test-alert``: the guide's checklist, automated.

The guide's "Verification: Is Monitoring Sound?" checklist, item by item, against the catalog,
the generated rules, dashboards and playbooks, an Alertmanager configuration, the application's
Sentry/OpenTelemetry set-up, a synthetic operation run through real SDK pipelines, and the
database. Each item passes, fails or warns with its reason.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from invariantkit import _semconv as sc
from invariantkit._catalog import Catalog, get_catalog
from invariantkit.sinks._registry import from_env as sink_from_env

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "Check",
    "FiredResult",
    "fire_test_alerts",
    "render_checks",
    "render_fired",
    "run_checks",
]

Status = Literal["pass", "fail", "warn", "skip"]
GUIDE_INVARIANTS = ("NO_DOUBLE_CHARGE", "CANCELED_NEVER_CHARGED", "PERIOD_MUST_ADVANCE")
TOOL_TIMEOUT = 30.0
PROBE_USER = "invariantkit-verify-user"


@dataclass
class Check:
    """One checklist item: its status and why."""

    id: str
    item: str  # the guide's checklist line
    status: Status
    reason: str
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "item": self.item,
            "status": self.status,
            "reason": self.reason,
            "details": list(self.details),
        }


def _check(
    id_: str,
    item: str,
    problems: list[str],
    ok: str,
    *,
    warn: bool = False,
    details: Sequence[str] = (),
) -> Check:
    if problems:
        status: Status = "warn" if warn else "fail"
        reason = problems[0] if len(problems) == 1 else f"{len(problems)} problems"
        return Check(
            id_, item, status, reason, [*problems, *details] if len(problems) > 1 else list(details)
        )
    return Check(id_, item, "pass", ok, list(details))


# -- the generated artifacts --------------------------------------------------------------------


@dataclass
class _Artifacts:
    rules: list[dict[str, Any]]
    rules_text: str | None
    rules_error: str | None
    dashboards: dict[str, Any] | None
    dashboards_error: str | None
    playbooks: dict[str, str] | None
    playbooks_error: str | None


def _generate(catalog: Catalog) -> _Artifacts:
    import yaml

    try:
        from invariantkit import alerts
    except ImportError as exc:  # pragma: no cover - ships with the package
        message = f"invariantkit.alerts is not available ({exc})"
        return _Artifacts([], None, message, None, message, None, message)

    def call(name: str) -> tuple[Any, str | None]:
        fn = getattr(alerts, name, None)
        if fn is None:
            return None, f"invariantkit.alerts.{name}() is not available"
        try:
            return fn(catalog), None
        except Exception as exc:
            return None, f"{name}() failed: {type(exc).__name__}: {exc}"

    text, rules_error = call("prometheus_rules")
    rules: list[dict[str, Any]] = []
    if text is not None:
        try:
            data = yaml.safe_load(text) or {}
            for group in data.get("groups") or []:
                for rule in group.get("rules") or []:
                    if "alert" in rule:
                        rules.append({**rule, "group": group.get("name", "")})
        except yaml.YAMLError as exc:
            rules_error = f"the generated rule file is not valid YAML: {exc}"
    boards, boards_error = call("grafana_dashboards")
    books, books_error = call("playbooks")
    return _Artifacts(rules, text, rules_error, boards, boards_error, books, books_error)


def _mentions(expr: str, name: str) -> bool:
    """``name`` appears in ``expr`` as a label value (alone or in a regex alternative)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", expr) is not None


# -- checklist items ----------------------------------------------------------------------------


def _check_rules_valid(art: _Artifacts, promtool: str | None) -> Check:
    item = "Generated alert rules are valid"
    if art.rules_error is not None or art.rules_text is None:
        return Check("rules.valid", item, "fail", art.rules_error or "no rules generated")
    if promtool is None:
        return Check(
            "rules.valid",
            item,
            "pass",
            f"{len(art.rules)} alerting rules parse (promtool not installed)",
        )
    with tempfile.TemporaryDirectory(prefix="invariantkit-verify-") as tmp:
        path = Path(tmp) / "rules.yml"
        path.write_text(art.rules_text, encoding="utf-8")
        try:
            proc = subprocess.run(  # noqa: S603 - a fixed tool with our own file
                [promtool, "check", "rules", str(path)],
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("rules.valid", item, "warn", f"promtool could not run: {exc}")
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip().splitlines()
        return Check("rules.valid", item, "fail", "promtool check rules failed", out[-10:])
    return Check("rules.valid", item, "pass", f"promtool check rules: {len(art.rules)} rules OK")


def _check_alerts_configured(catalog: Catalog, art: _Artifacts) -> list[Check]:
    item = "All three billing invariants have alerts configured"
    if art.rules_error is not None:
        return [Check("alerts.invariants", item, "fail", art.rules_error)]
    checks: list[Check] = []
    exprs = [str(r.get("expr", "")) for r in art.rules]
    problems: list[str] = []
    covered: list[str] = []
    for name in sorted(catalog.invariants):
        rules = [
            r["alert"]
            for r, e in zip(art.rules, exprs, strict=True)
            if sc.VIOLATIONS.name in e
            and _mentions(e, name)
            and str((r.get("labels") or {}).get("severity")) != "test"
        ]
        if rules:
            covered.append(f"{name}: {', '.join(rules)}")
        else:
            problems.append(f"invariant {name} has no alert rule")
    missing_guide = [n for n in GUIDE_INVARIANTS if n not in catalog.invariants]
    if not catalog.invariants:
        problems.append("no invariant is declared")
    checks.append(
        _check(
            "alerts.invariants",
            item,
            problems,
            f"{len(catalog.invariants)} invariant(s), each with an alert rule",
            details=covered,
        )
    )
    if missing_guide:
        checks.append(
            Check(
                "alerts.guide_invariants",
                "All three billing invariants have alerts configured",
                "warn",
                f"the guide's billing invariant(s) {', '.join(missing_guide)} are not declared "
                "(import invariantkit.billing and call its checks)",
            )
        )
    from invariantkit.sinks._sentry_crons import SLUG_LIMIT

    shortened = {
        name: decl.sentry_slug
        for name, decl in sorted(catalog.crons.items())
        if len(name) > SLUG_LIMIT and decl.sentry_slug
    }
    if shortened:
        checks.append(
            Check(
                "sentry.cron_slugs",
                "Sentry cron monitors have the slugs their crons are named by",
                "warn",
                "; ".join(f"cron {n}: monitor slug shortened to {s}" for n, s in shortened.items())
                + f" (Sentry keeps {SLUG_LIMIT} characters; pass sentry_slug= to choose one)",
            )
        )
    problems = []
    for name in sorted(catalog.crons):
        for gauge, what in (
            (sc.CRON_LAST_RUN, "missing"),
            (sc.CRON_LAST_STATUS, "failed"),
            (sc.CRON_DURATION, "slow"),
        ):
            if not any(gauge.name(name) in e for e in exprs):
                problems.append(f"cron {name} has no '{what}' alert ({gauge.name(name)})")
    for name in sorted(catalog.constraints):
        if not any(sc.CONSTRAINT_EXISTS.name in e and _mentions(e, name) for e in exprs):
            problems.append(f"constraint {name} has no alert rule")
    if not any(sc.RETRIES.name in e for e in exprs) and catalog.idempotent:
        problems.append(f"no ExcessiveIdempotentRetries-style rule on {sc.RETRIES.name}")
    if not any(sc.SINK_ERRORS.name in e for e in exprs):
        problems.append(f"no rule on {sc.SINK_ERRORS.name} (a failing backend goes unnoticed)")
    checks.append(
        _check(
            "alerts.health",
            "Cron jobs, constraints, retries and the sinks have alerts",
            problems,
            f"{len(catalog.crons)} cron(s), {len(catalog.constraints)} constraint(s), retries and "
            "sink errors alerted",
        )
    )
    return checks


def _check_teams(art: _Artifacts) -> Check:
    item = "Alerts fire to the correct channel/person (every alert has a team)"
    if art.rules_error is not None:
        return Check("alerts.teams", item, "fail", art.rules_error)
    problems = []
    for rule in art.rules:
        labels = rule.get("labels") or {}
        for label in ("team", "severity"):
            if not str(labels.get(label) or "").strip():
                problems.append(f"alert {rule['alert']} has no {label} label")
    teams = sorted({str((r.get("labels") or {}).get("team")) for r in art.rules} - {"None", ""})
    return _check(
        "alerts.teams",
        item,
        problems,
        f"every alert has a team and a severity (teams: {', '.join(teams)})",
    )


# -- Alertmanager routing -----------------------------------------------------------------------


def _integrations(receiver: Mapping[str, Any]) -> list[str]:
    return [
        key[: -len("_configs")]
        for key, value in receiver.items()
        if key.endswith("_configs") and isinstance(value, list) and value
    ]


def _amtool_route(amtool: str, path: Path, labels: Mapping[str, str]) -> list[str]:
    proc = subprocess.run(  # noqa: S603 - a fixed tool with the user's own file
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={path}",
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise ValueError(
            (proc.stderr or proc.stdout).strip().splitlines()[-1]
            if (proc.stderr or proc.stdout).strip()
            else f"amtool exited {proc.returncode}"
        )
    return [r.strip() for r in proc.stdout.strip().split(",") if r.strip()]


def _check_routing(art: _Artifacts, path: Path | None, amtool: str | None) -> Check:
    item = "Alerts fire to the correct channel/person (every team routes to a receiver)"
    if path is None:
        return Check(
            "alerts.routing",
            item,
            "warn",
            "routing not checked: pass --alertmanager-config FILE (checked with amtool when installed)",
        )
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return Check("alerts.routing", item, "fail", f"cannot read {path}: {exc}")
    if not isinstance(config, dict) or not isinstance(config.get("route"), dict):
        return Check("alerts.routing", item, "fail", f"{path} has no top-level route")
    receivers = {
        str(r.get("name")): r for r in config.get("receivers") or [] if isinstance(r, dict)
    }
    pairs = sorted(
        {
            (
                str((r.get("labels") or {}).get("team") or ""),
                str((r.get("labels") or {}).get("severity") or ""),
            )
            for r in art.rules
        }
    )
    if not amtool:
        return Check(
            "alerts.routing",
            item,
            "warn",
            f"routing not tested: amtool not found (install the Debian package "
            f"prometheus-alertmanager; {len(pairs)} team/severity pair(s) to route)",
        )
    problems: list[str] = []
    warnings: list[str] = []
    details: list[str] = []
    routed: dict[tuple[str, str], list[str]] = {}
    for team, severity in pairs:
        labels = {"team": team, "severity": severity}
        try:
            names = _amtool_route(amtool, path, labels)
        except (ValueError, OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"team={team} severity={severity}: routing failed: {exc}")
            continue
        silent = [n for n in names if not _integrations(receivers.get(n, {}))]
        where = ", ".join(names) or "nothing"
        if not names or len(silent) == len(names):
            problems.append(
                f"team={team} severity={severity} routes to {where}, which sends nowhere "
                "(no *_configs): add a route for this team"
            )
        else:
            routed[(team, severity)] = names
            details.append(f"team={team} severity={severity} -> {where}")
    for (team, severity), names in routed.items():
        if severity != "test":
            continue
        paged = sorted(set(names) & set(routed.get((team, "critical"), [])))
        if paged:
            warnings.append(
                f"test alerts of team {team} go to {', '.join(paged)}, like its critical alerts: "
                'route severity="test" to a receiver that never pages'
            )
    if not problems and warnings:
        return Check("alerts.routing", item, "warn", warnings[0], [*warnings[1:], *details])
    return _check(
        "alerts.routing",
        item,
        problems,
        f"{len(pairs)} team/severity pair(s) route to a receiver (amtool config routes test)",
        details=details,
    )


# -- tested, playbooks, dashboards --------------------------------------------------------------


def _check_tested(art: _Artifacts) -> Check:
    item = "Alerts have been tested (trigger manually)"
    if art.rules_error is not None:
        return Check("alerts.tested", item, "fail", art.rules_error)
    test_rules = [
        r["alert"]
        for r in art.rules
        if str((r.get("labels") or {}).get("severity")) == "test"
        or 'test="true"' in str(r.get("expr", ""))
    ]
    try:
        from invariantkit._invariant import fire_test_alert  # noqa: F401 - availability
    except ImportError:
        return Check("alerts.tested", item, "fail", "ik.fire_test_alert() is not available")
    if not test_rules:
        return Check(
            "alerts.tested", item, "fail", 'no alert rule fires on test violations (test="true")'
        )
    return Check(
        "alerts.tested",
        item,
        "pass",
        f"test alert rule {', '.join(test_rules)}; run `invariantkit fire-test-alert -m ...` in "
        "staging and check it reaches its receiver",
    )


def _is_url(value: str) -> bool:
    return re.match(r"[a-z][a-z0-9+.-]*://", value) is not None


def _check_playbooks(catalog: Catalog, art: _Artifacts, playbooks_dir: Path | None) -> Check:
    item = "Playbooks exist and are up to date"
    if art.rules_error is not None:
        return Check("playbooks", item, "fail", art.rules_error)
    generated = art.playbooks or {}
    generated_names = {Path(name).name for name in generated}
    problems: list[str] = []
    stale: list[str] = []
    details: list[str] = []
    declared = {
        str(getattr(d, "runbook_url", ""))
        for d in [
            *catalog.invariants.values(),
            *catalog.crons.values(),
            *catalog.constraints.values(),
        ]
        if getattr(d, "runbook_url", None)
    }
    for rule in art.rules:
        url = str((rule.get("annotations") or {}).get("runbook_url") or "")
        if not url:
            problems.append(f"alert {rule['alert']} has no runbook_url")
            continue
        if _is_url(url):
            details.append(f"{rule['alert']}: {url} (external, not fetched)")
            continue
        if url in declared:
            if not Path(url).exists():
                problems.append(f"alert {rule['alert']}: playbook {url} does not exist")
            continue
        name = Path(url).name
        if art.playbooks is not None and name not in generated_names:
            problems.append(f"alert {rule['alert']}: no playbook {name} is generated")
            continue
        if playbooks_dir is not None:
            path = playbooks_dir / name
            if not path.is_file():
                problems.append(f"alert {rule['alert']}: {path} is missing")
            elif art.playbooks is not None:
                text = next(t for n, t in generated.items() if Path(n).name == name)
                if path.read_text(encoding="utf-8").strip() != text.strip():
                    stale.append(f"{path} differs from the generated playbook")
    if art.playbooks_error is not None:
        problems.append(art.playbooks_error)
    if problems:
        return Check(
            "playbooks",
            item,
            "fail",
            problems[0] if len(problems) == 1 else f"{len(problems)} problems",
            problems,
        )
    if stale:
        return Check(
            "playbooks",
            item,
            "warn",
            f"{len(sorted(set(stale)))} playbook(s) out of date: regenerate with "
            "`invariantkit playbooks -m ... -o DIR`",
            sorted(set(stale)),
        )
    if playbooks_dir is None and any(
        not _is_url(str((r.get("annotations") or {}).get("runbook_url"))) for r in art.rules
    ):
        return Check(
            "playbooks",
            item,
            "warn",
            f"{len(generated)} playbooks generated; not checked that they are published: pass "
            "--playbooks DIR (written by `invariantkit playbooks -o DIR`)",
            details,
        )
    return Check(
        "playbooks",
        item,
        "pass",
        "every alert links a playbook that exists and is current",
        details,
    )


def _panels(board: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in board.get("panels") or []:
        if not isinstance(panel, Mapping):
            continue
        if panel.get("type") == "row":
            yield from _panels(panel)
            continue
        yield panel


def _find_owner(board: Mapping[str, Any]) -> str | None:
    for key in ("owner",):
        if board.get(key):
            return str(board[key])
    for tag in board.get("tags") or []:
        if str(tag).lower().startswith("owner:"):
            return str(tag).split(":", 1)[1]
    text = json.dumps(board.get("description", "")) + json.dumps(board.get("links", []))
    m = re.search(r"[Oo]wner[\"':\s]+(@?[\w-]+)", text)
    return m.group(1) if m else None


def _check_dashboards(art: _Artifacts) -> Check:
    item = "Dashboards have owners and descriptions"
    if art.dashboards is None:
        return Check("dashboards", item, "fail", art.dashboards_error or "no dashboards generated")
    problems: list[str] = []
    for name, doc in art.dashboards.items():
        board = doc.get("dashboard", doc) if isinstance(doc, Mapping) else {}
        title = board.get("title") or name
        if not _find_owner(board):
            problems.append(f"dashboard {title!r} has no owner")
        if not str(board.get("description") or "").strip():
            problems.append(f"dashboard {title!r} has no description (purpose)")
        for panel in _panels(board):
            if not str(panel.get("description") or "").strip():
                problems.append(
                    f"dashboard {title!r}: panel {panel.get('title')!r} has no description"
                )
    return _check(
        "dashboards",
        item,
        problems,
        f"{len(art.dashboards)} dashboard(s) with owner, description and described panels",
    )


# -- sampling -----------------------------------------------------------------------------------


def _sentry_client() -> Any:
    """The application's Sentry client: the one its invariantkit configuration uses, else the
    one ``sentry_sdk.init`` made; None when Sentry is not set up."""
    if "sentry_sdk" not in sys.modules:
        return None
    import sentry_sdk

    from invariantkit._config import STATE

    config = STATE.config
    if config is not None:
        for sink in config.sinks:
            client = getattr(sink, "client", None)
            if getattr(sink, "name", "") == "sentry" and client is not None:
                return client
    client = sentry_sdk.get_client()
    return client if client.is_active() else None


def _check_sampling() -> list[Check]:
    item = "Sampling rates are appropriate (not missing events)"
    checks: list[Check] = []
    client = _sentry_client()
    if client is None:
        checks.append(
            Check(
                "sampling.sentry",
                item,
                "skip",
                "no Sentry client in the application (call sentry_sdk.init in the module, or "
                "configure the Sentry sink)",
            )
        )
    else:
        options = client.options
        rate = options.get("sample_rate", 1.0)
        problems = []
        if rate is None or float(rate) < 1.0:
            problems.append(
                f"Sentry sample_rate={rate}: {1 - float(rate or 0):.0%} of errors and invariant "
                "violations are dropped; set sample_rate=1.0 (sample traces with traces_sample_rate)"
            )
        if options.get("error_sampler") is not None:
            problems.append(
                "Sentry error_sampler is set: make sure it returns 1.0 for invariant violations"
            )
        checks.append(
            _check(
                "sampling.sentry",
                item,
                problems,
                "Sentry sample_rate=1.0: every error and violation is kept",
            )
        )
        from invariantkit.sinks._sentry import check_transport_queue

        queue = check_transport_queue(client)
        checks.append(
            Check(
                "sampling.sentry_queue",
                "Sampling rates are appropriate (a burst of violations fits Sentry's queue)",
                "warn" if queue else "pass",
                queue
                or f"Sentry transport_queue_size={options.get('transport_queue_size')} holds a burst",
            )
        )
    from opentelemetry import trace

    from invariantkit._config import STATE

    provider: Any = trace.get_tracer_provider()
    for sink in STATE.config.sinks if STATE.config is not None else ():
        if getattr(sink, "name", "") == "otel_traces" and getattr(sink, "provider", None):
            provider = getattr(sink, "provider", None)
    sampler = getattr(provider, "sampler", None)
    if sampler is not None:
        description = (
            sampler.get_description() if hasattr(sampler, "get_description") else str(sampler)
        )
        root = re.match(r"ParentBased\{root:(\w+(?:\{[^}]*\})?)", description)
        effective = root.group(1) if root else description
        ratio = re.match(r"TraceIdRatioBased\{([\d.eE+-]+)\}", effective)
        low = effective.startswith("AlwaysOff") or (ratio is not None and float(ratio.group(1)) < 1)
        checks.append(
            Check(
                "sampling.traces",
                "Sampling rates are appropriate (traces)",
                "warn" if low else "pass",
                f"trace sampler {description}: spans of some violations are not kept (the trace "
                "id still reaches Sentry, PostHog and the logs)"
                if low
                else f"trace sampler {description}",
            )
        )
    return checks


# -- correlation (a synthetic operation through real pipelines) ---------------------------------


def _configured_backends() -> tuple[list[str], bool]:
    """The backends the application configured (or would auto-detect), and whether it
    configured invariantkit itself."""
    from invariantkit._config import STATE
    from invariantkit.sinks._registry import auto_sinks

    config = STATE.config
    if config is not None:
        return [getattr(s, "name", type(s).__name__) for s in config.sinks], True
    return [getattr(s, "name", type(s).__name__) for s in auto_sinks()], False


def _check_correlation() -> list[Check]:
    import invariantkit as ik
    from invariantkit._invariant import emit_violation
    from invariantkit.testing import capture_signals

    item_ids = "Correlation IDs propagate across all systems"
    item_user = "Sentry, Grafana, PostHog all have the same user_id"
    app_client = _sentry_client()
    before_send = app_client.options.get("before_send") if app_client is not None else None
    problems: list[str] = []
    user_problems: list[str] = []
    details: list[str] = []
    with capture_signals(service="invariantkit-verify", environment="verify") as signals:
        probe = ik.Invariant(
            "INVARIANTKIT_VERIFY_PROBE",
            type="verify_probe",
            severity="warning",
            summary="Synthetic violation sent by invariantkit verify",
        )
        operation = ik.operation("invariantkit_verify_probe", user_facing=True)
        downstream = ik.operation("invariantkit_verify_downstream", user_facing=True)
        headers: dict[str, str] = {}
        with ik.identify(PROBE_USER), operation as run:
            trace_id = run.correlation_id
            emit_violation(probe, {"probe": "verify"}, None, test=True)
            ik.track("invariantkit_verify_probe")
            ik.inject(headers)

        def next_service() -> str:
            with ik.extract(headers), downstream as remote:
                return remote.correlation_id

        remote_id = contextvars.Context().run(next_service)
        spans = {format(s.context.trace_id, "032x"): s for s in signals.spans}
        span = spans.get(trace_id)
        events = [e for e in signals.sentry_events if e.get("message") == probe.name]
        posthog = [m for m in signals.posthog_events if m.get("event") == "invariant_violated"]
        logs = [line for line in signals.logs if line.get("event") == "invariant.violated"]
        exemplar = None
        if signals.registry is not None:
            for family in signals.registry.collect():
                for sample in family.samples:
                    if (
                        sample.name == sc.VIOLATIONS.name
                        and sample.labels.get("invariant") == probe.name
                        and sample.exemplar is not None
                    ):
                        exemplar = sample.exemplar.labels.get("trace_id")
        seen = {
            "trace (span)": format(span.context.trace_id, "032x") if span is not None else None,
            "Sentry (contexts.trace)": ((events[0].get("contexts") or {}).get("trace") or {}).get(
                "trace_id"
            )
            if events
            else None,
            "Sentry (tag trace_id)": (events[0].get("tags") or {}).get("trace_id")
            if events
            else None,
            "Prometheus (exemplar)": exemplar,
            "PostHog (trace_id)": (posthog[0].get("properties") or {}).get("trace_id")
            if posthog
            else None,
            "log (trace_id)": logs[0].get("trace_id") if logs else None,
            "next service (traceparent)": remote_id,
        }
        for where, value in seen.items():
            if value != trace_id:
                problems.append(f"{where}: {value or 'nothing received'} instead of {trace_id}")
        users = {
            "trace (enduser.id)": (span.attributes or {}).get("enduser.id")
            if span is not None
            else None,
            "Sentry (user.id)": (events[0].get("user") or {}).get("id") if events else None,
            "PostHog (distinct_id)": posthog[0].get("distinct_id") if posthog else None,
            "log (user_id)": logs[0].get("user_id") if logs else None,
        }
        for where, value in users.items():
            if value != PROBE_USER:
                user_problems.append(f"{where}: {value!r} instead of {PROBE_USER!r}")
        downstream_logs = [
            line
            for line in signals.logs
            if line.get("operation") == "invariantkit_verify_downstream"
        ]
        if downstream_logs and downstream_logs[0].get("user_id") != PROBE_USER:
            user_problems.append(
                f"next service (baggage user_id): {downstream_logs[0].get('user_id')!r} instead of {PROBE_USER!r}"
            )
        if before_send is not None and events:
            event = json.loads(json.dumps(events[0], default=str))
            try:
                kept = before_send(event, {})
            except Exception as exc:
                problems.append(
                    f"your Sentry before_send raised {type(exc).__name__} on a violation: {exc}"
                )
            else:
                if kept is None:
                    problems.append("your Sentry before_send drops invariant violations")
                else:
                    if (kept.get("tags") or {}).get("trace_id") != trace_id:
                        problems.append("your Sentry before_send removes the trace_id tag")
                    if (kept.get("user") or {}).get("id") != PROBE_USER:
                        user_problems.append("your Sentry before_send removes the user")
                    details.append("your Sentry before_send keeps violations, trace_id and user")
    backends, configured = _configured_backends()
    names = {
        "otel_traces": "traces",
        "prometheus": "Prometheus",
        "otel_metrics": "OTel metrics",
        "sentry": "Sentry",
        "posthog": "PostHog",
        "json_logs": "logs",
    }
    have = [names.get(b, b) for b in backends]
    missing = [
        label
        for key, label in (("otel_traces", "traces"), ("sentry", "Sentry"), ("posthog", "PostHog"))
        if key not in backends
    ]
    source = (
        "configured by your module"
        if configured
        else "auto-detected in this process (your module does not call ik.configure at import)"
    )
    details.insert(0, f"backends {source}: {', '.join(have) or 'none'}")
    checks = [
        _check(
            "correlation.trace_id",
            item_ids,
            problems,
            f"one trace id ({trace_id}) in the span, Sentry, the Prometheus exemplar, PostHog, "
            "the log line and the next service, on in-process pipelines of the real SDKs; "
            f"your configuration sends to: {', '.join(have) or 'nothing'}",
            details=details,
        ),
        _check(
            "correlation.user_id",
            item_user,
            user_problems,
            "one user id in the span, Sentry, PostHog, the log line and the next service "
            f"(in-process pipelines; your configuration sends to: {', '.join(have) or 'nothing'})",
        ),
    ]
    if missing:
        checks.append(
            Check(
                "correlation.backends",
                "Every backend is configured",
                "warn",
                f"{', '.join(missing)} not configured in the application: "
                + (
                    "its signals are not sent"
                    if configured
                    else "call ik.configure() in the module, or set it up at import"
                ),
                details[:1],
            )
        )
    return checks


# -- database constraints -----------------------------------------------------------------------


def _connect(dsn: str) -> tuple[Any, Callable[[], None]]:
    conn: Any
    if re.match(r"postgres(ql)?(\+\w+)?://", dsn) or "host=" in dsn or "dbname=" in dsn:
        dsn = re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", dsn)
        try:
            import psycopg

            conn = psycopg.connect(dsn, connect_timeout=10, autocommit=True)
        except ImportError:
            try:
                import psycopg2
            except ImportError as exc:
                raise ValueError(
                    "checking PostgreSQL needs psycopg (pip install 'psycopg[binary]')"
                ) from exc
            conn = psycopg2.connect(dsn, connect_timeout=10)
        return conn, conn.close
    import sqlite3

    path = dsn[len("sqlite:///") :] if dsn.startswith("sqlite:///") else dsn
    if not Path(path).is_file():
        raise ValueError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    return conn, conn.close


def _check_constraints(catalog: Catalog, dsn: str | None) -> Check:
    item = "Declared database constraints exist"
    names = sorted(catalog.constraints)
    if not names:
        return Check(
            "constraints",
            item,
            "warn",
            "no constraint declared: the unique index that stops double charges is not watched "
            "(declare ik.Constraint('subscription_payment_events_idempotency_idx'))",
        )
    if dsn is None:
        return Check("constraints", item, "warn", f"{len(names)} declared, not checked: pass --dsn")
    import invariantkit as ik
    from invariantkit.testing import capture_signals

    try:
        conn, close = _connect(dsn)
    except Exception as exc:
        return Check(
            "constraints",
            item,
            "fail",
            f"cannot connect to the database: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
        )
    try:
        # Into in-process pipelines: verify reports what it found; it does not page anyone.
        with capture_signals(service="invariantkit-verify", environment="verify"):
            found = ik.verify_constraints(conn, names)
    except Exception as exc:
        return Check(
            "constraints", item, "fail", f"verify_constraints failed: {type(exc).__name__}: {exc}"
        )
    finally:
        try:
            close()
        except Exception:
            pass
    missing = [
        f"constraint {n} is missing from the database" for n, ok in sorted(found.items()) if not ok
    ]
    return _check(
        "constraints",
        item,
        missing,
        f"{len(found)} constraint(s) present: {', '.join(sorted(found))}",
    )


# -- the checklist ------------------------------------------------------------------------------


def run_checks(
    *,
    modules: Sequence[str] = (),
    alertmanager_config: Path | None = None,
    dsn: str | None = None,
    playbooks_dir: Path | None = None,
    amtool: str | Literal[False] | None = None,
    promtool: str | Literal[False] | None = None,
    catalog: Catalog | None = None,
) -> list[Check]:
    """Run the checklist for what is declared in ``catalog`` (default: the process-wide one,
    after the caller imported the application's ``modules``).

    ``amtool``/``promtool``: the tools' paths; None finds them on ``PATH``, False never uses
    them.
    """
    catalog = catalog if catalog is not None else get_catalog()
    am = (shutil.which("amtool") if amtool is None else amtool) or None
    prom = (shutil.which("promtool") if promtool is None else promtool) or None
    art = _generate(catalog)
    checks: list[Check] = [
        *_check_alerts_configured(catalog, art),
        _check_rules_valid(art, prom),
        _check_teams(art),
        _check_routing(art, alertmanager_config, am),
        _check_tested(art),
        _check_playbooks(catalog, art, playbooks_dir),
        _check_dashboards(art),
        *_check_sampling(),
        *_check_correlation(),
        _check_constraints(catalog, dsn),
        *_check_at_rest(catalog, art),
    ]
    return checks


def _check_at_rest(catalog: Catalog, art: _Artifacts) -> list[Check]:
    """Every at-rest check (ik.Check) has a staleness rule, and its invariant an alert with a
    runbook: a check that stopped running, or whose findings page nobody, reads as all good."""
    checks = getattr(catalog, "checks", {})
    if not checks:
        return []
    item = "At-rest checks have a staleness alert and their invariants a runbook"
    if art.rules_error is not None:
        return [Check("checks.at_rest", item, "fail", art.rules_error)]
    books = {Path(name).name for name in art.playbooks or {}}
    problems: list[str] = []
    exprs = [(r, str(r.get("expr", ""))) for r in art.rules]
    for name in sorted(checks):
        check = checks[name]
        if not any(
            "invariant_check_last_run_timestamp_seconds" in e and _mentions(e, name)
            for _, e in exprs
        ):
            problems.append(f"check {name} has no staleness rule")
        inv = check.invariant.name
        if catalog.invariants.get(inv) is not check.invariant:
            problems.append(f"check {name}: its invariant {inv} is not declared in the catalog")
            continue
        urls = [
            str((r.get("annotations") or {}).get("runbook_url") or "")
            for r, e in exprs
            if "billing_invariant_violation_total" in e and _mentions(e, inv)
        ]
        if not any(u and (_is_url(u) or Path(u).name in books or Path(u).exists()) for u in urls):
            problems.append(f"check {name}: invariant {inv} has no alert with a runbook")
    return [
        _check(
            "checks.at_rest",
            item,
            problems,
            f"{len(checks)} check(s), each with a staleness alert and a runbook",
        )
    ]


_ICONS = {
    "pass": "[green]✓ pass[/]",
    "fail": "[red]✗ FAIL[/]",
    "warn": "[yellow]! warn[/]",
    "skip": "[dim]- skip[/]",
}


def render_checks(checks: Sequence[Check], console: Console) -> None:
    """Print the checklist as a table with a summary line."""
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAVY,
        title="Is monitoring sound? (the guide's checklist)",
        title_justify="left",
    )
    table.add_column("", no_wrap=True)
    table.add_column("Checklist item", max_width=44)
    table.add_column("Why")
    for check in checks:
        why = check.reason
        if check.details and check.status in ("fail", "warn"):
            why += "".join(f"\n  • {d}" for d in check.details[:12])
        table.add_row(_ICONS[check.status], check.item, why)
    console.print(table)
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("pass", "fail", "warn", "skip")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if counts["fail"]:
        console.print(f"[bold red]Monitoring is not sound:[/] {summary}")
    else:
        console.print(f"[bold green]Monitoring is sound:[/] {summary}")


# -- fire-test-alert ----------------------------------------------------------------------------


@dataclass
class FiredResult:
    """What ``invariantkit fire-test-alert`` sent, and through which sinks."""

    sent: dict[str, str]
    sinks: list[str]
    flushed: bool
    source: str
    pushed: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.sent) and self.flushed and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sent": dict(self.sent),
            "sinks": list(self.sinks),
            "source": self.source,
            "flushed": self.flushed,
            "pushed": self.pushed,
            "problems": list(self.problems),
        }


def _env_sinks(environ: Mapping[str, str]) -> tuple[list[Any], list[Callable[[], None]], Any]:
    """Sinks for the backends the environment names (the CLI's own process has none set up)."""
    import logging

    from invariantkit.sinks._logs import JsonFormatter, JsonLogs

    sinks: list[Any] = []
    closers: list[Callable[[], None]] = []
    registry = None
    for name in ("otel_traces", "prometheus", "sentry", "posthog"):
        try:
            built = sink_from_env(name, environ)
        except ImportError:  # its SDK is not installed (SinkUnavailable included)
            continue
        if built is not None:
            sinks.append(built.sink)
            closers.append(built.close)
            if name == "prometheus":
                registry = built.store
    logger = logging.getLogger("invariantkit.test_alert")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    previous = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def restore_logger() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]

    closers.append(restore_logger)
    sinks.append(JsonLogs(logger))
    return sinks, closers, registry


def fire_test_alerts(
    *,
    invariant: str | None = None,
    pushgateway: str | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> FiredResult:
    """Send the test violation of ``invariant`` (default: every declared one) through every
    configured sink and flush; push the test counter to ``pushgateway`` when given."""
    import invariantkit as ik
    from invariantkit._config import STATE, current_config
    from invariantkit._invariant import announce_test_children, fire_test_alert

    env = os.environ if environ is None else environ
    catalog = get_catalog()
    if invariant is not None and invariant not in catalog.invariants:
        known = ", ".join(sorted(catalog.invariants)) or "none"
        return FiredResult(
            {},
            [],
            False,
            "",
            problems=[f"invariant {invariant!r} is not declared (declared: {known})"],
        )
    closers: list[Callable[[], None]] = []
    registry = None
    owned = STATE.config is None
    if owned:
        sinks, closers, registry = _env_sinks(env)
        ik.configure(sinks=sinks, service=env.get("OTEL_SERVICE_NAME") or "invariantkit-test-alert")
        source = (
            "the environment (SENTRY_DSN, POSTHOG_PROJECT_API_KEY, OTEL_EXPORTER_OTLP_ENDPOINT)"
        )
    else:
        source = "your module's ik.configure()"
    config = current_config()
    names = [getattr(s, "name", type(s).__name__) for s in config.sinks]
    problems: list[str] = []
    pushed = None
    try:
        announce_test_children()
        lost_before = _sentry_losses(config.sinks)
        sent = fire_test_alert(invariant)
        flushed = ik.flush(timeout=timeout)
        if not flushed:
            problems.append(f"not every sink flushed within {timeout:g} s")
        if _sentry_losses(config.sinks) > lost_before:
            problems.append("Sentry did not take the test event (unreachable? check the DSN)")
        if pushgateway is None:
            for sink in config.sinks:
                url = getattr(sink, "pushgateway", None)
                if getattr(sink, "name", "") == "prometheus" and url:
                    pushgateway = str(url)
        if pushgateway:
            pushed, problem = _push(config.sinks, registry, pushgateway)
            if problem:
                problems.append(problem)
    finally:
        if owned:
            ik.shutdown(timeout=timeout)
            for close in reversed(closers):
                try:
                    close()
                except Exception:
                    pass
    return FiredResult(sent, names, flushed, source, pushed, problems)


def _sentry_losses(sinks: Sequence[Any]) -> float:
    """Events the Sentry SDK lost so far (network errors...), as the Prometheus sinks count
    them in ``invariantkit_sink_dropped_total{sink="sentry"}``."""
    total = 0.0
    for sink in sinks:
        registry = (
            getattr(sink, "registry", None) if getattr(sink, "name", "") == "prometheus" else None
        )
        if registry is None:
            continue
        for family in registry.collect():
            if family.name == "invariantkit_sink_dropped":
                total += sum(
                    s.value
                    for s in family.samples
                    if s.name.endswith("_total") and s.labels.get("sink") == "sentry"
                )
    return total


def _push(sinks: Sequence[Any], registry: Any, url: str) -> tuple[str | None, str | None]:
    from prometheus_client import pushadd_to_gateway

    from invariantkit.sinks._prometheus import _redacted, _split_credentials

    registries = [
        getattr(s, "registry", None) for s in sinks if getattr(s, "name", "") == "prometheus"
    ]
    target = (
        registry if registry is not None else next((r for r in registries if r is not None), None)
    )
    if target is None:
        return None, "no Prometheus sink configured: nothing to push"
    address, auth = _split_credentials(url)
    kwargs: dict[str, Any] = {}
    if auth is not None:
        from prometheus_client.exposition import basic_auth_handler

        user, password = auth

        def handler(
            url: str, method: str, timeout: float | None, headers: Any, data: bytes
        ) -> Callable[[], None]:
            return basic_auth_handler(url, method, timeout, headers, data, user, password)

        kwargs["handler"] = handler
    try:
        pushadd_to_gateway(
            address, job="invariantkit_test_alert", registry=target, timeout=10, **kwargs
        )
    except Exception as exc:
        return None, f"push to the Pushgateway {_redacted(url)} failed: {type(exc).__name__}: {exc}"
    return _redacted(url), None


def render_fired(result: FiredResult, console: Console) -> None:
    """Print what was sent and the ids to search for."""
    if not result.sent:
        for problem in result.problems or ["nothing was sent"]:
            console.print(f"[red]✗[/] {problem}")
        return
    console.print(f"Test alerts sent through [bold]{', '.join(result.sinks)}[/] ({result.source}):")
    for name, trace_id in result.sent.items():
        console.print(f"  {name}: trace id [bold cyan]{trace_id}[/]")
    first = next(iter(result.sent.values()))
    console.print(
        f"Search: Sentry [cyan]test:true trace_id:{first}[/] · PostHog [cyan]invariant_violated[/] with "
        f"trace_id {first} · logs [cyan]trace_id={first}[/] · Prometheus "
        '[cyan]billing_invariant_violation_total{test="true"}[/]'
        + (f" (pushed to {result.pushed})" if result.pushed else "")
    )
    for problem in result.problems:
        console.print(f"[red]✗[/] {problem}")
    if result.ok:
        console.print(
            "[green]Flushed.[/] Check that each alert reached its receiver, then resolve it."
        )
