"""Local HTTP peers that speak third-party APIs (Resend, Langfuse) in tests."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.service_process import LOOPBACK, _Stoppable

JsonValue = Any
PeerReply = tuple[int, dict[str, str], JsonValue]


@dataclass(frozen=True)
class PeerRequest:
    """One request received by an HttpPeer."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # keys lower-cased
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)

    @property
    def json(self) -> JsonValue:
        """The body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


Handler = Callable[[PeerRequest], PeerReply]


def _path_regex(pattern: str) -> re.Pattern[str]:
    """Compile '/api/public/traces/{trace_id}' into a regex with named groups."""
    parts = re.split(r"\{(\w+)\}", pattern)
    literal = [re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts)]
    return re.compile("".join(literal))


class HttpPeer(_Stoppable):
    """A loopback HTTP server speaking a third-party JSON API; records every request it receives."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._received: list[PeerRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler_class(self))
        self._server.daemon_threads = True
        loop = partial(self._server.serve_forever, poll_interval=0.05)  # shutdown() waits a poll
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT (no trailing slash)."""
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[PeerRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._received)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer `method path` (path may hold {name} placeholders) with `handler`."""
        with self._lock:
            self._routes.append((method.upper(), _path_regex(path), handler))

    def reply(self, request: PeerRequest) -> PeerReply:
        """Record `request` and answer it from the first matching route, else 404."""
        with self._lock:
            self._received.append(request)
            routes = list(self._routes)
        for method, regex, handler in routes:
            if method == request.method and (match := regex.fullmatch(request.path)):
                return handler(replace(request, path_params=match.groupdict()))
        return 404, {}, {"error": f"no route for {request.method} {request.path}"}

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler_class(peer: HttpPeer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        timeout = 10

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = PeerRequest(self.command, url.path, parse_qs(url.query), headers, body)
            try:
                status, reply_headers, reply = peer.reply(request)
            except Exception as exc:  # a broken handler shows up as a 500, not a hang
                status, reply_headers, reply = 500, {}, {"error": repr(exc)}
            payload = b"" if reply is None else json.dumps(reply).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **reply_headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests assert on peer.requests instead

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    return _Handler
