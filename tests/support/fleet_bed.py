"""A fleet on the cluster test bed: each host's deployer server running, and a controller that rolls releases out.

    client namespace:  the controller (its own config and state folder, `deployer worker`), the load
    h1, h2, h3:        `deployer serve` on <address>:8000 (receiver and worker), the cluster agent, keepalived

The controller runs in the client namespace because that one reaches every host's address on the segment.
Each host's server knows the operator key `fleet`; the controller signs with it. Besides v1 and v2 the bed
builds `bad`: v2 with HEALTH_STATUS=500 baked in, a release that fails every health gate.

Everything is stopped by its own pid, on failure too; the cluster bed removes the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.audit import AuditLog, Query
from deployer.queue.queue import Queue
from support.beds import Bed
from support.cluster_bed import IMAGE, REPO, ClusterBed, Host, run

PORT = 8000
KEY_ID = "fleet"


@dataclass
class FleetBed(Bed):
    cluster: ClusterBed
    host_secrets: dict[str, str] = field(default_factory=dict)  # each host's own fleet key, as docs/fleet.md says
    servers: dict[str, subprocess.Popen] = field(default_factory=dict)
    controller: subprocess.Popen | None = None

    @property
    def folder(self) -> Path:
        return self.cluster.root / "controller"

    @property
    def config(self) -> Path:
        return self.folder / "deployer.toml"

    @property
    def queue(self) -> Queue:
        return Queue.for_state_dir(self.folder / "state")

    # --- building -----------------------------------------------------------------------------------

    def _build(self) -> None:
        bad = f"FROM {IMAGE}:v2\nENV HEALTH_STATUS=500\n"
        run(["docker", "build", "-q", "-t", f"{IMAGE}:bad", "-"], input=bad)
        run(["docker", "push", "-q", f"{IMAGE}:bad"])
        self.folder.mkdir(parents=True)
        for host in self.cluster.hosts:
            self.host_secrets[host.name] = secrets.token_hex(24)
            (self.folder / f"{host.name}.secret").write_text(self.host_secrets[host.name] + "\n")
            (self.folder / f"{host.name}.secret").chmod(0o600)
        for host in self.cluster.hosts:
            original = host.config.read_text()
            (host.folder / "deployer.base.toml").write_text(original)
            self.write_host_config(host)
            self.start_server(host)
        self.write_controller(host_timeout=60)
        for host in self.cluster.hosts:
            self.wait_server(host)
        self.start_controller()

    def write_host_config(self, host: Host, *, env: str = "") -> None:
        """The cluster bed's config and a [server]; `env` adds to the app's environment (a broken health)."""
        base = (host.folder / "deployer.base.toml").read_text()
        if env:
            base = base.replace('DRAIN_TIMEOUT = "3" }', f'DRAIN_TIMEOUT = "3", {env} }}')
        (host.folder / "fleet.secret").write_text(self.host_secrets[host.name] + "\n")
        host.config.write_text(
            base
            + f"""
[server]
listen = "{host.address}:{PORT}"
job_timeout = 300
user = "root"

[server.operators.{KEY_ID}]
secret_file = "{host.folder / "fleet.secret"}"
scope = "fleet"
apps = ["web"]
"""
        )

    def write_controller(self, *, host_timeout: float, bake: float = 0) -> None:
        hosts = "".join(
            f'[[fleet.hosts]]\nname = "{h.name}"\nurl = "http://{h.address}:{PORT}"\n'
            "insecure_http = true\n"
            f'key_id = "{KEY_ID}"\nsecret_file = "{self.folder / f"{h.name}.secret"}"\n\n'
            for h in self.cluster.hosts
        )
        self.config.write_text(f"""\
[deployer]
state_dir = "{self.folder / "state"}"
ipv6 = false

[server]
job_timeout = 900
user = "root"

[fleet]
apps = ["web"]
max_parallel = 1
bake = {bake}
host_timeout = {host_timeout}

{hosts}""")

    def start_server(self, host: Host) -> None:
        log = (host.folder / "serve.log").open("a")
        self.servers[host.name] = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, sys.executable, "-m", "deployer", "-c", str(host.config), "serve"],
            cwd=REPO,
            env=host.environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_server(self, host: Host, timeout: float = 60) -> None:
        probe = (
            f"import urllib.request; urllib.request.urlopen('http://{host.address}:{PORT}/healthz', timeout=2).read()"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                run(
                    ["ip", "netns", "exec", self.cluster.client, sys.executable, "-c", probe], check=False, timeout=10
                ).returncode
                == 0
            ):
                return
            time.sleep(0.3)
        raise RuntimeError(
            f"the server of {host.name} did not answer in {timeout} s: "
            f"{(host.folder / 'serve.log').read_text()[-2000:]}"
        )

    def stop_server(self, host: Host) -> None:
        proc = self.servers.pop(host.name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def start_controller(self) -> None:
        log = (self.folder / "worker.log").open("a")
        self.controller = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.cluster.client,
                sys.executable,
                "-m",
                "deployer",
                "-c",
                str(self.config),
                "worker",
            ],
            cwd=REPO,
            env=self.environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def kill_controller(self) -> None:
        """SIGKILL, as a crash: its job's process dies with it (die_with_parent)."""
        if self.controller is not None and self.controller.poll() is None:
            self.controller.send_signal(signal.SIGKILL)
            self.controller.wait(10)
        self.controller = None

    def stop_controller(self) -> None:
        if self.controller is not None and self.controller.poll() is None:
            self.controller.send_signal(signal.SIGTERM)
            try:
                self.controller.wait(30)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()
        self.controller = None

    def environ(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    # --- using it -----------------------------------------------------------------------------------

    def deployer(self, *args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
        """The controller's CLI, in the client namespace."""
        return run(
            [
                "ip",
                "netns",
                "exec",
                self.cluster.client,
                sys.executable,
                "-m",
                "deployer",
                "-c",
                str(self.config),
                *args,
            ],
            timeout=timeout,
            check=check,
            cwd=REPO,
            env=self.environ(),
        )

    def rollout(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.deployer("rollout", "web", *args, "--wait", timeout=timeout)

    def tags(self) -> dict[str, str | None]:
        """Each host's live tag, from its own record (not through the API under test)."""
        return {
            h.name: json.loads((h.state / "apps" / "web.json").read_text())["active"]["tag"] for h in self.cluster.hosts
        }

    def host_jobs(self, host: Host, rollout: str | None = None) -> list[Any]:
        jobs = Queue.for_state_dir(host.state).jobs.jobs(app="web")
        return [j for j in jobs if rollout is None or j.source.get("rollout") == rollout]

    def audit(self, event: str, state_dir: Path | None = None) -> list[dict[str, Any]]:
        """The entries of `event` in the controller's audit log (or a host's), oldest first."""
        log = AuditLog.for_state_dir(state_dir or self.folder / "state")
        return [entry.fields for entry in log.query(Query(event=(event,), limit=None, oldest_first=True))]

    def reset(self) -> None:
        """v1 on every host, every host's config as built, the controller running."""
        for host in self.cluster.hosts:
            self.write_host_config(host)
            if host.name not in self.servers:
                self.start_server(host)
                self.wait_server(host)
        if self.controller is None or self.controller.poll() is not None:
            self.start_controller()
        self.write_controller(host_timeout=60)
        if set(self.tags().values()) != {"v1"}:
            result = self.deployer("rollout", "web", "v1", "--max-parallel", "3", "--wait")
            assert result.returncode == 0, result.stdout + result.stderr
        assert set(self.tags().values()) == {"v1"}

    def logs(self) -> str:
        parts = [f"--- controller worker.log\n{(self.folder / 'worker.log').read_text()[-3000:]}"]
        for host in self.cluster.hosts:
            path = host.folder / "serve.log"
            if path.exists():
                parts.append(f"--- {host.name} serve.log\n{path.read_text()[-2000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_controller()
        # One SIGTERM each (a second one would kill a server's running deploys), all sent before any is waited for:
        # the servers stop side by side.
        for proc in self.servers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.servers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.servers.clear()
