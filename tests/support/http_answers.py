"""Small HTTP servers on 127.0.0.1 that answer what a test says: a host that redirects, trickles, floods or lies.

`answering_servers()` starts them and shuts each down at the end; `send(status, body)` is the common answer.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# answer(handler): writes the whole answer to handler.wfile
Answer = Callable[[BaseHTTPRequestHandler], None]


class Server:
    """One HTTP server on 127.0.0.1 in a thread; `answer` decides each answer, `paths` keeps each request."""

    def __init__(self, answer: Answer, *, context: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                try:
                    server.answer(self)
                except OSError:
                    pass  # the client hung up: that is what the test wanted

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.httpd.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(status: int, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            **(headers or {}),
        }.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    return answer


@contextlib.contextmanager
def answering_servers() -> Iterator[Callable[..., Server]]:
    """start(answer, context=None) -> a running Server; every one started is shut down on leaving."""
    servers: list[Server] = []

    def start(answer: Answer, **kwargs: object) -> Server:
        servers.append(Server(answer, **kwargs))  # type: ignore[arg-type]
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.close()
