"""Flask with invariantkit: one WSGI middleware, no per-handler ``identify()``.

    python examples/flask/app.py           # a self-check: serve, call, print, stop
    python examples/flask/app.py --serve   # serve on http://127.0.0.1:8000 (waitress)

Every request continues the caller's ``traceparent`` (or starts a trace), binds the user from
``X-User-Id`` and ends with the request. With ``SENTRY_DSN`` set, a failing renewal is one Sentry
event carrying the user, and the request's transaction has the same trace id.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.request
from typing import Any

from flask import Flask
from werkzeug.serving import make_server

import invariantkit as ik
from invariantkit import billing
from invariantkit.integrations.wsgi import InvariantkitMiddleware

app = Flask(__name__)
app.wsgi_app = InvariantkitMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, user_id=lambda environ: environ.get("HTTP_X_USER_ID")
)


@ik.billing_operation("renewal")
def renew(charges_today: int) -> bool:
    return ik.assert_invariant(charges_today <= 1, billing.NO_DOUBLE_CHARGE)


@app.post("/renewals/<int:charges_today>")
def renewal(charges_today: int) -> dict[str, Any]:
    return {"held": renew(charges_today), "trace_id": ik.correlation_id()}


def setup() -> None:
    if os.environ.get("SENTRY_DSN"):
        import sentry_sdk

        sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], traces_sample_rate=1.0)
    ik.configure(service="billing-flask")


def self_check() -> int:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.server_port}/renewals/2",
            method="POST",
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "X-User-Id": "user_42"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
        print(json.dumps(body))
        ik.flush()
        return 0 if body == {"held": False, "trace_id": trace_id} else 1
    finally:
        server.shutdown()
        thread.join(10)


if __name__ == "__main__":
    setup()
    if "--serve" in sys.argv:
        from waitress import serve

        serve(app, host="127.0.0.1", port=8000)
    else:
        sys.exit(self_check())
