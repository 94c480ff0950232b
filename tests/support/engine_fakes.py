"""Hand-written fakes of the engine's ports on one host, with state kept the way the real parts keep it.

The netfilter fake applies each restore transaction to its tables (so the flip's read-back and reconcile's view
of the rules are real), the Docker fake keeps containers, the prober answers per port from a script. A "kill" is
an exception that is not a DeployerError, raised by a fake at the moment the integration crash tests SIGKILL the
deployer: nothing of the engine's cleanup runs, so the fakes are left as a dead process leaves the host.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from deployer.config import parse
from deployer.errors import RulesError
from deployer.host.engine import Engine
from deployer.journal import Journal
from deployer.plan.containers import ContainerInfo, Release
from deployer.plan.health import ProbeResult
from deployer.plan.hooks import HookOutcome

NETWORK = "deployer"
OLD = "172.18.0.2"  # v1's container (blue); v2's (green) gets the next address
NEW = "172.18.0.3"


class Killed(BaseException):
    """The deployer process dies here: no handler of the engine's runs."""


class Effects(list):
    """Every effect, in order, as one line each; `kill_at` makes the nth effect that starts so die instead."""

    def __init__(self) -> None:
        super().__init__()
        self.kill_at: tuple[str, int] | None = None

    def add(self, line: str) -> None:
        if self.kill_at is not None and line.startswith(self.kill_at[0]):
            prefix, nth = self.kill_at
            self.kill_at = (prefix, nth - 1) if nth > 1 else None
            if nth == 1:
                raise Killed(line)
        self.append(line)


class FakeNetfilter:
    """Tables as iptables keeps them; a restore applies its transaction whole, as iptables-restore does."""

    BUILTIN = {
        "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
        "filter": ("INPUT", "FORWARD", "OUTPUT"),
        "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    }

    def __init__(self, effects: Effects, family: str = "") -> None:
        self.effects = effects
        self.family = family  # "ip6 " for ip6tables: its effects say so
        self.tables: dict[str, dict[str, list[str]]] = {t: {c: [] for c in cs} for t, cs in self.BUILTIN.items()}
        self.refuse: Callable[[str], bool] = lambda text: False
        self.flows: dict[str, list[str]] = {}  # a conntrack filter (joined) -> the entries it lists
        self.reads: list[str] = []  # the chains listed, in order: a read is a command on the real host

    def save_table(self, table: str) -> str:
        chains = self.tables[table]
        heads = [f":{c} {'ACCEPT' if c in self.BUILTIN[table] else '-'} [0:0]" for c in chains]
        return "\n".join([f"*{table}", *heads, *(r for rules in chains.values() for r in rules), "COMMIT", ""])

    def list_chain(self, chain: str) -> list[str] | None:
        self.reads.append(chain)
        rules = self.tables["nat"].get(chain)
        return None if rules is None else list(rules)

    def restore(self, text: str) -> None:
        self.effects.add(f"{self.family}restore " + " | ".join(text.strip().splitlines()))
        if self.refuse(text):
            raise RulesError("iptables-restore refused the transaction: fake")
        tables = {name: {c: list(r) for c, r in chains.items()} for name, chains in self.tables.items()}
        chains: dict[str, list[str]] = {}
        for line in text.splitlines():
            word, _, rest = line.partition(" ")
            if line.startswith("*"):
                chains = tables[line[1:]]
            elif line.startswith(":"):
                chains[line[1:].split(" ")[0]] = []
            elif word == "-A":
                chains[rest.split(" ")[0]].append(line)
            elif word == "-I":
                chain, _, body = rest.partition(" 1 ")
                chains[chain].insert(0, f"-A {chain} {body}")
            elif word == "-D":
                chains[rest.split(" ")[0]].remove(f"-A {rest}")
            elif word == "-F":
                chains[rest] = []
            elif word == "-X":
                del chains[rest]
        self.tables = tables

    def conntrack_delete(self, arguments: list[str]) -> int:
        self.effects.add("conntrack -D " + " ".join(arguments))
        return 0

    def conntrack_list(self, arguments: list[str]) -> list[str]:
        self.effects.add("conntrack -L " + " ".join(arguments))
        return self.flows.get(" ".join(arguments), [])

    def conntrack_timeout(self, name: str) -> int | None:
        return None

    def enable_route_localnet(self, interface: str) -> None:
        self.effects.add(f"route_localnet {interface}")


class FakeDocker:
    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.containers_by_id: dict[str, ContainerInfo] = {}
        self.addresses = (f"172.18.0.{n}" for n in itertools.count(2))
        self.next_address6: Iterator[str] | None = None  # on a dual-stack network: each container's IPv6 address

    def ping(self) -> None:
        pass

    def pull(self, release: Release, auth: Mapping[str, str] | None = None) -> Release:
        self.effects.add(f"pull {release.reference}")
        return Release(tag=release.tag, image=release.image, digest=f"sha256:{release.tag}")

    def has_image(self, reference: str) -> bool:
        return False

    def tag_image(self, source: str, release: Release) -> None:
        self.effects.add(f"tag {source} {release.reference}")

    def ensure_network(self, name: str, bridge: str, ipv6_subnet: str | None = None) -> None:
        self.effects.add(f"network {name} {bridge}" + (f" {ipv6_subnet}" if ipv6_subnet else ""))

    def addresses6(self, name: str) -> dict[str, str]:
        """IPv4 -> IPv6 of the running containers on the network, as Docker's network inspect gives them."""
        return {
            c.addresses[name]: c.addresses6[name]
            for c in self.containers_by_id.values()
            if c.status == "running" and c.addresses.get(name) and c.addresses6.get(name)
        }

    def containers(self, filters: Mapping[str, Any]) -> list[ContainerInfo]:
        wanted = set(filters.get("label", []))
        return [c for c in self.containers_by_id.values() if wanted <= {f"{k}={v}" for k, v in c.labels.items()}]

    def inspect(self, container_id: str) -> ContainerInfo | None:
        return self.containers_by_id.get(container_id)

    def run(self, reference: str, arguments: Mapping[str, Any]) -> ContainerInfo:
        self.effects.add(f"run {arguments['name']} {reference} restart={arguments['restart_policy']['Name']}")
        name = arguments["name"]
        info = ContainerInfo(
            id=f"id-{name}-{reference.rpartition(':')[2]}",
            name=name,
            status="running",
            exit_code=None,
            restart_count=0,
            labels=dict(arguments["labels"]),
            addresses={NETWORK: next(self.addresses)},
            addresses6={NETWORK: next(self.next_address6)} if self.next_address6 is not None else {},
        )
        self.containers_by_id[info.id] = info
        return info

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        return ""

    def set_restart_policy(self, container_id: str, policy: Mapping[str, Any]) -> None:
        self.effects.add(f"restart-policy {self.containers_by_id[container_id].name} {policy['Name']}")

    def stop(self, container_id: str, timeout: int) -> None:
        self.effects.add(f"stop {self.containers_by_id[container_id].name}")
        old = self.containers_by_id[container_id]
        self.containers_by_id[container_id] = ContainerInfo(old.id, old.name, "exited", 0, 0, old.labels, {})

    def remove(self, container_id: str) -> None:
        self.effects.add(f"remove {self.containers_by_id[container_id].name}")
        del self.containers_by_id[container_id]


class FakeProber:
    """Each set port answers from its script ("+" passes, "-" fails; the last answer repeats)."""

    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.scripts: dict[int, str] = {}
        self.seen: dict[int, int] = {}

    def health(self, check: Any, host: str, port: int) -> Callable[[], ProbeResult]:
        def probe() -> ProbeResult:
            self.effects.add(f"probe {host}:{port}")
            script = self.scripts.get(port, "+")
            answer = script[min(self.seen.get(port, 0), len(script) - 1)]
            self.seen[port] = self.seen.get(port, 0) + 1
            return ProbeResult(answer == "+", f"GET /health: {200 if answer == '+' else 503}")

        return probe

    def responder(self, port: int) -> str | None:
        return None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Host:
    """One machine's fakes; `engine()` is a deployer process started on it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.effects = Effects()
        self.netfilter = FakeNetfilter(self.effects)
        self.retired: FakeNetfilter | None = None  # the backend a switch left behind
        self.netfilter6: FakeNetfilter | None = None  # ip6tables, on a dual-stack host (`dual_stack`)
        self.forwarding6: Callable[[], list[str]] | None = None  # the host's IPv6 forwarding made safe: its changes
        self.docker = FakeDocker(self.effects)
        self.prober = FakeProber(self.effects)
        self.clock = FakeClock()
        self.events: list[dict[str, Any]] = []
        self.hook_exits: dict[str, int] = {}
        (tmp_path / "hooks").mkdir()
        data = {
            "deployer": {
                "state_dir": str(tmp_path / "state"),
                "hooks_dir": str(tmp_path / "hooks"),
                "network": NETWORK,
                "bridge": "deployer0",
            },
            "apps": {
                "web": {
                    "image": "127.0.0.1:5000/web",
                    "drain_seconds": 2,
                    "stop_timeout": 5,
                    "health": {
                        "type": "http",
                        "port": 80,
                        "path": "/health",
                        "interval": 1,
                        "successes": 2,
                        "deadline": 3,
                    },
                    "ports": [{"external": 18080, "container": 80, "blue": 18081, "green": 18082}],
                }
            },
        }
        self.config = parse(data, path=tmp_path / "deployer.toml", environ={})

    def dual_stack(self) -> None:
        """`[deployer] ipv6 = true`: ip6tables beside iptables, and IPv6 addresses for the containers."""
        self.config = replace(self.config, settings=replace(self.config.settings, ipv6=True))
        self.netfilter6 = FakeNetfilter(self.effects, "ip6 ")
        self.docker.next_address6 = (f"fd6e:3b1d:5e2a::{n}" for n in itertools.count(2))

    def hook(self, name: str, exit_code: int = 0) -> None:
        path = self.tmp_path / "hooks" / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        self.hook_exits[name] = exit_code

    def run_hook(self, path: Path, env: Mapping[str, str], timeout: float) -> HookOutcome:
        self.effects.add(f"hook {path.name}")
        return HookOutcome(self.hook_exits[path.name], f"{path.name} output")

    def engine(self) -> Engine:
        journal = Journal([self.events.append], clock=self.clock)
        return Engine(
            self.config,
            self.docker,
            self.netfilter,
            routing=NoRouting(),
            prober=self.prober,
            run_hook=self.run_hook,
            journal=journal,
            environ={},
            clock=self.clock,
            sleep=self.clock.sleep,
            retired_netfilter=self.retired,
            netfilter6=self.netfilter6,
            forwarding6=self.forwarding6,
        )

    def taken(self) -> list[str]:
        """The effects so far, and a fresh list for what comes next."""
        taken = list(self.effects)
        self.effects.clear()
        self.events.clear()
        return taken

    def trail(self) -> list[tuple[str, str | None, str | None]]:
        return [(e["event"], e.get("step"), e.get("outcome")) for e in self.events if e["_durable"]]

    def chain(self) -> list[str] | None:
        return self.netfilter.list_chain("DEPLOYER-web")

    def running(self) -> list[str]:
        return sorted(f"{c.name} {c.status}" for c in self.docker.containers_by_id.values())

    def record(self) -> tuple[str | None, str | None]:
        state = self.engine().store.load("web")
        return (
            state.active.container_name if state.active else None,
            state.previous.container_name if state.previous else None,
        )


class NoRouting:
    """Nothing here forwards: any use of routing would be a surprise, so it fails."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"routing.{name} used")


def dnat(address: str, set_name: str, tag: str) -> str:
    return (
        f'-A DEPLOYER-web -p tcp -m tcp --dport 18080 -m comment --comment "web {set_name} {tag}" '
        f"-j DNAT --to-destination {address}:80"
    )


OLD_RULE = dnat(OLD, "blue", "v1")
