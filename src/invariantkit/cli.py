"""The ``invariantkit`` command: the demo, the generators, ``verify`` and ``fire-test-alert``.

Every command has ``--help``. Commands that read declarations take ``-m/--module`` (repeatable):
the dotted name (or file path) of the application module that declares invariants, crons and
constraints at import time; the current directory is on the import path, as with
``python -m``. Input errors (a missing module, a syntax error in it, nothing declared) print
one line and exit with status 2; a failed check exits with 1.

Example:
    >>> from invariantkit.cli import main
    >>> main(["sentry-rules", "--channel", "#billing-alerts", "-o", "/dev/null"])
    0
    >>> main(["rules", "-m", "no_such_module"])  # one line on stderr, no traceback
    2
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

_EXTRA = "the invariantkit command needs the [cli] extra: pip install 'invariantkit[cli]'"
try:
    import typer
except ImportError as _missing:  # a bare install: name the extra, not a traceback
    if os.path.basename(sys.argv[0] or "").startswith("invariantkit") or __name__ == "__main__":
        sys.stderr.write(f"invariantkit: error: {_EXTRA}\n")
        raise SystemExit(2) from None
    raise ModuleNotFoundError(f"{_EXTRA} ({_missing})", name="typer") from _missing

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["CliError", "app", "load_modules", "main"]

#: Exit status of input errors (bad module, nothing declared, bad paths).
EXIT_INPUT = 2
#: Exit status of a check that failed (verify, demo, fire-test-alert).
EXIT_FAILED = 1

app = typer.Typer(
    name="invariantkit",
    help=(
        "Layer 5 for billing code: run the demo, generate alert rules, dashboards, Sentry and "
        "PostHog alerts and playbooks from your declarations, verify that monitoring is sound, "
        "and fire a test alert."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class CliError(Exception):
    """A clear, one-line error for the user; the command exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


# -- output -------------------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    import os
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped to a file or a CI log, rich would assume 80 columns and fold the demo's tables into
    # one character per line; use a width that fits them unless COLUMNS says otherwise.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 150
    return Console(stderr=stderr, soft_wrap=stderr, highlight=False, width=width)


def _fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    raise CliError(message, code)


def _write(text: str, output: Path | None, what: str) -> None:
    """``text`` to ``output`` (a file), or to stdout when None."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    try:
        if output.is_dir():
            _fail(f"-o {output}: is a directory; give a file name for the {what}")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    _console(stderr=True).print(f"wrote {what} to {output}")


def _write_dir(files: dict[str, str], output: Path, what: str) -> list[Path]:
    try:
        if output.exists() and not output.is_dir():
            _fail(f"-o {output}: exists and is not a directory")
        output.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in files.items():
            path = output / name
            path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
            written.append(path)
    except OSError as exc:
        _fail(f"cannot write to {output}: {exc.strerror or exc}")
    _console(stderr=True).print(f"wrote {len(written)} {what} to {output}/")
    return written


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"


# -- loading the application's declarations -----------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _import_one(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py") or os.sep in spec:
        if not path.is_file():
            _fail(f"-m {spec}: no such file")
        parent = str(path.resolve().parent)
        if parent not in sys.path:
            sys.path.insert(0, parent)
        name = path.stem
    else:
        name = spec
        if not all(part.isidentifier() for part in name.split(".")):
            _fail(
                f"-m {spec!r}: not a module name (a dotted path like 'app.billing' or a .py file)"
            )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            _fail(
                f"cannot import module {spec!r}: no module named {missing!r} (run invariantkit "
                "from the directory that contains it, or add it to PYTHONPATH)"
            )
        _fail(f"importing {spec!r} failed: {_first_line(exc)}")
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else spec
        _fail(f"syntax error in {where}: {exc.msg}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        _fail(f"importing {spec!r} raised {type(exc).__name__}: {_first_line(exc)}")


def load_modules(modules: Sequence[str], *, require: bool = True) -> list[ModuleType]:
    """Import the application's modules (the current directory first on the import path, as
    with ``python -m``) and check that they declared something.

    Raises:
        CliError: a module is missing or does not import, or (``require``) nothing is declared.
    """
    from invariantkit._catalog import get_catalog

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    if require and not modules:
        _fail(
            "no module given: pass -m/--module with the module that declares your invariants "
            "(for example -m app.billing, or -m invariantkit.billing for the guide's three)"
        )
    loaded = [_import_one(spec) for spec in modules]
    catalog = get_catalog()
    if require and not (catalog.invariants or catalog.crons or catalog.constraints):
        names = ", ".join(modules)
        _fail(
            f"nothing declared: {names} declared no invariant, cron or constraint at import time "
            "(declare ik.Invariant(...), ik.monitor_cron(...) or ik.Constraint(...) at module "
            "level, or import invariantkit.billing)"
        )
    return loaded


def _alerts() -> Any:
    try:
        from invariantkit import alerts
    except ImportError as exc:  # pragma: no cover - the module ships with the package
        _fail(f"invariantkit.alerts is not available: {exc}")
    return alerts


def _generator(name: str) -> Callable[..., Any]:
    fn = getattr(_alerts(), name, None)
    if fn is None:
        _fail(f"invariantkit.alerts.{name}() is not available in this version")
    return fn  # type: ignore[no-any-return]


def _generate(name: str, *args: Any, **kwargs: Any) -> Any:
    try:
        return _generator(name)(*args, **kwargs)
    except CliError:
        raise
    except (ValueError, TypeError) as exc:
        _fail(f"cannot generate from your declarations: {_first_line(exc)}")


ModuleOption = Annotated[
    list[str] | None,
    typer.Option(
        "-m",
        "--module",
        help="Module that declares your invariants, crons and constraints (dotted name or .py "
        "file; repeatable).",
        show_default=False,
    ),
]
OutputFile = Annotated[
    Path | None,
    typer.Option(
        "-o", "--output", help="Write to this file instead of stdout.", show_default=False
    ),
]
OutputDir = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Write one file per item into this directory (created if needed); without it, "
        "everything goes to stdout.",
        show_default=False,
    ),
]


# -- generators ---------------------------------------------------------------------------------

RunbookOption = Annotated[
    str | None,
    typer.Option(
        "--runbook-base-url",
        help="Where the playbooks are published (prefix of each alert's runbook_url); default "
        "playbooks/.",
        show_default=False,
    ),
]
SentryUrlOption = Annotated[
    str | None,
    typer.Option(
        "--sentry-url",
        help="Your Sentry issues page (the alerts link its search); default https://sentry.io/issues/.",
        show_default=False,
    ),
]


def _kw(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def rules(
    *,
    module: ModuleOption = None,
    output: OutputFile = None,
    runbook_base_url: RunbookOption = None,
    sentry_url: SentryUrlOption = None,
) -> None:
    """Prometheus alerting rules (YAML) for everything declared: one per invariant, cron and
    constraint, retries, spikes, sink health and the test alert. Valid for Prometheus, Mimir's
    ruler and Grafana-managed import (`promtool check rules`)."""
    from invariantkit._catalog import get_catalog

    load_modules(module or [])
    text = _generate(
        "prometheus_rules",
        get_catalog(),
        **_kw(runbook_base_url=runbook_base_url, sentry_url=sentry_url),
    )
    _write(text, output, "alert rules")


@app.command("rule-tests")
def rule_tests(
    *,
    module: ModuleOption = None,
    output: OutputFile = None,
    rule_file: Annotated[
        str,
        typer.Option(
            "--rule-file",
            help="The rule file the tests load (write the rules there with `rules -o`).",
        ),
    ] = "invariantkit-rules.yml",
    runbook_base_url: RunbookOption = None,
    sentry_url: SentryUrlOption = None,
) -> None:
    """Unit tests for the generated rules, for `promtool test rules`: each rule proven to fire,
    including on the first violation after a restart, and to stay silent on healthy series.
    Pass the same options as to `rules`."""
    from invariantkit._catalog import get_catalog

    load_modules(module or [])
    text = _generate(
        "prometheus_rule_tests",
        get_catalog(),
        rule_file=rule_file,
        **_kw(runbook_base_url=runbook_base_url, sentry_url=sentry_url),
    )
    _write(text, output, "rule tests")


@app.command()
def dashboards(
    *,
    module: ModuleOption = None,
    output: OutputDir = None,
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner", help="Owner of the dashboards; default @billing-team.", show_default=False
        ),
    ] = None,
    cron_owner: Annotated[
        str | None,
        typer.Option(
            "--cron-owner",
            help="Owner of the Cron Job Health dashboard; default: the crons' team.",
            show_default=False,
        ),
    ] = None,
    runbook_base_url: RunbookOption = None,
    sentry_url: SentryUrlOption = None,
) -> None:
    """The guide's three Grafana dashboards (JSON): owner, purpose and every panel described;
    one `<name>.json` per dashboard with `-o DIR`."""
    from invariantkit._catalog import get_catalog

    load_modules(module or [])
    boards: dict[str, Any] = _generate(
        "grafana_dashboards",
        get_catalog(),
        **_kw(
            owner=owner,
            cron_owner=cron_owner,
            runbook_base_url=runbook_base_url,
            sentry_url=sentry_url,
        ),
    )
    if output is None:
        _write(_json(boards), None, "dashboards")
        return
    files = {_file_name(name, ".json"): _json(board) for name, board in boards.items()}
    _write_dir(files, output, "dashboards")


@app.command("sentry-rules")
def sentry_rules(
    *,
    module: ModuleOption = None,
    output: OutputFile = None,
    channel: Annotated[
        str | None,
        typer.Option(
            "--channel",
            help="Slack channel to notify; default #billing-alerts.",
            show_default=False,
        ),
    ] = None,
    environment: Annotated[
        str | None,
        typer.Option(
            "--environment", help="Only alert on this Sentry environment.", show_default=False
        ),
    ] = None,
) -> None:
    """The guide's three Sentry alert rules (new issue in billing code, invariant violation,
    payment provider errors), as payloads for Sentry's alert-rule API (JSON)."""
    load_modules(module or [], require=False)
    payloads = _generate("sentry_alert_rules", **_kw(channel=channel, environment=environment))
    _write(_json(payloads), output, "Sentry alert rules")


@app.command("posthog-alerts")
def posthog_alerts(*, module: ModuleOption = None, output: OutputFile = None) -> None:
    """The guide's PostHog alerts (subscription funnel drop, renewal failure and cancellation
    spikes), as JSON."""
    load_modules(module or [], require=False)
    _write(_json(_generate("posthog_alerts")), output, "PostHog alerts")


@app.command()
def playbooks(
    *,
    module: ModuleOption = None,
    output: OutputDir = None,
    runbook_base_url: RunbookOption = None,
    sentry_url: SentryUrlOption = None,
) -> None:
    """Alert response playbooks (Markdown), one per alert; one file each with `-o DIR`."""
    from invariantkit._catalog import get_catalog

    load_modules(module or [])
    books: dict[str, str] = _generate(
        "playbooks", get_catalog(), **_kw(runbook_base_url=runbook_base_url, sentry_url=sentry_url)
    )
    if output is None:
        _write("\n\n".join(text.rstrip() for text in books.values()), None, "playbooks")
        return
    _write_dir({_file_name(name, ".md"): text for name, text in books.items()}, output, "playbooks")


def _file_name(name: str, suffix: str) -> str:
    base = Path(name).name  # never escape the output directory
    return base if base.endswith(suffix) else base + suffix


# -- demo ---------------------------------------------------------------------------------------


@app.command()
def demo(
    *,
    subscriptions: Annotated[
        int,
        typer.Option("--subscriptions", "-n", min=10, max=100_000, help="Subscribers to simulate."),
    ] = 200,
    days: Annotated[
        int,
        typer.Option(
            "--days", "-d", min=8, max=3650, help="Days to simulate (one per fault, at least)."
        ),
    ] = 30,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same run.")] = 7,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of tables.")
    ] = False,
    serve: Annotated[
        int | None,
        typer.Option(
            "--serve",
            min=0,
            max=65535,
            metavar="PORT",
            help="Serve /metrics on 127.0.0.1:PORT for a Prometheus: wait for its first scrape, "
            "run (waiting for a scrape after each fault), then keep serving until Ctrl-C.",
            show_default=False,
        ),
    ] = None,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file", help="Also write the JSON log lines to this file.", show_default=False
        ),
    ] = None,
    rules_file: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="Evaluate this Prometheus rule file instead of the generated rules (your own "
            "rules, to see which of them the faults would fire).",
            show_default=False,
        ),
    ] = None,
    write_rules: Annotated[
        Path | None,
        typer.Option(
            "--write-rules",
            help="Also write the generated Prometheus rules for the demo's declarations to this "
            "file (for a Prometheus scraping --serve).",
            show_default=False,
        ),
    ] = None,
    storm: Annotated[
        int | None,
        typer.Option("--storm", min=20, hidden=True, help="Idempotent retries in the retry storm."),
    ] = None,
    scrape_timeout: Annotated[
        float,
        typer.Option(hidden=True, help="With --serve: seconds to wait for each scrape."),
    ] = 120.0,
) -> None:
    """Run an embedded billing service on SQLite with seeded faults, every backend on, and show
    each fault caught by every backend with one id to follow, and the alerts that would fire.

    In process by default; set **SENTRY_DSN**, **POSTHOG_PROJECT_API_KEY** (and
    POSTHOG_HOST) or **OTEL_EXPORTER_OTLP_ENDPOINT** to also send to those backends. Exits 0
    when every seeded fault was caught everywhere, 1 otherwise.
    """
    try:
        from invariantkit._demo import run_demo
        from invariantkit._demo._render import render
    except ImportError as exc:
        _fail(
            f"the demo needs every backend SDK ({exc.name or exc}): pip install 'invariantkit[all]'"
        )
    err = _console(stderr=True)
    out = _console()
    rules_text = None
    if rules_file is not None:
        try:
            rules_text = rules_file.read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"--rules {rules_file}: {exc.strerror or exc}")
    if write_rules is not None:
        from invariantkit._demo import generated_rules

        text, error = generated_rules()
        if text is None:
            _fail(f"--write-rules: {error}", EXIT_FAILED)
        _write(text, write_rules, "the demo's alert rules")
    server = None
    keep: list[Any] = []
    registry = None
    pace: Callable[[], None] | None = None
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.touch()
        except OSError as exc:
            _fail(f"--log-file {log_file}: {exc.strerror or exc}")
    if serve is not None:
        from prometheus_client import CollectorRegistry

        from invariantkit._demo._serve import MetricsServer

        registry = CollectorRegistry()
        try:
            server = MetricsServer(registry, serve)
        except OSError as exc:
            _fail(f"--serve {serve}: cannot listen on 127.0.0.1:{serve}: {exc.strerror or exc}")
        srv = server
        err.print(f"Serving [bold]{srv.url}[/]; waiting for the first scrape (Ctrl-C stops).")

        def pace() -> None:
            if not srv.wait_for_scrape(scrape_timeout):
                err.print(
                    f"[yellow]no scrape of {srv.url} within {scrape_timeout:g} s; going on[/]"
                )

    try:
        if server is not None:
            # The counters must be scraped at zero first, or increase() misses the first fault.
            while not server.wait_for_scrape(1.0):
                pass
            err.print(
                f"First scrape received; running the demo (scrapes so far: {server.scrapes})."
            )
        report = _run_with_progress(
            run_demo,
            err,
            show=not as_json and err.is_terminal,
            subscriptions=subscriptions,
            days=days,
            seed=seed,
            log_file=str(log_file) if log_file is not None else None,
            registry=registry,
            pace=pace,
            storm_retries=storm,
            rules=rules_text,
            keep_pipeline=keep if server is not None else None,
        )
        if as_json:
            _write(report.to_json(), None, "demo result")
        else:
            render(report, out)
        if server is not None:
            err.print(f"Still serving [bold]{server.url}[/] for Prometheus; Ctrl-C stops.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                err.print("stopped")
    except KeyboardInterrupt:
        err.print("stopped")
        raise typer.Exit(130) from None
    finally:
        for pipeline in keep:
            pipeline.close()
        if server is not None:
            server.close()
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _run_with_progress(run: Callable[..., Any], console: Console, *, show: bool, **kw: Any) -> Any:
    if not show:
        return run(**kw)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]simulating[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} days"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=kw["days"])

        def update(done: int, total: int, text: str) -> None:
            progress.update(task, completed=done, total=total, description=text)

        return run(progress=update, **kw)


# -- verify -------------------------------------------------------------------------------------


@app.command()
def verify(
    *,
    module: ModuleOption = None,
    alertmanager_config: Annotated[
        Path | None,
        typer.Option(
            "--alertmanager-config",
            help="Alertmanager configuration: check that every alert routes to a receiver "
            "(with amtool when installed).",
            show_default=False,
        ),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            help="Database to check the declared constraints in (postgresql://... or a SQLite "
            "file path); default $INVARIANTKIT_DSN.",
            show_default=False,
        ),
    ] = None,
    playbooks_dir: Annotated[
        Path | None,
        typer.Option(
            "--playbooks",
            help="Directory of your published playbooks (<alert>.md).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checklist as JSON.")] = False,
) -> None:
    """Run the guide's "Is monitoring sound?" checklist against your declarations, the generated
    rules, your Alertmanager routing and your configured sinks. Exits 1 when an item fails."""
    from invariantkit._verify import render_checks, run_checks

    load_modules(module or [])
    if alertmanager_config is not None and not alertmanager_config.is_file():
        _fail(f"--alertmanager-config {alertmanager_config}: no such file")
    if playbooks_dir is not None and not playbooks_dir.is_dir():
        _fail(f"--playbooks {playbooks_dir}: no such directory")
    checks = run_checks(
        modules=module or [],
        alertmanager_config=alertmanager_config,
        dsn=dsn or os.environ.get("INVARIANTKIT_DSN") or None,
        playbooks_dir=playbooks_dir,
    )
    if as_json:
        _write(
            _json(
                {
                    "ok": all(c.status != "fail" for c in checks),
                    "checks": [c.as_dict() for c in checks],
                }
            ),
            None,
            "checklist",
        )
    else:
        render_checks(checks, _console())
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(EXIT_FAILED)


# -- check --------------------------------------------------------------------------------------


@app.command("check")
def check(
    *,
    module: ModuleOption = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            help="The database to check: sqlite:///path or postgresql://...; default "
            "$INVARIANTKIT_DSN.",
            show_default=False,
        ),
    ] = None,
    names: Annotated[
        list[str] | None,
        typer.Option("--check", help="Only this check (repeatable).", show_default=False),
    ] = None,
    pushgateway: Annotated[
        str | None,
        typer.Option(
            "--pushgateway",
            help="Push the run's metrics here; default $PROMETHEUS_PUSHGATEWAY.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run the declared at-rest checks (ik.Check) once, for a Kubernetes CronJob or cron: new
    violating entities are reported through every sink, the state is kept in the database
    (invariantkit_violations), and the run is reported like ik.monitor_cron (Sentry check-in,
    Pushgateway push). Exit 0: nothing new; 1: new violations; 2: a check could not run."""
    from invariantkit._check_cli import CheckCliError, render, run_cli

    load_modules(module or [], require=False)  # run_cli says when no ik.Check is declared
    target = dsn or os.environ.get("INVARIANTKIT_DSN")
    if not target:
        _fail("--dsn is required (or set INVARIANTKIT_DSN)")
    try:
        report = run_cli(target, names or (), pushgateway=pushgateway)
    except CheckCliError as exc:
        _fail(str(exc))
    if as_json:
        _write(_json(report.as_dict()), None, "check report")
    else:
        render(report, _console())
    raise typer.Exit(report.exit_code)


# -- fire-test-alert ----------------------------------------------------------------------------


@app.command("fire-test-alert")
def fire_test_alert(
    *,
    module: ModuleOption = None,
    invariant: Annotated[
        str | None,
        typer.Option(
            "--invariant",
            "-i",
            help="Only this declared invariant (default: every one).",
            show_default=False,
        ),
    ] = None,
    pushgateway: Annotated[
        str | None,
        typer.Option(
            "--pushgateway",
            help="Push the test counter here (a CLI process is never scraped); default "
            "$PROMETHEUS_PUSHGATEWAY.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was sent as JSON.")] = False,
) -> None:
    """Send a clearly labelled test violation (test="true", Sentry level warning) through every
    configured sink, flush, and print the trace id to search for: proves that alerts reach
    their owner without paging anyone.

    Uses the configuration your module makes at import time (ik.configure), else the
    environment: SENTRY_DSN, POSTHOG_PROJECT_API_KEY/POSTHOG_HOST, OTEL_EXPORTER_OTLP_ENDPOINT,
    --pushgateway; JSON log lines go to stderr.
    """
    from invariantkit._verify import fire_test_alerts, render_fired

    load_modules(module or [], require=False)
    from invariantkit._catalog import get_catalog

    declared = get_catalog().invariants
    if invariant is not None and invariant not in declared:
        known = ", ".join(sorted(declared)) or "none"
        raise CliError(f"invariant {invariant!r} is not declared (declared: {known})")
    result = fire_test_alerts(
        invariant=invariant,
        pushgateway=pushgateway or os.environ.get("PROMETHEUS_PUSHGATEWAY") or None,
    )
    if as_json:
        _write(_json(result.as_dict()), None, "test alerts")
    else:
        render_fired(result, _console())
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


# -- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default `sys.argv[1:]`); return the exit status.

    Errors in the user's input print one line to stderr, never a traceback (set
    `INVARIANTKIT_DEBUG=1` to see one for an unexpected error).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Not standalone: an Exit comes back as the return value, errors as exceptions.
        code = app(args=args, prog_name="invariantkit", standalone_mode=False)
    except CliError as exc:
        _console(stderr=True).print(f"[red]invariantkit: error:[/] {exc}", markup=True)
        return exc.code
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        _console(stderr=True).print("aborted")
        return 130
    except KeyboardInterrupt:
        return 130
    except typer.TyperException as exc:  # usage errors (typer's own click)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return int(getattr(exc, "exit_code", EXIT_INPUT))
    except Exception as exc:
        if os.environ.get("INVARIANTKIT_DEBUG"):
            raise
        _console(stderr=True).print(
            f"[red]invariantkit: internal error:[/] {type(exc).__name__}: {_first_line(exc)} "
            "(set INVARIANTKIT_DEBUG=1 for the traceback, and please report it)"
        )
        return EXIT_FAILED
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
