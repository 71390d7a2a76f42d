"""The dashboard's MQTT side and HTTP side.

:class:`Dashboard` subscribes (never publishes: no availability, no Last Will) and feeds the
history; every change goes to the open pages as a Server-Sent Event. HTTP is the standard
library's threading server: the page and its script (static/, no CDN: it works on a LAN
without internet), ``/api/nodes`` and ``/api/nodes/<id>`` (JSON), ``/events`` (SSE). Node ids
and labels come from the network, so the page only ever sets them as text (``textContent``),
and the Content-Security-Policy forbids inline script.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import queue
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tinyml_core.cli import host_port
from tinyml_core.mqtt import InboundMessage, MqttClient
from tinyml_core.statefile import ChangeSaver, state_path

from .settings import DashboardSettings
from .state import history_document, load_history
from .store import History

log = logging.getLogger("dashboard")

STATIC = Path(__file__).resolve().parent / "static"
FILTERS = ("status/+", "sensors/+/climate", "predictions/#", "errors/+")
CLIENT_QUEUE = 1000  # events waiting for one page; a page that falls this far behind is dropped
KEEPALIVE_S = 15.0
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}


class Broadcaster:
    """Hands every event to each open page's queue."""

    def __init__(self) -> None:
        self._queues: set[queue.Queue[dict[str, Any] | None]] = set()
        self._lock = threading.Lock()

    def subscribe(self) -> queue.Queue[dict[str, Any] | None]:
        events: queue.Queue[dict[str, Any] | None] = queue.Queue(CLIENT_QUEUE)
        with self._lock:
            self._queues.add(events)
        return events

    def unsubscribe(self, events: queue.Queue[dict[str, Any] | None]) -> None:
        with self._lock:
            self._queues.discard(events)

    def publish(self, event: dict[str, Any]) -> None:
        with self._lock:
            for events in list(self._queues):
                try:
                    events.put_nowait(event)
                except queue.Full:  # that page stopped reading: let it reconnect
                    self._queues.discard(events)
                    events.queue.clear()
                    events.put_nowait(None)

    def close(self) -> None:
        with self._lock:
            for events in self._queues:
                events.queue.clear()
                events.put_nowait(None)
            self._queues.clear()

    def __len__(self) -> int:
        return len(self._queues)


class Dashboard:
    def __init__(self, settings: DashboardSettings) -> None:
        options = settings.dashboard
        self.settings = settings
        self.history = History(options.history_hours, options.keywords_kept, options.errors_kept,
                               options.max_nodes, forecast_hours=options.forecast_hours)
        self.events = Broadcaster()
        self.client = MqttClient(settings.broker, options.id, publish_availability=False,
                                 handler=self.handle)
        self.http = ThreadingHTTPServer(host_port(options.listen, any_port=True), _handler(self))
        self.http.daemon_threads = True
        self._serving: threading.Thread | None = None
        self._stop_saving = threading.Event()
        path = state_path(options.state_path, options.id)
        self.saver = None
        if path is not None:
            load_history(path, self.history)
            self.saver = ChangeSaver(path, "history", lambda: self.history.changes,
                                     lambda: history_document(self.history))

    @property
    def address(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host!s}:{port}/"

    def handle(self, message: InboundMessage) -> None:
        """One MQTT message (in the network thread): keep it, tell the open pages."""
        event = self.history.add(message.topic, message.payload)
        if event is not None:
            self.events.publish(event)

    def start(self) -> None:
        self.client.connect()
        for topic_filter in FILTERS:
            self.client.subscribe(topic_filter)
        self._serving = threading.Thread(target=self.http.serve_forever, name="http",
                                         daemon=True)
        self._serving.start()
        if self.saver is not None and self.settings.dashboard.state_save_s:
            threading.Thread(target=self._save_periodically, args=(self.saver,),
                             name="history-saver", daemon=True).start()
        log.info("dashboard on %s", self.address)

    def _save_periodically(self, saver: ChangeSaver) -> None:
        while not self._stop_saving.wait(self.settings.dashboard.state_save_s):
            saver.save()

    def close(self) -> None:
        """Stop serving and disconnect (again: nothing happens)."""
        if self._serving is None:
            return
        self._stop_saving.set()
        self.events.close()
        self.http.shutdown()
        self.http.server_close()
        self.client.close()
        self._serving = None
        if self.saver is not None:
            self.saver.save(final=True)


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    options = dashboard.settings.dashboard
    expected = None
    if options.username:
        token = f"{options.username}:{options.password}".encode()
        expected = b"Basic " + base64.b64encode(token)

    class Handler(BaseHTTPRequestHandler):
        server_version = "tinyml-dashboard"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def do_GET(self) -> None:
            if expected is not None and not hmac.compare_digest(
                    self.headers.get("Authorization", "").encode(), expected):
                self._send(HTTPStatus.UNAUTHORIZED, b"login required\n", "text/plain",
                           {"WWW-Authenticate": 'Basic realm="tinyml dashboard"'})
                return
            path = unquote(urlsplit(self.path).path)
            if path == "/events":
                self._stream()
            elif path == "/api/nodes":
                self._json(dashboard.history.overview())
            elif path.startswith("/api/nodes/"):
                node = dashboard.history.node(path.removeprefix("/api/nodes/"))
                if node is None:
                    self._send(HTTPStatus.NOT_FOUND, b'{"error": "no such node"}\n',
                               "application/json")
                else:
                    self._json(node)
            elif path.startswith("/static/") and (STATIC / path[8:]).suffix in CONTENT_TYPES \
                    and "/" not in path[8:]:
                self._file(STATIC / path[8:])
            elif path == "/" or path.startswith("/node/"):
                self._file(STATIC / "index.html")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _file(self, file: Path) -> None:
            try:
                body = file.read_bytes()
            except OSError:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
                return
            self._send(HTTPStatus.OK, body, CONTENT_TYPES[file.suffix])

        def _json(self, document: Any) -> None:
            self._send(HTTPStatus.OK, json.dumps(document).encode(), "application/json")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self._common_headers(headers)
            self.end_headers()
            self.wfile.write(body)

        def _common_headers(self, headers: dict[str, str] | None = None) -> None:
            self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' "
                             "data:; style-src 'self'; script-src 'self'; connect-src 'self'")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)

        def _stream(self) -> None:
            events = dashboard.events.subscribe()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self._common_headers()
            self.end_headers()
            try:
                self.wfile.write(b"retry: 2000\n\n")
                self.wfile.flush()
                while True:
                    try:
                        event = events.get(timeout=KEEPALIVE_S)
                    except queue.Empty:
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        continue
                    if event is None:
                        return
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
            except OSError:
                pass  # the page went away
            finally:
                dashboard.events.unsubscribe(events)
                self.close_connection = True

    return Handler
