"""``invariantkit check``: one run of the declared at-rest checks, for a CronJob or cron.

The run is itself a monitored cron job (``ik.monitor_cron``): its Sentry check-ins, its
``cron_<name>_*`` gauges and, with a Pushgateway, one push of every invariantkit metric (the
check metrics included) at the end, so a scrape-only Prometheus still sees a short-lived job.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from invariantkit._checks import Check, CheckReport, failed_runs, run_checks

__all__ = ["CRON_NAME", "check_cron", "connect", "run_cli"]

#: The cron job an ``invariantkit check`` run reports as (``_<check>`` with ``--check``).
CRON_NAME = "invariantkit_check"


class CheckCliError(Exception):
    """Bad input for ``invariantkit check`` (exit status 2)."""


def connect(dsn: str) -> tuple[Any, Callable[[], None]]:
    """A connection for ``dsn``: ``sqlite:///path`` (sqlite3) or ``postgresql://...`` (psycopg 3).

    Example:
        >>> from invariantkit._check_cli import connect
        >>> conn, close = connect("sqlite:///:memory:")
        >>> close()
    """
    if re.match(r"postgres(ql)?(\+\w+)?://", dsn):
        try:
            import psycopg
        except ImportError as exc:
            raise CheckCliError("a postgresql:// DSN needs psycopg: pip install psycopg") from exc
        conn = psycopg.connect(re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", dsn))
        return conn, conn.close
    if dsn.startswith("sqlite:///"):
        path = dsn[len("sqlite:///") :]
        lite = sqlite3.connect(path)
        return lite, lite.close
    raise CheckCliError(
        f"--dsn must be sqlite:///path or postgresql://..., got {dsn.split('://', maxsplit=1)[0]}://..."
    )


def _selected(names: Sequence[str]) -> list[Check]:
    from invariantkit._catalog import get_catalog

    checks = get_catalog().checks
    if not checks:
        raise CheckCliError("no at-rest check is declared (ik.Check) in the given module(s)")
    unknown = [n for n in names if n not in checks]
    if unknown:
        raise CheckCliError(
            f"no check named {', '.join(map(repr, unknown))} (declared: {', '.join(sorted(checks))})"
        )
    return [checks[n] for n in names] if names else list(checks.values())


def check_cron(selected: Sequence[Check], names: Sequence[str]) -> Any:
    """The ``ik.monitor_cron`` this run reports as: every check's shortest ``every``, and the
    sum of their timeouts (query and state update) as ``max_runtime``."""
    import invariantkit as ik

    name = CRON_NAME if len(names) != 1 else f"{CRON_NAME}_{names[0]}"[:100]
    return ik.monitor_cron(
        name,
        every=min(c.every for c in selected),
        max_runtime=sum(2 * c.timeout for c in selected),
    )


class _RunFailed(Exception):
    """A check could not run: the cron run ends in error (Sentry check-in, last_status 0)."""

    def __init__(self, report: CheckReport, message: str) -> None:
        super().__init__(message)
        self.report = report


@contextlib.contextmanager
def _configured(environ: Mapping[str, str], pushgateway: str | None) -> Iterator[None]:
    """The module's own ``ik.configure()`` if it made one, else sinks from the environment
    (with the Pushgateway on the Prometheus sink). Flushed, and shut down when ours."""
    import invariantkit as ik
    from invariantkit._config import STATE

    if STATE.config is not None:
        try:
            yield
        finally:
            ik.flush(timeout=10.0)
        return
    from invariantkit._verify import _env_sinks
    from invariantkit.sinks._prometheus import PrometheusMetrics

    sinks, closers, registry = _env_sinks(environ)
    if pushgateway and registry is not None:
        sinks = [s for s in sinks if getattr(s, "name", "") != "prometheus"]
        sinks.append(PrometheusMetrics(registry, pushgateway=pushgateway))
    ik.configure(sinks=sinks, service=environ.get("OTEL_SERVICE_NAME") or "invariantkit-check")
    try:
        yield
    finally:
        ik.shutdown(timeout=10.0)
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()


def render(report: CheckReport, console: Any) -> None:
    """One line per check: outcome, violating entities, new, resolved, and the error."""
    colors = {"ok": "green", "violations": "yellow", "error": "red"}
    for r in report:
        line = (
            f"[{colors[r.outcome]}]{r.outcome:<10}[/] {r.check}: {r.violating} violating, "
            f"{r.new} new, {r.resolved} resolved"
        )
        if r.unreported:
            line += f" ({r.unreported} new ones only counted)"
        if r.error:
            line += f" - {r.error}"
        console.print(line, markup=True, highlight=False)
    console.print(f"exit {report.exit_code} (trace ids: {', '.join(r.trace_id for r in report)})")


def _run(dsn: str, selected: Sequence[Check], run: Any) -> CheckReport:
    """Inside the cron run: connect, run the checks; raise ``_RunFailed`` when any could not
    run (the cron run then ends in error)."""
    try:
        conn, close = connect(dsn)
    except CheckCliError:
        raise
    except Exception as exc:
        report = CheckReport(failed_runs(selected, exc))
        raise _RunFailed(report, f"cannot connect: {type(exc).__name__}") from exc
    try:
        report = run_checks(conn, selected)
    finally:
        with contextlib.suppress(Exception):
            close()
    run.processed = sum(r.violating for r in report)
    if report.errors:
        raise _RunFailed(report, f"{len(report.errors)} check(s) failed to run")
    return report


def run_cli(
    dsn: str,
    names: Sequence[str] = (),
    *,
    pushgateway: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> CheckReport:
    """Run the selected checks once on ``dsn``, as a monitored cron run; never raises for a
    database problem (every check's outcome is then ``error``)."""
    env = os.environ if environ is None else environ
    selected = _selected(names)
    with _configured(env, pushgateway or env.get("PROMETHEUS_PUSHGATEWAY") or None):
        cron = check_cron(selected, names)
        try:
            with cron as run:
                return _run(dsn, selected, run)
        except _RunFailed as failed:
            return failed.report
