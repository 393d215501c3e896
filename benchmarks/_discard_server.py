"""An HTTP server on 127.0.0.1 that answers every POST with 200 and forgets the body.

It stands in for Sentry and PostHog while the success path is measured, in its own process so
that serving requests never competes with the measured code for the GIL. Prints its port on
the first line of stdout; exits when stdin closes.

Usage: python benchmarks/_discard_server.py
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"status":1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = _answer  # noqa: N815 - the stdlib's handler naming
    do_GET = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return None


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    server.shutdown()


if __name__ == "__main__":
    main()
