"""The OutsideClient helper: real traffic from a namespace, and clean teardown."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from support.integration import missing
from support.netns import OutsideClient, cleanup_stale

pytestmark = pytest.mark.integration

PREFIX = "dpu-"


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout


@pytest.fixture(autouse=True)
def _no_leftovers():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing("the namespace client needs root and iproute2")
    cleanup_stale(PREFIX)
    yield
    assert PREFIX not in _namespaces()
    assert PREFIX not in _links()


def test_client_reaches_host_listener_with_its_own_source_address():
    with OutsideClient(PREFIX) as client:
        seen = []
        with socket.create_server((client.host_ip, 0)) as server:
            port = server.getsockname()[1]

            def accept_one():
                conn, peer = server.accept()
                with conn:
                    seen.append(peer[0])
                    conn.sendall(conn.recv(64).upper())

            thread = threading.Thread(target=accept_one, daemon=True)
            thread.start()
            script = (
                "import socket, sys\n"
                f"s = socket.create_connection(({client.host_ip!r}, {port}), timeout=5)\n"
                "s.sendall(b'ping'); sys.stdout.write(s.recv(64).decode())\n"
            )
            out = client.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=10, check=True)
            thread.join(timeout=5)

    assert out.stdout == "PING"
    assert seen == [client.client_ip]
    assert client.client_ip.startswith("198.1")


def test_teardown_runs_when_the_body_raises_and_stops_processes():
    with pytest.raises(RuntimeError):
        with OutsideClient(PREFIX) as client:
            sleeper = client.popen(["sleep", "60"])
            raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert client.name not in _namespaces()


def test_cleanup_stale_removes_leftovers_of_a_killed_run():
    subprocess.run(["ip", "netns", "add", PREFIX + "left"], check=True)
    subprocess.run(
        ["ip", "link", "add", PREFIX + "left-h", "type", "veth", "peer", "name", PREFIX + "left-n"], check=True
    )
    removed = cleanup_stale(PREFIX)
    assert PREFIX + "left" in removed
    assert {PREFIX + "left-h", PREFIX + "left-n"} & set(removed)  # one end takes the other
    assert PREFIX + "left" not in _links()
