"""Draining a host out of a real HAProxy (Debian's) under continuous load: drain A, redeploy A, undrain A, and no
request fails. The two "hosts" are two apps of one deployer on their own port sets, each with a status port that
HAProxy health-checks; the HAProxy config is the one docs/maintenance.md recommends, with test ports and timers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support.integration import CLI_ACTOR, demo_app, missing
from support.load import Load

pytestmark = pytest.mark.integration

FRONTEND = 25420
HAPROXY_CFG = """\
global
    maxconn 2000
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2 pool-purge-delay 1s

frontend app
    bind 127.0.0.1:{frontend}
    default_backend hosts

backend hosts
    balance roundrobin
    server a 127.0.0.1:25400 check port 25403
    server b 127.0.0.1:25410 check port 25413
"""


class HAProxy:
    def __init__(self, root: Path) -> None:
        self.socket = root / "haproxy.sock"
        self.config = root / "haproxy.cfg"
        self.config.write_text(HAPROXY_CFG.format(socket=self.socket, frontend=FRONTEND))
        self.log = open(root / "haproxy.log", "w")
        self.process = subprocess.Popen(
            ["haproxy", "-f", str(self.config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def status(self) -> dict[str, str]:
        """Server name -> UP, DOWN ... from the stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "hosts" and r["svname"] in ("a", "b")}

    def wait(self, wanted: dict[str, str], timeout: float = 15) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status() == wanted:
                    return time.time()
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"HAProxy never showed {wanted}; last: {self.status()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def haproxy(tmp_path):
    if shutil.which("haproxy") is None:
        missing("haproxy is not installed (run scripts/install-deps)")
    root = tmp_path / "haproxy"
    root.mkdir()
    holder: list[HAProxy] = []
    try:
        yield lambda: holder.append(HAProxy(root)) or holder[0]
    finally:
        for proxy in holder:
            proxy.stop()


def test_drain_redeploy_and_undrain_a_host_behind_haproxy(deployer, haproxy, tmp_path):
    deployer.configure(
        demo_app(
            "ha", external=25400, blue=25401, green=25402, env={"APP_VERSION": "hostA"}, extra="status_port = 25403"
        ),
        demo_app(
            "hb", external=25410, blue=25411, green=25412, env={"APP_VERSION": "hostB"}, extra="status_port = 25413"
        ),
        settings="maintenance_port = 25490",
    )
    assert deployer.cli("deploy", "ha", "v1").returncode == 0
    assert deployer.cli("deploy", "hb", "v1").returncode == 0
    proxy = haproxy()
    proxy.wait({"a": "UP", "b": "UP"})

    with Load(tmp_path / "load") as load:
        for name in ("new1", "new2"):
            load.start(name, "http-new", f"127.0.0.1:{FRONTEND}", pause=0.01)
        load.start("keepalive", "http-keepalive", f"127.0.0.1:{FRONTEND}", pause=0.01)
        time.sleep(1.5)

        drain_started = time.time()
        drained = deployer.cli("drain", "ha", "--wait", "--timeout", "30", "--settle", "2")
        drain_returned = time.time()
        assert drained.returncode == 0, drained.stdout + drained.stderr
        status_after_drain = proxy.status()
        redeploy = deployer.cli("deploy", "ha", "v2")
        assert redeploy.returncode == 0, redeploy.stderr
        chain_while_drained = deployer.chain("ha")
        status_json = json.loads(deployer.cli("status", "ha", "--json").stdout)[0]
        time.sleep(1.0)
        undrain_started = time.time()
        undrained = deployer.cli("undrain", "ha")
        assert undrained.returncode == 0, undrained.stderr
        back_up = proxy.wait({"a": "UP", "b": "UP"})
        time.sleep(2.0)
        load.stop()

    assert "ha: idle after" in drained.stdout, drained.stdout
    assert status_after_drain == {"a": "DOWN", "b": "UP"}
    # While drained, the redeploy moved the ports to the new instance but left the status port closed.
    assert not [rule for rule in chain_while_drained if "--dport 25403" in rule], chain_while_drained
    assert status_json["rules_match"] and status_json["drained"]["actor"] == CLI_ACTOR
    assert status_json["active"]["tag"] == "v2"
    assert any("--dport 25403" in rule for rule in deployer.chain("ha"))

    records = [r for name in ("new1", "new2", "keepalive") for r in load.records(name)]
    failed = [r for r in records if not r["ok"]]
    assert records and not failed, f"{len(failed)} of {len(records)} failed: {failed[:3]}"
    served_by_a = [r for r in records if r["version"] == "hostA"]
    assert [r for r in served_by_a if r["t_end"] < drain_started], "A served nothing before the drain"
    # From the moment `drain --wait` returned until the undrain, HAProxy sent A nothing: B took every request.
    assert not [r for r in served_by_a if drain_returned < r["t"] < undrain_started], "A served while drained"
    assert {r["version"] for r in records if drain_returned < r["t"] < undrain_started} == {"hostB"}
    assert [r for r in served_by_a if r["t"] > back_up], "A served nothing after the undrain"

    events = [
        (e["event"], e["actor"], e["outcome"])
        for e in map(
            json.loads,
            deployer.cli("audit", "--app", "ha", "--event", "drain,drain.wait,undrain", "--jsonl").stdout.splitlines(),
        )
    ]
    assert sorted(events) == sorted(
        [("drain", CLI_ACTOR, "ok"), ("drain.wait", CLI_ACTOR, "ok"), ("undrain", CLI_ACTOR, "ok")]
    )
