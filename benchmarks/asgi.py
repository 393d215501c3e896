"""The ASGI middleware's per-request overhead, beside a bare FastAPI app, both served by uvicorn.

Uvicorn processes on 127.0.0.1 serve the same FastAPI app (one async handler returning a small
JSON body): bare, with ``InvariantkitMiddleware`` (``user_id`` from a header: the bar), with the
middleware alone (user from ``baggage``), with a middleware that does nothing, with the handler
calling ``ik.extract()``/``ik.identify()`` itself, and bare again (the control: the noise floor).
The client sends the same requests (``traceparent``, ``baggage`` and a user header) over one
keep-alive connection to each; every round runs one batch against each server in a shuffled
order, and each of ``--blocks`` blocks starts fresh processes (a process's own speed differs
from another's by a few percent for its whole life). Reported, as medians over rounds of the
per-round ratio to the bare server:

- wall time per request, as the client sees it;
- server CPU per request (the server process's user+system time over the batch, every thread),
  with the interquartile range of the per-round ratios and the median of each block.

``--instructions N`` instead counts, under valgrind's callgrind, the instructions each server
process runs for N requests (after 100 to warm up; every server at once, one hash seed): a
count that the machine's load does not move, where CPU time on a shared machine moves by 10%
from round to round. It does not see cache misses, which cold code pays more of.

``--sentry`` runs every server with ``sentry_sdk.init`` (default integrations, tracing on,
posting to a discarding server on 127.0.0.1), so the middleware also forks Sentry's isolation
scope, sets the user and aligns the trace on it.

``--before DIR`` adds a server: the ``user_id(conn)`` variant with ``DIR`` (another checkout's
``src/``) first on its path, so a change is measured before and after in one run.

Usage:
    python benchmarks/asgi.py [--rounds 200] [--batch 40] [--blocks 4] [--sentry] [--profile]
                              [--before DIR] [--instructions N]

Exit code 0 when the overhead bar (<= 5%, DESIGN.md section 4) is met on server CPU (or on
instructions, with ``--instructions``).
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import os
import pstats
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

HERE = Path(__file__).resolve().parent
BAR = 1.05
HEADERS = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "baggage": "user_id=user_7",
    "x-user": "user_42",
}


def build_app(variant: str) -> Any:
    """``bare`` and ``control``: FastAPI alone; ``ik``: with the middleware and a ``user_id``
    reading a header through Starlette's ``HTTPConnection``; ``ik_baggage``: the middleware
    alone (the user comes from ``baggage``); ``manual``: no middleware, the handler calls
    ``ik.extract()`` and ``ik.identify()`` itself (what the middleware replaces); ``noop``: a
    pure ASGI middleware that only awaits the app (what any middleware costs)."""

    app = FastAPI()
    if variant == "noop":

        class Noop:
            def __init__(self, app: Any) -> None:
                self.app = app

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                await self.app(scope, receive, send)

        app.add_middleware(Noop)
    if variant == "manual":
        import invariantkit as ik

        @app.get("/renewal")
        async def renewal_by_hand(request: Request) -> dict[str, bool]:
            headers = request.headers
            with ik.extract(headers), ik.identify(headers.get("x-user")):
                return {"ok": True}

        return app
    if variant.startswith("ik"):
        from invariantkit.integrations.asgi import InvariantkitMiddleware

        if variant in ("ik", "ik_before"):
            app.add_middleware(InvariantkitMiddleware, user_id=lambda c: c.headers.get("x-user"))
        else:
            app.add_middleware(InvariantkitMiddleware)

    @app.get("/renewal")
    async def renewal() -> dict[str, bool]:
        return {"ok": True}

    return app


def with_cpu_probe(app: Any, profiler: Any = None, profile: str | None = None) -> Any:
    """``GET /_cpu``, answered in front of the app: the process's CPU seconds (every thread),
    with nanosecond resolution (psutil's clock ticks are 10 ms). ``GET /_dump`` writes the
    profile."""

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in ("/_cpu", "/_dump"):
            if scope["path"] == "/_dump" and profiler is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            body = repr(time.process_time()).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return probe


def serve(variant: str, sentry_dsn: str | None, profile: str | None) -> None:
    """In the server process: configure, then serve on a free port printed on stdout."""
    import uvicorn

    import invariantkit as ik

    if sentry_dsn:
        import sentry_sdk

        sentry_sdk.init(dsn=sentry_dsn, traces_sample_rate=1.0)
    ik.configure(sinks=[])
    profiler = cProfile.Profile() if profile else None
    app = with_cpu_probe(build_app(variant), profiler, profile)
    # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted sockets (else each response
    # waits 40 ms for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=600
    )
    server = uvicorn.Server(config)
    if profiler is not None:
        profiler.enable()
    server.run(sockets=[sock])


class Server:
    def __init__(
        self,
        variant: str,
        sentry_dsn: str | None,
        profile: str | None,
        path: str | None = None,
        callgrind: str | None = None,
    ) -> None:
        args = [sys.executable, __file__, "--serve", variant]
        env = {**os.environ, "PYTHONPATH": path} if path else None
        self.callgrind = callgrind and f"{callgrind}/{variant}"
        if self.callgrind:
            # One hash seed for every server: dict layouts (and so counts) alike.
            env = {**(env or os.environ), "PYTHONHASHSEED": "0"}
            args = [
                "valgrind",
                "-q",
                "--tool=callgrind",
                f"--callgrind-out-file={self.callgrind}.%p",
            ]
            args += [sys.executable, __file__, "--serve", variant]
        if sentry_dsn:
            args += ["--sentry-dsn", sentry_dsn]
        if profile:
            args += ["--profile-to", profile]
        self.variant = variant
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        deadline = time.monotonic() + (300 if callgrind else 15)
        while True:
            try:
                self.conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=120 if callgrind else 10
                )
                self.conn.connect()
                # Without it, Nagle and delayed ACKs add 40 ms to every request.
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.get()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def get(self) -> None:
        self.conn.request("GET", "/renewal", headers=HEADERS)
        response = self.conn.getresponse()
        response.read()
        assert response.status == 200

    def cpu_seconds(self) -> float:
        self.conn.request("GET", "/_cpu")
        return float(self.conn.getresponse().read())

    def batch(self, n: int) -> None:
        cpu0 = self.cpu_seconds()
        t0 = time.perf_counter()
        for _ in range(n):
            self.get()
        wall = time.perf_counter() - t0
        self.wall.append(wall / n)
        self.cpu.append((self.cpu_seconds() - cpu0) / n)

    def instructions(self, n: int) -> int:
        """The instructions the server runs for ``n`` requests: callgrind's count, zeroed after a
        warm-up and dumped after the last response."""
        for _ in range(100):
            self.get()
        pid = str(self.proc.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        for _ in range(n):
            self.get()
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        dump = Path(f"{self.callgrind}.{pid}.1")
        deadline = time.monotonic() + 60
        while not re.search(r"^totals: \d+", dump.read_text() if dump.exists() else "", re.M):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no callgrind dump in {dump}")
            time.sleep(0.5)
        found = re.search(r"^totals: (\d+)", dump.read_text(), re.M)
        assert found is not None
        return int(found.group(1))

    def stop(self) -> None:
        self.conn.request("GET", "/_dump")  # writes the profile, if any
        self.conn.getresponse().read()
        self.conn.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def paired(a: list[float], b: list[float]) -> list[float]:
    """The per-round ratios of ``a`` to ``b``."""
    return [x / y for x, y in zip(a, b, strict=True) if y > 0]


NAMES = {
    "bare": "bare FastAPI",
    "ik": "middleware, user_id(conn)",
    "ik_baggage": "middleware, user from baggage",
    "noop": "a middleware doing nothing",
    "manual": "ik.extract+identify in the handler",
    "control": "bare FastAPI again (noise floor)",
    "ik_before": "user_id(conn), --before source",
}


def count_instructions(n: int, before: str | None, dsn: str | None) -> int:
    """Every variant under callgrind at once (counts do not depend on the machine's load): the
    instructions per request and their ratio to the bare app's."""
    variants = ["bare", "ik", "ik_baggage", "noop", "manual", "control"]
    if before:
        variants.append("ik_before")
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as out:

        def run(variant: str) -> None:
            path = before if variant == "ik_before" else None
            server = Server(variant, dsn, None, path, callgrind=out)
            try:
                counts[variant] = server.instructions(n)
            finally:
                server.stop()

        threads = [threading.Thread(target=run, args=(v,)) for v in variants]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    missing = [v for v in variants if v not in counts]
    if missing:
        print(f"no count for {missing}", file=sys.stderr)
        return 2
    print(f"ASGI middleware, FastAPI under uvicorn: instructions per request ({n} requests, ")
    print("callgrind, after 100 to warm up), every server process, side by side")
    print(f"{'server':34}{'instructions/request':>22}{'ratio':>8}")
    for variant in variants:
        ratio = counts[variant] / counts["bare"]
        print(f"{NAMES[variant]:34}{counts[variant] / n:>22,.0f}{ratio:>8.4f}")
    met = counts["ik"] / counts["bare"] <= BAR
    print(f"bar: instructions ratio <= {BAR}: {'met' if met else 'NOT met'}")
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--blocks", type=int, default=4, help="fresh servers for each block")
    parser.add_argument("--sentry", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile both servers")
    parser.add_argument("--before", metavar="DIR", help="also serve user_id(conn) from DIR")
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="count the instructions of N requests per server under valgrind (callgrind)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--sentry-dsn", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.sentry_dsn, args.profile_to)
        return 0

    discard = None
    dsn = None
    if args.sentry:
        discard = subprocess.Popen(
            [sys.executable, str(HERE / "_discard_server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert discard.stdout is not None
        dsn = f"http://public@127.0.0.1:{int(discard.stdout.readline())}/1"
    if args.instructions:
        return count_instructions(args.instructions, args.before, dsn)
    profiles = {v: f"/tmp/ik-asgi-{v}.prof" for v in ("bare", "ik")} if args.profile else {}
    # A second bare server is the control: its ratio to the first is the noise floor.
    variants = ["bare", "ik", "ik_baggage", "noop", "manual", "control"]
    if args.before:
        variants.append("ik_before")
    wall: dict[str, list[float]] = {v: [] for v in variants}  # per request, every round
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    wall_ratios: dict[str, list[float]] = {v: [] for v in variants}  # to bare, every round
    cpu_ratios: dict[str, list[float]] = {v: [] for v in variants}
    block_ratios: dict[str, list[float]] = {v: [] for v in variants}  # median, every block
    rng = random.Random(7)
    try:
        for _ in range(args.blocks):
            # Fresh processes each block: a process's own speed (its memory layout, its hash
            # seed) differs from another's by a few percent, for the whole of its life.
            servers = [
                Server(v, dsn, profiles.get(v), args.before if v == "ik_before" else None)
                for v in variants
            ]
            try:
                for server in servers:  # warm up
                    for _ in range(200):
                        server.get()
                for _ in range(args.rounds // args.blocks):
                    order = servers[:]
                    rng.shuffle(order)
                    for server in order:
                        server.batch(args.batch)
            finally:
                for server in servers:
                    server.stop()
            bare = servers[0]
            for server in servers:
                wall[server.variant] += server.wall
                cpu[server.variant] += server.cpu
                wall_ratios[server.variant] += paired(server.wall, bare.wall)
                block = paired(server.cpu, bare.cpu)
                cpu_ratios[server.variant] += block
                block_ratios[server.variant].append(statistics.median(block))
    finally:
        if discard is not None:
            discard.communicate(timeout=10)
    us = 1e6
    label = "with Sentry (default integrations, tracing)" if args.sentry else "no Sentry"
    print(f"ASGI middleware, FastAPI under uvicorn, {label}; {os.cpu_count()} CPUs")
    print(
        f"{args.blocks} blocks (fresh server processes) x {args.rounds // args.blocks} rounds x "
        f"{args.batch} requests per server, shuffled, side by side"
    )
    print("ratios: median over rounds of the per-round ratio to the bare app; CPU: also the")
    print("interquartile range of those per-round ratios and the median of each block")
    print(
        f"{'server':34}{'wall/request':>14}{'ratio':>8}{'server CPU/request':>20}{'ratio':>8}"
        f"{'IQR':>14}  per block"
    )
    ratios = {}
    for variant in variants:
        cpu_ratio = ratios[variant] = statistics.median(cpu_ratios[variant])
        low, _, high = statistics.quantiles(cpu_ratios[variant], n=4)
        blocks = " ".join(f"{r:.3f}" for r in block_ratios[variant])
        print(
            f"{NAMES[variant]:34}{statistics.median(wall[variant]) * us:>12.1f}us"
            f"{statistics.median(wall_ratios[variant]):>8.3f}"
            f"{statistics.median(cpu[variant]) * us:>18.1f}us{cpu_ratio:>8.3f}"
            f"{low:>8.3f}-{high:.3f}  {blocks}"
        )
    cpu_ratio = ratios["ik"]
    met = cpu_ratio <= BAR
    print(f"bar: server CPU ratio <= {BAR}: {'met' if met else 'NOT met'}")
    for variant, path in profiles.items():
        print(f"\n--- profile: {variant} server (top 15 by own time) ---")
        pstats.Stats(path).sort_stats("tottime").print_stats(15)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
