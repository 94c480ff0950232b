"""What integration tests share beside their fixtures: the host's names and prerequisites, the cleanup of dead runs,
the test images, the demo app's config, a test deployer with its own chain prefix, and requests to what it serves.
The fixtures that build these per session and per test are in tests/integration/conftest.py."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deployer import config as config_module
from deployer.adapters.docker_host import DockerHost
from deployer.adapters.iptables import Netfilter
from deployer.adapters.nftables import Nftables
from deployer.host.engine import Engine
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.journal import Journal
from deployer.plan import rules
from deployer.wiring import build_engine
from support import netns
from support.configs import app_toml
from support.owners import OWNERS, claim, owner_alive, release

REPO = Path(__file__).resolve().parents[2]
REGISTRY = "127.0.0.1:5000"
IMAGE = f"{REGISTRY}/deployer-test"
NETWORK = "dpltest"
BRIDGE = "dpltest0"
TEST_PREFIX_RE = re.compile(r"^DT[0-9A-F]{5}(-|$)")
IN_CI = os.environ.get("CI") == "true"
# The audit actor of the CLI the tests start: cli:root, or the user behind sudo (`sudo scripts/test`).
CLI_ACTOR = config_module.local_actor()


def missing(reason: str) -> None:
    """Skip the test for a missing prerequisite; where CI=true, fail it."""
    if IN_CI:
        pytest.fail(f"integration prerequisite missing in CI: {reason}")
    pytest.skip(reason)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


# --- what a dead run left --------------------------------------------------------------------------


# Which test prefixes and sessions are alive: a session cleans only what dead ones left behind,
# so two test runs on one machine never remove each other's containers, chains or namespaces.
def other_sessions() -> bool:
    return any(
        entry.name.startswith("session-") and entry.name != f"session-{os.getpid()}" and owner_alive(entry.name)
        for entry in (OWNERS.iterdir() if OWNERS.exists() else [])
    )


def remove_leftovers() -> None:
    """Remove test containers, nat chains and namespaces whose test run is gone."""
    docker = DockerHost("unix:///var/run/docker.sock")
    for container in docker.containers({"label": ["deployer.owner"]}):
        owner = container.labels.get("deployer.owner", "").upper()
        if TEST_PREFIX_RE.match(owner) and not owner_alive(owner):
            docker.remove(container.id)
    nf = Netfilter()
    chains = [
        line[1:].split(" ", 1)[0]
        for table in ("nat", "mangle", "filter")
        for line in nf.save_table(table).splitlines()
        if line.startswith(":")
    ]
    prefixes = {name.split("-")[0] for name in chains if TEST_PREFIX_RE.match(name)}
    for prefix in sorted(p for p in prefixes if not owner_alive(p)):
        uninstall_prefix(prefix)
        release(prefix)
    remove_dead_compose_projects()
    if not other_sessions():
        netns.cleanup_stale()
    for entry in list(OWNERS.iterdir()) if OWNERS.exists() else []:
        if not owner_alive(entry.name):  # the claim of a run that was killed: nothing of it is left now
            entry.unlink(missing_ok=True)


def remove_dead_compose_projects() -> None:
    """What a killed test_compose_run.py left: its project's containers (restarted by dockerd otherwise), network and
    images, all named `deployer-<test prefix>`."""
    listed = run(["docker", "ps", "-a", "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}']).stdout
    images = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    projects = {line.split()[1] for line in listed.splitlines() if len(line.split()) == 2}
    projects |= {name.split(":")[0].removesuffix("-base") for name in images}
    for project in sorted(projects):
        prefix = project.removeprefix("deployer-").upper()
        if not project.startswith("deployer-") or not TEST_PREFIX_RE.match(prefix) or owner_alive(prefix):
            continue
        ids = [line.split()[0] for line in listed.splitlines() if line.split()[1:] == [project]]
        if ids:
            run(["docker", "rm", "-f", *ids])
        run(["docker", "network", "rm", f"{project}_default"])
        tags = [name for name in images if name.split(":")[0] in (project, f"{project}-base")]
        if tags:
            run(["docker", "rmi", "-f", *tags])


def uninstall_prefix(prefix: str) -> None:
    """Remove every rule and container of a test deployer, through the deployer's own `uninstall`.

    It knows every chain the deployer owns (nat, the watchdog's mangle chain, the forward chains in
    filter and mangle), so no test keeps a second list of them.
    """
    with tempfile.TemporaryDirectory(prefix="deployer-cleanup-") as folder:
        path = Path(folder) / "deployer.toml"
        path.write_text(
            f'[deployer]\nstate_dir = "{folder}/state"\nchain_prefix = "{prefix}"\n'
            f'network = "{NETWORK}"\nbridge = "{BRIDGE}"\n'
            f'[apps.cleanup]\nimage = "{IMAGE}"\n'
            "[[apps.cleanup.ports]]\nexternal = 1\ncontainer = 1\nblue = 2\ngreen = 3\n"
        )
        cfg = config_module.load(path)
        engine = build_engine(cfg, Journal([]))
        engine.uninstall(actor="test-cleanup")


class Images:
    """Build and push test images on demand; remove the local tags at the end."""

    def __init__(self) -> None:
        self.built: set[str] = set()

    def ensure(self, *versions: str) -> None:
        for version in versions:
            if version in self.built:
                continue
            result = run([str(REPO / "scripts" / "build-app-image"), version, IMAGE])
            if result.returncode != 0:
                raise RuntimeError(f"building {IMAGE}:{version} failed: {result.stderr}")
            self.built.add(version)

    def remove_local(self) -> None:
        for version in self.built:
            run(["docker", "rmi", "-f", f"{IMAGE}:{version}"])


def demo_app(
    name: str,
    *,
    external: int | None = None,
    blue: int | None = None,
    green: int | None = None,
    udp: tuple[int, int, int] | None = None,
    ports: list[tuple[str, int, int, int, int]] | None = None,
    env: dict[str, str] | None = None,
    health: dict[str, Any] | None = None,
    drain: float = 2.0,
    stop_timeout: int = 10,
    extra: str = "",
    **keys: Any,
) -> str:
    """The TOML of one app of the test image: the demo server's HTTP port (8080), its UDP port (9090) when `udp`
    gives (external, blue, green), or the `ports` named; a drain timeout that fits in stop_timeout."""
    checks = {"type": "http", "path": "/healthz", "interval": 0.2, "timeout": 1, "successes": 2, "deadline": 15}
    checks.update(health or {})
    env = {key: str(value) for key, value in {"DRAIN_TIMEOUT": max(1, int(stop_timeout) - 2), **(env or {})}.items()}
    more = [("udp", udp[0], 9090, udp[1], udp[2])] if udp else []
    return app_toml(
        name,
        external,
        blue=blue,
        green=green,
        container=8080,
        protocol="tcp",
        ports=[*more, *(ports or [])],
        image=IMAGE,
        health=checks,
        extra=extra,
        drain_seconds=drain,
        stop_timeout=stop_timeout,
        env=env,
        **keys,
    )


# --- a test deployer --------------------------------------------------------------------------------


@dataclass
class Deployer:
    """A deployer with its own chains, state and config, driven in-process or through its CLI."""

    root: Path
    prefix: str
    events: list[dict[str, Any]] = field(default_factory=list)
    config_path: Path | None = None

    def configure(self, *apps: str, settings: str = "") -> config_module.Config:
        self.config_path = self.root / "deployer.toml"
        self.config_path.write_text(
            "[deployer]\n"
            f'state_dir = "{self.root / "state"}"\n'
            f'hooks_dir = "{self.root / "hooks"}"\n'
            f'chain_prefix = "{self.prefix}"\n'
            + ("" if "network =" in settings else f'network = "{NETWORK}"\nbridge = "{BRIDGE}"\n')
            + ("" if "hook_timeout" in settings else "hook_timeout = 20\n")
            + f"{settings}\n"
            + "\n".join(apps)
        )
        (self.root / "hooks").mkdir(exist_ok=True)
        return self.config()

    def config(self) -> config_module.Config:
        assert self.config_path is not None, "call configure() first"
        return config_module.load(self.config_path)

    def engine(self) -> Engine:
        cfg = self.config()

        def capture(event: dict[str, Any]) -> None:
            self.events.append({**event, "wall": time.time()})

        journal = Journal([capture], secrets=cfg.secrets())
        return build_engine(cfg, journal)

    def hook(self, name: str, script: str) -> Path:
        path = self.root / "hooks" / name
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)
        return path

    def cli(self, *args: str, timeout: float = 180, **kwargs: Any) -> subprocess.CompletedProcess:
        return run(
            [sys.executable, "-m", "deployer", "-c", str(self.config_path), *args], timeout=timeout, cwd=REPO, **kwargs
        )

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "deployer", "-c", str(self.config_path), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )

    def nat(self) -> rules.SavedTable:
        return rules.parse_nat(Netfilter().save_nat())

    def chain(self, app: str) -> list[str]:
        return self.nat().rules(f"{self.prefix}-{app}")

    def nat_of(self, backend: str) -> rules.SavedTable:
        """The deployer's nat rules as iptables-save lines, from the backend named."""
        if backend == "iptables":
            return self.nat()
        nftables = NftablesBackend(
            Nftables(), Netfilter(), table=self.prefix.lower(), prefix=self.prefix, reader=Nftables(handles=True)
        )
        return rules.parse_nat(nftables.save_table("nat"))

    def nft_chain(self, app: str) -> list[str]:
        """The app's chain in the deployer's nftables table, as iptables-save lines; [] without one."""
        backend = NftablesBackend(Nftables(handles=True), Netfilter(), table=self.prefix.lower(), prefix=self.prefix)
        return backend.list_chain(f"{self.prefix}-{app}") or []

    def containers(self, app: str | None = None) -> list:
        labels = [f"deployer.owner={self.prefix.lower()}"] + ([f"deployer.app={app}"] if app else [])
        return DockerHost("unix:///var/run/docker.sock").containers({"label": labels})

    def steps(self, app: str | None = None) -> list[tuple[str, str]]:
        return [
            (e["step"], e["outcome"])
            for e in self.events
            if e["event"] == "step" and (app is None or e.get("app") == app)
        ]

    def teardown(self) -> None:
        uninstall_prefix(self.prefix)


@contextlib.contextmanager
def owned_deployer(root: Path) -> Iterator[Deployer]:
    """A deployer with a chain prefix of its own, claimed while it lives; everything it made goes at the end."""
    instance = Deployer(root=root, prefix=f"DT{secrets.token_hex(3).upper()[:5]}")
    claim(instance.prefix)
    try:
        yield instance
    finally:
        instance.teardown()
        release(instance.prefix)


# --- requests to what it serves ---------------------------------------------------------------------


@contextlib.contextmanager
def dual_stack_network(deployer: Deployer, network: str) -> Iterator[None]:
    """A test's own Docker network (`network`), made dual-stack by the deployer's first rules; its containers and
    it go at the end, and the IPv6 sysctls the deployer set (forwarding, accept_ra) are put back as they were."""
    docker = DockerHost("unix:///var/run/docker.sock")
    docker.remove_network(network)
    sysctls = {
        path: path.read_text()
        for name in ("forwarding", "accept_ra")
        for path in Path("/proc/sys/net/ipv6/conf").glob(f"*/{name}")
    }
    try:
        yield
    finally:
        deployer.teardown()
        docker.remove_network(network)
        for path, value in sysctls.items():
            with contextlib.suppress(OSError):  # an interface of the test's that is gone
                if path.read_text() != value:
                    path.write_text(value)


def host_address() -> str:
    """The host's own primary IPv4 address (what a client on the host uses besides 127.0.0.1)."""
    out = run(["ip", "-4", "-o", "addr", "show", "scope", "global"]).stdout
    for line in out.splitlines():
        interface, address = line.split()[1], line.split()[3].split("/")[0]
        if not interface.startswith(("docker", "br-", "veth", "dpt-", "deployer", BRIDGE)):
            return address
    raise AssertionError("the host has no global IPv4 address")


def outside_get(outside: netns.OutsideClient, port: int, timeout: float = 5) -> str:
    """GET / on the host's side of the veth, from the outside namespace (through nat PREROUTING)."""
    result = outside.run(
        [
            "python3",
            "-c",
            f"import urllib.request; print(urllib.request.urlopen("
            f"'http://{outside.host_ip}:{port}/', timeout={timeout}).read().decode(), "
            "end='')",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def owned_nat(deployer: Deployer) -> list[str]:
    """Every nat line of a test's deployer: its chains, their rules and the jumps into them."""
    lines = []
    for chain, chain_rules in deployer.nat().chains.items():
        if chain == deployer.prefix or chain.startswith(f"{deployer.prefix}-"):
            lines.append(f":{chain}")
        lines.extend(rule for rule in chain_rules if deployer.prefix in rule)
    return lines


def http_get(host: str, port: int, path: str = "/", timeout: float = 5) -> str:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.read().decode()
    finally:
        connection.close()


def udp_ask(host: str, port: int, payload: str = "ping", timeout: float = 2) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload.encode(), (host, port))
        return sock.recv(2048).decode()
