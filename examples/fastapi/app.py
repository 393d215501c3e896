"""FastAPI with invariantkit: one middleware, no per-handler ``identify()``.

    python examples/fastapi/app.py           # a self-check: serve, call, print, stop
    python examples/fastapi/app.py --serve   # serve on http://127.0.0.1:8000

Every request continues the caller's ``traceparent`` (or starts a trace), binds the user from
``X-User-Id`` and ends with the request. With ``SENTRY_DSN`` set, a failing renewal is one Sentry
event carrying the user, and the request's transaction has the same trace id.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.request
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException

import invariantkit as ik
from invariantkit import billing
from invariantkit.integrations.asgi import InvariantkitMiddleware

app = FastAPI()
app.add_middleware(InvariantkitMiddleware, user_id=lambda request: request.headers.get("x-user-id"))


@ik.billing_operation("renewal")
def renew(charges_today: int) -> bool:
    return ik.assert_invariant(charges_today <= 1, billing.NO_DOUBLE_CHARGE)


@app.post("/renewals/{charges_today}")
def renewal(charges_today: int) -> dict[str, Any]:
    if charges_today < 0:
        raise HTTPException(status_code=400, detail="charges_today must be >= 0")
    held = renew(charges_today)
    return {"held": held, "trace_id": ik.correlation_id()}


def setup() -> None:
    if os.environ.get("SENTRY_DSN"):
        import sentry_sdk

        sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], traces_sample_rate=1.0)
    ik.configure(service="billing-fastapi")


def self_check() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/renewals/2",
            method="POST",
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "X-User-Id": "user_42"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
        print(json.dumps(body))
        ik.flush()
        return 0 if body == {"held": False, "trace_id": trace_id} else 1
    finally:
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    setup()
    if "--serve" in sys.argv:
        uvicorn.run(app, host="127.0.0.1", port=8000)
    else:
        sys.exit(self_check())
