"""The health gate with plain functions and a fake clock, and the probes against real sockets."""

import http.server
import socket
import threading
import time

import pytest

from deployer.adapters.probes import http_probe, probe_for, tcp_probe
from deployer.config import HealthCheck
from deployer.errors import BootError, HealthCheckFailed
from deployer.host.health import ProbeResult, wait_healthy


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(outcomes: list[bool]):
    """A probe that answers from a list; the test fails if the gate asks for more probes."""
    answers = iter(enumerate(outcomes, start=1))
    taken: list[int] = []

    def probe() -> ProbeResult:
        number, ok = next(answers)
        taken.append(number)
        return ProbeResult(ok, f"probe {number} {'ok' if ok else 'failed'}")

    probe.taken = taken
    return probe


def running() -> None:
    return None


def test_passes_after_the_required_consecutive_successes():
    fake = FakeTime()
    check = HealthCheck(type="http", port=80, interval=0.5, successes=3, deadline=10)
    probe = scripted([True, True, True])
    assert wait_healthy(check, probe, running, clock=fake.clock, sleep=fake.sleep) == 3
    assert fake.sleeps == [0.5, 0.5]
    assert probe.taken == [1, 2, 3]


def test_a_failure_resets_the_streak():
    fake = FakeTime()
    check = HealthCheck(type="http", port=80, interval=1, successes=3, deadline=10)
    probe = scripted([True, True, False, True, False, True, True, True])
    assert wait_healthy(check, probe, running, clock=fake.clock, sleep=fake.sleep) == 8
    assert fake.sleeps == [1] * 7


def test_one_success_is_enough_when_asked_for_one():
    fake = FakeTime()
    check = HealthCheck(type="tcp", port=80, interval=1, successes=1, deadline=1)
    assert wait_healthy(check, scripted([False, True]), running, clock=fake.clock, sleep=fake.sleep) == 2


def test_raises_at_the_deadline_with_the_last_detail():
    fake = FakeTime()
    check = HealthCheck(type="http", port=80, interval=1, successes=2, deadline=5)
    probe = scripted([False, True, False, True, False, True, True])
    with pytest.raises(HealthCheckFailed) as caught:
        wait_healthy(check, probe, running, clock=fake.clock, sleep=fake.sleep)
    # probes at t=0..5; after the one at t=5 the next could only run after the deadline
    assert str(caught.value) == ("health check did not pass 2 times in a row within 5s (6 probes; last: probe 6 ok)")
    assert probe.taken == [1, 2, 3, 4, 5, 6]
    assert fake.sleeps == [1] * 5
    assert caught.value.exit_code == 1


def test_deadline_counts_the_time_the_probes_take():
    fake = FakeTime()
    check = HealthCheck(type="http", port=80, interval=1, successes=3, deadline=10)

    def slow_probe() -> ProbeResult:
        fake.now += 4  # a probe that hangs until its timeout: probes end at t=4, 9 and 14
        return ProbeResult(False, "GET /: TimeoutError: timed out")

    with pytest.raises(HealthCheckFailed) as caught:
        wait_healthy(check, slow_probe, running, clock=fake.clock, sleep=fake.sleep)
    assert str(caught.value) == (
        "health check did not pass 3 times in a row within 10s (3 probes; last: GET /: TimeoutError: timed out)"
    )


def test_an_exited_instance_fails_at_once():
    fake = FakeTime()
    check = HealthCheck(type="http", port=80, interval=1, successes=3, deadline=60)
    reasons = iter([None, None, "container deployer-demo-green exited (exit code 1) before it became healthy"])
    probe = scripted([False, True, True])
    with pytest.raises(BootError) as caught:
        wait_healthy(check, probe, lambda: next(reasons), clock=fake.clock, sleep=fake.sleep)
    assert str(caught.value) == "container deployer-demo-green exited (exit code 1) before it became healthy"
    assert probe.taken == [1, 2]
    assert fake.now == 102.0


def test_an_instance_dead_before_the_first_probe_is_never_probed():
    fake = FakeTime()
    probe = scripted([])
    with pytest.raises(BootError):
        wait_healthy(
            HealthCheck(type="tcp", port=80), probe, lambda: "container disappeared", clock=fake.clock, sleep=fake.sleep
        )
    assert probe.taken == [] and fake.sleeps == []


# --- real sockets --------------------------------------------------------------------------------


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 whose behaviour on accept the test chooses."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    done = threading.Event()
    threads = []

    def serve(on_accept):
        def run():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                on_accept(conn)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return server.getsockname()[1]

    yield serve, done
    done.set()
    server.close()
    for thread in threads:
        thread.join(5)


def test_tcp_probe_ok_when_the_peer_keeps_the_connection_open(listener):
    serve, done = listener
    port = serve(lambda conn: done.wait(5))
    result = tcp_probe("127.0.0.1", port, timeout=2, hold=0.1)()
    assert result == ProbeResult(True, f"tcp {port}: open")


def test_tcp_probe_ok_when_the_peer_sends_a_banner(listener):
    serve, done = listener
    port = serve(lambda conn: (conn.sendall(b"SSH-2.0-test\r\n"), done.wait(5)))
    assert tcp_probe("127.0.0.1", port, timeout=2, hold=2)() == ProbeResult(True, f"tcp {port}: open (banner)")


def test_tcp_probe_fails_when_the_peer_closes_at_once(listener):
    # What docker-proxy does on a published port when nothing listens in the container.
    serve, _ = listener
    port = serve(lambda conn: None)
    started = time.monotonic()
    result = tcp_probe("127.0.0.1", port, timeout=2, hold=3)()
    assert result == ProbeResult(False, f"tcp {port}: closed by peer right after connect")
    assert time.monotonic() - started < 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tcp_probe_fails_when_nothing_listens():
    port = free_port()
    assert tcp_probe("127.0.0.1", port, timeout=1, hold=0.1)() == ProbeResult(False, f"tcp {port}: Connection refused")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        status = {"/healthz": 200, "/down": 503, "/created": 201}.get(self.path, 404)
        body = b"ok\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_http_probe_ok_on_the_expected_status(http_port):
    assert http_probe("127.0.0.1", http_port, "/healthz", 200, 2)() == ProbeResult(True, "GET /healthz: 200")
    assert http_probe("127.0.0.1", http_port, "/created", 201, 2)() == ProbeResult(True, "GET /created: 201")


def test_http_probe_fails_on_another_status(http_port):
    assert http_probe("127.0.0.1", http_port, "/down", 200, 2)() == ProbeResult(
        False, "GET /down: status 503, expected 200"
    )
    assert http_probe("127.0.0.1", http_port, "/healthz", 204, 2)() == ProbeResult(
        False, "GET /healthz: status 200, expected 204"
    )


def test_http_probe_fails_when_nothing_listens():
    port = free_port()
    assert http_probe("127.0.0.1", port, "/healthz", 200, 1)() == ProbeResult(
        False, "GET /healthz: ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_probe_for_uses_the_check_type(http_port, listener):
    http_check = HealthCheck(type="http", port=80, path="/down", expect_status=200, timeout=2)
    assert probe_for(http_check, "127.0.0.1", http_port)() == ProbeResult(False, "GET /down: status 503, expected 200")
    serve, _ = listener
    port = serve(lambda conn: None)
    assert probe_for(HealthCheck(type="tcp", port=80, timeout=2), "127.0.0.1", port)() == ProbeResult(
        False, f"tcp {port}: closed by peer right after connect"
    )
