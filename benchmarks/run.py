"""invariantkit benchmarks: every ratio of DESIGN.md section 4 from one run, as a table.

    .venv/bin/python benchmarks/run.py            # full run (a few minutes)
    .venv/bin/python benchmarks/run.py --quick    # smaller samples (about a minute)
    .venv/bin/python benchmarks/run.py --json results.json --profile

Variants that are compared are measured side by side: each round runs a short batch of every
variant in a shuffled order, and the ratio of two variants is the median of their per-round
ratios (both saw the same machine at the same moment). See benchmarks/README.md for what each
line measures and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import gc
import io
import json
import logging
import os
import platform
import pstats
import queue
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------- network guard
# Nothing measured here may reach the network: only 127.0.0.1 is allowed. Installed before any
# SDK is imported; every attempt is counted and reported (logfire must stay local).

BLOCKED: list[str] = []
_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "", None}
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _local(address: Any) -> bool:
    return not isinstance(address, tuple) or address[0] in _LOCAL_HOSTS


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address):
        BLOCKED.append(repr(address))
        raise OSError(f"benchmarks: network access to {address!r} blocked")
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address):
        BLOCKED.append(repr(address))
        return 111  # ECONNREFUSED
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host not in _LOCAL_HOSTS:
        BLOCKED.append(f"getaddrinfo({host!r})")
        raise socket.gaierror(f"benchmarks: name resolution of {host!r} blocked")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo

os.environ.setdefault("LOGFIRE_SEND_TO_LOGFIRE", "false")
os.environ.setdefault("LOGFIRE_CONSOLE", "false")
os.environ.setdefault("LOGFIRE_IGNORE_NO_CONFIG", "1")

# The delivery-under-load helpers (support.load) are shared with tests/test_dispatch.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

# ---------------------------------------------------------------------------------- imports

import psutil  # noqa: E402
from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Status, StatusCode  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Histogram  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import invariantkit as ik  # noqa: E402
from invariantkit._config import STATE, Config, swap  # noqa: E402
from invariantkit._config import _keep_logs_out_of_sentry as keep_logs_out_of_sentry  # noqa: E402
from invariantkit._dispatch import Dispatcher  # noqa: E402
from invariantkit.sinks._prometheus import DURATION_BUCKETS  # noqa: E402
from support.load import Arrivals, violations_beside_spinners  # noqa: E402

HERE = Path(__file__).resolve().parent
console = Console(width=130)


# ---------------------------------------------------------------------------------- helpers


class DiscardSpans(SpanExporter):
    """A span exporter that counts and forgets (the cheapest real exporter)."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def floor_children(prefix: str, operation: str) -> tuple[Any, Any]:
    """The floor's pre-bound counter and histogram children: what the contract requires per call,
    in a registry of their own (as PrometheusMetrics pre-binds at decoration)."""
    registry = CollectorRegistry()
    counter = Counter(
        f"{prefix}_total", "floor", ["operation", "outcome"], registry=registry
    ).labels(operation, "success")
    hist = Histogram(
        f"{prefix}_duration_seconds",
        "floor",
        ["operation", "outcome"],
        buckets=DURATION_BUCKETS,
        registry=registry,
    ).labels(operation, "success")
    return counter, hist


def tracer_provider(max_queue_size: int = 2048) -> tuple[TracerProvider, DiscardSpans]:
    """An SDK provider with a batch processor and a discarding exporter."""
    exporter = DiscardSpans()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=max_queue_size))
    return provider, exporter


@contextlib.contextmanager
def discard_server() -> Iterator[int]:
    """Start benchmarks/_discard_server.py in its own process; yield its port."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_discard_server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def json_logger(name: str) -> logging.Logger:
    """A logger writing JSON lines to /dev/null at INFO, as a service would configure it."""
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives for the run
    handler.setFormatter(ik.JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


@dataclass
class Setup:
    """An invariantkit configuration that can be made active between batches."""

    config: Config
    dispatcher: Dispatcher

    def activate(self) -> None:
        STATE.config = self.config
        STATE.last_config = self.config
        STATE.dispatcher = self.dispatcher

    def settle(self) -> None:
        self.dispatcher.flush(10.0)


def make_setup(sinks: list[Any]) -> Setup:
    config = Config(service="bench", environment="bench", sinks=tuple(sinks))
    keep_logs_out_of_sentry(tuple(sinks))  # as configure() does
    dispatcher = Dispatcher(sinks)
    swap(config, dispatcher)  # announces the catalog: label children at zero
    return Setup(config, dispatcher)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# ---------------------------------------------------------------------------------- harness


@dataclass
class Variant:
    name: str
    fn: Callable[[], Any]
    batch: int
    before: Callable[[], None] | None = None  # untimed, before each batch
    after: Callable[[], None] | None = None  # untimed, after each batch
    times: list[float] = field(default_factory=list)  # seconds per call, one per round

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def interleave(variants: list[Variant], rounds: int, seed: int = 7) -> None:
    """Each round: every variant runs one batch, in a shuffled order; per-call time recorded.

    Batches are short (a few milliseconds, under the interpreter's 5 ms switch interval) and
    each variant's background work (span export, our worker, SDK queues) is drained after its
    batch, untimed: what is timed is the call path. Background CPU is measured apart.
    """
    rng = random.Random(seed)
    order = list(variants)
    perf = time.perf_counter
    for _ in range(rounds):
        rng.shuffle(order)
        for v in order:
            if v.before is not None:
                v.before()
            fn = v.fn
            loop = range(v.batch)
            start = perf()
            for _ in loop:
                fn()
            elapsed = perf() - start
            if v.after is not None:
                v.after()
            v.times.append(elapsed / v.batch)


def paired_ratio(a: Variant, b: Variant) -> float:
    """Median over rounds of a's time / b's time in the same round."""
    return statistics.median(x / y for x, y in zip(a.times, b.times, strict=True))


@dataclass
class Row:
    measure: str
    ours: str
    reference: str
    ratio: str
    bar: str
    met: bool | None
    value: float | None = None


ROWS: list[Row] = []
RESULTS: dict[str, Any] = {}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs"


# ---------------------------------------------------------------------------- delivery under load


def delivery(seconds: float) -> None:
    """Three CPU-bound threads in the process; violations at a steady 400/s from the main thread
    reach the deferred sinks (JSON logs, then a sink that notes the delay) within a second."""
    arrivals = Arrivals()
    logger = json_logger("bench.delivery")
    if "sentry_sdk" in sys.modules:
        # An earlier part initialised Sentry, whose logging integration would turn each
        # CRITICAL line into a Sentry event on our worker; configure() keeps our lines out of
        # it when Sentry is a sink, and this part measures our worker, not Sentry's.
        from sentry_sdk.integrations.logging import ignore_logger

        ignore_logger(logger.name)
    setup = make_setup([ik.sinks.JsonLogs(logger), arrivals])
    setup.activate()
    invariant = ik.Invariant("BENCH_DELIVERY", type="bench_delivery", summary="bench")
    try:
        sent = violations_beside_spinners(invariant, seconds)
    finally:
        setup.dispatcher.shutdown(5.0)
        STATE.dispatcher = STATE.config = None
    in_time = sum(1 for d in arrivals.delays if d <= 1.0)
    share = in_time / sent if sent else 0.0
    RESULTS["delivery"] = {"sent": sent, "in_time": in_time, "share": round(share, 4)}
    ROWS.append(
        Row(
            "3 CPU-bound threads: violations (400/s) at the sinks within 1 s",
            f"{in_time} of {sent}",
            "",
            f"{share:.1%}",
            ">= 90%",
            share >= 0.9,
            share,
        )
    )


# ---------------------------------------------------------------------------------- success path


def success_path(rounds: int) -> dict[str, Variant]:
    """Floor, logfire, and invariantkit with each sink combination, in one interleaved run."""
    import logfire
    import posthog
    import sentry_sdk

    provider, _exporter = tracer_provider()

    def flush_spans() -> None:
        provider.force_flush()

    # -- the floor: the SDK calls the contract requires, made directly ------------------------
    tracer = provider.get_tracer("floor")
    counter, hist = floor_children("floor_operation", "renewal")
    user_var: ContextVar[str | None] = ContextVar("floor_user", default=None)
    attrs = {"billing.operation": "renewal"}
    ok = Status(StatusCode.OK)
    attach, detach, set_in = otel_context.attach, otel_context.detach, trace.set_span_in_context
    perf = time.perf_counter

    def business() -> None:
        return None

    def floor() -> None:
        token = user_var.set("user_42")
        start = perf()
        span = tracer.start_span("billing.renewal", attributes=attrs)
        ctx_token = attach(set_in(span))
        try:
            business()
        finally:
            detach(ctx_token)
        span.set_status(ok)
        span.end()
        counter.inc()
        hist.observe(perf() - start)
        user_var.reset(token)

    def span_only() -> None:
        span = tracer.start_span("billing.renewal", attributes=attrs)
        ctx_token = attach(set_in(span))
        try:
            business()
        finally:
            detach(ctx_token)
        span.set_status(ok)
        span.end()

    # -- logfire, configured to stay local, with the same discarding batch processor ----------
    lf_exporter = DiscardSpans()
    logfire.configure(
        send_to_logfire=False,
        console=False,
        metrics=False,
        inspect_arguments=False,
        additional_span_processors=[BatchSpanProcessor(lf_exporter)],
    )

    @logfire.instrument("renewal", extract_args=False)
    def logfire_renewal() -> None:
        return None

    # -- invariantkit setups --------------------------------------------------------------------
    with discard_server() as port:
        sentry_sdk.init(dsn=f"http://public@127.0.0.1:{port}/1", release="bench")
        ph_client = posthog.Posthog(
            "phc_bench", host=f"http://127.0.0.1:{port}", timeout=2, max_retries=1
        )
        registry = CollectorRegistry()
        logs = json_logger("invariantkit.bench")

        def traces() -> Any:
            return ik.sinks.OtelTraces(provider)

        def prom() -> Any:
            return ik.sinks.PrometheusMetrics(registry)

        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        setups = {
            "traces+metrics": make_setup([traces(), prom()]),
            "traces": make_setup([traces()]),
            "metrics": make_setup([prom()]),
            "no sinks": make_setup([]),
            "traces+metrics+sentry": make_setup([traces(), prom(), ik.sinks.Sentry()]),
            "traces+metrics+posthog": make_setup([traces(), prom(), ik.sinks.PostHog(ph_client)]),
            "traces+metrics+json logs": make_setup([traces(), prom(), ik.sinks.JsonLogs(logs)]),
            "traces+otel metrics": make_setup([traces(), ik.sinks.OtelMetrics(meter_provider)]),
            "all five": make_setup(
                [
                    traces(),
                    prom(),
                    ik.sinks.Sentry(),
                    ik.sinks.PostHog(ph_client),
                    ik.sinks.JsonLogs(logs),
                ]
            ),
        }

        def decorated(name: str, user_facing: bool) -> Callable[[], None]:
            def renewal() -> None:
                return None

            return ik.billing_operation(name, user_facing=user_facing)(renewal)

        # The floor plus the product event a user-facing operation sends, made by hand: what
        # PostHog itself costs (the reference of the user_facing=True whole-CPU bar).
        ph_capture = ph_client.capture
        fromts, utc = dt.datetime.fromtimestamp, dt.timezone.utc

        def floor_posthog() -> None:
            floor()
            ph_capture(
                "renewal_success",
                distinct_id="3f2a9c1e7b6d4a5f8e0c1b2a3d4e5f60",
                properties={
                    "operation": "renewal",
                    "domain": "billing",
                    "outcome": "success",
                    "duration_ms": 0.012,
                    "trace_id": "3f2a9c1e7b6d4a5f8e0c1b2a3d4e5f60",
                    "$process_person_profile": False,
                },
                timestamp=fromts(time.time(), utc),
            )

        def flush_floor_posthog() -> None:
            flush_spans()
            ph_client.flush()

        batch = 40
        variants: dict[str, Variant] = {
            "bare call": Variant("bare call", business, 2000),
            "floor": Variant("floor", floor, batch, after=flush_spans),
            "floor + posthog.capture": Variant(
                "floor + posthog.capture", floor_posthog, batch, after=flush_floor_posthog
            ),
            "SDK span alone": Variant("SDK span alone", span_only, batch, after=flush_spans),
            "logfire": Variant("logfire", logfire_renewal, batch, after=logfire.force_flush),
        }

        def add(label: str, setup_name: str, op: str, user_facing: bool = False) -> None:
            setup = setups[setup_name]

            def after(setup: Setup = setup) -> None:
                setup.settle()
                flush_spans()

            variants[label] = Variant(
                label, decorated(op, user_facing), batch, before=setup.activate, after=after
            )

        add("ik traces+metrics", "traces+metrics", "bench_tm")
        add("ik all five, user_facing=False", "all five", "bench_all")
        add("ik all five, user_facing=True", "all five", "bench_all_uf", True)
        add("ik no sinks", "no sinks", "bench_none")
        add("ik traces", "traces", "bench_traces")
        add("ik metrics", "metrics", "bench_metrics")
        add("ik traces+metrics+sentry", "traces+metrics+sentry", "bench_tms")
        add("ik traces+metrics+posthog (user_facing)", "traces+metrics+posthog", "bench_tmp", True)
        add("ik traces+metrics+json logs", "traces+metrics+json logs", "bench_tml")
        add("ik traces+otel metrics", "traces+otel metrics", "bench_tom")

        # Warm up every path once (imports, caches, first label children).
        for v in variants.values():
            if v.before:
                v.before()
            for _ in range(200):
                v.fn()
            if v.after:
                v.after()
        for v in variants.values():
            v.times.clear()
        interleave(list(variants.values()), rounds)

        # CPU of all threads per call, background work included (worker, SDK queues).
        cpu, reps = cpu_per_call(variants, setups, flush_spans, 5 if rounds < 100 else 9)
        RESULTS["cpu_per_call_us"] = {k: round(v * 1e6, 2) for k, v in cpu.items()}
        RESULTS["cpu_per_call_reps_us"] = {
            k: [round(x * 1e6, 2) for x in v] for k, v in reps.items()
        }

        for setup in setups.values():
            setup.dispatcher.shutdown(5.0)
        ph_client.shutdown()
        sentry_sdk.get_client().close(timeout=2.0)
        STATE.dispatcher = STATE.config = None
    logfire.shutdown() if hasattr(logfire, "shutdown") else None
    provider.shutdown()
    return variants


def cpu_per_call(
    variants: dict[str, Variant],
    setups: dict[str, Setup],
    flush_spans: Callable[[], None],
    reps: int,
    seed: int = 11,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Process CPU time (all threads) per call over 2,000 calls and the flush that follows:
    the median per variant, and each repetition's figures (every variant once per repetition,
    in a shuffled order, so that ratios can be taken within a repetition)."""
    out: dict[str, list[float]] = {}
    n = 2000
    names = [name for name in variants if name != "bare call"]
    rng = random.Random(seed)
    for _ in range(reps):
        rng.shuffle(names)
        for name in names:
            v = variants[name]
            if v.before:
                v.before()
            gc.collect()
            start = time.process_time()
            for _ in range(n):
                v.fn()
            if v.after:
                v.after()
            flush_spans()
            out.setdefault(name, []).append((time.process_time() - start) / n)
    return {k: statistics.median(v) for k, v in out.items()}, out


def cpu_ratio(name: str, reference: str) -> float | None:
    """The median, over repetitions, of ``name``'s CPU per call over ``reference``'s in the same
    repetition (None when either was not measured)."""
    reps = RESULTS.get("cpu_per_call_reps_us", {})
    ours, ref = reps.get(name), reps.get(reference)
    if not ours or not ref:
        return None
    return statistics.median(a / b for a, b in zip(ours, ref, strict=True))


def report_success(variants: dict[str, Variant]) -> None:
    floor = variants["floor"]
    ours = variants["ik traces+metrics"]
    lf = variants["logfire"]
    r = paired_ratio(ours, floor)
    ROWS.append(
        Row(
            "success path, traces+metrics / floor (span+counter+histogram+contextvar)",
            us(ours.median),
            us(floor.median),
            f"{r:.2f}x",
            "<= 1.25",
            r <= 1.25,
            r,
        )
    )
    r = paired_ratio(ours, lf)
    ROWS.append(
        Row(
            "success path, traces+metrics / logfire.instrument(extract_args=False)",
            us(ours.median),
            us(lf.median),
            f"{r:.2f}x",
            "<= 0.5",
            r <= 0.5,
            r,
        )
    )
    for label, bar in (
        ("ik all five, user_facing=False", 1.5),
        ("ik all five, user_facing=True", 2.0),
    ):
        r = paired_ratio(variants[label], floor)
        ROWS.append(
            Row(
                f"success path, {label.removeprefix('ik ')} / floor",
                us(variants[label].median),
                us(floor.median),
                f"{r:.2f}x",
                f"<= {bar}",
                r <= bar,
                r,
            )
        )
    # The whole cost: CPU on every thread of the process per call, the flush that delivers the
    # calls included (receivers in another process).
    cpu = RESULTS.get("cpu_per_call_us", {})
    for label, reference, bar in (
        ("ik all five, user_facing=False", "floor", 2.0),
        ("ik all five, user_facing=True", "floor + posthog.capture", 1.3),
    ):
        r = cpu_ratio(label, reference)
        if r is None:
            continue
        ROWS.append(
            Row(
                f"whole CPU (all threads), {label.removeprefix('ik ')} / {reference}",
                f"{cpu[label]:.1f} µs",
                f"{cpu[reference]:.1f} µs",
                f"{r:.2f}x",
                f"<= {bar}",
                r <= bar,
                r,
            )
        )
    RESULTS["success_path_us"] = {k: round(v.median * 1e6, 3) for k, v in variants.items()}
    RESULTS["success_path_ratio_to_floor"] = {
        k: round(paired_ratio(v, floor), 3) for k, v in variants.items() if k != "bare call"
    }


# ---------------------------------------------------------------------------------- assert path


def assert_path(rounds: int) -> None:
    """A passing ``assert_invariant`` against a bare ``if not cond`` branch plus call."""
    from invariantkit import billing

    inv = billing.NO_DOUBLE_CHARGE
    setup = make_setup([ik.sinks.Memory()])
    setup.activate()

    def bare_check(condition: object, invariant: object) -> bool:
        if not condition:
            raise AssertionError(invariant)
        return True

    charges_today = 1
    assert_invariant = ik.assert_invariant

    def ours() -> None:
        assert_invariant(charges_today <= 1, inv)

    def bare() -> None:
        bare_check(charges_today <= 1, inv)

    a = Variant("assert_invariant", ours, 5000)
    b = Variant("bare branch", bare, 5000)
    interleave([a, b], rounds)
    r = paired_ratio(a, b)
    ROWS.append(
        Row(
            "passing assert_invariant / bare branch + call",
            f"{a.median * 1e9:.0f} ns",
            f"{b.median * 1e9:.0f} ns",
            f"{r:.2f}x",
            "<= 3",
            r <= 3,
            r,
        )
    )
    RESULTS["assert_ns"] = {"ours": a.median * 1e9, "bare": b.median * 1e9, "ratio": r}
    setup.dispatcher.shutdown(2.0)
    STATE.dispatcher = STATE.config = None


# ---------------------------------------------------------------------------------- violation path


@contextlib.contextmanager
def hanging_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers (a hanging backend)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)  # held open, never read, never answered

    thread = threading.Thread(target=accept, name="bench-hanging-server", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


#: In the billing-function part, one call in this many finds a violation (a harsh rate: a real
#: billing service finds one in many thousands).
VIOLATION_EVERY = 4


def violation_path(calls: int) -> None:
    """Sentry and OTLP on closed ports, PostHog on a host that never answers: per-call latency.

    The calls of one step run in turn, so they share the machine's state:

    - first the issue's case: a ``@billing_operation`` billing function, the same function
      undecorated, and the same function with the SDK calls our contract requires written by
      hand (the reference: what any implementation has to do on the call path), in a shuffled
      order; one step in four the three find a violation;
    - then, queues drained, DESIGN.md's case: a violation outside any operation with all five
      sinks, the same without the Sentry sink, and a bare ``sentry_sdk.capture_message`` on the
      same client (what the guide's hand-written version does on the call path).

    The two parts run apart so that each sees the background load of its own scenario: in
    the second, every step leaves about 3 ms of Sentry capture and other worker CPU behind.
    """
    with hanging_server() as hanging_port:
        _violation_path(calls, f"http://127.0.0.1:{hanging_port}")


def _by_hand(
    provider: TracerProvider, registry: CollectorRegistry
) -> tuple[Callable[[int, int, dict[str, str]], int], Callable[[], None]]:
    """The billing function with the SDK calls of the contract made directly, and a stop.

    Operation: span ``billing.charge`` with ``billing.operation`` and ``enduser.id``, bound as
    current, status OK, pre-bound success counter and duration histogram. Violation: span event
    ``invariant.violated`` with the invariant and the tag, status ERROR, the pre-bound violation
    counter with the trace id as exemplar, Sentry's isolation and current scopes forked for a
    capture elsewhere. What a background worker would need is put on a queue, which a thread
    empties (and discards: the load of real delivery is the decorated function's, in the same
    run).
    """
    import sentry_sdk

    tracer = provider.get_tracer("by_hand")
    ok_count, ok_hist = floor_children("by_hand", "charge")
    violations = Counter(
        "by_hand_violation",
        "Violations, by hand.",
        ["type", "invariant"],
        registry=registry,
    ).labels("double_charge", "NO_DOUBLE_CHARGE")
    user_var: ContextVar[str | None] = ContextVar("by_hand_user", default=None)
    handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stop = object()

    def drain() -> None:
        while handoff.get() is not stop:
            pass

    consumer = threading.Thread(target=drain, name="by-hand-worker", daemon=True)
    consumer.start()
    ok = Status(StatusCode.OK)
    perf = time.perf_counter
    get_isolation_scope = sentry_sdk.get_isolation_scope
    get_current_scope = sentry_sdk.get_current_scope

    def charge(amount: int, already_charged: int, tags: dict[str, str]) -> int:
        start = perf()
        user = user_var.get() or "user_42"
        span = tracer.start_span(
            "billing.charge", attributes={"billing.operation": "charge", "enduser.id": user}
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            if already_charged != 0:
                ids = span.get_span_context()
                trace_id = format(ids.trace_id, "032x")
                span.add_event(
                    "invariant.violated",
                    {
                        "invariant.name": "NO_DOUBLE_CHARGE",
                        "invariant.type": "double_charge",
                        "invariant.severity": "critical",
                        "invariant.tag.subscription_id": tags["subscription_id"],
                    },
                )
                span.set_status(Status(StatusCode.ERROR, "invariant violated: NO_DOUBLE_CHARGE"))
                violations.inc(1, exemplar={"trace_id": trace_id})
                forks = (get_isolation_scope().fork(), get_current_scope().fork())
                handoff.put(("violation", trace_id, user, tags, forks))
            return amount
        finally:
            otel_context.detach(token)
            if already_charged == 0:
                span.set_status(ok)
            span.end()
            duration = perf() - start
            ok_count.inc()
            ok_hist.observe(duration)
            handoff.put(("operation", "charge", user, duration))

    return charge, lambda: handoff.put(stop)


def _violation_path(calls: int, hanging: str) -> None:
    import posthog
    import sentry_sdk
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from invariantkit import billing

    dead = f"http://127.0.0.1:{closed_port()}"
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=dead + "/v1/traces", timeout=1))
    )
    sentry_sdk.init(
        dsn=f"http://public@127.0.0.1:{closed_port()}/1", release="bench", shutdown_timeout=1
    )
    # As docs/guarantees.md recommends for a client built by hand: bounded timeout and retries.
    ph_client = posthog.Posthog("phc_bench", host=hanging, timeout=1, max_retries=1)
    registry = CollectorRegistry()
    logger = json_logger("invariantkit.bench_violation")

    def common() -> list[Any]:
        return [
            ik.sinks.OtelTraces(provider),
            ik.sinks.PrometheusMetrics(registry),
            ik.sinks.PostHog(ph_client),
            ik.sinks.JsonLogs(logger),
        ]

    all_five = make_setup([*common(), ik.sinks.Sentry()])
    no_sentry = make_setup(common())
    inv = billing.NO_DOUBLE_CHARGE
    perf = time.perf_counter
    capture_message = sentry_sdk.capture_message

    def charge(amount: int, already_charged: int, tags: dict[str, str]) -> int:
        """The billing function: a check, then the result."""
        ik.assert_invariant(already_charged == 0, inv, tags=tags)
        return amount

    def bare_charge(amount: int, already_charged: int, tags: dict[str, str]) -> int:
        if already_charged != 0:
            pass
        return amount

    decorated = ik.billing_operation("charge")(charge)
    by_hand, stop_by_hand = _by_hand(provider, registry)

    def bare_check(condition: object) -> bool:
        return bool(condition)

    kinds = ("billing function", "by hand", "undecorated function")
    names = (
        *kinds,
        *(f"{kind}, violation" for kind in kinds),
        "all five",
        "without sentry",
        "bare sentry",
        "bare branch",
    )
    lat: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}  # the caller thread's own CPU
    results: list[Any] = []
    thread_time = time.thread_time

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> None:
        cpu_start = thread_time()
        start = perf()
        result = fn(*args)
        lat[name].append(perf() - start)
        cpu[name].append(thread_time() - cpu_start)
        results.append(result)

    functions = {
        "billing function": decorated,
        "by hand": by_hand,
        "undecorated function": bare_charge,
    }
    order = list(kinds)
    shuffle = random.Random(11).shuffle
    with ik.identify("user_42"):
        for setup in (all_five, no_sentry):  # warm-up
            setup.activate()
            for _ in range(25):
                ik.assert_invariant(False, inv, tags={"subscription_id": "sub_1"})
                decorated(500, 1, {"subscription_id": "sub_1"})
                by_hand(500, 1, {"subscription_id": "sub_1"})
        # The case: the billing function decorated, by hand and undecorated, in a
        # shuffled order; one step in four, the call finds a violation.
        all_five.activate()
        for i in range(calls):
            tags = {"subscription_id": f"sub_{i}"}
            violating = i % VIOLATION_EVERY == 0
            shuffle(order)
            for kind in order:
                timed(
                    f"{kind}, violation" if violating else kind,
                    functions[kind],
                    500,
                    1 if violating else 0,
                    tags,
                )
                time.sleep(0.001)  # calls arrive spaced out, not in one tight loop
        billing_results = [r for r in results if r != 500]
        results.clear()
        ik.flush(2.0)  # the next part starts with empty queues
        # DESIGN.md's case: violations outside any operation, one every few milliseconds.
        for i in range(calls):
            tags = {"subscription_id": f"sub_{i}"}
            all_five.activate()
            violation = partial(ik.assert_invariant, False, inv, tags=tags)
            timed("all five", violation)
            time.sleep(0.001)
            no_sentry.activate()
            timed("without sentry", violation)
            time.sleep(0.001)
            timed("bare sentry", partial(capture_message, "NO_DOUBLE_CHARGE", "fatal", tags=tags))
            timed("bare branch", bare_check, False)
            time.sleep(0.001)
    stop_by_hand()
    floor = statistics.median(lat["undecorated function"] + lat["undecorated function, violation"])
    cpu_floor = statistics.median(
        cpu["undecorated function"] + cpu["undecorated function, violation"]
    )

    def added(*names: str, base: str | None = None) -> dict[str, float]:
        """Added latency of the calls in ``names`` over the median of ``base`` (default: the
        undecorated billing function)."""
        floor_s = statistics.median(lat[base]) if base else floor
        cpu_floor_s = statistics.median(cpu[base]) if base else cpu_floor
        values = [v for name in names for v in lat[name]]
        own = [v for name in names for v in cpu[name]]
        return {
            "calls": len(values),
            "p50_us": (percentile(values, 50) - floor_s) * 1e6,
            "p99_us": (percentile(values, 99) - floor_s) * 1e6,
            "max_ms": (max(values) - floor_s) * 1e3,
            # The caller's own CPU: wall time minus this is time spent waiting (for the CPU,
            # the GIL held by a background thread).
            "cpu_p50_us": (percentile(own, 50) - cpu_floor_s) * 1e6,
            "cpu_p99_us": (percentile(own, 99) - cpu_floor_s) * 1e6,
        }

    stats = {
        "billing function": added("billing function", "billing function, violation"),
        "succeeding": added("billing function"),
        "violating": added("billing function, violation"),
        "by hand": added("by hand", "by hand, violation"),
        "by hand, succeeding": added("by hand"),
        "by hand, violating": added("by hand, violation"),
        "all five": added("all five", base="bare branch"),
        "without sentry": added("without sentry", base="bare branch"),
        "bare sentry": added("bare sentry", base="bare branch"),
    }
    same_results = not billing_results

    def ratio(ours: str, reference: str) -> float:
        return stats[ours]["p99_us"] / stats[reference]["p99_us"]

    def latency_row(label: str, name: str, detail: str, bar: bool) -> Row:
        figures = stats[name]
        p99 = figures["p99_us"]
        return Row(
            label,
            f"p50 {figures['p50_us']:.0f} µs",
            f"p99 {p99:.0f} µs",
            detail,
            "p99 <= 1 ms" if bar else "",
            p99 <= 1000 if bar else None,
            p99 if bar else None,
        )

    billing = stats["billing function"]
    ROWS.append(
        latency_row(
            f"billing function, Sentry+OTLP dead, PostHog hanging, 1 call in {VIOLATION_EVERY} "
            f"finding a violation: added latency, all {billing['calls']:.0f} calls",
            "billing function",
            f"by hand p99 {stats['by hand']['p99_us']:.0f} µs "
            f"({ratio('billing function', 'by hand'):.2f}x); "
            f"own CPU p99 {billing['cpu_p99_us']:.0f} µs",
            True,
        )
    )
    for name, reference, label in (
        ("succeeding", "by hand, succeeding", "  its calls that succeed"),
        ("violating", "by hand, violating", "  its calls that find a violation"),
    ):
        detail = (
            f"by hand p50 {stats[reference]['p50_us']:.0f} µs, p99 "
            f"{stats[reference]['p99_us']:.0f} µs ({ratio(name, reference):.2f}x); "
            f"max {stats[name]['max_ms']:.1f} ms"
        )
        ROWS.append(latency_row(label, name, detail, False))
    for name, label, bar in (
        ("all five", "violation outside any operation, every backend down", True),
        ("without sentry", "  same violation without the Sentry sink", False),
        ("bare sentry", "  reference: bare sentry_sdk.capture_message, same client", False),
    ):
        figures = stats[name]
        detail = f"max {figures['max_ms']:.1f} ms; own CPU p99 {figures['cpu_p99_us']:.0f} µs"
        ROWS.append(latency_row(label, name, detail, bar))
    ROWS.append(
        Row(
            "  billing function results unchanged",
            f"{len(lat['billing function']) + len(lat['billing function, violation'])} calls",
            "",
            "",
            "identical",
            same_results,
        )
    )
    counted = registry.get_sample_value(
        "billing_invariant_violation_total",
        {"type": "double_charge", "invariant": "NO_DOUBLE_CHARGE", "test": "false"},
    )
    # Warm-up, the billing calls that found one, two per step of the second part.
    expected = 2 * (25 + 25) + len(range(0, calls, VIOLATION_EVERY)) + 2 * calls
    all_five.activate()
    start = time.monotonic()
    flushed = ik.flush(2.0)
    flush_s = time.monotonic() - start
    start = time.monotonic()
    all_five.dispatcher.shutdown(2.0)
    shutdown_s = time.monotonic() - start
    no_sentry.dispatcher.shutdown(2.0)
    RESULTS["violation_backends_down"] = {
        **{k.replace(" ", "_").replace(",", ""): v for k, v in stats.items()},
        "results_unchanged": same_results,
        "metric_count": counted,
        "expected": expected,
        "flush_s": flush_s,
        "flush_ok": flushed,
        "shutdown_s": shutdown_s,
        "load_average": os.getloadavg(),
    }
    ROWS.append(
        Row(
            "violation, backends down: counted in the metric / ik.flush(2) / shutdown(2)",
            f"{counted:.0f} of {expected}",
            f"flush {flush_s:.2f} s",
            f"shutdown {shutdown_s:.2f} s",
            "exact, bounded",
            counted == expected and flush_s < 2.5 and shutdown_s < 2.5,
        )
    )
    STATE.dispatcher = STATE.config = None
    with contextlib.suppress(Exception):
        sentry_sdk.get_client().close(timeout=0.5)
    threading.Thread(target=provider.shutdown, daemon=True).start()
    threading.Thread(target=ph_client.shutdown, daemon=True).start()


# ---------------------------------------------------------------------------------- concurrency


def concurrency(total: int) -> None:
    """Throughput of 8 threads and of 1,000 asyncio tasks relative to one thread; exact counts.

    The same is measured for the floor (the SDK calls made directly), so the table shows what
    the GIL, the scheduler and asyncio do to any code, and what invariantkit adds to it.
    """
    provider, exporter = tracer_provider(max_queue_size=8 * total + 10_000)
    registry = CollectorRegistry()
    setup = make_setup([ik.sinks.OtelTraces(provider), ik.sinks.PrometheusMetrics(registry)])
    setup.activate()

    @ik.billing_operation("bench_conc")
    def op() -> None:
        return None

    @ik.billing_operation("bench_conc_async")
    async def aop() -> None:
        await asyncio.sleep(0)

    tracer = provider.get_tracer("floor")
    counter, hist = floor_children("floor_conc", "conc")
    attrs = {"billing.operation": "conc"}
    ok = Status(StatusCode.OK)
    user_var: ContextVar[str | None] = ContextVar("floor_conc_user", default=None)

    def floor() -> None:
        token = user_var.set("user_42")
        start = time.perf_counter()
        span = tracer.start_span("billing.conc", attributes=attrs)
        ctx_token = otel_context.attach(trace.set_span_in_context(span))
        otel_context.detach(ctx_token)
        span.set_status(ok)
        span.end()
        counter.inc()
        hist.observe(time.perf_counter() - start)
        user_var.reset(token)

    async def afloor() -> None:
        token = user_var.set("user_42")
        start = time.perf_counter()
        span = tracer.start_span("billing.conc", attributes=attrs)
        ctx_token = otel_context.attach(trace.set_span_in_context(span))
        await asyncio.sleep(0)
        otel_context.detach(ctx_token)
        span.set_status(ok)
        span.end()
        counter.inc()
        hist.observe(time.perf_counter() - start)
        user_var.reset(token)

    def one_thread(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        for _ in range(total):
            fn()
        return time.perf_counter() - start

    def eight_threads(fn: Callable[[], None]) -> float:
        barrier = threading.Barrier(9)

        def work() -> None:
            barrier.wait()
            for _ in range(total // 8):
                fn()

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    async def one_task(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        for _ in range(total):
            await fn()
        return time.perf_counter() - start

    async def tasks_1000(fn: Callable[[], Any]) -> float:
        per_task = total // 1000

        async def work() -> None:
            for _ in range(per_task):
                await fn()

        start = time.perf_counter()
        await asyncio.gather(*(work() for _ in range(1000)))
        return time.perf_counter() - start

    times: dict[str, list[float]] = {}
    modes: list[tuple[str, Callable[[], float]]] = [
        ("ik 1 thread", lambda: one_thread(op)),
        ("ik 8 threads", lambda: eight_threads(op)),
        ("floor 1 thread", lambda: one_thread(floor)),
        ("floor 8 threads", lambda: eight_threads(floor)),
        ("ik 1 task", lambda: asyncio.run(one_task(aop))),
        ("ik 1000 tasks", lambda: asyncio.run(tasks_1000(aop))),
        ("floor 1 task", lambda: asyncio.run(one_task(afloor))),
        ("floor 1000 tasks", lambda: asyncio.run(tasks_1000(afloor))),
    ]
    for _ in range(3):
        for name, run in modes:
            times.setdefault(name, []).append(run())
            provider.force_flush()
    med = {k: statistics.median(v) for k, v in times.items()}
    sync_count = registry.get_sample_value(
        "billing_operation_total", {"operation": "bench_conc", "outcome": "success"}
    )
    async_count = registry.get_sample_value(
        "billing_operation_total", {"operation": "bench_conc_async", "outcome": "success"}
    )
    expected = 3 * (total + (total // 8) * 8)
    expected_async = 3 * (total + (total // 1000) * 1000)
    spans = exporter.count
    expected_spans = 2 * (expected + expected_async)  # ours and the floor's
    exact = sync_count == expected and async_count == expected_async and spans == expected_spans
    r8 = med["ik 1 thread"] / med["ik 8 threads"]
    r8_floor = med["floor 1 thread"] / med["floor 8 threads"]
    r1000 = med["ik 1 task"] / med["ik 1000 tasks"]
    r1000_floor = med["floor 1 task"] / med["floor 1000 tasks"]
    ROWS.append(
        Row(
            "8 threads: throughput / one thread (traces+metrics; floor's own ratio as reference)",
            f"{total / med['ik 8 threads']:,.0f}/s",
            f"floor {r8_floor:.2f}x",
            f"{r8:.2f}x",
            "counts exact",
            exact,
            r8,
        )
    )
    ROWS.append(
        Row(
            "1,000 asyncio tasks: throughput / one task (floor's own ratio as reference)",
            f"{total / med['ik 1000 tasks']:,.0f}/s",
            f"floor {r1000_floor:.2f}x",
            f"{r1000:.2f}x",
            "counts exact",
            exact,
            r1000,
        )
    )
    RESULTS["concurrency"] = {
        "calls_per_mode": total,
        "seconds": med,
        "threads_ratio": r8,
        "threads_ratio_floor": r8_floor,
        "tasks_ratio": r1000,
        "tasks_ratio_floor": r1000_floor,
        "metric_counts": [sync_count, async_count],
        "expected_counts": [expected, expected_async],
        "spans": spans,
        "expected_spans": expected_spans,
    }
    setup.dispatcher.shutdown(5.0)
    STATE.dispatcher = STATE.config = None
    provider.shutdown()


# ---------------------------------------------------------------------------------- memory


def memory(calls: int) -> None:
    """RSS growth over many decorated calls with all five sinks; metric series count."""
    import posthog
    import sentry_sdk

    provider, _exporter = tracer_provider()
    registry = CollectorRegistry()
    with discard_server() as port:
        sentry_sdk.init(dsn=f"http://public@127.0.0.1:{port}/1", release="bench")
        ph_client = posthog.Posthog("phc_bench", host=f"http://127.0.0.1:{port}")
        setup = make_setup(
            [
                ik.sinks.OtelTraces(provider),
                ik.sinks.PrometheusMetrics(registry),
                ik.sinks.Sentry(),
                ik.sinks.PostHog(ph_client),
                ik.sinks.JsonLogs(json_logger("invariantkit.bench_memory")),
            ]
        )
        setup.activate()

        @ik.billing_operation("bench_memory")
        def renewal(i: int) -> int:
            return i

        def series() -> int:
            return sum(
                len(family.samples)
                for family in registry.collect()
                if family.name.startswith(("billing_", "invariantkit_"))
            )

        process = psutil.Process()
        for i in range(20_000):
            renewal(i)
        setup.settle()
        gc.collect()
        rss0, series0 = process.memory_info().rss, series()
        start = time.perf_counter()
        with ik.identify("user_42"):
            for i in range(calls // 2):
                renewal(i)
            setup.settle()
            series_half = series()
            for i in range(calls // 2, calls):
                renewal(i)
        elapsed = time.perf_counter() - start
        setup.settle()
        gc.collect()
        rss1, series1 = process.memory_info().rss, series()
        dropped = sum(
            s.value
            for family in registry.collect()
            if family.name == "invariantkit_sink_dropped"
            for s in family.samples
            if s.name.endswith("_total")
        )
        growth_mb = (rss1 - rss0) / 2**20
        ROWS.append(
            Row(
                f"{calls:,} decorated calls, all five sinks: RSS growth",
                f"{growth_mb:+.1f} MB",
                f"{rss0 / 2**20:.0f} MB at start",
                f"{elapsed:.0f} s",
                "< 10 MB",
                growth_mb < 10,
                growth_mb,
            )
        )
        ROWS.append(
            Row(
                "  metric series (billing_*, invariantkit_*): start / half / end",
                f"{series0} / {series_half} / {series1}",
                "",
                f"dropped {dropped:.0f}",
                "bounded",
                series1 == series_half,
            )
        )
        RESULTS["memory"] = {
            "calls": calls,
            "rss_start_mb": rss0 / 2**20,
            "rss_growth_mb": growth_mb,
            "series_before": series0,
            "series_half": series_half,
            "series_after": series1,
            "worker_dropped": dropped,
            "seconds": elapsed,
        }
        setup.dispatcher.shutdown(5.0)
        ph_client.shutdown()
        sentry_sdk.get_client().close(timeout=2.0)
        STATE.dispatcher = STATE.config = None
    provider.shutdown()


# ---------------------------------------------------------------------------------- multiprocess


def _mp_worker(
    calls: int,
    violation_every: int,
    start: Any,
    results: Any,
) -> None:
    """One worker process (spawned, so this module and prometheus-client were imported afresh,
    with ``PROMETHEUS_MULTIPROC_DIR`` already set when the parent started it, or not set for the
    in-memory reference): configure, wait for the others, run the decorated calls and the
    violations, report the elapsed and CPU time, shut down."""
    from prometheus_client import values

    from invariantkit import billing

    mode = "multiprocess" if values.ValueClass.__name__ == "MmapedValue" else "in-memory"
    ik.configure(service="bench", environment="bench", sinks=[ik.sinks.PrometheusMetrics()])

    @ik.billing_operation("bench_mp")
    def renewal(i: int) -> int:
        return i

    inv = billing.NO_DOUBLE_CHARGE
    for i in range(1000):  # warm-up, not counted in the timing (counted in the metrics)
        renewal(i)
    start.wait(600)  # all workers and the parent: the workers start at once
    cpu0, t0 = time.process_time(), time.perf_counter()
    with ik.identify("user_42"):
        for i in range(calls):
            renewal(i)
            if i % violation_every == 0:
                ik.assert_invariant(False, inv, tags={"subscription_id": f"sub_{i}"})
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    flushed = ik.shutdown(5.0)
    results.put({"pid": os.getpid(), "mode": mode, "seconds": elapsed, "cpu": cpu, "ok": flushed})


def _mp_round(workers: int, calls: int, violation_every: int, metrics_dir: Path | None) -> Any:
    """Run ``workers`` spawned processes at once; their reports and the totals the
    ``MultiProcessCollector`` reads from ``metrics_dir`` (None: in-memory reference)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as gunicorn workers are
    start, results = ctx.Barrier(workers + 1), ctx.Queue()
    saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:  # the children inherit the environment when they start
        procs = [
            ctx.Process(target=_mp_worker, args=(calls, violation_every, start, results))
            for _ in range(workers)
        ]
        for proc in procs:
            proc.start()
    finally:
        if saved is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved
    try:
        start.wait(600)  # every worker imported, configured and warmed up
        reports = [results.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join(60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError(f"a worker failed: exit codes {[p.exitcode for p in procs]}")
    totals: dict[str, float] = {}
    if metrics_dir is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
        wanted = {
            ("billing_operation_total", "success"),
            ("billing_operation_duration_seconds_count", "success"),
            ("billing_invariant_violation_total", None),
        }
        for family in registry.collect():
            for s in family.samples:
                if s.labels.get("operation") == "bench_mp" or (
                    s.labels.get("invariant") == "NO_DOUBLE_CHARGE"
                ):
                    key = (s.name, s.labels.get("outcome"))
                    if key in wanted:
                        totals[s.name] = totals.get(s.name, 0.0) + s.value
    return reports, totals


def multiprocess(calls: int, rounds: int, workers: int = 4) -> None:
    """Multiprocess Prometheus: 4 worker processes at once against one process alone, each
    doing ``calls`` decorated calls and a violation every 100; a ``MultiProcessCollector``
    reads the totals. Also one process with the in-memory registry: what the mode costs."""
    import tempfile

    violation_every = 100
    per_worker_violations = len(range(0, calls, violation_every))
    single: list[float] = []
    single_cpu: list[float] = []
    memory_ref: list[float] = []
    per_process: list[float] = []
    per_process_cpu: list[float] = []
    aggregate: list[float] = []
    exact = True
    modes: set[str] = set()
    flushed = True
    checks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="invariantkit-bench-mp-") as tmp:
        for r in range(rounds):
            order = ["memory", "single", "multi"] if r % 2 == 0 else ["multi", "single", "memory"]
            for what in order:
                n = workers if what == "multi" else 1
                metrics_dir = None
                if what != "memory":
                    metrics_dir = Path(tmp) / f"{what}-{r}"
                    metrics_dir.mkdir()
                reports, totals = _mp_round(n, calls, violation_every, metrics_dir)
                modes.update(f"{what}:{rep['mode']}" for rep in reports)
                flushed = flushed and all(rep["ok"] for rep in reports)
                if what == "memory":
                    memory_ref.append(calls / reports[0]["seconds"])
                    continue
                expected = {
                    "billing_operation_total": n * (calls + 1000),
                    "billing_operation_duration_seconds_count": n * (calls + 1000),
                    "billing_invariant_violation_total": n * per_worker_violations,
                }
                exact = exact and totals == expected
                checks.append({"round": r, "workers": n, "totals": totals, "expected": expected})
                if what == "single":
                    single.append(calls / reports[0]["seconds"])
                    single_cpu.append(reports[0]["cpu"] / calls)
                else:
                    per_process.append(statistics.mean(calls / rep["seconds"] for rep in reports))
                    per_process_cpu.append(statistics.mean(rep["cpu"] / calls for rep in reports))
                    aggregate.append(n * calls / max(rep["seconds"] for rep in reports))
    one = statistics.median(single)
    each = statistics.median(per_process)
    total = statistics.median(aggregate)
    mem = statistics.median(memory_ref)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    right_modes = modes == {"memory:in-memory", "single:multiprocess", "multi:multiprocess"}
    ROWS.append(
        Row(
            f"{workers} worker processes, multiprocess Prometheus: per-process throughput / "
            f"one process ({cores} cores)",
            f"{each:,.0f}/s each",
            f"one {one:,.0f}/s",
            f"{each / one:.2f}x",
            "counts exact",
            exact and right_modes and flushed,
            each / one,
        )
    )
    ROWS.append(
        Row(
            f"  all {workers} together / one process; one process, multiprocess / in-memory mode",
            f"{total:,.0f}/s",
            f"in-memory {mem:,.0f}/s",
            f"{total / one:.2f}x; {one / mem:.2f}x",
            "",
            None,
        )
    )
    ROWS.append(
        Row(
            "  CPU per call (decorated call, Prometheus only): 4 processes / one",
            us(statistics.median(per_process_cpu)),
            us(statistics.median(single_cpu)),
            f"{statistics.median(per_process_cpu) / statistics.median(single_cpu):.2f}x",
            "",
            None,
        )
    )
    RESULTS["multiprocess"] = {
        "workers": workers,
        "cores": cores,
        "calls_per_worker": calls,
        "violations_per_worker": per_worker_violations,
        "rounds": rounds,
        "single_per_s": single,
        "per_process_per_s": per_process,
        "aggregate_per_s": aggregate,
        "in_memory_per_s": memory_ref,
        "single_cpu_us": [x * 1e6 for x in single_cpu],
        "per_process_cpu_us": [x * 1e6 for x in per_process_cpu],
        "per_process_ratio": each / one,
        "aggregate_ratio": total / one,
        "multiprocess_over_in_memory": one / mem,
        "exact": exact,
        "modes": sorted(modes),
        "flushed": flushed,
        "checks": checks,
    }


# ---------------------------------------------------------------------------------- profile


def profile(calls: int) -> None:
    """cProfile of the success path (traces+metrics) next to the floor, top functions."""
    provider, _ = tracer_provider(max_queue_size=calls + 10)
    registry = CollectorRegistry()
    setup = make_setup([ik.sinks.OtelTraces(provider), ik.sinks.PrometheusMetrics(registry)])
    setup.activate()

    @ik.billing_operation("bench_profile")
    def renewal() -> None:
        return None

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        renewal()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    console.print("[bold]cProfile, success path with traces+metrics, by own time[/bold]")
    print(out.getvalue())
    setup.dispatcher.shutdown(2.0)
    STATE.dispatcher = STATE.config = None
    provider.shutdown()


# ---------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in (
        "invariantkit",
        "opentelemetry-sdk",
        "prometheus-client",
        "sentry-sdk",
        "posthog",
        "logfire",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def print_report(info: dict[str, Any], variants: dict[str, Variant] | None) -> None:
    console.print(
        f"[bold]machine[/bold]: {info['nproc']} CPUs ({info['cpu']}), "
        f"{info['implementation']} {info['python']}, load {info['load_average']}"
    )
    console.print(
        "[bold]versions[/bold]: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )
    table = Table(title="invariantkit benchmarks (medians; ratios from one interleaved run)")
    for col in ("measure", "ours", "reference", "ratio", "bar", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for row in ROWS:
        met = "" if row.met is None else ("[green]yes[/green]" if row.met else "[red]NO[/red]")
        table.add_row(row.measure, row.ours, row.reference, row.ratio, row.bar, met)
    console.print(table)
    if variants is not None:
        costs = Table(title="what each sink costs (success path)")
        costs.add_column("configuration")
        costs.add_column("call path", justify="right")
        costs.add_column("/ floor", justify="right")
        costs.add_column("CPU per call, all threads", justify="right")
        cpu = RESULTS.get("cpu_per_call_us", {})
        floor = variants["floor"]
        for name, v in variants.items():
            ratio = "" if name == "bare call" else f"{paired_ratio(v, floor):.2f}x"
            costs.add_row(
                name,
                us(v.median),
                ratio,
                f"{cpu[name]:.1f} µs" if name in cpu else "",
            )
        console.print(costs)
    blocked = "none" if not BLOCKED else ", ".join(sorted(set(BLOCKED)))
    console.print(f"network access outside 127.0.0.1 attempted: {blocked}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller samples, about a minute")
    parser.add_argument("--rounds", type=int, help="rounds of the interleaved success-path run")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the path")
    parser.add_argument(
        "--only",
        choices=[
            "success",
            "assert",
            "violation",
            "delivery",
            "concurrency",
            "memory",
            "multiprocess",
        ],
        action="append",
        help="run only these parts (repeatable)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    parts = set(
        args.only
        or ["success", "assert", "violation", "delivery", "concurrency", "memory", "multiprocess"]
    )
    info = machine()
    RESULTS["machine"] = info
    RESULTS["quick"] = quick
    # Exporters and clients complain when their backend is down (on purpose, here).
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    logging.getLogger("posthog").addFilter(lambda record: False)
    logging.getLogger("backoff").setLevel(logging.CRITICAL)
    variants = None
    if "success" in parts:
        console.print("success path ...")
        variants = success_path(args.rounds or (40 if quick else 250))
        report_success(variants)
    if "assert" in parts:
        console.print("assert_invariant ...")
        assert_path(30 if quick else 200)
    if "violation" in parts:
        console.print("violation path with backends down ...")
        violation_path(400 if quick else 3000)
    if "delivery" in parts:
        console.print("delivery beside CPU-bound threads ...")
        delivery(3.0 if quick else 10.0)
    if "concurrency" in parts:
        console.print("threads and tasks ...")
        concurrency(8_000 if quick else 40_000)
    if "memory" in parts:
        console.print("memory ...")
        memory(100_000 if quick else 1_000_000)
    if "multiprocess" in parts:
        console.print("4 worker processes, multiprocess Prometheus ...")
        multiprocess(20_000 if quick else 100_000, 2 if quick else 3)
    if args.profile:
        profile(20_000)
    print_report(info, variants)
    RESULTS["rows"] = [row.__dict__ for row in ROWS]
    RESULTS["network_blocked"] = BLOCKED
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2, default=str))
    return 0 if all(r.met is not False for r in ROWS) and not BLOCKED else 1


if __name__ == "__main__":
    sys.exit(main())
