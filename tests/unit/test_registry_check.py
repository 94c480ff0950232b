"""The registry liveness probe against sockets of the test's own on loopback: what counts as answering."""

import http.server
import socket
import threading

import pytest

from deployer.adapters.probes import check_registry


@pytest.fixture
def registry_answering():
    """A loopback HTTP server that answers /v2/ with the status the test sets."""
    answer = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(answer["status"] if self.path == "/v2/" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", answer
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [200, 401])
def test_a_registry_that_answers_below_500_is_up(registry_answering, status):
    registry, answer = registry_answering
    answer["status"] = status
    assert check_registry(registry) is None


def test_a_registry_that_answers_503_is_down(registry_answering):
    registry, answer = registry_answering
    answer["status"] = 503
    assert check_registry(registry) == f"registry {registry}: answers 503"


def test_a_registry_that_refuses_the_connection_is_down():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    problem = check_registry(f"127.0.0.1:{port}")
    assert problem.startswith(f"registry 127.0.0.1:{port}: ConnectionRefusedError")
