"""What each backend received for each seeded fault, and which alerts would fire."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from invariantkit._demo._pipeline import Pipeline
from invariantkit._demo._promtool import AlertState
from invariantkit._demo._simulation import FaultRun, SimResult
from invariantkit._demo._timeline import key

__all__ = ["BACKENDS", "Cell", "DemoReport", "FaultReport", "build_report"]

BACKENDS: tuple[str, ...] = ("sentry", "prometheus", "trace", "posthog", "log")
BACKEND_TITLES = {
    "sentry": "Sentry",
    "prometheus": "Prometheus",
    "trace": "Trace",
    "posthog": "PostHog",
    "log": "Log",
}


@dataclass
class Cell:
    """One backend's view of one fault."""

    expected: bool  # False: this backend must stay silent for this fault (by design)
    count: float
    caught: bool
    detail: str
    correlated: bool | None = None  # carries the fault's trace id (None: not applicable)

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "count": self.count,
            "caught": self.caught,
            "correlated": self.correlated,
            "detail": self.detail,
        }


@dataclass
class FaultReport:
    """One seeded fault: what it was, its correlation id, each backend, its alert."""

    run: FaultRun
    cells: dict[str, Cell]
    alerts: list[str] = field(default_factory=list)
    alert_expected: bool = True

    @property
    def caught(self) -> bool:
        return (
            self.run.trace_id is not None
            and all(c.caught for c in self.cells.values())
            and (bool(self.alerts) or not self.alert_expected)
        )

    def as_dict(self) -> dict[str, Any]:
        run = self.run
        return {
            "key": run.spec.key,
            "title": run.spec.title,
            "signal": run.spec.signal,
            "story": run.spec.story,
            "day": run.day,
            "detail": run.detail,
            "trace_id": run.trace_id,
            "user_id": run.user_id,
            "subscription_id": run.subscription_id,
            "caught": self.caught,
            "backends": {name: cell.as_dict() for name, cell in self.cells.items()},
            "alerts": list(self.alerts),
        }


@dataclass
class DemoReport:
    """The whole run, ready to print as tables or JSON."""

    sim: SimResult
    faults: list[FaultReport]
    alerts: list[AlertState]
    rules_error: str | None
    destinations: dict[str, str]
    delivery: dict[str, str]
    elapsed: float

    delivered: bool = True  # every configured real backend accepted what it was sent

    @property
    def ok(self) -> bool:
        return bool(self.faults) and all(f.caught for f in self.faults) and self.delivered

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.sim.seed,
            "subscriptions": self.sim.subscriptions,
            "days": self.sim.days,
            "elapsed_seconds": round(self.elapsed, 3),
            "destinations": dict(self.destinations),
            "delivery": dict(self.delivery),
            "delivered": self.delivered,
            "stats": dict(self.sim.stats),
            "faults": [f.as_dict() for f in self.faults],
            "alerts": [
                {
                    "alert": a.rule.alert,
                    "severity": a.rule.labels.get("severity"),
                    "team": a.rule.labels.get("team"),
                    "expr": a.rule.expr,
                    "fires": a.fires,
                    "error": a.error,
                    "fired": [
                        {
                            "at": _iso(when),
                            "day": int((when - self.sim.start) // 86400),
                            "labels": dict(labels),
                        }
                        for when, labels in a.fired
                    ],
                    "firing_at_end": [dict(labels) for labels in a.firing_at_end],
                }
                for a in self.alerts
            ],
            "rules_error": self.rules_error,
            "evaluated_by": "promtool test rules" if self.rules_error is None else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False, default=str)


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- indexes of what each backend received ------------------------------------------------------


class _Received:
    def __init__(self, pipeline: Pipeline) -> None:
        self.spans: dict[str, list[Any]] = defaultdict(list)
        for span in pipeline.spans:
            self.spans[format(span.context.trace_id, "032x")].append(span)
        self.sentry: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.checkins: dict[str, dict[str, Any]] = {}
        for envelope in pipeline.sentry_envelopes:
            for item in envelope.items:
                if item.type == "check_in":
                    checkin = json.loads(item.get_bytes())
                    self.checkins[f"{checkin.get('check_in_id')}:{checkin.get('status')}"] = checkin
            event = envelope.get_event()
            if event is not None:
                tid = ((event.get("contexts") or {}).get("trace") or {}).get("trace_id")
                self.sentry[str(tid)].append(event)
        self.posthog: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for message in pipeline.posthog_messages:
            self.posthog[str((message.get("properties") or {}).get("trace_id"))].append(message)
        self.logs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in pipeline.log_lines:
            self.logs[str(line.get("trace_id"))].append(line)


def _in(ids: Iterable[str], index: dict[str, list[Any]]) -> list[Any]:
    out: list[Any] = []
    for tid in ids:
        out.extend(index.get(tid, ()))
    return out


# -- the checks, per fault ----------------------------------------------------------------------


def _violation_cells(run: FaultRun, got: _Received) -> dict[str, Cell]:
    name, tid, user = run.spec.signal, run.trace_id or "", run.user_id
    sentry = [e for e in got.sentry.get(tid, []) if e.get("message") == name]
    sentry_ok = bool(sentry) and all(
        (e.get("tags") or {}).get("trace_id") == tid
        and (user is None or (e.get("user") or {}).get("id") == user)
        for e in sentry
    )
    level = sentry[0].get("level") if sentry else None
    others = len(got.sentry.get(tid, [])) - len(sentry)
    sentry_detail = f"{len(sentry)} {level or ''} message".strip() + (
        f" + {others} exception" if others else ""
    )
    series = key(
        "billing_invariant_violation_total", invariant=name, test="false", type=_type_label(run)
    )
    delta = run.after.get(series, 0.0) - run.before.get(series, 0.0)
    exemplar = run.exemplars.get(series, {}).get("trace_id")
    spans = [
        s
        for s in got.spans.get(tid, [])
        if any(
            ev.name == "invariant.violated" and (ev.attributes or {}).get("invariant.name") == name
            for ev in s.events
        )
    ]
    span_users = {(s.attributes or {}).get("enduser.id") for s in spans}
    posthog = [
        m
        for m in got.posthog.get(tid, [])
        if m.get("event") == "invariant_violated"
        and (m.get("properties") or {}).get("invariant") == name
    ]
    posthog_ok = bool(posthog) and all(
        m.get("distinct_id") == (user if user is not None else tid) for m in posthog
    )
    logs = [
        line
        for line in got.logs.get(tid, [])
        if line.get("event") == "invariant.violated" and line.get("invariant") == name
    ]
    logs_ok = bool(logs) and all(line.get("user_id") == user for line in logs)
    return {
        "sentry": Cell(True, len(sentry), sentry_ok, sentry_detail, sentry_ok),
        "prometheus": Cell(
            True,
            delta,
            delta >= 1 and exemplar == tid,
            f"+{delta:g}, exemplar {'= trace id' if exemplar == tid else 'missing' if exemplar is None else 'differs'}",
            exemplar == tid,
        ),
        "trace": Cell(
            True,
            len(spans),
            bool(spans) and (user is None or user in span_users),
            f"{len(spans)} span event invariant.violated",
            bool(spans),
        ),
        "posthog": Cell(
            True, len(posthog), posthog_ok, f"{len(posthog)} invariant_violated", posthog_ok
        ),
        "log": Cell(True, len(logs), logs_ok, f"{len(logs)} critical line", logs_ok),
    }


def _type_label(run: FaultRun) -> str:
    from invariantkit._catalog import get_catalog

    inv = get_catalog().invariants.get(run.spec.signal)
    return inv.type if inv is not None else ""


def _storm_cells(run: FaultRun, got: _Received) -> dict[str, Cell]:
    retries = [r for r in run.records if r.kind == "retry"]
    ids = {r.trace_id for r in run.records if r.kind in ("retry", "operation")}
    tid = run.trace_id or ""
    sentry = _in(ids, got.sentry)
    series = key("billing_idempotent_retry_total", operation="record_payment_event")
    delta = run.after.get(series, 0.0) - run.before.get(series, 0.0)
    retry_events = sum(
        1 for s in _in(ids, got.spans) for ev in s.events if ev.name == "idempotent.retry"
    )
    first_span = any(
        any(ev.name == "idempotent.retry" for ev in s.events) for s in got.spans.get(tid, [])
    )
    posthog = _in(ids, got.posthog)
    logs = [line for line in _in(ids, got.logs) if line.get("event") == "idempotent.retry"]
    first_log = any(line.get("event") == "idempotent.retry" for line in got.logs.get(tid, []))
    return {
        "sentry": Cell(
            False, len(sentry), not sentry, f"{len(sentry)} (expected retries: no alert)"
        ),
        "prometheus": Cell(
            True, delta, delta == len(retries) and delta > 0, f"+{delta:,.0f} retries"
        ),
        "trace": Cell(
            True,
            retry_events,
            retry_events == len(retries) and first_span,
            f"{retry_events:,} span events idempotent.retry",
            first_span,
        ),
        "posthog": Cell(False, len(posthog), not posthog, f"{len(posthog)} (not user-facing)"),
        "log": Cell(
            True,
            len(logs),
            len(logs) == len(retries) and first_log,
            f"{len(logs):,} info lines idempotent.retry",
            first_log,
        ),
    }


def _cron_cells(run: FaultRun, got: _Received) -> dict[str, Cell]:
    tid = run.trace_id or ""
    failed = next((r for r in run.records if r.kind == "cron" and r.status == "error"), None)
    check_in_id = failed.attributes.get("check_in_id") if failed is not None else None
    checkin = got.checkins.get(f"{check_in_id}:error")
    exceptions = [e for e in got.sentry.get(tid, []) if e.get("exception")]
    sentry_ok = checkin is not None and bool(exceptions)
    status = run.after.get(key(f"cron_{run.spec.signal}_last_status"))
    spans = [
        s
        for s in got.spans.get(tid, [])
        if s.name == f"cron.{run.spec.signal}"
        and not s.status.is_ok
        and s.status.status_code.name == "ERROR"
    ]
    posthog = [
        m for m in got.posthog.get(tid, []) if m.get("event") == "subscription_renewal_failed"
    ]
    logs = [
        line
        for line in got.logs.get(tid, [])
        if line.get("event") == "cron.checkin" and line.get("status") == "error"
    ]
    return {
        "sentry": Cell(
            True,
            (1 if checkin else 0) + len(exceptions),
            sentry_ok,
            f"check-in {'error' if checkin else 'missing'} + {len(exceptions)} exception",
            bool(exceptions),
        ),
        "prometheus": Cell(
            True,
            status if status is not None else -1,
            status == 0.0,
            f"cron_{run.spec.signal}_last_status {status:g}" if status is not None else "no series",
        ),
        "trace": Cell(
            True, len(spans), bool(spans), f"{len(spans)} span status ERROR", bool(spans)
        ),
        "posthog": Cell(
            True,
            len(posthog),
            bool(posthog),
            f"{len(posthog)} subscription_renewal_failed",
            bool(posthog),
        ),
        "log": Cell(
            True, len(logs), bool(logs), f"{len(logs)} error line cron.checkin", bool(logs)
        ),
    }


def _constraint_cells(run: FaultRun, got: _Received) -> dict[str, Cell]:
    tid = run.trace_id or ""
    name = run.spec.signal
    sentry = [e for e in got.sentry.get(tid, []) if name in str(e.get("message") or "")]
    gauge = run.after.get(key("pg_constraint_exists", constraint=name))
    spans = got.spans.get(tid, [])
    posthog = got.posthog.get(tid, [])
    logs = [
        line
        for line in got.logs.get(tid, [])
        if line.get("event") == "constraint.checked" and line.get("status") == "missing"
    ]
    return {
        "sentry": Cell(
            True, len(sentry), bool(sentry), f"{len(sentry)} error message", bool(sentry)
        ),
        "prometheus": Cell(
            True,
            gauge if gauge is not None else -1,
            gauge == 0.0,
            f"pg_constraint_exists {gauge:g}" if gauge is not None else "no series",
        ),
        "trace": Cell(True, len(spans), bool(spans), f"{len(spans)} span", bool(spans)),
        "posthog": Cell(False, len(posthog), not posthog, f"{len(posthog)} (no user affected yet)"),
        "log": Cell(True, len(logs), bool(logs), f"{len(logs)} error line", bool(logs)),
    }


def _names(labels: dict[str, str], expr: str, label: str, value: str) -> bool:
    """The alert is about ``label=value``: by its labels, else by a positive matcher."""
    if label in labels:
        return labels[label] == value
    matcher = re.search(rf'{label}\s*(=~?)\s*"([^"]*)"', expr)
    if matcher is None:
        return False
    if matcher.group(1) == "=":
        return matcher.group(2) == value
    return re.fullmatch(matcher.group(2), value) is not None


def _fault_alerts(run: FaultRun, alerts: list[AlertState]) -> list[str]:
    """The generated alerts this fault makes fire (on or after the fault, within a day)."""
    spec = run.spec
    names: list[str] = []
    for state in alerts:
        expr = state.rule.expr
        for when, labels in state.fired:
            if not (run.sim_time - 1 <= when <= run.sim_time + 86400):
                continue
            lab = dict(labels)
            if spec.key == "retry_storm":
                hit = "billing_idempotent_retry_total" in expr
            elif spec.key == "cron_failure":
                hit = f"cron_{spec.signal}_last_status" in expr
            elif spec.key == "index_dropped":
                hit = "pg_constraint_exists" in expr and _names(
                    lab, expr, "constraint", spec.signal
                )
            else:
                hit = "billing_invariant_violation_total" in expr and (
                    _names(lab, expr, "invariant", spec.signal)
                    or _names(lab, expr, "type", _type_label(run))
                )
            if hit and state.rule.alert not in names:
                names.append(state.rule.alert)
    return names


def build_report(
    pipeline: Pipeline,
    sim: SimResult,
    alerts: list[AlertState],
    rules_error: str | None,
    elapsed: float,
) -> DemoReport:
    """Check every fault against every backend."""
    got = _Received(pipeline)
    faults: list[FaultReport] = []
    for run in sim.faults:
        if run.spec.key == "retry_storm":
            cells = _storm_cells(run, got)
        elif run.spec.key == "cron_failure":
            cells = _cron_cells(run, got)
        elif run.spec.key == "index_dropped":
            cells = _constraint_cells(run, got)
        else:
            cells = _violation_cells(run, got)
        faults.append(
            FaultReport(
                run,
                cells,
                _fault_alerts(run, alerts),
                alert_expected=rules_error is None,
            )
        )
    delivery: dict[str, str] = {}
    delivered = True
    for dest in pipeline.destinations:
        if dest.target == "in-process":
            continue
        if dest.backend == "Sentry":
            dropped = getattr(pipeline.sentry_transport, "dropped", 0)
            delivered = delivered and dropped == 0
            delivery["Sentry"] = (
                f"{len(pipeline.sentry_envelopes)} envelopes handed to the transport, "
                f"{dropped} dropped"
            )
        elif dest.backend == "PostHog":
            delivered = delivered and pipeline.posthog_failed[0] == 0
            delivery["PostHog"] = (
                f"{len(pipeline.posthog_messages)} events, {pipeline.posthog_failed[0]} failed"
            )
        elif dest.backend == "trace":
            delivered = delivered and pipeline.otlp_results["failed"] == 0
            delivery["trace"] = (
                f"{pipeline.otlp_results['exported']} spans exported, "
                f"{pipeline.otlp_results['failed']} failed"
            )
        elif dest.backend == "log":
            delivery["log"] = f"{len(pipeline.log_lines)} lines written to {dest.target}"
    return DemoReport(
        sim=sim,
        faults=faults,
        alerts=alerts,
        rules_error=rules_error,
        destinations={d.backend: d.target for d in pipeline.destinations},
        delivery=delivery,
        elapsed=elapsed,
        delivered=delivered,
    )
