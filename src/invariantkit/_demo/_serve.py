"""``invariantkit demo --serve PORT``: /metrics on 127.0.0.1 for a Prometheus to scrape."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["MetricsServer"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return None


class _Server(WSGIServer):
    daemon_threads = True


class MetricsServer:
    """Serve ``registry`` at ``http://127.0.0.1:PORT/metrics`` and count scrapes.

    The demo waits for a scrape before it starts (so every counter is seen at zero first) and
    after each fault (so the scraper sees each fault's state, even a gauge a later run resets).
    """

    def __init__(self, registry: Any, port: int) -> None:
        from prometheus_client import make_wsgi_app

        self._app = make_wsgi_app(registry)
        self._scrapes = 0
        self._cond = threading.Condition()
        self.server = make_server(
            "127.0.0.1", port, self._wsgi, server_class=_Server, handler_class=_QuietHandler
        )
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="invariantkit-demo-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def scrapes(self) -> int:
        with self._cond:
            return self._scrapes

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body: Iterable[bytes] = self._app(environ, start_response)
        if environ.get("PATH_INFO", "/") in ("/", "/metrics"):
            with self._cond:
                self._scrapes += 1
                self._cond.notify_all()
        return body

    def wait_for_scrape(self, timeout: float | None) -> bool:
        """Wait until the next scrape (after this call) is served; False on timeout."""
        with self._cond:
            target = self._scrapes + 1
            return self._cond.wait_for(lambda: self._scrapes >= target, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5.0)
