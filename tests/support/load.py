"""Delivery under load, shared by ``tests/test_dispatch.py`` and ``benchmarks/run.py --only
delivery``: a deferred sink that notes each violation's delay, and a steady stream of violations
beside CPU-bound threads."""

from __future__ import annotations

import threading
import time

import invariantkit as ik


class Arrivals:
    """A deferred sink that notes how long each violation took to reach the worker's sinks."""

    name = "arrivals"
    deferred = True

    def __init__(self) -> None:
        self.delays: list[float] = []

    def emit(self, record: ik.Record) -> None:
        if record.kind == "violation":
            self.delays.append(time.time() - record.timestamp)

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True


def violations_beside_spinners(invariant: ik.Invariant, seconds: float) -> int:
    """With three CPU-bound threads running, report violations of ``invariant`` at a steady 400/s
    from this thread for ``seconds``, wait one more second, stop the threads; return how many
    were sent. The caller configures the sinks and shuts them down."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(3)]
    for t in spinners:
        t.start()
    sent = 0
    try:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            due = int((time.monotonic() - start) * 400)
            while sent < due:
                ik.assert_invariant(False, invariant, tags={"seq": str(sent)})
                sent += 1
            time.sleep(0.002)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in spinners:
            t.join(5)
    return sent
