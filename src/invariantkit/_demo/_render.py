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
    table.add_column("Fault", max_width=26)
    for backend in BACKENDS:
        table.add_column(BACKEND_TITLES[backend], max_width=24)
    table.add_column("Alert", max_width=22)
    for fault in report.faults:
        run = fault.run
        title = f"[bold]{run.spec.title}[/]\n[dim]{run.spec.signal}, day {run.day}[/]"
        if fault.alerts:
            alert = "[green]✓[/] " + ", ".join(fault.alerts)
        elif not fault.alert_expected:
            alert = "[yellow]? rules unavailable[/]"
        else:
            alert = "[red]✗ none fired[/]"
        table.add_row(title, *(_cell(fault, b) for b in BACKENDS), alert)
    console.print(table)

    ids = Table(box=box.SIMPLE, title="Follow one id through every backend", title_justify="left")
    ids.add_column("Fault")
    ids.add_column("Trace id (Sentry tag trace_id, span, PostHog trace_id, log trace_id, exemplar)")
    ids.add_column("User")
    ids.add_column("What happened", max_width=60)
    for fault in report.faults:
        run = fault.run
        ids.add_row(
            run.spec.key,
            f"[bold cyan]{run.trace_id}[/]" if run.trace_id else "[red]none[/]",
            run.user_id or "-",
            run.detail,
        )
    console.print(ids)
    first = next((f.run.trace_id for f in report.faults if f.run.trace_id), None)
    if first:
        console.print(
            f"  Search it: Sentry [cyan]trace_id:{first}[/] · Tempo/Jaeger trace [cyan]{first}[/] · "
            f"PostHog [cyan]properties.trace_id = '{first}'[/] · Loki "
            f'[cyan]{{service="invariantkit-demo"}} |= "{first}"[/] · Prometheus exemplar '
            f"[cyan]trace_id={first}[/]"
        )

    alerts = Table(
        box=box.SIMPLE,
        title="Alerts the generated rules would fire (evaluated on the simulated timeline)",
        title_justify="left",
    )
    alerts.add_column("Alert")
    alerts.add_column("Severity")
    alerts.add_column("Team")
    alerts.add_column("First fired")
    alerts.add_column("Why")
    if report.rules_error:
        console.print(f"[yellow]Alert rules not evaluated:[/] {report.rules_error}")
    for state in report.alerts:
        labels = state.rule.labels
        if state.error:
            alerts.add_row(
                state.rule.alert,
                labels.get("severity", ""),
                labels.get("team", ""),
                "[yellow]not evaluated[/]",
                state.error,
            )
            continue
        if not state.fires:
            continue
        when, series, value = state.fired[0]
        why = ", ".join(f"{k}={v}" for k, v in series) or state.rule.expr
        still = " (still firing at the end)" if state.firing_at_end else ""
        alerts.add_row(
            f"[bold]{state.rule.alert}[/]",
            labels.get("severity", ""),
            labels.get("team", ""),
            _when(report, when) + still,
            f"{why} = {value:g}",
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
