"""The alternatives the deploys-under-load part compares the deployer with. They live in the bench only.

- `SeedRecipe`: what the project started from. Start and health-check the new container like the
  deployer does, then `iptables -t nat -A` the new DNAT rules, `-D` the old ones, flush conntrack,
  stop the old container. The flush is limited to the app's own flows (`conntrack -D` by its
  external ports): a machine-wide `conntrack -F` would cut every other flow on a shared machine,
  and for the app's flows it has the same effect.
- `StopThenStart`: what watchtower does. Stop the old container, start the new one publishing
  the same host port (Docker's own port publishing; no health gate before traffic comes).
- `NoUdpCleanup`: the deployer's own flip without deleting UDP conntrack entries, as a netfilter
  adapter the real engine is given; a UDP flow then stays with the old instance.

The command and argument rendering is pure (tested in tests/unit/test_bench_baselines.py); the
executors are thin and report steps through a `Journal`, as the engine does, so one analysis
reads both.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from deployer.adapters.docker_host import DockerHost
from deployer.adapters.iptables import Netfilter
from deployer.adapters.probes import probe_for
from deployer.config import AppConfig, Settings
from deployer.errors import BootError
from deployer.host.health import wait_healthy
from deployer.journal import Journal
from deployer.plan import rules
from deployer.plan.containers import ContainerInfo, Release, other_set, run_arguments

# --- pure: commands and arguments ------------------------------------------------------------------


def iptables_dnat(action: str, chain: str, forward: rules.Forward, *, wait: int = 10) -> list[str]:
    """`iptables -t nat -A|-D CHAIN ...` for one DNAT rule, as the seed recipe typed it."""
    if action not in ("-A", "-D"):
        raise ValueError(f"not an append or delete: {action!r}")
    return [
        "iptables",
        "-w",
        str(wait),
        "-t",
        "nat",
        action,
        chain,
        "-p",
        forward.protocol,
        "-m",
        forward.protocol,
        "--dport",
        str(forward.external),
        "-m",
        "comment",
        "--comment",
        forward.comment,
        "-j",
        "DNAT",
        "--to-destination",
        f"{forward.to_address}:{forward.to_port}",
    ]


def seed_flip(chain: str, new: Sequence[rules.Forward], old: Sequence[rules.Forward]) -> list[list[str]]:
    """Append every new rule, then delete every old one: until the deletes, the old rules match first."""
    return [iptables_dnat("-A", chain, f) for f in new] + [iptables_dnat("-D", chain, f) for f in old]


def app_flows(app: AppConfig) -> list[list[str]]:
    """Conntrack filters for every flow of the app, TCP and UDP: the seed recipe's flush, scoped to the app."""
    return [["-p", p.protocol, "--orig-port-dst", str(p.external)] for p in app.ports]


def forwards(app: AppConfig, address: str, port_set: str, tag: str) -> list[rules.Forward]:
    """The DNAT rules that send every external port of the app to one instance (as the deployer's)."""
    return [
        rules.Forward(p.protocol, p.external, address, p.container, f"{app.name} {port_set} {tag}") for p in app.ports
    ]


def filter_protocol(arguments: Sequence[str]) -> str | None:
    """The protocol a conntrack filter names (`-p udp ...`), if any."""
    for flag, value in zip(arguments, arguments[1:]):
        if flag in ("-p", "--proto"):
            return value
    return None


def published_arguments(
    settings: Settings, app: AppConfig, port_set: str, release: Release, addresses: Sequence[str]
) -> dict[str, Any]:
    """The container of stop-then-start: like the deployer's, but publishing the external ports themselves."""
    arguments = run_arguments(settings, app, port_set, release)
    arguments["ports"] = {
        f"{p.container}/{p.protocol}": [(address, p.external) for address in addresses] for p in app.ports
    }
    return arguments


# --- executors -------------------------------------------------------------------------------------


class NoUdpCleanup(Netfilter):
    """The real netfilter adapter, except that UDP conntrack entries are never deleted."""

    def conntrack_delete(self, arguments: list[str]) -> int:
        if filter_protocol(arguments) == "udp":
            return 0
        return super().conntrack_delete(arguments)


class _Baseline:
    """Shared by the hand-rolled baselines: one app, its containers, its journal."""

    switch_steps = ("flip", "flip")

    def __init__(
        self, settings: Settings, app: AppConfig, docker: DockerHost, netfilter: Netfilter, journal: Journal
    ) -> None:
        self.settings, self.app, self.docker, self.netfilter, self.journal = settings, app, docker, netfilter, journal
        self.active: tuple[ContainerInfo, str, str] | None = None  # container, port set, tag

    def _start(self, release: Release, arguments: Mapping[str, Any]) -> ContainerInfo:
        with self.journal.step("start", app=self.app.name) as step:
            container = self.docker.run(release.reference, arguments)
            step.detail.update(container=container.name, address=container.address(self.settings.network))
            if not container.address(self.settings.network):
                raise BootError(f"{container.name} has no address on {self.settings.network}")
        return container

    def _healthy(self, container: ContainerInfo, host: str, port: int) -> None:
        with self.journal.step("health", app=self.app.name) as step:

            def exited() -> str | None:
                info = self.docker.inspect(container.id)
                return None if info and info.status == "running" else f"{container.name} is not running"

            step.detail["probes"] = wait_healthy(self.app.health, probe_for(self.app.health, host, port), exited)

    def _pull(self, tag: str) -> Release:
        with self.journal.step("pull", app=self.app.name):
            return self.docker.pull(Release(tag=tag, image=self.app.image))

    def deploy(self, tag: str) -> None:
        self.journal.record("deploy.started", app=self.app.name, tag=tag)
        self._deploy(tag)
        self.journal.record("deploy.finished", app=self.app.name, tag=tag, outcome="ok")

    def _deploy(self, tag: str) -> None:
        raise NotImplementedError


class SeedRecipe(_Baseline):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names = rules.ChainNames(self.settings.chain_prefix)
        self.chain = self.names.app(self.app.name)
        # The same jumps and loopback masquerade as the deployer's, so only the flip differs.
        live = rules.parse_nat(self.netfilter.save_nat())
        self.netfilter.restore(
            rules.render_restore(live, self.names, self.settings.bridge, {}, ensure_apps=[self.app.name])
        )

    def _deploy(self, tag: str) -> None:
        release = self._pull(tag)
        old = self.active
        new_set = other_set(old[1] if old else None)
        container = self._start(release, run_arguments(self.settings, self.app, new_set, release))
        self._healthy(container, self.app.bind, self.app.port_for(self.app.health.port).set_port(new_set))
        address = container.address(self.settings.network) or ""
        new_rules = forwards(self.app, address, new_set, tag)
        old_rules = forwards(self.app, old[0].address(self.settings.network) or "", old[1], old[2]) if old else []
        with self.journal.step("flip", app=self.app.name) as step:
            started = time.monotonic()
            for argv in seed_flip(self.chain, new_rules, old_rules):
                subprocess.run(argv, check=True, capture_output=True)
            step.detail["committed_ms"] = round((time.monotonic() - started) * 1000, 2)
            # New flows take the new rule from the last delete on: that is this recipe's commit.
            self.journal.note("netfilter.write", app=self.app.name)
            step.detail["deleted"] = sum(self.netfilter.conntrack_delete(f) for f in app_flows(self.app))
        if old:
            with self.journal.step("stop", app=self.app.name):
                self.docker.stop(old[0].id, self.app.stop_timeout)
                self.docker.remove(old[0].id)
        self.active = (container, new_set, tag)


class StopThenStart(_Baseline):
    # Nothing serves from the old container's stop until the new one answers.
    switch_steps = ("stop", "health")

    def __init__(self, *args: Any, addresses: Sequence[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.addresses = list(addresses)

    def _deploy(self, tag: str) -> None:
        release = self._pull(tag)
        old = self.active
        new_set = other_set(old[1] if old else None)
        if old:
            with self.journal.step("stop", app=self.app.name):
                self.docker.stop(old[0].id, self.app.stop_timeout)
                self.docker.remove(old[0].id)
        container = self._start(release, published_arguments(self.settings, self.app, new_set, release, self.addresses))
        # Not a gate (watchtower has none): the moment it answers ends the outage being measured.
        tcp = next(p for p in self.app.ports if p.protocol == "tcp")
        self._healthy(container, self.addresses[0], tcp.external)
        self.active = (container, new_set, tag)
