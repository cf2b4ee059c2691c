"""The live view: the dashboard page on a local HTTP server, refreshed from the study's storage.

``GET /`` answers the page with the study as it is now; the page then polls ``GET /data.json`` every few
seconds and redraws when a trial has finished or started. Everything is read again from the storage on each
request (answers are reused for at most one second), so a search running in another process shows up as it goes.
Standard library only; binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import AutocompressError
from .html import render_html, to_json

log = logging.getLogger(__name__)

DATA_PATH = "/data.json"


class _Latest:
    """Calls ``produce`` at most once per ``min_interval_s`` (concurrent requests share one read)."""

    def __init__(self, produce: Callable[[], dict[str, Any]], min_interval_s: float = 1.0) -> None:
        self.produce, self.min_interval_s = produce, min_interval_s
        self.lock = threading.Lock()
        self.value: dict[str, Any] | None = None
        self.at = -1e9

    def get(self) -> dict[str, Any]:
        with self.lock:
            if self.value is None or time.monotonic() - self.at >= self.min_interval_s:
                self.value = self.produce()
                self.at = time.monotonic()
            return self.value


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # Ctrl-C stops at once, without waiting for a request still reading the study

    def __init__(self, address: tuple[str, int], produce: Callable[[], dict[str, Any]], refresh_s: float,
                 min_interval_s: float = 1.0) -> None:
        self.latest = _Latest(produce, min_interval_s)
        self.refresh_s = refresh_s
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "autocompress-dashboard"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        log.info("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: str, content_type: str) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path not in ("/", "/index.html", DATA_PATH):
            self._send(404, "not found: the dashboard serves / and /data.json\n", "text/plain; charset=utf-8")
            return
        try:
            data = self.server.latest.get()
        except Exception as e:  # a missing study, or a storage hiccup while a search writes: report, keep serving
            known = isinstance(e, AutocompressError)
            if not known:
                log.exception("reading the study failed")
            msg = str(e) if known else f"{type(e).__name__}: {e}"
            status = 503 if known else 500
            if path == DATA_PATH:
                self._send(status, json.dumps({"error": msg}), "application/json")
            else:
                self._send(status, f"cannot read the study: {msg}\n", "text/plain; charset=utf-8")
            return
        if path == DATA_PATH:
            self._send(200, to_json(data), "application/json")
        else:
            live = {"endpoint": DATA_PATH.lstrip("/"), "interval_ms": int(self.server.refresh_s * 1000)}
            self._send(200, render_html(data, live=live), "text/html; charset=utf-8")


def make_server(produce: Callable[[], dict[str, Any]], *, host: str = "127.0.0.1", port: int = 8050,
                refresh_s: float = 5.0, min_interval_s: float = 1.0) -> DashboardServer:
    """A server (not yet serving) whose page shows ``produce()``; port 0 picks a free port.

    ``produce`` is called at most once per ``min_interval_s``; the page polls every ``refresh_s`` seconds.
    """
    try:
        return DashboardServer((host, port), produce, refresh_s, min_interval_s)
    except OSError as e:
        raise AutocompressError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                                "(is another dashboard running there? choose another --port)") from None
