"""Hostile text: what 100 KB of adversarial text in a message, a tag or ``extra`` costs.

    .venv/bin/python benchmarks/hostile_text.py            # the bars, a few seconds
    .venv/bin/python benchmarks/hostile_text.py --profile  # plus a cProfile of each case

DESIGN.md section 4: a failing call whose exception message, or a violation whose tag or
``extra`` holds 100 KB of hostile text (digits and spaces, dotted words, unterminated e-mail
shapes...), adds less than 3 ms to the caller than the same call with a short text; five such
records drain (the worker hands them to every sink's SDK) in less than 2 s.

All five sinks are configured with real SDKs: spans to a discarding batch processor, a
Prometheus registry of their own, Sentry and PostHog posting to a discarding HTTP server on
127.0.0.1 (benchmarks/_discard_server.py, its own process), JSON logs to /dev/null. The short and
the hostile variant of each case run side by side, in a shuffled order, and the added time is
the median of the hostile call's time minus the median of the short one's. Exit code 0 when
every bar is met.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable

import posthog
import sentry_sdk
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry

import invariantkit as ik

SIZE = 100_000
CALLER_BAR = 0.003  # seconds added to the caller
DRAIN_BAR = 2.0  # seconds for five hostile records to drain

#: Texts that made the scrubber quadratic or slow (each 100 KB).
HOSTILE = {
    "digits and spaces": ("1 " * SIZE)[:SIZE],
    "digit run before an @": "7" * (SIZE - 2) + " @",
    "dotted words before ://": ("a." * SIZE)[: SIZE - 4] + "://@",
    "dashed domain": "a@" + ("a-" * SIZE)[: SIZE - 2],
    "digits and dashes": ("4-" * SIZE)[:SIZE],
}
SHORT = "charge failed for subscription sub_1"


# benchmarks/run.py: its network guard (only 127.0.0.1), its discarding span exporter and the
# discarding HTTP server in its own process.
from run import BLOCKED, DiscardSpans, discard_server  # noqa: E402


def configure(port: int) -> None:
    sentry_sdk.init(
        dsn=f"http://public@127.0.0.1:{port}/1", transport_queue_size=1000, shutdown_timeout=1
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DiscardSpans()))
    logger = logging.getLogger("invariantkit.bench_hostile")
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives for the run
    handler.setFormatter(ik.JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    client = posthog.Posthog("phc_bench", host=f"http://127.0.0.1:{port}", timeout=1)
    ik.configure(
        service="bench",
        sinks=[
            ik.sinks.OtelTraces(provider),
            ik.sinks.PrometheusMetrics(CollectorRegistry()),
            ik.sinks.Sentry(),
            ik.sinks.PostHog(client),
            ik.sinks.JsonLogs(logger),
        ],
    )


INV = ik.Invariant(
    "BENCH_HOSTILE_TEXT", type="bench_hostile_text", summary="hostile text benchmark"
)


@ik.billing_operation("bench_hostile")
def failing(message: str) -> None:
    raise ValueError(message)


def call_failing(text: str) -> None:
    try:
        failing(text)
    except ValueError:
        pass


def call_tag(text: str) -> None:
    ik.assert_invariant(False, INV, tags={"note": text})


def call_extra(text: str) -> None:
    ik.assert_invariant(False, INV, extra={"note": text})


CASES: dict[str, Callable[[str], None]] = {
    "failing call's message": call_failing,
    "violation tag": call_tag,
    "violation extra": call_extra,
}


def added(case: Callable[[str], None], hostile: str, rounds: int) -> float:
    """Median time of a call with ``hostile`` minus that of the same call with a short text,
    measured side by side (shuffled), the worker drained between calls."""
    times: dict[str, list[float]] = {"short": [], "hostile": []}
    texts = {"short": SHORT, "hostile": hostile}
    order = ["short", "hostile"]
    shuffle = random.Random(3).shuffle
    perf = time.perf_counter
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            text = texts[name]
            start = perf()
            case(text)
            times[name].append(perf() - start)
            ik.flush(10)
    return statistics.median(times["hostile"]) - statistics.median(times["short"])


def drain(case: Callable[[str], None], hostile: str) -> float:
    """Seconds from the first of five hostile records to the end of the flush that delivers
    them to every sink's SDK."""
    ik.flush(10)
    start = time.perf_counter()
    for _ in range(5):
        case(hostile)
    ik.flush(30)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile", action="store_true", help="cProfile each case")
    args = parser.parse_args(argv)
    ok = True
    with discard_server() as port:
        configure(port)
        for case in CASES.values():  # warm-up
            for _ in range(5):
                case(SHORT)
        ik.flush(10)
        print(f"{'case':26} {'hostile text':26} {'added to caller':>16} {'5 drain':>9}  bars")
        for case_name, case in CASES.items():
            for text_name, text in HOSTILE.items():
                extra = added(case, text, args.rounds)
                drained = drain(case, text)
                met = extra < CALLER_BAR and drained < DRAIN_BAR
                ok = ok and met
                print(
                    f"{case_name:26} {text_name:26} {extra * 1e3:13.3f} ms "
                    f"{drained:7.3f} s  {'met' if met else 'MISSED'}"
                )
                if args.profile:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    for _ in range(5):
                        case(text)
                    ik.flush(30)
                    profiler.disable()
                    out = io.StringIO()
                    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(6)
                    print(out.getvalue())
        ik.shutdown(5)
        sentry_sdk.get_client().close(timeout=2)
    if BLOCKED:
        print(f"blocked connection attempts outside 127.0.0.1: {BLOCKED}")
        ok = False
    print("every bar met" if ok else "a bar was MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
