"""The maintenance responder: one small HTTP server per host that answers every request with 503, Retry-After and
the page of the app the request was meant for.

It listens on [deployer] maintenance_port on every local address: the apps' ports are REDIRECTed to it, which
lands on the incoming interface's address or on 127.0.0.1 (maintenance.py says why not DNAT to 127.0.0.1 only).
It tells the apps apart by each connection's original destination port, which conntrack keeps (SO_ORIGINAL_DST);
a connection made straight to the port gets the generic page. Every answer closes its connection: a keep-alive
client has to come back through the nat table, or it would stay on the page after the app is back. The page and
the message are read for each request, so `maintenance on --message` and an edited page show at once.

Started by `deployer maintenance-server` and `deployer watch`; `deployer serve --watch` binds the port and hands
it to a `maintenance-server` child of its own, which runs as [server] user when serve runs as root, so the
responder, which any client on the network reaches, never runs in the root worker's process.

Anyone can connect, so a connection costs bounded time and there are at most `MAX_CONNECTIONS` at once: a
connection past the cap is closed at once, and one that has not had its answer within `REQUEST_SECONDS` of
being taken (a client that drips its request a byte a second) is shut down. The per-read `Handler.timeout`
alone did not stop a client that sends one byte just before each read times out.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from deployer.config import AppConfig, Config, ReceiverApp, ReceiverConfig
from deployer.errors import DeployerError, StateError
from deployer.host.state import StateStore
from deployer.plan import maintenance

# The responder may run unprivileged, on the receiver's part of the config (see cli/ops.py).
AnyConfig = Config | ReceiverConfig

log = logging.getLogger("deployer.responder")

SO_ORIGINAL_DST = (
    80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h) has the same number
)
HEADER = maintenance.RESPONDER_HEADER
MAX_DISCARD = 64 * 1024  # request bytes read and dropped before answering, so the close sends FIN, not RST
MAX_CONNECTIONS = 256
REQUEST_SECONDS = 5.0  # from the connection's start to its answer
BACKLOG = 512  # the default of 5 drops SYNs under a burst of clients sent here at once


class Deadlines(Protocol):
    """What adapters.deadlines.Deadlines offers: shut a socket down unless disarmed in time."""

    def arm(self, sock: socket.socket, seconds: float, ticket: int | None = None) -> int: ...
    def disarm(self, ticket: int) -> None: ...


def original_port(connection: socket.socket) -> int | None:
    """The destination port the client used, before the REDIRECT; None when conntrack does not know it. An IPv6
    client's comes from the IPv6 option (a sockaddr_in6, the port at the same offset); an IPv4 client of a
    dual-stack socket's from the IPv4 one."""
    for level, size in ((socket.SOL_IP, 16), (socket.IPPROTO_IPV6, 28)):
        try:
            raw = connection.getsockopt(level, SO_ORIGINAL_DST, size)
        except OSError:
            continue
        return struct.unpack("!H", raw[2:4])[0]
    return None


def listen_host(config: AnyConfig) -> str:
    """Every local address: of both families on a dual-stack host (IPv6 clients are REDIRECTed here too), of IPv4
    alone where IPv6 is off, by the config or in the kernel (IPv6 is on by default, and on such a host the
    deployer serves IPv4 clients alone)."""
    return "::" if getattr(config.settings, "ipv6", False) and _ipv6_sockets_open() else "0.0.0.0"


def _ipv6_sockets_open() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:  # a kernel without IPv6 (ipv6.disable=1): EAFNOSUPPORT
        return False
    return True


class Pages:
    """Which app a port belongs to, and its page with the current message."""

    def __init__(self, config: AnyConfig) -> None:
        self.apps: dict[int, AppConfig | ReceiverApp] = {
            p.external: app for app in config.apps.values() for p in app.ports if p.protocol == "tcp"
        }
        self.store = StateStore(config.settings.state_dir)

    def for_port(self, port: int | None) -> tuple[str | None, bytes]:
        app = self.apps.get(port) if port is not None else None
        if app is None:
            return None, maintenance.page(None)
        template = None
        if app.maintenance_page is not None:
            try:
                template = app.maintenance_page.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                log.warning("maintenance page of %s unreadable (%s); the built-in page is shown", app.name, exc)
        try:
            message = self.store.load(app.name).mode_detail.get("message")
        except StateError:
            message = None
        return app.name, maintenance.page(app.name, template, message)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "deployer-maintenance"
    timeout = 10  # a client that sends nothing does not hold a thread for long

    def _answer(self) -> None:
        self._discard_body()
        app, page = self.server.pages.for_port(original_port(self.connection))  # type: ignore[attr-defined]
        self.send_response(503)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Retry-After", str(maintenance.RETRY_AFTER))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.send_header(HEADER, app or "-")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(page)
        self.close_connection = True

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= MAX_DISCARD:
            self.rfile.read(length)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


class Responder(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = BACKLOG

    def __init__(
        self,
        config: AnyConfig,
        host: str,
        port: int,
        *,
        deadlines: Deadlines,
        listener: socket.socket | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_seconds: float = REQUEST_SECONDS,
    ) -> None:
        self.pages = Pages(config)
        self.deadlines = deadlines
        self.request_seconds = request_seconds
        self._slots = threading.BoundedSemaphore(max_connections)
        self.address_family = listener.family if listener is not None else _family(host)
        if listener is not None:  # bound by serve, which hands it over
            super().__init__(listener.getsockname()[:2], Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = listener
            return
        try:
            super().__init__((host, port), Handler)
        except OSError as exc:
            raise DeployerError(
                f"the maintenance responder cannot listen on {host or '*'}:{port}: {exc.strerror}"
            ) from None

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # both families on one socket, whatever the host's default
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request, client_address) -> None:  # noqa: ANN001 - socketserver's names
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # past the cap: closed at once, no thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # noqa: ANN001
        ticket = self.deadlines.arm(request, self.request_seconds)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.deadlines.disarm(ticket)
            self._slots.release()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_server(
    config: AnyConfig,
    host: str | None = None,
    port: int | None = None,
    *,
    deadlines: Deadlines,
    listener: socket.socket | None = None,
    **limits: float,
) -> Responder:
    return Responder(
        config,
        listen_host(config) if host is None else host,
        config.settings.maintenance_port if port is None else port,
        deadlines=deadlines,
        listener=listener,
        **limits,
    )


def inherited_listener(fd: int) -> socket.socket:
    """The listening socket `serve --watch` bound and passed down (`maintenance-server --listen-fd`)."""
    return socket.socket(fileno=fd)


def bind_listener(config: AnyConfig, host: str | None = None) -> socket.socket:
    """The responder's listening socket, for serve to bind (before it starts anything) and hand to its child."""
    port = config.settings.maintenance_port
    host = listen_host(config) if host is None else host
    try:
        return socket.create_server(
            (host, port),
            family=_family(host),
            backlog=BACKLOG,
            reuse_port=False,
            dualstack_ipv6=_family(host) == socket.AF_INET6,
        )
    except OSError as exc:
        raise DeployerError(
            f"the maintenance responder cannot listen on {host or '*'}:{port}: {exc.strerror}"
        ) from None


def serve(config: AnyConfig, stop: threading.Event, server: Responder) -> None:
    """Answer until `stop` is set (for `deployer watch` and `maintenance-server`, in a thread of their own)."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="maintenance-responder", daemon=True
    )
    thread.start()
    log.info("maintenance responder listening on *:%d", server.server_address[1])
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
