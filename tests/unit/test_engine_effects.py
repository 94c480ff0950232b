"""The engine driven through hand-written fakes of its ports: the exact order of its effects, without root.

The fakes keep state the way the real parts do: the netfilter fake applies each restore transaction to its
tables (so the flip's read-back and reconcile's view of the rules are real), the Docker fake keeps containers,
the prober answers per port from a script. A "kill" is an exception that is not a DeployerError, raised by a
fake at the moment the integration crash tests SIGKILL the deployer (tests/integration/test_crash.py): nothing
of the engine's cleanup runs, so the fakes are left as a dead process leaves the host; a new engine then
reconciles over them.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest

from deployer.config import parse
from deployer.errors import (DiskFull, DockerUnavailable, HealthCheckFailed, HookFailed, RegistryUnavailable, RulesError,
                             StateError)
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

    BUILTIN = {"nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), "filter": ("INPUT", "FORWARD", "OUTPUT"),
               "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")}

    def __init__(self, effects: Effects) -> None:
        self.effects = effects
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
        self.effects.add("restore " + " | ".join(text.strip().splitlines()))
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

    def ping(self) -> None:
        pass

    def pull(self, release: Release, auth: Mapping[str, str] | None = None) -> Release:
        self.effects.add(f"pull {release.reference}")
        return Release(tag=release.tag, image=release.image, digest=f"sha256:{release.tag}")

    def has_image(self, reference: str) -> bool:
        return False

    def tag_image(self, source: str, release: Release) -> None:
        self.effects.add(f"tag {source} {release.reference}")

    def ensure_network(self, name: str, bridge: str) -> None:
        self.effects.add(f"network {name} {bridge}")

    def containers(self, filters: Mapping[str, Any]) -> list[ContainerInfo]:
        wanted = set(filters.get("label", []))
        return [c for c in self.containers_by_id.values()
                if wanted <= {f"{k}={v}" for k, v in c.labels.items()}]

    def inspect(self, container_id: str) -> ContainerInfo | None:
        return self.containers_by_id.get(container_id)

    def run(self, reference: str, arguments: Mapping[str, Any]) -> ContainerInfo:
        self.effects.add(f"run {arguments['name']} {reference} restart={arguments['restart_policy']['Name']}")
        name = arguments["name"]
        info = ContainerInfo(id=f"id-{name}-{reference.rpartition(':')[2]}", name=name, status="running",
                             exit_code=None, restart_count=0, labels=dict(arguments["labels"]),
                             addresses={NETWORK: next(self.addresses)})
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
        self.docker = FakeDocker(self.effects)
        self.prober = FakeProber(self.effects)
        self.clock = FakeClock()
        self.events: list[dict[str, Any]] = []
        self.hook_exits: dict[str, int] = {}
        (tmp_path / "hooks").mkdir()
        data = {"deployer": {"state_dir": str(tmp_path / "state"), "hooks_dir": str(tmp_path / "hooks"),
                             "network": NETWORK, "bridge": "deployer0"},
                "apps": {"web": {"image": "127.0.0.1:5000/web", "drain_seconds": 2, "stop_timeout": 5,
                                 "health": {"type": "http", "port": 80, "path": "/health", "interval": 1,
                                            "successes": 2, "deadline": 3},
                                 "ports": [{"external": 18080, "container": 80, "blue": 18081, "green": 18082}]}}}
        self.config = parse(data, path=tmp_path / "deployer.toml", environ={})

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
        return Engine(self.config, self.docker, self.netfilter, routing=NoRouting(), prober=self.prober,
                      run_hook=self.run_hook, journal=journal, environ={}, clock=self.clock, sleep=self.clock.sleep,
                      retired_netfilter=self.retired)

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
        return (state.active.container_name if state.active else None,
                state.previous.container_name if state.previous else None)


class NoRouting:
    """Nothing here forwards: any use of routing would be a surprise, so it fails."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"routing.{name} used")


def dnat(address: str, set_name: str, tag: str) -> str:
    return (f'-A DEPLOYER-web -p tcp -m tcp --dport 18080 -m comment --comment "web {set_name} {tag}" '
            f"-j DNAT --to-destination {address}:80")


TCP_TO_OLD = ["-p", "tcp", "--orig-port-dst", "18080", "--dst-nat", OLD]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """A host with v1 deployed on blue, through the engine itself; its effects are the first test's."""
    host = Host(tmp_path)
    host.engine().deploy("web", "v1", actor="cli:ann")
    return host


OLD_RULE = dnat(OLD, "blue", "v1")
NEW_RULE = dnat(NEW, "green", "v2")
BASE = ("restore *nat | :DEPLOYER - [0:0] | :DEPLOYER-POSTROUTING - [0:0] | :DEPLOYER-web - [0:0] | "
        '-A DEPLOYER-POSTROUTING -s 127.0.0.0/8 -o deployer0 -m comment --comment "deployer: loopback clients" '
        "-j MASQUERADE | -A DEPLOYER -j DEPLOYER-web | -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER | "
        "-I OUTPUT 1 -m addrtype --dst-type LOCAL -j DEPLOYER | -A POSTROUTING -j DEPLOYER-POSTROUTING | COMMIT")
PREPARE_BRIDGE = ["network deployer deployer0", "route_localnet deployer0"]
START_GREEN = ["pull 127.0.0.1:5000/web:v2", "network deployer deployer0",
               "run deployer-web-green 127.0.0.1:5000/web:v2 restart=no"]
GREEN_PASSES = ["probe 127.0.0.1:18082", "probe 127.0.0.1:18082", "restart-policy deployer-web-green unless-stopped"]
TAKEOVER = f"restore *nat | -I DEPLOYER-web 1 {NEW_RULE.removeprefix('-A DEPLOYER-web ')} | COMMIT"
CLEANUP = f"restore *nat | :DEPLOYER-web - [0:0] | {NEW_RULE} | COMMIT"
PUT_BACK = f"restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE} | COMMIT"


def test_the_first_deploy_builds_the_base_chains_then_points_the_app_chain_at_blue(tmp_path):
    host = Host(tmp_path)
    host.engine().deploy("web", "v1", actor="cli:ann")
    assert host.taken() == [
        "pull 127.0.0.1:5000/web:v1", "network deployer deployer0",
        "run deployer-web-blue 127.0.0.1:5000/web:v1 restart=no",
        "probe 127.0.0.1:18081", "probe 127.0.0.1:18081", "restart-policy deployer-web-blue unless-stopped",
        *PREPARE_BRIDGE, BASE,  # the app chain did not exist: the jumps and chains first, in one transaction
        f"restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE} | COMMIT",
    ]
    assert (host.chain(), host.running(), host.record()) == ([OLD_RULE], ["deployer-web-blue running"],
                                                             ("deployer-web-blue", None))


def test_a_deploy_gates_green_flips_to_it_then_drains_and_retires_blue(host):
    host.taken()
    result = host.engine().deploy("web", "v2", actor="cli:ann", job="j-1")
    assert host.effects == [
        *PREPARE_BRIDGE,  # the reconcile before the deploy: the base is in place, nothing to repair
        *START_GREEN, *GREEN_PASSES,
        TAKEOVER,  # add-only, so new flows move at once (a tcp-only app has no conntrack entries to delete)
        CLEANUP,  # the tidy, out of the flip's timed step: the shadowed old rule goes
        "conntrack -L -p tcp --orig-port-dst 18080 --reply-src 172.18.0.2 --state ESTABLISHED",  # the drain
        "stop deployer-web-blue", "remove deployer-web-blue",
        "conntrack -D -p tcp --orig-port-dst 18080 --reply-src 172.18.0.2",
    ]
    assert host.trail() == [
        ("deploy.started", None, None), ("step", "pull", "ok"), ("step", "start", "ok"), ("step", "health", "ok"),
        ("step", "flip", "ok"), ("step", "record", "ok"), ("step", "conntrack", "ok"), ("step", "tidy", "ok"),
        ("step", "drain", "ok"), ("step", "stop", "ok"), ("deploy.finished", None, "ok")]
    finished = host.events[-1]
    assert {k: finished[k] for k in ("app", "job", "actor", "tag", "set", "digest")} == {
        "app": "web", "job": "j-1", "actor": "cli:ann", "tag": "v2", "set": "green", "digest": "sha256:v2"}
    assert (result.port_set, result.previous_tag) == ("green", "v1")
    assert (host.chain(), host.running(), host.record()) == ([NEW_RULE], ["deployer-web-green running"],
                                                             ("deployer-web-green", "deployer-web-blue"))


def test_a_flip_reads_the_app_chain_once_and_its_rewrite_stands_for_the_read_back(host):
    host.taken()
    engine = host.engine()
    host.netfilter.reads.clear()
    engine.deploy("web", "v2", actor="cli:ann")
    assert host.netfilter.reads.count("DEPLOYER-web") == 1
    assert host.effects[host.effects.index(TAKEOVER) + 1] == CLEANUP  # the whole chain, as wanted, last


def test_a_failed_health_gate_removes_green_and_leaves_the_rules_on_blue(host):
    host.taken()
    host.prober.scripts[18082] = "-"
    with pytest.raises(HealthCheckFailed):
        host.engine().deploy("web", "v2", actor="cli:ann")
    assert host.effects == [*PREPARE_BRIDGE, *START_GREEN, *["probe 127.0.0.1:18082"] * 4,  # 3 s at 1 s intervals
                            "remove deployer-web-green"]
    assert host.trail()[-3:] == [("step", "health", "failed"), ("step", "remove-new", "ok"),
                                 ("deploy.failed", None, "failed")]
    assert (host.events[-1]["tag"], host.events[-1]["error_type"]) == ("v2", "HealthCheckFailed")
    assert (host.chain(), host.running(), host.record()) == ([OLD_RULE], ["deployer-web-blue running"],
                                                             ("deployer-web-blue", None))


def test_a_deploy_whose_tidy_is_refused_keeps_serving_green_and_leaves_the_shadowed_rule_to_reconcile(host):
    host.taken()
    host.netfilter.refuse = lambda text: text.startswith("*nat\n:DEPLOYER-web") and NEW in text
    host.engine().deploy("web", "v2", actor="cli:ann")
    assert host.effects[host.effects.index(TAKEOVER):][:2] == [TAKEOVER, CLEANUP]  # no put-back: green serves
    assert ("step", "tidy", "failed") in host.trail()
    assert (host.chain(), host.running(), host.record()) == ([NEW_RULE, OLD_RULE], ["deployer-web-green running"],
                                                             ("deployer-web-green", "deployer-web-blue"))
    host.netfilter.refuse = lambda text: False
    host.taken()
    assert host.engine().reconcile("web", actor="cli:ann") == ["shadowed rules of web removed"]
    assert host.effects == [*PREPARE_BRIDGE, CLEANUP]  # read once, then only the tidy: no second takeover
    assert host.chain() == [NEW_RULE]


def test_a_flip_whose_rewrite_is_refused_puts_the_old_rules_back(host):
    host.taken()
    engine = host.engine()
    web = engine.config.app("web")
    host.netfilter.refuse = lambda text: text.startswith("*nat\n:DEPLOYER-web") and NEW in text
    with pytest.raises(RulesError, match="the previous rules were restored"):
        engine.chains.flip(web, [NEW_RULE])
    assert host.effects == [TAKEOVER, CLEANUP, PUT_BACK]
    assert host.chain() == [OLD_RULE]


def test_a_failing_post_healthy_hook_stops_the_deploy_before_the_flip_and_runs_on_failure(host):
    host.taken()
    host.hook("post-healthy", exit_code=3)
    host.hook("on-failure")
    with pytest.raises(HookFailed, match="hook post-healthy exited with 3"):
        host.engine().deploy("web", "v2", actor="cli:ann")
    assert host.effects == [*PREPARE_BRIDGE, *START_GREEN, *GREEN_PASSES, "hook post-healthy",
                            "remove deployer-web-green", "hook on-failure"]
    assert host.trail()[-4:] == [("step", "hook post-healthy", "failed"), ("step", "remove-new", "ok"),
                                 ("step", "hook on-failure", "ok"), ("deploy.failed", None, "failed")]
    assert (host.chain(), host.running(), host.record()) == ([OLD_RULE], ["deployer-web-blue running"],
                                                             ("deployer-web-blue", None))


def kill_deploy(host: Host, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Run `deploy web v2` and kill it where test_crash.py does."""
    engine = host.engine()
    if point == "after-flip":  # the flip's move committed; the record was not written, the tidy not run
        def die(state: Any) -> None:
            raise Killed("record")

        monkeypatch.setattr(engine.store, "save", die)
    else:
        host.effects.kill_at = {"after-start": ("probe 127.0.0.1:18082", 1),  # the health step's first probe
                                "during-health": ("probe 127.0.0.1:18082", 2),
                                "during-drain": ("conntrack -L", 1)}[point]
    with pytest.raises(Killed):
        engine.deploy("web", "v2", actor="cli:ann")
    host.taken()


STOP_GREEN = ["stop deployer-web-green", "remove deployer-web-green",
              "conntrack -D -p tcp --orig-port-dst 18080 --reply-src 172.18.0.3"]
STOP_BLUE = ["stop deployer-web-blue", "remove deployer-web-blue",
             "conntrack -D -p tcp --orig-port-dst 18080 --reply-src 172.18.0.2"]
CRASHES = {
    # point: (the rules at the kill, what reconcile does, its repairs, the rules and record after)
    "after-start": ([OLD_RULE], [*PREPARE_BRIDGE, *STOP_GREEN],
                    ["removed deployer-web-green (v2, running), which was not serving"],
                    [OLD_RULE], ("deployer-web-blue", None)),
    "during-health": ([OLD_RULE], [*PREPARE_BRIDGE, *STOP_GREEN],
                      ["removed deployer-web-green (v2, running), which was not serving"],
                      [OLD_RULE], ("deployer-web-blue", None)),
    # The shadowed blue rule matches nothing new: green serves, so it stays; the tidy the crash skipped runs.
    "after-flip": ([NEW_RULE, OLD_RULE], [*PREPARE_BRIDGE, CLEANUP, *STOP_BLUE],
                   ["shadowed rules of web removed", "record of web set to green deployer-web-green (v2)",
                    "removed deployer-web-blue (v1, running), which was not serving"],
                   [NEW_RULE], ("deployer-web-green", "deployer-web-blue")),
    "during-drain": ([NEW_RULE], [*PREPARE_BRIDGE, *STOP_BLUE],
                     ["removed deployer-web-blue (v1, running), which was not serving"],
                     [NEW_RULE], ("deployer-web-green", "deployer-web-blue")),
}


@pytest.mark.parametrize("point", list(CRASHES))
def test_reconcile_after_a_killed_deploy_keeps_the_serving_instance_and_removes_the_other(host, monkeypatch,
                                                                                          point):
    at_kill, effects, repairs, rules_after, record_after = CRASHES[point]
    kill_deploy(host, monkeypatch, point)
    assert host.chain() == at_kill
    assert host.running() == ["deployer-web-blue running", "deployer-web-green running"]

    assert host.engine().reconcile("web", actor="cli:ann") == repairs
    assert host.effects == effects  # the traffic never moves: the rules already lead to a running instance
    assert host.trail() == [("reconcile.repair", None, None)] * len(repairs)
    kept = record_after[0]
    assert (host.chain(), host.running(), host.record()) == (rules_after, [f"{kept} running"], record_after)

    host.taken()
    assert host.engine().reconcile("web", actor="cli:ann") == []
    assert host.effects == PREPARE_BRIDGE


def test_reconcile_after_a_switch_of_backends_writes_the_new_rules_first_then_removes_the_old(host):
    host.taken()
    old, new = host.netfilter, FakeNetfilter(host.effects)
    host.netfilter, host.retired = new, old  # the config now names the other backend
    assert host.engine().reconcile("web", actor="cli:ann") == [
        "jumps and chains of web restored", "rules of web pointed at blue 172.18.0.2 (v1)",
        "DEPLOYER-web removed from the previous backend", "the previous backend's base chains removed"]
    assert host.effects == [
        *PREPARE_BRIDGE, BASE,  # the new backend first: it serves before the old one loses anything
        f"restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE} | COMMIT",
        "restore *nat | -D DEPLOYER -j DEPLOYER-web | -F DEPLOYER-web | -X DEPLOYER-web | COMMIT",
        "restore *nat | -D PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER | "
        "-D OUTPUT -m addrtype --dst-type LOCAL -j DEPLOYER | -D POSTROUTING -j DEPLOYER-POSTROUTING | "
        "-F DEPLOYER | -F DEPLOYER-POSTROUTING | -X DEPLOYER | -X DEPLOYER-POSTROUTING | COMMIT"]
    assert [c for c in old.tables["nat"] if c.startswith("DEPLOYER")] == []
    assert host.chain() == [OLD_RULE]
    host.taken()
    assert host.engine().reconcile("web", actor="cli:ann") == []  # nothing left of the old backend
    assert host.effects == PREPARE_BRIDGE


# --- failures that the journal now names alike ---------------------------------------------------------


def test_a_deploy_that_cannot_read_its_record_fails_with_the_error_type_and_changes_nothing(host):
    host.taken()
    (host.tmp_path / "state" / "apps" / "web.json").write_text("{not json")
    with pytest.raises(StateError):
        host.engine().deploy("web", "v2", actor="cli:ann")
    assert host.effects == []
    assert host.trail() == [("deploy.started", None, None), ("deploy.failed", None, "failed")]
    assert host.events[-1]["error_type"] == "StateError"


def test_a_deploy_whose_record_cannot_be_written_after_the_flip_says_it_failed(host, monkeypatch):
    host.taken()
    engine = host.engine()

    def unwritable(state: Any) -> None:
        raise StateError("cannot write web.json: No space left on device")

    monkeypatch.setattr(engine.store, "save", unwritable)
    with pytest.raises(StateError):
        engine.deploy("web", "v2", actor="cli:ann")
    # Traffic is on green already: nothing is undone, and the old instance is left for reconcile to retire.
    assert host.effects == [*PREPARE_BRIDGE, *START_GREEN, *GREEN_PASSES, TAKEOVER]  # the tidy too: reconcile's
    assert host.trail()[-3:] == [("step", "flip", "ok"), ("step", "record", "failed"),
                                 ("deploy.failed", None, "failed")]
    assert host.chain() == [NEW_RULE, OLD_RULE]  # green's rule leads; blue's matches nothing new


# --- mode changes through the same chains ------------------------------------------------------------


REDIRECT = ('-A DEPLOYER-web -p tcp -m tcp --dport 18080 -m comment --comment "web maintenance" '
            "-j REDIRECT --to-ports 8999")


def test_maintenance_on_flips_the_chain_to_the_responder_and_off_flips_it_back(host):
    from deployer.host import modes

    host.taken()
    modes.maintenance_on(host.engine(), "web", actor="cli:ann", message="back soon")
    assert host.chain() == [REDIRECT]
    assert host.effects == [f"restore *nat | -I DEPLOYER-web 1 {REDIRECT.removeprefix('-A DEPLOYER-web ')} | COMMIT",
                            f"restore *nat | :DEPLOYER-web - [0:0] | {REDIRECT} | COMMIT"]
    assert [(e["event"], e["outcome"], e["mode"], e["message"]) for e in host.events if e["_durable"]] == [
        ("maintenance.on", "ok", "maintenance", "back soon")]

    host.taken()
    modes.maintenance_off(host.engine(), "web", actor="cli:ann")
    assert host.effects == ["probe 127.0.0.1:18081",  # the active instance must pass before the page goes
                            f"restore *nat | -I DEPLOYER-web 1 {OLD_RULE.removeprefix('-A DEPLOYER-web ')} | COMMIT",
                            PUT_BACK]
    assert host.chain() == [OLD_RULE]


def test_a_refused_mode_change_is_journaled_failed_with_its_error_type(host):
    from deployer.host import modes

    host.taken()
    host.netfilter.refuse = lambda text: "REDIRECT" in text
    with pytest.raises(RulesError):
        modes.maintenance_on(host.engine(), "web", actor="cli:ann")
    [event] = [e for e in host.events if e["_durable"]]
    assert (event["event"], event["outcome"], event["error_type"]) == ("maintenance.on", "failed", "RulesError")
    assert host.chain() == [OLD_RULE] and host.record() == ("deployer-web-blue", None)


@pytest.mark.parametrize("waits, hooks, ended", [(True, [], "deploy.waiting"),
                                                 (False, ["hook on-failure"], "deploy.failed")])
def test_a_registry_down_before_the_flip_changes_nothing_and_runs_on_failure_only_when_the_job_gives_up(
        host, monkeypatch, waits, hooks, ended):
    host.taken()
    host.hook("on-failure")

    def refused(release, auth=None):
        host.effects.add(f"pull {release.reference}")
        raise RegistryUnavailable(f"cannot pull {release.reference}: connection refused")

    monkeypatch.setattr(host.docker, "pull", refused)
    with pytest.raises(RegistryUnavailable):
        host.engine().deploy("web", "v2", actor="worker", wait_on_transient=waits)
    assert host.effects == [*PREPARE_BRIDGE, "pull 127.0.0.1:5000/web:v2", *hooks]
    assert host.trail()[-1] == (ended, None, "waiting" if waits else "failed")
    assert (host.chain(), host.running(), host.record()) == ([OLD_RULE], ["deployer-web-blue running"],
                                                             ("deployer-web-blue", None))


@pytest.mark.parametrize("waits, hooks, ended", [(True, [], "deploy.waiting"),
                                                 (False, ["hook on-failure"], "deploy.failed")])
def test_a_daemon_down_at_the_first_step_runs_on_failure_only_when_the_job_gives_up(host, monkeypatch, waits, hooks,
                                                                                    ended):
    host.taken()
    host.hook("on-failure")

    def down(filters):
        raise DockerUnavailable("the Docker daemon at unix:///x.sock does not answer (list containers)")

    monkeypatch.setattr(host.docker, "containers", down)
    with pytest.raises(DockerUnavailable):
        host.engine().deploy("web", "v2", actor="worker", wait_on_transient=waits)
    assert [e for e in host.effects if e.startswith("hook")] == hooks
    assert host.trail()[-1] == (ended, None, "waiting" if waits else "failed")
    assert host.chain() == [OLD_RULE]


def test_a_full_disk_under_the_record_after_the_flip_is_a_failure_not_a_wait(host, monkeypatch):
    host.taken()
    host.hook("on-failure")
    engine = host.engine()

    def full(state):
        host.effects.add("save record")
        raise DiskFull("cannot write state/web.json: No space left on device")

    monkeypatch.setattr(engine.store, "save", full)
    with pytest.raises(DiskFull):
        engine.deploy("web", "v2", actor="worker", wait_on_transient=True)
    assert host.effects[-1] == "save record"  # the flip happened: no on-failure, and no `deploy.waiting`
    assert host.trail()[-1] == ("deploy.failed", None, "failed")
