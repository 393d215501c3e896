"""``invariantkit demo``: an embedded billing service with seeded faults, every backend on.

The service (:mod:`._service`) runs on SQLite; the simulation (:mod:`._simulation`) drives N
subscriptions through D days and injects seven faults; the pipelines (:mod:`._pipeline`) are the
real SDKs, kept in process or sent to real backends; the report (:mod:`._report`) checks that each
fault reached each backend with one correlation id; promtool (Prometheus's own rule engine)
evaluates the generated alert rules on the simulated timeline (:mod:`._promtool`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from invariantkit._demo._report import BACKENDS, DemoReport

__all__ = [
    "BACKENDS",
    "DEFAULT_DAYS",
    "DEFAULT_SEED",
    "DEFAULT_SUBSCRIPTIONS",
    "DemoReport",
    "run_demo",
]

DEFAULT_SUBSCRIPTIONS = 200
DEFAULT_DAYS = 30
DEFAULT_SEED = 7

_REAL_BACKENDS = (
    "SENTRY_DSN",
    "POSTHOG_PROJECT_API_KEY",
    "POSTHOG_API_KEY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def generated_rules() -> tuple[str | None, str | None]:
    """The Prometheus rule file generated for the demo service's declarations (and whatever
    else the catalog holds), or (None, why not)."""
    from invariantkit._demo._service import declare

    declare()
    try:
        from invariantkit import alerts
    except ImportError as exc:
        return None, f"invariantkit.alerts is not available ({exc})"
    try:
        generate = getattr(alerts, "prometheus_rules", None)
        if generate is None:
            return None, "invariantkit.alerts.prometheus_rules() is not available"
        return str(generate()), None
    except Exception as exc:
        return None, f"invariantkit.alerts.prometheus_rules() failed: {type(exc).__name__}: {exc}"


def run_demo(
    *,
    subscriptions: int = DEFAULT_SUBSCRIPTIONS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    environ: Mapping[str, str] | None = None,
    log_file: str | None = None,
    registry: Any = None,
    progress: Callable[[int, int, str], None] | None = None,
    pace: Callable[[], None] | None = None,
    rules: str | None = None,
    storm_retries: int | None = None,
    keep_pipeline: list[Any] | None = None,
    promtool: str | None = None,
) -> DemoReport:
    """Run the demo and return its report; global state is restored before returning.

    Args:
        subscriptions, days, seed: the simulation's size and its seed (same seed, same run; trace
            ids too, unless a real backend is configured).
        environ: where to read ``SENTRY_DSN``, ``POSTHOG_PROJECT_API_KEY``/``POSTHOG_HOST``,
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default ``os.environ``).
        log_file: also write the JSON log lines to this file.
        registry: the prometheus-client registry to use (``--serve`` passes the one it serves).
        progress: called with (done, total, text) as simulated days pass.
        pace: called after each fault (``--serve`` waits there for a scrape).
        rules: a Prometheus rule file to evaluate instead of the generated one.
        storm_retries: size of the retry storm (default: enough to trip the guide's
            ``rate > 10/s for 5m``).
        keep_pipeline: when a list is given, the pipeline is appended to it and left open (the
            caller closes it); used by ``--serve`` to keep the metrics.
        promtool: the promtool binary that evaluates the rules (default: ``promtool`` on PATH;
            without it the report says how to get it and still checks every backend).
    """
    from invariantkit._demo._pipeline import open_pipeline
    from invariantkit._demo._promtool import (
        AlertState,
        PromtoolUnavailable,
        evaluate,
        metric_names,
        rules_from_yaml,
    )
    from invariantkit._demo._report import build_report
    from invariantkit._demo._service import declare
    from invariantkit._demo._simulation import STORM_RETRIES, Simulation

    declare()
    env = os.environ if environ is None else environ
    real = any(env.get(name) for name in _REAL_BACKENDS)
    started = time.perf_counter()
    rules_error = None
    if rules is None:
        rules, rules_error = generated_rules()
    names: set[str] = set()
    if rules is not None:
        try:
            names = metric_names(rules_from_yaml(rules))
        except Exception as exc:
            rules, rules_error = None, f"the rule file is not valid: {exc}"
    pipeline = open_pipeline(
        seed=None if real else seed, environ=env, log_file=log_file, registry=registry
    )
    try:
        sim = Simulation(
            pipeline,
            subscriptions=subscriptions,
            days=days,
            seed=seed,
            progress=progress,
            pace=pace,
            storm_retries=storm_retries or STORM_RETRIES,
            metric_names=names,
        )
        result = sim.run()
        states: list[AlertState] = []
        if rules is not None:
            if progress is not None:
                progress(days, days, "promtool evaluates the alert rules")
            try:
                states = evaluate(rules, result.timeline, result.start, result.end, promtool)
            except (PromtoolUnavailable, ValueError) as exc:
                rules_error = str(exc)
        pipeline.flush(10.0)
        report = build_report(pipeline, result, states, rules_error, time.perf_counter() - started)
    except BaseException:
        pipeline.close()
        raise
    if keep_pipeline is not None:
        keep_pipeline.append(pipeline)
    else:
        pipeline.close()
    report.elapsed = time.perf_counter() - started
    return report
