"""A small stand-in for GitHub's release-asset download, for tests.

Two HTTP servers on loopback, like GitHub's two hosts: the API answers
`GET /repos/OWNER/NAME/releases/assets/ID` (with `Accept: application/octet-stream`) with a 302
to the storage server, which serves the bytes. Both record every request's path and headers, so a
test can see where the token went.
"""

from __future__ import annotations

import random
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK_PORTS = range(22900, 23000)


def free_port(host: str = "127.0.0.1") -> int:
    """A free port in the range these tests may listen on; random, so concurrent runs rarely pick the same."""
    for port in random.sample(LOOPBACK_PORTS, len(LOOPBACK_PORTS)):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 22900-22999")


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class FakeGitHub:
    """assets: id -> bytes. `private` makes the API answer 404 without the right token."""

    repository: str
    assets: dict[int, bytes] = field(default_factory=dict)
    token: str | None = None
    private: bool = False
    chunked: bool = False  # storage sends no Content-Length
    api_seen: list[Seen] = field(default_factory=list)
    storage_seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._servers: list[ThreadingHTTPServer] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def storage_url(self) -> str:
        # Another host name for the same loopback: a different origin, as GitHub's storage host is.
        return f"http://localhost:{self._servers[1].server_address[1]}"

    def __enter__(self) -> FakeGitHub:
        fake = self

        class Api(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.api_seen.append(Seen(self.path, dict(self.headers)))
                prefix = f"/repos/{fake.repository}/releases/assets/"
                authorized = not fake.private or self.headers.get("Authorization") == f"Bearer {fake.token}"
                if not self.path.startswith(prefix) or not authorized:
                    return self._answer(404, b'{"message": "Not Found"}')
                asset_id = int(self.path[len(prefix) :])
                if asset_id not in fake.assets:
                    return self._answer(404, b'{"message": "Not Found"}')
                if self.headers.get("Accept") != "application/octet-stream":
                    return self._answer(200, b'{"id": %d, "name": "metadata only"}' % asset_id)
                self.send_response(302)
                self.send_header("Location", f"{fake.storage_url}/blob/{asset_id}?X-Amz-Signature=abc")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Storage(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake.storage_seen.append(Seen(self.path, dict(self.headers)))
                asset_id = int(self.path.split("/")[2].split("?")[0])
                data = fake.assets[asset_id]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if fake.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for start in range(0, len(data), 65536):
                        piece = data[start : start + 65536]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        for handler in (Api, Storage):
            server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
