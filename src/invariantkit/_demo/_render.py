"""The demo's terminal output (rich): one row per fault, one column per backend, ids to follow, alerts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from invariantkit._demo._report import BACKEND_TITLES, BACKENDS, DemoReport, FaultReport

__all__ = ["render"]

_DEST_TITLES = {
    "Sentry": "sentry",
    "Prometheus": "prometheus",
    "trace": "trace",
    "PostHog": "posthog",
    "log": "log",
}


def _when(report: DemoReport, t: float) -> str:
    day = int((t - report.sim.start) // 86400)
    return f"day {day} {dt.datetime.fromtimestamp(t, tz=dt.timezone.utc):%H:%M}"


def _cell(fault: FaultReport, backend: str) -> str:
    cell = fault.cells[backend]
    if not cell.expected:
        return f"[green]✓[/] [dim]{cell.detail}[/]" if cell.caught else f"[red]✗ {cell.detail}[/]"
    mark = "[green]✓[/]" if cell.caught else "[red]✗[/]"
    return f"{mark} {cell.detail}"


def render(report: DemoReport, console: Any) -> None:
    """Print the report: destinations, one row per fault, the ids to follow, the alerts."""
    from rich import box
    from rich.table import Table

    sim = report.sim
    console.print(
        f"[bold]invariantkit demo[/]: {sim.subscriptions} subscriptions over {sim.days} days "
        f"(seed {sim.seed}), {sim.stats['renewed']:,} renewals, {sim.stats['cron_runs']} cron runs, "
        f"{sim.stats['idempotent_retries']:,} idempotent retries, in {report.elapsed:.1f} s"
    )
    dest = Table(box=box.SIMPLE, show_header=True, title="Backends", title_justify="left")
    dest.add_column("Backend")
    dest.add_column("Signals went to")
    dest.add_column("Switch on the real one with")
    for name in ("Sentry", "Prometheus", "trace", "PostHog", "log"):
        target = report.destinations.get(name, "in-process")
        env = {
            "Sentry": "SENTRY_DSN",
            "Prometheus": "--serve PORT (scrape 127.0.0.1:PORT/metrics)",
            "trace": "OTEL_EXPORTER_OTLP_ENDPOINT",
            "PostHog": "POSTHOG_PROJECT_API_KEY, POSTHOG_HOST",
            "log": "--log-file FILE",
        }[name]
        where = target if target == "in-process" else f"[bold]{target}[/]"
        if name in report.delivery:
            where += f" ({report.delivery[name]})"
        dest.add_row(BACKEND_TITLES[_DEST_TITLES[name]], where, env)
    console.print(dest)

    table = Table(
        box=box.ROUNDED,
        title="Seeded faults, by backend (✓ caught with the fault's trace id and user id; "
        "dim ✓ = silent by design)",
        title_justify="left",
        show_lines=True,
    )
    table.add_column("Fault", overflow="fold", ratio=3)
    for backend in BACKENDS:
        table.add_column(BACKEND_TITLES[backend], overflow="fold", ratio=2)
    for fault in report.faults:
        run = fault.run
        title = f"[bold]{run.spec.title}[/]\n[dim]day {run.day}[/]"
        table.add_row(title, *(_cell(fault, b) for b in BACKENDS))
    console.print(table)

    ids = Table(
        box=box.SIMPLE,
        title="Follow one id through every backend (Sentry tag trace_id, the span, the PostHog "
        "property trace_id, the log field trace_id, the Prometheus exemplar)",
        title_justify="left",
    )
    ids.add_column("Fault", no_wrap=True)
    ids.add_column("Trace id", no_wrap=True)
    ids.add_column("User", no_wrap=True)
    ids.add_column("Alert fired", overflow="fold")
    ids.add_column("What happened", overflow="fold")
    for fault in report.faults:
        run = fault.run
        if fault.alerts:
            alert = "[green]✓[/] " + ", ".join(fault.alerts)
        elif not fault.alert_expected:
            alert = "[yellow]? rules unavailable[/]"
        else:
            alert = "[red]✗ none[/]"
        ids.add_row(
            run.spec.key,
            f"[bold cyan]{run.trace_id}[/]" if run.trace_id else "[red]none[/]",
            run.user_id or "-",
            alert,
            run.detail,
        )
    console.print(ids)
    first = next((f.run for f in report.faults if f.run.trace_id and f.run.user_id), None)
    if first is not None:
        tid = first.trace_id
        console.print(
            f"  Follow {first.spec.key}: Sentry [cyan]trace_id:{tid}[/] · Tempo/Jaeger trace "
            f"[cyan]{tid}[/] · PostHog person [cyan]{first.user_id}[/], property "
            f'[cyan]trace_id = {tid}[/] · Loki [cyan]{{service="invariantkit-demo"}} |= "{tid}"[/] '
            f"· Prometheus exemplar [cyan]trace_id={tid}[/]"
        )

    alerts = Table(
        box=box.SIMPLE,
        title=(
            "Alerts the generated rules fire on the simulated timeline "
            "(evaluated by promtool, Prometheus's own rule engine)"
        ),
        title_justify="left",
    )
    alerts.add_column("Alert", overflow="fold")
    alerts.add_column("Severity", no_wrap=True)
    alerts.add_column("Team", no_wrap=True)
    alerts.add_column("First fired", no_wrap=True)
    alerts.add_column("For fault", no_wrap=True)
    alerts.add_column("Why", overflow="fold")
    if report.rules_error:
        console.print(f"[yellow]Alert rules not evaluated:[/] {report.rules_error}")
    owners = {name: f.run.spec.key for f in report.faults for name in f.alerts}
    for state in report.alerts:
        labels = state.rule.labels
        if state.error:
            alerts.add_row(
                state.rule.alert,
                labels.get("severity", ""),
                labels.get("team", ""),
                "[yellow]not evaluated[/]",
                "",
                state.error,
            )
            continue
        if not state.fires:
            continue
        when, series = state.fired[0]
        why = ", ".join(f"{k}={v}" for k, v in series) or state.rule.annotations.get("summary", "")
        still = " [dim](still firing)[/]" if state.firing_at_end else ""
        alerts.add_row(
            f"[bold]{state.rule.alert}[/]",
            labels.get("severity", ""),
            labels.get("team", ""),
            _when(report, when) + still,
            owners.get(state.rule.alert, "[dim]background[/]"),
            why,
        )
    quiet = [s.rule.alert for s in report.alerts if not s.fires and not s.error]
    console.print(alerts)
    if quiet:
        console.print(f"  [dim]Not firing: {', '.join(quiet)}[/]")
    if report.ok:
        console.print(
            "[bold green]Every seeded fault was caught by every backend, with one id you can "
            "follow, and raised its alert.[/]"
        )
    else:
        missed = [f.run.spec.title for f in report.faults if not f.caught]
        if missed:
            console.print(f"[bold red]Not caught everywhere:[/] {', '.join(missed)}")
        if not report.delivered:
            console.print(
                "[bold red]Not every signal reached the real backends:[/] "
                + "; ".join(f"{k}: {v}" for k, v in report.delivery.items())
            )
