"""The maintenance responder as a real server on a loopback port: status, headers, page, and that it closes."""

import http.client
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployer.adapters.deadlines import Deadlines
from deployer.adapters.probes import check_responder
from deployer.config import parse
from deployer.host import responder
from deployer.host.state import StateStore
from deployer.plan import maintenance
from deployer.plan.records import AppState


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "demo.html").write_text("<title>{{app}}</title><p>{{message}}</p>")
    data = {
        "deployer": {"state_dir": str(tmp_path / "state")},
        "apps": {
            "demo": {
                "image": "demo",
                "maintenance_page": "demo.html",
                "ports": [{"external": 1000, "container": 80, "blue": 1001, "green": 1002}],
            },
            "api": {"image": "api", "ports": [{"external": 2000, "container": 80, "blue": 2001, "green": 2002}]},
        },
    }
    return parse(data, path=tmp_path / "deployer.toml", environ={})


def running(cfg, **limits):
    server = responder.make_server(cfg, host="127.0.0.1", port=0, deadlines=Deadlines(), **limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server


@pytest.fixture
def server(cfg):
    server = running(cfg)
    yield server
    server.shutdown()
    server.server_close()


def drippers(port: int, count: int, stop: threading.Event) -> list[socket.socket]:
    """`count` connections that send a request one byte a second, from a thread, until `stop`."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000

    def drip() -> None:
        for n in range(len(head)):
            for sock in sockets:
                try:
                    sock.send(head[n : n + 1])
                except OSError:
                    pass
            if stop.wait(1.0):
                return

    threading.Thread(target=drip, daemon=True).start()
    return sockets


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except OSError:  # reset counts as closed too; a timeout does not
        return not isinstance(sys.exc_info()[1], socket.timeout)


def answered_within(port: int, seconds: float) -> int | None:
    """The status of the first request answered within `seconds`; None if every one was closed unanswered."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return ask(port)[0]
        except (http.client.RemoteDisconnected, ConnectionResetError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def ask(port, method="GET", body=None, address="127.0.0.1"):
    connection = http.client.HTTPConnection(address, port, timeout=5)
    try:
        connection.request(method, "/some/page?x=1", body=body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_every_method_gets_503_with_retry_after_and_the_page(server):
    port = server.server_address[1]
    for method, body in (("GET", None), ("POST", b"name=value" * 100), ("DELETE", None)):
        status, headers, page = ask(port, method, body)
        assert status == 503
        assert headers["Retry-After"] == "5"
        assert headers["Connection"] == "close"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers[responder.HEADER] == "-"  # straight to the port: no app
        assert page == maintenance.page(None)
    status, headers, page = ask(port, "HEAD")
    assert (status, page, headers["Content-Length"]) == (503, b"", str(len(maintenance.page(None))))


def test_the_server_closes_the_connection_after_its_answer(server):
    with socket.create_connection(server.server_address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # ends only because the server closes
            data += chunk
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


def test_check_tells_a_responder_from_anything_else(server):
    assert check_responder(server.server_address[1]) is None

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        assert check_responder(other.server_address[1]) == "something else answers there (status 200)"
    finally:
        other.shutdown()
        other.server_close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert check_responder(port).startswith("ConnectionRefusedError")


def test_pages_by_original_port_with_the_recorded_message(cfg):
    pages = responder.Pages(cfg)
    StateStore(cfg.settings.state_dir).save(
        maintenance.manual_on(AppState(app="demo"), actor="cli:ops", now="t", message="back at 10 & soon")
    )
    assert pages.for_port(1000) == ("demo", b"<title>demo</title><p>back at 10 &amp; soon</p>")
    assert pages.for_port(2000) == ("api", maintenance.page("api"))
    assert pages.for_port(1001) == (None, maintenance.page(None))  # a set port is not an external one
    assert pages.for_port(None) == (None, maintenance.page(None))


def test_fifty_dripping_clients_do_not_delay_an_answer_past_a_second(server):
    port = server.server_address[1]
    stop = threading.Event()
    slow = drippers(port, 50, stop)
    try:
        time.sleep(1.5)  # every dripper has a thread and has sent a byte or two
        for _ in range(3):
            started = time.monotonic()
            status, _, _ = ask(port)
            assert status == 503
            assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_a_request_that_drips_past_the_deadline_is_cut_off(cfg):
    server = running(cfg, request_seconds=0.5)
    stop = threading.Event()
    try:
        [slow] = drippers(server.server_address[1], 1, stop)
        started = time.monotonic()
        assert closed_within(slow, 3.0)  # it sends a byte a second and would take 1,000 s
        assert time.monotonic() - started < 1.5
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_connections_past_the_cap_are_closed_at_once_and_the_slots_come_back(cfg):
    server = running(cfg, max_connections=4, request_seconds=1.0)
    port = server.server_address[1]
    stop = threading.Event()
    try:
        slow = drippers(port, 4, stop)
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_within(extra, 0.5)  # closed without an answer: no thread for it
        extra.close()
        for sock in slow:
            assert closed_within(sock, 3.0)  # the deadline frees the slots
        assert answered_within(port, 2.0) == 503  # a handler frees its slot just after it closes its socket
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_on_a_dual_stack_host_one_socket_answers_both_families(cfg):
    from dataclasses import replace

    dual = replace(cfg, settings=replace(cfg.settings, ipv6=True))
    off = replace(cfg, settings=replace(cfg.settings, ipv6=False))
    assert (responder.listen_host(off), responder.listen_host(dual)) == ("0.0.0.0", "::")
    listener = responder.bind_listener(replace(dual, settings=replace(dual.settings, maintenance_port=0)))
    server = responder.make_server(dual, deadlines=Deadlines(), listener=listener)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        assert listener.family == socket.AF_INET6
        port = listener.getsockname()[1]
        for address in ("127.0.0.1", "::1"):
            status, headers, page = ask(port, address=address)
            assert (status, headers[responder.HEADER], page) == (503, "-", maintenance.page(None)), address
    finally:
        server.shutdown()
        server.server_close()
