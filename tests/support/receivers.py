"""In-process HTTP receivers standing in for Sentry, PostHog, an OTLP collector and webhooks.

Each receiver is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread, used as a
context manager that always shuts it down. ``mode`` can be switched at any time:

- ``"ok"``: decode, record and answer like the real service;
- ``"error"``: record the request in ``received`` but answer ``error_status`` (500);
- ``"hang"``: read no body and answer nothing until the receiver stops (stopping still takes
  well under a second).

Every request, whatever the mode, is counted in ``requests`` and kept in ``received``; only
requests answered in ``"ok"`` mode reach the parsed views (``events``, ``spans``, ...).

Example::

    with SentryReceiver() as sentry:
        client = sentry_sdk.Client(dsn=sentry.dsn)
        ...
        [event] = sentry.wait_for(1)
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import socketserver
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from typing_extensions import Self

__all__ = [
    "Mode",
    "OTLPReceiver",
    "PostHogReceiver",
    "ReceivedRequest",
    "SentryEnvelope",
    "SentryItem",
    "SentryReceiver",
    "WebhookCall",
    "WebhookReceiver",
    "closed_port_url",
    "decode_body",
    "parse_envelope",
]

T = TypeVar("T")
Mode = Literal["ok", "error", "hang"]

JSON = "application/json"
PROTOBUF = "application/x-protobuf"


def closed_port_url() -> str:
    """An ``http://127.0.0.1:PORT`` URL where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def decode_body(raw: bytes, content_encoding: str | None) -> bytes:
    """Undo ``Content-Encoding`` (gzip, br, deflate, zstd, identity; comma-separated chain)."""
    data = raw
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding in ("identity", "none"):
            continue
        if coding in ("gzip", "x-gzip"):
            data = gzip.decompress(data)
        elif coding == "br":
            import brotli

            data = brotli.decompress(data)
        elif coding == "deflate":
            try:
                data = zlib.decompress(data)
            except zlib.error:
                data = zlib.decompress(data, -zlib.MAX_WBITS)
        elif coding == "zstd":
            import zstandard  # type: ignore[import-not-found, unused-ignore]

            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        else:
            raise ValueError(f"unsupported Content-Encoding {coding!r}")
    return data


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as received; ``body`` is decoded (empty in ``hang`` mode)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    content_encoding: str
    mode: str
    monotonic: float
    wall: float

    @property
    def route(self) -> str:
        """The path without its query string."""
        return urlsplit(self.path).path

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # hung handler threads must not delay shutdown

    def __init__(self, receiver: _Receiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on odd resolvers.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and go away are expected; anything else is kept for asserts.
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            self.receiver.errors.append(repr(exc))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10.0  # bounds reads from a client that stalls mid-request

    def do_POST(self) -> None:
        self.server.receiver._handle(self)

    do_GET = do_PUT = do_POST

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


class _Receiver:
    """Base: serve, record, switch ``mode``, wait for conditions, always stop."""

    def __init__(self, mode: Mode = "ok", *, error_status: int = 500) -> None:
        self.mode: Mode = mode
        self.error_status = error_status
        self.received: list[ReceivedRequest] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung requests, stop serving and close the socket. Idempotent."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port served on (only while running)."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        port: int = self._server.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- recording

    @property
    def requests(self) -> int:
        """How many requests arrived, in any mode."""
        with self._cond:
            return len(self.received)

    def clear(self) -> None:
        """Forget everything received so far."""
        with self._cond:
            self.received.clear()
            self.errors.clear()
            self._clear()

    def _clear(self) -> None:
        pass

    def wait_until(
        self, predicate: Callable[[], T | None], timeout: float = 5.0, message: str = "condition"
    ) -> T:
        """Block until ``predicate()`` (called under the receiver's lock) is truthy."""
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
        if not result:
            raise AssertionError(
                f"{type(self).__name__}: {message} not met within {timeout}s "
                f"({len(self.received)} requests: {[r.route for r in self.received]}, "
                f"errors: {self.errors})"
            )
        return result

    def _handle(self, handler: _Handler) -> None:
        mode = self.mode
        headers = {k.lower(): v for k, v in handler.headers.items()}
        encoding = headers.get("content-encoding", "")

        def record(body: bytes) -> None:
            self.received.append(
                ReceivedRequest(
                    method=handler.command,
                    path=handler.path,
                    headers=headers,
                    body=body,
                    content_encoding=encoding,
                    mode=mode,
                    monotonic=time.monotonic(),
                    wall=time.time(),
                )
            )

        if mode == "hang":
            with self._cond:
                record(b"")
                self._cond.notify_all()
            self._stopping.wait()
            handler.close_connection = True
            return
        raw = _read_body(handler)
        with self._cond:
            try:
                body = decode_body(raw, encoding)
            except Exception as exc:
                record(raw)
                self.errors.append(f"{handler.path}: cannot decode body: {exc!r}")
                self._cond.notify_all()
                status, ctype, answer = 400, JSON, b'{"error":"bad encoding"}'
            else:
                record(body)
                if mode == "error":
                    status, ctype = self.error_status, JSON
                    answer = b'{"error":"injected by the test receiver"}'
                else:
                    try:
                        status, ctype, answer = self._process(self.received[-1])
                    except Exception as exc:
                        self.errors.append(f"{handler.path}: {exc!r}")
                        status, ctype, answer = 500, JSON, b'{"error":"receiver failed"}'
                self._cond.notify_all()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            pass  # the client gave up

    def _process(self, request: ReceivedRequest) -> tuple[int, str, bytes]:
        raise NotImplementedError


# --------------------------------------------------------------------------- Sentry


@dataclass(frozen=True)
class SentryItem:
    """One envelope item: its header (``type``, optional ``length``...) and payload.

    ``payload`` is the decoded JSON when the payload is JSON, else the raw bytes.
    """

    headers: dict[str, Any]
    payload: Any

    @property
    def type(self) -> str:
        """The item type (``event``, ``transaction``, ``check_in``, ``client_report``...)."""
        return str(self.headers.get("type", ""))


@dataclass(frozen=True)
class SentryEnvelope:
    """A parsed envelope, plus how it arrived."""

    headers: dict[str, Any]
    items: list[SentryItem]
    project_id: str = ""
    content_encoding: str = ""
    auth: str = ""

    def of_type(self, item_type: str) -> list[Any]:
        """Payloads of the items of ``item_type``."""
        return [item.payload for item in self.items if item.type == item_type]


def _maybe_json(payload: bytes, item_headers: dict[str, Any]) -> Any:
    if item_headers.get("type") == "attachment" and item_headers.get("content_type") != JSON:
        return payload
    try:
        return json.loads(payload)
    except ValueError:
        return payload


def parse_envelope(data: bytes) -> tuple[dict[str, Any], list[SentryItem]]:
    """Parse the Sentry envelope format: header line, then (item header line, payload)*."""
    pos = 0

    def readline() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos)
        if end == -1:
            line, pos = data[pos:], len(data)
        else:
            line, pos = data[pos:end], end + 1
        return line

    header_line = readline()
    headers: dict[str, Any] = json.loads(header_line) if header_line.strip() else {}
    items: list[SentryItem] = []
    while pos < len(data):
        line = readline()
        if not line.strip():
            continue
        item_headers: dict[str, Any] = json.loads(line)
        length = item_headers.get("length")
        if length is not None:
            payload = data[pos : pos + int(length)]
            pos += int(length)
            if data[pos : pos + 1] == b"\n":
                pos += 1
        else:
            payload = readline()
        items.append(SentryItem(item_headers, _maybe_json(payload, item_headers)))
    return headers, items


_SENTRY_ROUTE = re.compile(r"^/api/(?P<project>[^/]+)/(?P<kind>envelope|store)/?$")


class SentryReceiver(_Receiver):
    """Sentry ingestion: ``POST /api/<project>/envelope/`` and ``/api/<project>/store/``.

    Bodies may be gzip, br or identity encoded. ``envelopes`` keeps every parsed envelope;
    ``events``, ``transactions`` and ``check_ins`` are the payloads of items of that type.
    """

    def __init__(self, mode: Mode = "ok", *, error_status: int = 500) -> None:
        super().__init__(mode, error_status=error_status)
        self._envelopes: list[SentryEnvelope] = []

    @property
    def dsn(self) -> str:
        """``http://public@127.0.0.1:PORT/1``."""
        return f"http://public@127.0.0.1:{self.port}/1"

    @property
    def envelopes(self) -> list[SentryEnvelope]:
        """Every envelope received in ``ok`` mode, in order."""
        with self._cond:
            return list(self._envelopes)

    def items(self, item_type: str) -> list[Any]:
        """Payloads of all items of ``item_type`` across envelopes."""
        with self._cond:
            return [p for env in self._envelopes for p in env.of_type(item_type)]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Payloads of ``event`` items (errors and messages)."""
        return self.items("event")

    @property
    def transactions(self) -> list[dict[str, Any]]:
        """Payloads of ``transaction`` items."""
        return self.items("transaction")

    @property
    def check_ins(self) -> list[dict[str, Any]]:
        """Payloads of ``check_in`` items (cron monitors)."""
        return self.items("check_in")

    def wait_for(
        self, count: int = 1, timeout: float = 5.0, item_type: str | None = "event"
    ) -> list[Any]:
        """Wait for ``count`` items of ``item_type`` (envelopes if ``None``); return them all."""

        def enough() -> list[Any] | None:
            if item_type is None:
                got: list[Any] = list(self._envelopes)
            else:
                got = [p for env in self._envelopes for p in env.of_type(item_type)]
            return got if len(got) >= count else None

        what = "envelopes" if item_type is None else f"{item_type!r} items"
        return self.wait_until(enough, timeout, f"{count} {what}")

    def _clear(self) -> None:
        self._envelopes.clear()

    def _process(self, request: ReceivedRequest) -> tuple[int, str, bytes]:
        match = _SENTRY_ROUTE.match(request.route)
        if match is None or request.method != "POST":
            return 404, JSON, b'{"detail":"not found"}'
        if match["kind"] == "store":
            event = request.json()
            headers: dict[str, Any] = {"event_id": event.get("event_id")}
            items = [SentryItem({"type": "event"}, event)]
        else:
            headers, items = parse_envelope(request.body)
        self._envelopes.append(
            SentryEnvelope(
                headers=headers,
                items=items,
                project_id=match["project"],
                content_encoding=request.content_encoding,
                auth=request.headers.get("x-sentry-auth", ""),
            )
        )
        event_id = headers.get("event_id")
        return 200, JSON, json.dumps({"id": event_id} if event_id else {}).encode()


# --------------------------------------------------------------------------- PostHog

_POSTHOG_BATCH = {"/batch", "/i/v0/ai/batch", "/i/v1/analytics/events"}
_POSTHOG_SINGLE = {"/capture", "/e", "/i/v0/e", "/track", "/engage"}
_POSTHOG_FLAGS = {"/decide", "/flags"}


class PostHogReceiver(_Receiver):
    """PostHog capture: ``POST /batch/`` (and ``/i/v0/e/``, ``/capture/``, ``/e/``,
    ``/i/v1/analytics/events``); ``/decide/`` and ``/flags/`` answer with no flags.

    ``events`` is the flattened ``batch`` of every body (or the single event posted);
    ``bodies`` the full JSON bodies (``api_key``, ``sent_at``...).
    """

    def __init__(self, mode: Mode = "ok", *, error_status: int = 500) -> None:
        super().__init__(mode, error_status=error_status)
        self._events: list[dict[str, Any]] = []
        self._bodies: list[Any] = []

    @property
    def host(self) -> str:
        """``http://127.0.0.1:PORT`` (the ``host`` option of ``posthog.Posthog``)."""
        return self.base_url

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every captured event, in order."""
        with self._cond:
            return list(self._events)

    @property
    def bodies(self) -> list[Any]:
        """Every capture body received in ``ok`` mode."""
        with self._cond:
            return list(self._bodies)

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until ``count`` events arrived; return them all."""
        return self.wait_until(
            lambda: list(self._events) if len(self._events) >= count else None,
            timeout,
            f"{count} PostHog events",
        )

    def _clear(self) -> None:
        self._events.clear()
        self._bodies.clear()

    def _process(self, request: ReceivedRequest) -> tuple[int, str, bytes]:
        route = request.route.rstrip("/") or "/"
        if route in _POSTHOG_FLAGS:
            return 200, JSON, b'{"featureFlags":{},"featureFlagPayloads":{},"flags":{}}'
        if route not in _POSTHOG_BATCH | _POSTHOG_SINGLE or request.method != "POST":
            return 404, JSON, b'{"detail":"not found"}'
        body = request.json()
        self._bodies.append(body)
        if isinstance(body, list):
            events = body
        elif isinstance(body, dict) and isinstance(body.get("batch"), list):
            events = body["batch"]
        else:
            events = [body]
        self._events.extend(events)
        if route == "/i/v1/analytics/events":
            results = {e["uuid"]: {"result": "ok"} for e in events if "uuid" in e}
            return 200, JSON, json.dumps({"results": results}).encode()
        return 200, JSON, b'{"status":1}'


# --------------------------------------------------------------------------- OTLP


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in key_values}


class OTLPReceiver(_Receiver):
    """OTLP/HTTP collector: ``POST /v1/traces`` (protobuf, maybe gzip), decoded into ``spans``.

    Each span is a dict: ``name``, ``trace_id``/``span_id`` (hex), ``parent_span_id`` (hex or
    ``None``), ``kind``, ``attributes``, ``status_code`` (0 unset, 1 ok, 2 error),
    ``status_message``, ``events`` (names), ``span_events`` (name + attributes), ``resource``
    (attributes), ``scope``, ``start_time_unix_nano``, ``end_time_unix_nano``.
    ``/v1/metrics`` and ``/v1/logs`` bodies are kept raw (decompressed protobuf).
    """

    def __init__(self, mode: Mode = "ok", *, error_status: int = 500) -> None:
        super().__init__(mode, error_status=error_status)
        self._spans: list[dict[str, Any]] = []
        self.metrics: list[bytes] = []
        self.logs: list[bytes] = []

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (append ``/v1/traces`` for the span exporter)."""
        return self.base_url

    @property
    def spans(self) -> list[dict[str, Any]]:
        """Every span received, in export order."""
        with self._cond:
            return list(self._spans)

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until ``count`` spans arrived; return them all."""
        return self.wait_until(
            lambda: list(self._spans) if len(self._spans) >= count else None,
            timeout,
            f"{count} spans",
        )

    def _clear(self) -> None:
        self._spans.clear()
        self.metrics.clear()
        self.logs.clear()

    def _process(self, request: ReceivedRequest) -> tuple[int, str, bytes]:
        route = request.route.rstrip("/")
        if request.method != "POST":
            return 405, JSON, b"{}"
        if route == "/v1/metrics":
            self.metrics.append(request.body)
            return 200, PROTOBUF, b""
        if route == "/v1/logs":
            self.logs.append(request.body)
            return 200, PROTOBUF, b""
        if route != "/v1/traces":
            return 404, JSON, b'{"detail":"not found"}'
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        message = ExportTraceServiceRequest.FromString(request.body)
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self._spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex() or None,
                            "kind": span.kind,
                            "attributes": _attributes(span.attributes),
                            "status_code": span.status.code,
                            "status_message": span.status.message,
                            "events": [event.name for event in span.events],
                            "span_events": [
                                {"name": e.name, "attributes": _attributes(e.attributes)}
                                for e in span.events
                            ],
                            "resource": resource,
                            "scope": scope_spans.scope.name,
                            "start_time_unix_nano": span.start_time_unix_nano,
                            "end_time_unix_nano": span.end_time_unix_nano,
                        }
                    )
        return 200, PROTOBUF, ExportTraceServiceResponse().SerializeToString()


# --------------------------------------------------------------------------- webhooks


@dataclass(frozen=True)
class WebhookCall:
    """One webhook delivery: the JSON body and when it arrived."""

    body: Any
    monotonic: float
    wall: float
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)


class WebhookReceiver(_Receiver):
    """Webhook target (Alertmanager ``webhook_configs``): keeps each JSON body with its time."""

    def __init__(self, mode: Mode = "ok", *, error_status: int = 500) -> None:
        super().__init__(mode, error_status=error_status)
        self._calls: list[WebhookCall] = []

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/hook``."""
        return f"{self.base_url}/hook"

    @property
    def calls(self) -> list[WebhookCall]:
        """Every delivery received in ``ok`` mode."""
        with self._cond:
            return list(self._calls)

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of ``calls``."""
        return [call.body for call in self.calls]

    def alerts(self) -> list[dict[str, Any]]:
        """Alertmanager payloads flattened: every alert of every delivery."""
        return [
            alert
            for body in self.bodies
            if isinstance(body, dict)
            for alert in body.get("alerts", [])
        ]

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[WebhookCall]:
        """Wait until ``count`` deliveries arrived; return them all."""
        return self.wait_until(
            lambda: list(self._calls) if len(self._calls) >= count else None,
            timeout,
            f"{count} webhook calls",
        )

    def _clear(self) -> None:
        self._calls.clear()

    def _process(self, request: ReceivedRequest) -> tuple[int, str, bytes]:
        if request.method != "POST":
            return 405, JSON, b"{}"
        self._calls.append(
            WebhookCall(
                body=request.json() if request.body else None,
                monotonic=request.monotonic,
                wall=request.wall,
                path=request.route,
                headers=request.headers,
            )
        )
        return 200, JSON, b"{}"
