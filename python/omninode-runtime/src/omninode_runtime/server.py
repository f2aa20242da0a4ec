"""HTTP endpoints of a node: health probes, metrics and ``POST /process``.

The stdlib server runs in its own thread so the node needs no web framework;
every request is answered by a coroutine run on the node's event loop, which
keeps all node state single-threaded.

``GET /health/live`` 200 while the process runs; ``GET /health/ready`` 200 or
503 with the health body (its ``reasons`` and ``event_bus`` say why);
``GET /metrics`` Prometheus text; ``POST /process`` an input model as JSON:
200 on success, 500 for a failed operation, 400 for a body that is not a JSON
object, 422 for input the node refuses, 413 for a body above the limit.
A ``/process`` request is handled in a child context of its ``traceparent``
header (a new trace without a valid one), which the response's
``traceparent`` header names; the probes are not traced.
"""

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import CancelledError
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from pydantic import JsonValue

from .logs import log_event
from .metrics import METRICS_CONTENT_TYPE
from .tracecontext import (
    TRACEPARENT_HEADER,
    continue_trace,
    current_traceparent,
    trace_scope,
)

MAX_BODY_BYTES = 8 * 1024 * 1024
LOOP_TIMEOUT_S = 5.0
JSON_CONTENT_TYPE = "application/json"
Response = tuple[int, bytes, str]

_logger = logging.getLogger("omninode_runtime.http")


class ServedNode(Protocol):
    """What the server needs from a node (NodeRuntime satisfies it)."""

    def get_health_status(self) -> dict[str, JsonValue]:
        """Health body."""
        ...

    def is_ready(self) -> bool:
        """Readiness."""
        ...

    def render_metrics(self) -> str:
        """Prometheus text."""
        ...

    async def process_json(self, data: object) -> tuple[int, dict[str, JsonValue]]:
        """Status and body for a decoded request."""
        ...


def json_response(status: int, body: JsonValue) -> Response:
    """A JSON response triple."""
    return (
        status,
        json.dumps(body, sort_keys=True, default=str).encode("utf-8"),
        JSON_CONTENT_TYPE,
    )


class NodeHttpServer(ThreadingHTTPServer):
    """The node's HTTP server; requests are answered on ``loop``."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        node: ServedNode,
        loop: asyncio.AbstractEventLoop,
        process_timeout_s: float = 60.0,
    ) -> None:
        """Bind ``address`` (OSError when it is taken); serving starts later."""
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.node = node
        self.loop = loop
        self.process_timeout_s = process_timeout_s
        self._thread: threading.Thread | None = None
        super().__init__(address, NodeRequestRouter)

    @property
    def port(self) -> int:
        """The bound port (useful when 0 asked for a free one)."""
        return int(self.server_address[1])

    def run_on_loop(
        self, coroutine: Coroutine[object, object, Response], timeout_s: float
    ) -> Response:
        """Run ``coroutine`` on the node's loop and wait for its response."""
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:
            coroutine.close()
            return json_response(503, {"status": "stopping", "ready": False})
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            return json_response(503, {"error": "the node did not answer in time"})
        except CancelledError:
            return json_response(503, {"error": "the node is shutting down"})

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="omninode-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=1.0)
            self._thread = None
        self.server_close()


async def _ready(node: ServedNode) -> Response:
    return json_response(200 if node.is_ready() else 503, node.get_health_status())


async def _metrics(node: ServedNode) -> Response:
    return 200, node.render_metrics().encode("utf-8"), METRICS_CONTENT_TYPE


async def _process(node: ServedNode, data: object) -> Response:
    status, body = await node.process_json(data)
    return json_response(status, body)


class NodeRequestRouter(BaseHTTPRequestHandler):
    """Routes one HTTP request to the node (stdlib naming: ``do_GET``)."""

    server: NodeHttpServer
    server_version = "omninode-runtime"

    def do_GET(self) -> None:
        """Health and metrics."""
        path = self.path.split("?", 1)[0]
        if path == "/health/live":
            self._send(json_response(200, {"status": "alive"}))
        elif path == "/health/ready":
            self._send(
                self.server.run_on_loop(_ready(self.server.node), LOOP_TIMEOUT_S)
            )
        elif path == "/metrics":
            self._send(
                self.server.run_on_loop(_metrics(self.server.node), LOOP_TIMEOUT_S)
            )
        else:
            self._send(json_response(404, {"error": f"no such endpoint: {path}"}))

    def do_POST(self) -> None:
        """``/process``: input model JSON in, output model JSON out."""
        path = self.path.split("?", 1)[0]
        if path != "/process":
            self._send(json_response(404, {"error": f"no such endpoint: {path}"}))
            return
        # Several traceparent fields are invalid: the request starts a new trace.
        received = self.headers.get_all(TRACEPARENT_HEADER) or []
        trace = continue_trace(received[0] if len(received) == 1 else None)
        # The node's task copies this context: its log lines and events carry
        # it, as do the access log line and the response.
        with trace_scope(trace):
            self._answer_process()

    def _answer_process(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(
                json_response(
                    413, {"error": f"the body exceeds {MAX_BODY_BYTES} bytes"}
                )
            )
            return
        if length <= 0:
            self._send(
                json_response(
                    400, {"error": "a JSON body with a Content-Length is required"}
                )
            )
            return
        try:
            data: object = json.loads(self.rfile.read(length))
        except ValueError as exc:
            self._send(
                json_response(400, {"error": f"the body is not valid JSON: {exc}"})
            )
            return
        if not isinstance(data, dict):
            self._send(json_response(400, {"error": "the body must be a JSON object"}))
            return
        coroutine = _process(self.server.node, data)
        self._send(self.server.run_on_loop(coroutine, self.server.process_timeout_s))

    def _send(self, response: Response) -> None:
        status, payload, content_type = response
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        traceparent = current_traceparent()
        if traceparent is not None:
            self.send_header(TRACEPARENT_HEADER, traceparent)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Access log at debug level, as structured lines."""
        log_event(_logger, logging.DEBUG, "http_request", request=format % args)
