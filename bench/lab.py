"""Everything a bench run makes on the host, and its removal: on success, failure, Ctrl-C or SIGTERM.

A run claims a prefix DB + 5 hex digits (the claim file holds its pid, as the integration tests
do for their DT prefixes) and one block of 100 ports in 24000-24999. Its nat chains, containers
(label deployer.owner), Docker network, namespaces and scratch folder are named after the
prefix, and the processes it starts are each in a process group of their own, listed in the
scratch folder. A run first removes what dead runs left; it never touches a live run's things
or a test session's.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.plan import BLOCKS, OWNER_OF_RUN_RE, RUN_PREFIX_RE, Ports, RunNames, prefix_of_chain
from deployer.adapters.docker_host import DockerHost
from deployer.adapters.iptables import Netfilter
from deployer.adapters.nftables import Nftables
from deployer.errors import DeployerError, DockerUnavailable
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.plan import nft, rules

REPO = Path(__file__).resolve().parents[1]
# The load client and the outside namespaces are the integration tests' own, shared on purpose.
sys.path.insert(0, str(REPO / "tests"))
from support import netns, owners  # noqa: E402

DOCKER_URL = "unix:///var/run/docker.sock"
IMAGE = "127.0.0.1:5000/deployer-bench"
TRAFFIC = REPO / "tests" / "support" / "traffic.py"
T = TypeVar("T")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled like Ctrl-C, so the same cleanup runs."""


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


class Lab:
    """The host resources of one run. Use as a context manager; `close()` is safe to call twice."""

    def __init__(self, *, ipv6: bool = False) -> None:
        self.names = RunNames(self._free_prefix())
        # A dual-stack run: its network and its outside client's link get IPv6 too (docs/ipv6.md), and the IPv6
        # sysctls the deployer may set (forwarding, accept_ra) are put back as they were at the end.
        self.ipv6 = ipv6
        self._sysctls6: dict[Path, str] = {}
        self.docker = DockerHost(DOCKER_URL)
        self.netfilter = Netfilter()
        self.ports: Ports | None = None
        self._port_block: int | None = None
        self._processes: list[subprocess.Popen] = []
        self._clients: list[netns.OutsideClient] = []
        self._images: set[str] = set()
        self._closed = False
        self._old_handlers: dict[int, Any] = {}
        self.retried: list[str] = []  # what ran again after the Docker daemon went away

    # --- opening ---------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _interrupt)
        owners.claim(self.names.prefix)
        try:
            removed = remove_leftovers(self.docker, self.netfilter)
            if removed:
                say(f"removed what dead bench runs left: {', '.join(removed)}")
            self._port_block = self._claim_port_block()
            self.ports = Ports.block(self._port_block)
            self.scratch.mkdir(parents=True)
            if self.ipv6:
                self._sysctls6 = ipv6_sysctls()
            self.docker.ensure_network(self.names.network, self.names.bridge, self._subnet6)
            self.netfilter.enable_route_localnet(self.names.bridge)
        except BaseException:
            self.close()
            raise
        say(f"run {self.names.prefix}: ports {self.ports.base}-{self.ports.base + 99}, scratch {self.scratch}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def scratch(self) -> Path:
        return self.names.scratch

    @staticmethod
    def _free_prefix() -> str:
        while True:
            prefix = f"DB{secrets.token_hex(3).upper()[:5]}"
            if not owners.owner_alive(prefix):
                return prefix

    def _claim_port_block(self) -> int:
        """A block no live run holds, and on which nothing listens yet."""
        listening = _listening_ports()
        blocks = list(range(BLOCKS))
        random.shuffle(blocks)
        for block in blocks:
            name = self.names.ports_claim(block)
            ports = Ports.block(block)
            if owners.owner_alive(name) or any(ports.base <= p < ports.base + 100 for p in listening):
                continue
            owners.claim(name)
            return block
        raise RuntimeError("every port block of 24000-24999 is in use by live bench runs or listeners")

    # --- what a run makes -------------------------------------------------------------------------

    @property
    def _subnet6(self) -> str | None:
        return self.names.subnet6 if self.ipv6 else None

    def outside(self) -> netns.OutsideClient:
        client = netns.OutsideClient(prefix=self.names.netns_prefix, ipv6=self.names.outside6 if self.ipv6 else None)
        self._clients.append(client)
        return client.__enter__()

    def popen(
        self, argv: Sequence[str], *, inside: netns.OutsideClient | None = None, **kwargs: Any
    ) -> subprocess.Popen:
        """Start a process in a process group of its own (Ctrl-C reaches the bench, which stops it)."""
        kwargs.setdefault("start_new_session", True)
        process = inside.popen(list(argv), **kwargs) if inside else subprocess.Popen(list(argv), **kwargs)
        self._processes.append(process)
        with open(self.scratch / "pids", "a") as pids:
            pids.write(f"{process.pid}\n")
        return process

    def stop(self, process: subprocess.Popen, *, grace: float = 5.0) -> None:
        """SIGTERM to the process's group, then SIGKILL after `grace` seconds."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Whatever else is left in its group (an nginx worker) goes too.
        _kill_groups({process.pid}, signal.SIGKILL)
        if process in self._processes:
            self._processes.remove(process)

    def pin_group(self, process: subprocess.Popen, cpus: set[int]) -> None:
        """Every thread of every process in `process`'s group (nginx's worker too) onto `cpus`."""
        for pid in _group_members({process.pid}):
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(ProcessLookupError, OSError, ValueError):
                    os.sched_setaffinity(int(task.name), cpus)

    def run(
        self,
        argv: Sequence[str],
        *,
        inside: netns.OutsideClient | None = None,
        timeout: float = 120,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        argv = ["ip", "netns", "exec", inside.name, *argv] if inside else list(argv)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, start_new_session=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
        return result

    def build_images(self, tags: Sequence[str]) -> None:
        for tag in tags:
            if tag not in self._images:
                self.run([str(REPO / "scripts" / "build-app-image"), tag, IMAGE])
                self._images.add(tag)

    def remove_containers(self, app: str | None = None) -> None:
        labels = [f"deployer.owner={self.names.owner}"] + ([f"deployer.app={app}"] if app else [])
        for container in self.docker.containers({"label": labels}):
            self.docker.remove(container.id)

    def remove_app_chains(self, apps: Sequence[str]) -> None:
        for netfilter in (self.netfilter, *([Netfilter(ipv6=True)] if self.ipv6 else [])):
            live = rules.parse_nat(netfilter.save_nat())
            text = rules.render_removal(live, rules.ChainNames(self.names.prefix), apps)
            if text:
                netfilter.restore(text)

    def again_after_docker_restart(self, label: str, attempt: Callable[[], T], tidy: Callable[[], None]) -> T:
        """Run `attempt`; if the Docker daemon goes away meanwhile (a restart by other work on the
        machine), wait for it, `tidy` what the broken attempt left, and run it once more."""
        try:
            return attempt()
        except DockerUnavailable as exc:
            say(f"{label}: the Docker daemon went away ({exc}); waiting for it to run {label} again")
            deadline = time.monotonic() + 120
            while True:
                try:
                    self.docker.ping()
                    break
                except DeployerError:
                    if time.monotonic() > deadline:
                        raise exc from None
                    time.sleep(1)
            self.docker.ensure_network(self.names.network, self.names.bridge, self._subnet6)
            self.netfilter.enable_route_localnet(self.names.bridge)
            tidy()
            self.retried.append(label)
            return attempt()

    # --- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A second Ctrl-C must not leave half the cleanup undone.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            steps: list[tuple[str, Callable[[], None]]] = [
                ("processes", self._stop_processes),
                ("namespaces", self._close_clients),
                ("containers", self.remove_containers),
                ("nat chains", self._teardown_chains),
                ("network", lambda: self.docker.remove_network(self.names.network)),
                ("images", self._remove_images),
                ("scratch", lambda: shutil.rmtree(self.scratch, ignore_errors=True)),
                ("IPv6 sysctls", lambda: restore_ipv6_sysctls(self._sysctls6)),
            ]
            for what, step in steps:
                try:
                    step()
                except (DeployerError, OSError, subprocess.SubprocessError, RuntimeError) as exc:
                    say(f"cleanup of {what} failed: {exc}")
            if self._port_block is not None:
                owners.release(self.names.ports_claim(self._port_block))
            owners.release(self.names.prefix)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)

    def _stop_processes(self) -> None:
        for process in list(self._processes):
            self.stop(process, grace=3)

    def _close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def _teardown_chains(self) -> None:
        names = rules.ChainNames(self.names.prefix)
        table = nft.table_name(names.prefix)
        backends: list[Any] = [
            self.netfilter,
            NftablesBackend(Nftables(handles=True), self.netfilter, table=table, prefix=names.prefix),
        ]
        if self.ipv6:
            ip6tables = Netfilter(ipv6=True)
            backends += [
                ip6tables,
                NftablesBackend(Nftables(handles=True), ip6tables, table=table, prefix=names.prefix, family="ip6"),
            ]
        for backend in backends:  # a run stopped while the nftables backend held its rules
            text = rules.render_teardown(rules.parse_nat(backend.save_table("nat")), names)
            if text:
                backend.restore(text)

    def _remove_images(self) -> None:
        # Only the local tags: every scenario pulls from the registry, so a concurrent run is not hurt.
        for tag in self._images:
            subprocess.run(["docker", "rmi", "-f", f"{IMAGE}:{tag}"], capture_output=True)


def _interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def _listening_ports() -> set[int]:
    out = subprocess.run(["ss", "-Hlntu"], capture_output=True, text=True).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            with contextlib.suppress(ValueError):
                ports.add(int(fields[4].rsplit(":", 1)[1]))
    return ports


def _group_members(groups: set[int]) -> list[int]:
    """The pids of every process whose process group is one of `groups` (groups the bench started)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pgrp = int(stat.rsplit(") ", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgrp in groups:
            members.append(int(entry.name))
    return members


def _kill_groups(groups: set[int], sig: int) -> None:
    for pid in _group_members(groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def remove_leftovers(docker: DockerHost, netfilter: Netfilter) -> list[str]:
    """Remove what bench runs that are no longer alive left: processes, namespaces, containers, chains."""
    removed: list[str] = []

    def dead(prefix: str) -> bool:
        return RUN_PREFIX_RE.fullmatch(prefix) is not None and not owners.owner_alive(prefix)

    for scratch in Path("/tmp").glob("deployer-bench-DB*"):
        prefix = scratch.name.removeprefix("deployer-bench-")
        if dead(prefix):
            pids = scratch / "pids"
            groups = {int(p) for p in pids.read_text().split() if p.isdigit()} if pids.exists() else set()
            _kill_groups(groups, signal.SIGKILL)
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(f"processes and files of {prefix}")
    namespaces = {name[:7] for name in _namespaces_and_links() if OWNER_OF_RUN_RE.fullmatch(name[:7])}
    for owner in sorted(namespaces):
        if dead(owner.upper()):
            removed.extend(netns.cleanup_stale(owner))
    for container in docker.containers({"label": ["deployer.owner"]}):
        owner = container.labels.get("deployer.owner", "")
        if OWNER_OF_RUN_RE.fullmatch(owner) and dead(owner.upper()):
            docker.remove(container.id)
            removed.append(f"container {container.name}")
    for family in (netfilter, Netfilter(ipv6=True)):  # a dual-stack run's IPv6 chains too
        live = rules.parse_nat(family.save_nat())
        for prefix in sorted({p for p in map(prefix_of_chain, live.chains) if p and dead(p)}):
            text = rules.render_teardown(live, rules.ChainNames(prefix))
            if text:
                family.restore(text)
                removed.append(f"nat chains {prefix}*{' (IPv6)' if family is not netfilter else ''}")
            live = rules.parse_nat(family.save_nat())
    for network in docker.client.networks.list(filters={"label": "deployer.network"}):
        if OWNER_OF_RUN_RE.fullmatch(network.name) and dead(network.name.upper()):
            docker.remove_network(network.name)
            removed.append(f"network {network.name}")
    for claim in owners.OWNERS.glob("DB*") if owners.OWNERS.exists() else []:
        if dead(claim.name):
            owners.release(claim.name)
    return removed


IPV6_SYSCTLS = Path("/proc/sys/net/ipv6/conf")


def ipv6_sysctls() -> dict[Path, str]:
    """Every interface's IPv6 forwarding and accept_ra as they are: what a dual-stack deploy may change."""
    return {path: path.read_text() for name in ("forwarding", "accept_ra") for path in IPV6_SYSCTLS.glob(f"*/{name}")}


def restore_ipv6_sysctls(saved: dict[Path, str]) -> None:
    """Put back the values `ipv6_sysctls` read; an interface gone since (the run's own veth) is skipped. `all`
    first: writing its forwarding sets every interface's, which the interfaces' own values then correct."""
    for path, value in sorted(saved.items(), key=lambda item: item[0].parent.name != "all"):
        with contextlib.suppress(OSError):
            if path.read_text() != value:
                path.write_text(value)


def _namespaces_and_links() -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines()
    found = [line.split()[0] for line in names if line.strip()]
    found += [line.split(":", 2)[1].strip().split("@", 1)[0] for line in links if line.count(":") >= 2]
    return found


@contextlib.contextmanager
def timed(label: str) -> Iterator[dict[str, float]]:
    """Measure a part of the run; the dict gets `seconds` when the block ends."""
    result: dict[str, float] = {}
    start = time.monotonic()
    say(f"{label} ...")
    try:
        yield result
    finally:
        result["seconds"] = round(time.monotonic() - start, 1)
        say(f"{label} took {result['seconds']} s")
