"""A host-bound server (Debian's nginx, on the host) restarted under load: while it is down, clients from other
machines get the maintenance page through the socket match, not a refusal. The host is dual-stack (`[deployer]
ipv6 = true`, on a network of the test's own): an IPv6 client from outside reaches nginx while it runs, gets the
page while it is down and in maintenance, through the same chains in the IPv6 table."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployer.plan import rules
from deployer.wiring import build_netfilter6
from support import netns
from support.integration import REPO, dual_stack_network, missing
from support.load import Background, Load, statuses

pytestmark = pytest.mark.integration

PORT = 25300
NETWORK6, BRIDGE6 = "dplhb6", "dplhb6br"
SUBNET6 = "fd42:b0d:6::/64"  # the Docker network's (nothing runs on it; fd00::/64 is the machine's own)
OUTSIDE6 = "fd42:b0d:a::/64"  # the outside namespace's link
NGINX_CONF = """\
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
daemon off;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen {port};
        listen [::]:{port};
        location / {{ default_type text/plain; return 200 "nginx $remote_addr\\n"; }}
    }}
}}
"""


class Nginx:
    """nginx with its own config, pid file and temp folders; stopped gracefully (SIGQUIT), killed if need be."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(root=root, port=PORT))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["nginx", "-c", str(self.conf), "-p", str(self.root), "-e", str(self.root / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError(f"nginx exited: {(self.root / 'error.log').read_text()}") from None
                time.sleep(0.05)
        raise AssertionError("nginx did not listen within 10 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def nginx(tmp_path):
    if shutil.which("nginx") is None:
        missing("nginx is not installed (run scripts/install-deps)")
    root = tmp_path / "nginx"
    root.mkdir()
    server = Nginx(root)
    try:
        yield server
    finally:
        server.stop()


def outside_get(outside: netns.OutsideClient, host: str, *options: str) -> str:
    """One request from the outside namespace (through nat PREROUTING); what curl printed, or its error."""
    done = outside.run(
        ["curl", "-sS", "--max-time", "5", *options, f"http://{host}:{PORT}/"], capture_output=True, text=True
    )
    return done.stdout or done.stderr


def local_get(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(100).decode().split("\r\n", 1)[0]
    except OSError as exc:
        return type(exc).__name__


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_a_restarted_host_server_shows_the_page_not_a_refusal(deployer, host, nginx, tmp_path, backend):
    with dual_stack_network(deployer, NETWORK6), netns.OutsideClient(ipv6=OUTSIDE6) as outside:
        restarted_under_load(deployer, outside, nginx, tmp_path, backend)


def restarted_under_load(deployer, outside: netns.OutsideClient, nginx: Nginx, tmp_path: Path, backend: str) -> None:
    deployer.configure(
        f"[apps.web]\nhost_bound = true\n[[apps.web.ports]]\nexternal = {PORT}\n",
        settings=(
            f'network = "{NETWORK6}"\nbridge = "{BRIDGE6}"\nipv6 = true\nipv6_subnet = "{SUBNET6}"\n'
            f'maintenance_port = 25390\nbackend = "{backend}"'
        ),
    )
    nginx.start()
    refused = deployer.cli("deploy", "web", "v1")
    assert refused.returncode == 2 and "host-bound" in refused.stderr
    reconciled = deployer.cli("reconcile", "web")
    assert reconciled.returncode == 0 and "socket-match rules" in reconciled.stdout, reconciled.stderr
    status = json.loads(deployer.cli("status", "web", "--json").stdout)[0]
    assert status["rules_match"], status  # both families' rules
    assert f"--dport {PORT} -m socket --nowildcard" in status["live_rules"][0]
    hostbound_chain = f"{deployer.prefix}-HOSTBOUND"
    ip6 = build_netfilter6(deployer.config())  # ip6tables, or the nftables backend's table ip6
    assert ip6 is not None
    nat6 = rules.parse_nat(ip6.save_table("nat"))
    for nat in (deployer.nat_of(backend), nat6):
        assert f"-A PREROUTING -m addrtype --dst-type LOCAL -j {hostbound_chain}" in nat.rules("PREROUTING")
        assert not [r for r in nat.rules("OUTPUT") if hostbound_chain in r]
    assert nat6.rules(hostbound_chain) == deployer.nat_of(backend).rules(hostbound_chain)
    assert not [
        r
        for r in deployer.nat_of("nftables" if backend == "iptables" else "iptables").chains
        if r.startswith(deployer.prefix)
    ]  # nothing of the deployer's in the other backend

    with (
        Background(
            [sys.executable, "-m", "deployer", "-c", str(deployer.config_path), "maintenance-server"],
            tmp_path / "responder.log",
            cwd=REPO,
        ) as server,
        Load(tmp_path / "load") as load,
    ):
        server.wait_for("maintenance responder on port 25390")
        load.start("outside", "http-new", f"{outside.host_ip}:{PORT}", popen=outside.popen)
        time.sleep(1.0)
        served6 = outside_get(outside, f"[{outside.host_ip6}]")
        stopping = time.time()
        nginx.stop()
        stopped = time.time()
        time.sleep(1.0)
        page = outside_get(outside, outside.host_ip, "-D-")
        page6 = outside_get(outside, f"[{outside.host_ip6}]", "-D-")
        # The socket match exists in PREROUTING only: a process on the host reaches the port directly.
        local_while_down = local_get(PORT)
        time.sleep(1.0)
        starting = time.time()
        nginx.start()
        started = time.time()
        time.sleep(1.5)
        load.stop()

        # `maintenance on` covers every client of a host-bound app, the host's own too, while nginx runs.
        assert deployer.cli("maintenance", "on", "web").returncode == 0
        local_in_maintenance = local_get(PORT)
        maintenance6 = outside_get(outside, f"[{outside.host_ip6}]", "-D-")
        assert deployer.cli("maintenance", "off", "web").returncode == 0
        local_after = local_get(PORT)

    records = load.records("outside")
    errors = [r for r in records if "error" in r]
    # Connections nginx had accepted but not served when it closed its listener may be reset; nothing else fails.
    assert all(stopping <= r["t_end"] and r["t"] <= stopped for r in errors), errors
    assert not [r for r in errors if "refused" in r["error"].lower()], errors
    assert statuses([r for r in records if "error" not in r]) == "200 503 200"
    down = [r for r in records if r["t"] > stopped and r["t_end"] < starting]
    assert len(down) > 20 and {r["status"] for r in down} == {503}
    up = [r for r in records if r["t"] > started]
    assert len(up) > 20 and {(r["status"], r["version"]) for r in up} == {(200, "nginx")}
    assert page.startswith("HTTP/1.1 503") and "X-Deployer-Maintenance: web" in page, page
    # IPv6: nginx answers while it runs (seeing the client's own address), the page while it is down or in
    # maintenance, never a refusal.
    assert served6 == f"nginx {outside.client_ip6}\n", served6
    for answer in (page6, maintenance6):
        assert answer.startswith("HTTP/1.1 503") and "X-Deployer-Maintenance: web" in answer, answer
    assert local_while_down == "ConnectionRefusedError"
    assert (local_in_maintenance, local_after) == ("HTTP/1.1 503 Service Unavailable", "HTTP/1.1 200 OK")
