"""The cluster agent's order of effects, through small hand-written fakes: no root, no keepalived."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path

import pytest

from deployer import config
from deployer.errors import ClusterError, LeaveRefused
from deployer.host.cluster import ClusterAgent, ClusterControl, ClusterPaths
from deployer.host.health import ProbeResult
from deployer.journal import Journal
from deployer.plan import cluster as plan
from support.configs import cluster_config


def load(tmp_path: Path, host: str = "h1") -> config.Config:
    hosts = [{"name": "h1", "address": "198.18.10.1"}, {"name": "h2", "address": "198.18.10.2"}]
    cluster = {
        "interface": "eth0",
        "buckets": 4,
        "hash_seed": 1,
        "host": host,
        "handover_delay": 0.05,
        "check_interval": 0.2,
        "hosts": hosts,
    }
    return cluster_config(tmp_path / "deployer.toml", cluster, state_dir=tmp_path / "state")


class Effects(list):
    """Every effect in order, as short strings."""


class FakeNetfilter:
    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.flows: list[str] = []

    def save_table(self, table: str) -> str:
        return ""

    def restore(self, text: str) -> None:
        """`rules [taken in]`, then `in [taken from relays]` and `out [relayed]` when there are any."""
        lines = text.splitlines()

        def buckets(kept) -> list[int]:
            node = r"--cluster-total-nodes 4 --cluster-local-node (\d+)"
            return sorted({int(n) - 1 for line in lines if kept(line) for n in re.findall(node, line)})

        taken = buckets(lambda line: " -i eth0 " not in line and " TEE " not in line)
        relayed_in, relayed_out = buckets(lambda line: " -i eth0 " in line), buckets(lambda line: " TEE " in line)
        self.effects.append(
            f"rules {taken}"
            + (f" in {relayed_in}" if relayed_in else "")
            + (f" out {relayed_out}" if relayed_out else "")
            + (" +jump" if "-I PREROUTING" in text else "")
        )

    def conntrack_list(self, arguments: list[str]) -> list[str]:
        return self.flows

    def disable_tcp_loose(self) -> None:
        self.effects.append("tcp_loose=0")


class FakeKeepalived:
    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.alive = False
        self.leftover = False  # a keepalived a killed agent left running

    def prepare(self, config_text: str) -> None:
        assert "vrrp_instance b3 {" in config_text
        self.effects.append("keepalived config")

    def write_file(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.effects.append(f"{path.name}={text.strip()}")

    def start(self) -> int:
        self.alive = True
        self.effects.append("keepalived start")
        return 4242

    def stop_leftover(self) -> int | None:
        if not self.leftover:
            return None
        self.effects.append("leftover keepalived stopped")
        return 4141

    def running(self) -> bool:
        return self.alive

    def pid(self) -> int | None:
        return 4242 if self.alive else None

    def stop(self, timeout: float = 5.0) -> None:
        self.alive = False
        self.effects.append("keepalived stop")

    def notices(self):
        return iter(())

    def end_notices(self) -> None:
        pass


class FakeShared:
    def __init__(self, effects: Effects) -> None:
        self.effects = effects

    def join(self, interface: str, address: str, mac: str, *, arp_mangle: bool, address6: str | None = None) -> None:
        self.effects.append(f"shared {address} {mac} on {interface}" + (f" and {address6}" if address6 else ""))

    def own_mac(self, interface: str) -> str:
        return "4e:e0:8e:cc:fe:a3"


class FakeNft:
    """The shared IPv6 address's table: `nft table [taken in]` at start, `nft [taken in] out [relayed]` at each
    change."""

    def __init__(self, effects: Effects) -> None:
        self.effects = effects

    def run(self, text: str) -> str:
        taken = re.findall(
            r"^add rule ip6 deployer-cluster buckets tcp dport .* \{ ([\d, ]+) \} ct mark set", text, re.M
        )
        buckets = [int(b) for found in taken for b in found.split(", ")]
        out = sorted({int(b) for b in re.findall(r"seed 0x1 (\d+) dup to 2001:db8:10::2$", text, re.M)})
        self.effects.append(
            ("nft table " if "delete table" in text else "nft ") + str(buckets) + (f" out {out}" if out else "")
        )
        return ""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bed(tmp_path):
    effects = Effects()
    health = {"ok": True}
    clock = Clock()
    events: list[dict] = []
    agent = ClusterAgent(
        load(tmp_path),
        FakeNetfilter(effects),
        FakeKeepalived(effects),
        FakeShared(effects),
        journal=Journal([events.append]),
        clock=clock,
        probe=lambda app: lambda: ProbeResult(health["ok"], "ok" if health["ok"] else "refused"),
    )
    return agent, effects, health, clock, events


def serving(agent, clock, effects) -> None:
    """Started, healthy (three passing checks), master of its home buckets 0 and 2 past the handover delay."""
    agent.start()
    for _ in range(3):
        agent.tick()
    agent.on_notice('INSTANCE "b0" MASTER 200\n')
    agent.on_notice('INSTANCE "b2" MASTER 200\n')
    agent.on_notice('INSTANCE "b1" BACKUP 195\n')
    clock.now += 0.06
    agent.tick()
    effects.clear()


def test_start_joins_the_address_writes_the_chain_owning_nothing_then_starts_keepalived(bed):
    agent, effects, _, _, events = bed
    agent.start()
    assert effects == [
        "tcp_loose=0",
        "shared 198.18.10.100 03:00:c6:12:0a:64 on eth0",
        "keepalived config",
        "track-health=1",
        "track-leave=0",
        "rules [] +jump",
        "keepalived start",
    ]
    assert [(e["event"], e["outcome"]) for e in events if e["_durable"]] == [("cluster.run", "started")]


def test_an_agent_started_again_stops_the_keepalived_left_running_once_its_chain_owns_nothing(bed):
    """A killed agent's keepalived runs on: the new agent drops every bucket first, then stops it, then starts its
    own, so no moment has this host and a peer both answering a bucket, nor two keepalived fighting."""
    agent, effects, _, _, events = bed
    agent.keepalived.leftover = True
    agent.start()
    assert effects[-3:] == ["rules [] +jump", "leftover keepalived stopped", "keepalived start"]
    assert [(e["event"], e["outcome"], e.get("pid")) for e in events if e["_durable"]] == [
        ("cluster.keepalived", "stopped", 4141),
        ("cluster.run", "started", None),
    ]


def test_the_host_serves_only_after_its_health_checks_pass(bed):
    agent, effects, _, _, _ = bed
    agent.start()
    effects.clear()
    agent.tick()
    agent.tick()
    assert effects == []
    agent.tick()
    assert effects == ["track-health=0", "track-leave=0"]


def test_a_bucket_gained_is_taken_in_after_the_handover_delay_and_taken_from_relays_meanwhile(bed):
    agent, effects, _, clock, events = bed
    agent.start()
    for _ in range(3):
        agent.tick()
    effects.clear()
    agent.on_notice('INSTANCE "b0" MASTER 200\n')  # no tick: the notice itself takes the peer's relays
    assert effects == ["rules [] in [0]"]
    assert agent.tick() == pytest.approx(0.05)  # the next round comes when the delay ends
    clock.now += 0.05
    agent.tick()
    assert effects == ["rules [] in [0]", "rules [0]"]
    assert [(e["gained"], e["taking_relays"]) for e in events if e["event"] == "cluster.buckets"] == [
        ([], [0]),
        ([0], []),
    ]


def test_a_backup_takes_relays_only_once_its_keepalived_is_steady(bed):
    """Just started, keepalived may be about to preempt a master another host's loss just elected: its backups take
    no relay until it has run past its first election (4 advert intervals)."""
    agent, effects, _, clock, _ = bed
    agent.start()
    for _ in range(3):
        agent.tick()
    effects.clear()
    agent.on_notice('INSTANCE "b1" BACKUP 195\n')
    agent.on_notice('INSTANCE "b3" BACKUP 195\n')
    assert effects == []
    clock.now += 0.79
    agent.tick()
    assert effects == []
    clock.now += 0.01
    agent.tick()
    assert effects == ["rules [] in [1, 3]"]


def test_a_bucket_lost_to_a_fault_is_let_go_and_relayed_at_once_until_the_relaying_ends(bed):
    agent, effects, _, clock, events = bed
    serving(agent, clock, effects)
    agent.on_notice('INSTANCE "b0" FAULT 200\n')  # no tick: the notice itself lets go
    assert effects == ["rules [2] out [0]"]
    assert agent.tick() == pytest.approx(0.2)  # the check interval: the relaying ends later (0.9 s)
    clock.now += 0.9
    agent.tick()
    assert effects == ["rules [2] out [0]", "rules [2] in [1]"]  # keepalived is steady by now: its backups take relays
    assert [(e["lost"], e["relaying"]) for e in events if e["event"] == "cluster.buckets"][-2:] == [
        ([0], [0]),
        ([], []),
    ]


def test_a_bucket_its_home_takes_back_is_relayed_to_the_home(bed):
    """h2 came back: h1, ranked right after it for bucket 1, held the bucket and relays it to h2."""
    agent, effects, _, clock, _ = bed
    serving(agent, clock, effects)
    agent.on_notice('INSTANCE "b1" MASTER 195\n')
    clock.now += 0.06
    agent.tick()
    effects.clear()
    agent.on_notice('INSTANCE "b1" BACKUP 195\n')
    assert effects == ["rules [0, 2] out [1]"]


def test_an_unhealthy_host_drops_its_buckets_before_it_tells_keepalived(bed):
    agent, effects, health, clock, events = bed
    serving(agent, clock, effects)
    health["ok"] = False
    agent.tick()
    assert effects == []  # one failed probe is not enough
    agent.tick()
    assert effects == ["rules [] out [0, 2]", "track-health=1", "track-leave=0"]
    assert [e["outcome"] for e in events if e["event"] == "cluster.health"] == ["healthy", "unhealthy"]


def test_leaving_relays_the_buckets_before_the_track_file_and_joining_brings_them_back(bed, tmp_path):
    agent, effects, _, clock, _ = bed
    serving(agent, clock, effects)
    paths = ClusterPaths.under(tmp_path / "state")
    paths.intent.write_text("leave\n")
    agent.tick()
    assert effects == ["rules [] out [0, 2]", "track-health=0", "track-leave=1"]
    agent.on_notice('INSTANCE "b0" FAULT 200\n')
    agent.on_notice('INSTANCE "b2" FAULT 200\n')
    assert effects == ["rules [] out [0, 2]", "track-health=0", "track-leave=1"]
    clock.now += 0.9
    agent.tick()
    assert effects[-1] == "rules []"
    effects.clear()
    paths.intent.write_text("join\n")
    agent.tick()
    assert effects == ["track-health=0", "track-leave=0", "rules [] in [1]"]  # a steady backup of bucket 1
    agent.on_notice('INSTANCE "b0" MASTER 200\n')
    clock.now += 0.06
    agent.tick()
    assert effects[-1] == "rules [0] in [1]"


def test_when_keepalived_dies_the_buckets_go_at_once_and_it_is_started_again_once_the_peers_have_them(bed):
    agent, effects, _, clock, events = bed
    serving(agent, clock, effects)
    agent.keepalived.alive = False
    agent.tick()
    assert effects == ["rules [] out [0, 2]"]  # relayed: the peers are elected once they miss three adverts
    status = json.loads(agent.paths.status.read_text())
    assert status["owned"] == [] and status["states"] == {} and status["relaying"] == [0, 2]
    clock.now += 1.9
    agent.tick()
    assert effects == ["rules [] out [0, 2]", "rules []"]
    clock.now += 0.1
    agent.tick()
    assert effects == ["rules [] out [0, 2]", "rules []", "keepalived start"]


def test_stop_drops_the_buckets_before_it_stops_keepalived(bed):
    agent, effects, _, clock, _ = bed
    serving(agent, clock, effects)
    agent.stop()
    assert effects == ["rules []", "keepalived stop"]


def test_the_status_file_says_what_the_chain_takes_in(bed):
    agent, effects, _, clock, _ = bed
    serving(agent, clock, effects)
    status = json.loads(agent.paths.status.read_text())
    assert (status["owned"], status["states"], status["healthy"]) == (
        [0, 2],
        {"0": "MASTER", "1": "BACKUP", "2": "MASTER"},
        True,
    )


def test_leave_is_refused_when_no_peer_would_take_the_buckets_and_nothing_is_asked(bed, tmp_path):
    agent, effects, _, clock, events = bed
    serving(agent, clock, effects)
    for bucket in (1, 3):
        agent.on_notice(f'INSTANCE "b{bucket}" MASTER 195\n')
    clock.now += 0.06
    agent.tick()
    control = ClusterControl(agent.config, agent.netfilter, agent.journal)
    with pytest.raises(LeaveRefused) as refused:
        control.leave(actor="cli:ops", wait=False, timeout=1, force=False)
    assert str(refused.value) == (
        "leaving now would leave buckets with no host: this host is master of every bucket "
        "(4); no other host is healthy to take them; --force leaves anyway"
    )
    assert not agent.paths.intent.exists()
    assert [(e["event"], e["outcome"]) for e in events if e["event"] == "cluster.leave"] == [
        ("cluster.leave", "refused")
    ]
    control.leave(actor="cli:ops", wait=False, timeout=1, force=True)
    assert agent.paths.intent.read_text() == "leave\n"


def test_leave_wait_returns_once_the_buckets_are_gone_and_the_tcp_flows_finished(bed):
    agent, effects, _, clock, events = bed
    serving(agent, clock, effects)
    open_flow = (
        "tcp      6 431999 ESTABLISHED src=198.18.20.1 dst=198.18.10.100 sport=40000 dport=80 "
        "src=172.24.0.2 dst=198.18.20.1 sport=8080 dport=40000 [ASSURED] mark=67108864 use=1"
    )
    agent.netfilter.flows = [open_flow]
    rounds = []

    def sleep(_seconds: float) -> None:
        rounds.append(1)
        clock.now += 0.5
        agent.tick()  # the agent runs beside the command
        if len(rounds) == 3:
            agent.netfilter.flows = []  # the client closed its connection

    control = ClusterControl(agent.config, agent.netfilter, agent.journal, sleep=sleep)
    done = control.leave(actor="cli:ops", wait=True, timeout=60, force=False)
    assert done["owned"] == [] and done["relaying"] == [] and done["open_tcp_flows"] == 0 and len(rounds) == 3
    assert [e["outcome"] for e in events if e["event"] == "cluster.leave"] == ["requested", "left"]


def test_a_slow_health_probe_does_not_hold_up_letting_a_bucket_go(bed):
    agent, effects, _, clock, _ = bed
    serving(agent, clock, effects)
    probing, answer = threading.Event(), threading.Event()

    def slow_probe() -> ProbeResult:
        probing.set()
        answer.wait(5)
        return ProbeResult(True, "ok")

    agent.probe = lambda app: slow_probe
    round_ = threading.Thread(target=agent.tick)
    round_.start()
    assert probing.wait(5)
    notice = threading.Thread(target=agent.on_notice, args=('INSTANCE "b0" FAULT 200\n',))
    notice.start()
    notice.join(1)
    assert effects == ["rules [2] out [0]"], "the lost bucket waited for the probe"
    answer.set()
    round_.join(5)
    notice.join(5)


class TextNetfilter(FakeNetfilter):
    """Keeps each transaction's text, and answers the filter table with what a previous start left."""

    def __init__(self, effects: Effects, saved_filter: str = "") -> None:
        super().__init__(effects)
        self.texts: list[str] = []
        self.saved_filter = saved_filter

    def save_table(self, table: str) -> str:
        return self.saved_filter if table == "filter" else ""

    def restore(self, text: str) -> None:
        self.texts.append(text)
        self.effects.append(text.splitlines()[0] + (" vrrp" if "DEPLOYER-VRRP" in text else ""))


def agent_with(tmp_path, netfilter: TextNetfilter, **cluster) -> ClusterAgent:
    loaded = load(tmp_path)
    loaded = dataclasses.replace(loaded, cluster=dataclasses.replace(loaded.cluster, **cluster))
    return ClusterAgent(
        loaded,
        netfilter,
        FakeKeepalived(netfilter.effects),
        FakeShared(netfilter.effects),
        journal=Journal([]),
        probe=lambda app: lambda: ProbeResult(True, "ok"),
    )


def test_with_unicast_the_vrrp_filter_is_in_place_before_keepalived_starts(tmp_path):
    netfilter = TextNetfilter(Effects())
    agent_with(tmp_path, netfilter, unicast=True).start()
    assert netfilter.effects[-3:] == ["*mangle", "*filter vrrp", "keepalived start"]
    assert netfilter.texts[-1] == "\n".join(
        [
            "*filter",
            ":DEPLOYER-VRRP - [0:0]",
            '-A DEPLOYER-VRRP -s 198.18.10.2/32 -m comment --comment "cluster: VRRP from h2" -j RETURN',
            '-A DEPLOYER-VRRP -m comment --comment "cluster: VRRP from anyone else" -j DROP',
            "-I INPUT 1 -i eth0 -p 112 -j DEPLOYER-VRRP",
            "COMMIT",
            "",
        ]
    )


def test_back_to_multicast_the_start_removes_the_vrrp_filter(tmp_path):
    netfilter = TextNetfilter(
        Effects(),
        "*filter\n:INPUT ACCEPT [0:0]\n:DEPLOYER-VRRP - [0:0]\n-A INPUT -i eth0 -p vrrp -j DEPLOYER-VRRP\nCOMMIT\n",
    )
    agent_with(tmp_path, netfilter).start()
    assert netfilter.effects[-3:] == ["*mangle", "*filter vrrp", "keepalived start"]
    assert netfilter.texts[-1].splitlines()[1:4] == [
        "-D INPUT -i eth0 -p vrrp -j DEPLOYER-VRRP",
        "-F DEPLOYER-VRRP",
        "-X DEPLOYER-VRRP",
    ]


def recording_agent(tmp_path, effects: Effects, owners, **kwargs) -> ClusterAgent:
    """A healthy agent whose owners tables go to `owners`."""
    return ClusterAgent(
        load(tmp_path),
        FakeNetfilter(effects),
        FakeKeepalived(effects),
        FakeShared(effects),
        journal=Journal([]),
        probe=lambda app: lambda: ProbeResult(True, "ok"),
        owners=owners,
        **kwargs,
    )


def test_the_agent_records_each_buckets_owner_when_it_changes_and_a_heartbeat_every_5_s(tmp_path):
    effects, clock, recorded = Effects(), Clock(), []
    agent = recording_agent(tmp_path, effects, lambda **facts: recorded.append(facts), clock=clock)
    serving(agent, clock, effects)
    last = recorded[-1]
    assert (last["host"], last["address"], last["healthy"], last["intent"]) == ("h1", "198.18.10.100", True, "join")
    assert [(o.bucket, o.state, o.owner, o.known) for o in last["owners"]] == [
        (0, "MASTER", "h1", True),
        (1, "BACKUP", "h2", False),
        (2, "MASTER", "h1", True),
        (3, "unknown", "h2", False),
    ]
    count = len(recorded)
    agent.tick()  # nothing changed, and too soon for a heartbeat
    assert len(recorded) == count
    clock.now += 5.0
    agent.tick()
    assert len(recorded) == count + 1
    agent.on_notice('INSTANCE "b2" BACKUP 195\n')  # lost: recorded at the next round, before a heartbeat is due
    agent.tick()
    assert len(recorded) == count + 2
    assert [(o.bucket, o.owner, o.known) for o in recorded[-1]["owners"]][2] == (2, "h2", False)


def test_a_queue_that_hangs_never_holds_up_keepaliveds_notices(tmp_path):
    """The owners table is written by a thread of its own: while that write waits (a locked queue), the agent still
    takes keepalived's notices and lets buckets go."""
    entered, release, recorded = threading.Event(), threading.Event(), []

    def hanging(**facts):
        recorded.append(facts)
        entered.set()
        release.wait(10)

    agent = recording_agent(tmp_path, Effects(), hanging)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert entered.wait(5), "the owners table was never written"
        notice = threading.Thread(target=agent.on_notice, args=('INSTANCE "b0" FAULT 0\n',), daemon=True)
        notice.start()
        notice.join(2)
        assert not notice.is_alive(), "a notice waited on the queue's write"
    finally:
        release.set()
        stop.set()
        runner.join(10)
    assert not runner.is_alive()
    assert recorded[-1]["owners"][0].owner == "h2"  # the table as the stop left it: nothing held here


def ipv6_agent(tmp_path: Path) -> tuple[ClusterAgent, Effects, Clock]:
    """h1 of two dual-stack hosts, with the shared IPv6 address."""
    hosts = [
        {"name": "h1", "address": "198.18.10.1", "address6": "2001:db8:10::1"},
        {"name": "h2", "address": "198.18.10.2", "address6": "2001:db8:10::2"},
    ]
    loaded = config.parse(
        {
            "deployer": {"state_dir": str(tmp_path / "state"), "ipv6": True},
            "apps": {
                "web": {
                    "image": "r.example/web",
                    "cluster": True,
                    "ports": [{"external": 80, "container": 8080, "blue": 8001, "green": 8002}],
                }
            },
            "cluster": {
                "address": "198.18.10.100",
                "subnet": "198.18.10.0/24",
                "address6": "2001:db8:10::100",
                "subnet6": "2001:db8:10::/64",
                "interface": "eth0",
                "buckets": 4,
                "hash_seed": 1,
                "host": "h1",
                "handover_delay": 0.05,
                "hosts": hosts,
            },
        },
        path=tmp_path / "deployer.toml",
        environ={},
    )
    effects, clock = Effects(), Clock()
    agent = ClusterAgent(
        loaded,
        FakeNetfilter(effects),
        FakeKeepalived(effects),
        FakeShared(effects),
        journal=Journal([lambda event: None]),
        clock=clock,
        probe=lambda app: lambda: ProbeResult(True, "ok"),
        nft=FakeNft(effects),
    )
    return agent, effects, clock


def test_with_a_shared_ipv6_address_its_table_comes_before_the_address_and_follows_every_change(tmp_path):
    """The neighbour discovery rewrite is in place before the address is added, so no advertisement for it ever
    carries this host's own MAC; every change of buckets writes the IPv6 table after the IPv4 chain, the same
    buckets in both."""
    agent, effects, clock = ipv6_agent(tmp_path)
    agent.start()
    assert effects[:3] == [
        "tcp_loose=0",
        "nft table []",
        "shared 198.18.10.100 03:00:c6:12:0a:64 on eth0 and 2001:db8:10::100",
    ]
    serving(agent, clock, effects)
    agent.on_notice('INSTANCE "b0" FAULT 0\n')
    assert effects == ["rules [2] out [0]", "nft [2] out [0]"]
    effects.clear()
    agent.stop()
    assert effects[:3] == ["rules []", "nft []", "keepalived stop"]


def test_a_shared_ipv6_address_without_nftables_is_refused(tmp_path):
    loaded = load(tmp_path)
    agent = ClusterAgent(
        loaded, FakeNetfilter(Effects()), FakeKeepalived(Effects()), FakeShared(Effects()), journal=Journal([])
    )
    assert agent.nft is None  # IPv4 alone needs none
    ipv6 = dataclasses.replace(loaded, cluster=dataclasses.replace(loaded.cluster, address6="2001:db8:10::100"))
    with pytest.raises(ClusterError, match="the shared IPv6 address needs nftables"):
        ClusterAgent(
            ipv6, FakeNetfilter(Effects()), FakeKeepalived(Effects()), FakeShared(Effects()), journal=Journal([])
        )


def test_the_status_of_a_dual_stack_host_names_both_addresses_and_counts_the_ipv6_flows_by_their_hash(tmp_path):
    agent, effects, clock = ipv6_agent(tmp_path)
    serving(agent, clock, effects)
    asked: list[list[str]] = []
    flows = {
        "ipv4": [],
        "ipv6": [
            "tcp      6 431999 ESTABLISHED src=2001:db8:20::5 dst=2001:db8:10::100 sport=40000 dport=80 "
            "src=fd6e::2 dst=2001:db8:20::5 sport=8080 dport=40000 [ASSURED] mark=67108864 use=1"
        ],
    }

    def conntrack_list(arguments: list[str]) -> list[str]:
        asked.append(arguments)
        return flows[arguments[1]]

    agent.netfilter.conntrack_list = conntrack_list
    status = ClusterControl(agent.config, agent.netfilter, agent.journal).status()
    assert asked == [["-f", "ipv4", "--orig-dst", "198.18.10.100"], ["-f", "ipv6", "--orig-dst", "2001:db8:10::100"]]
    assert status["addresses"] == ["198.18.10.100", "2001:db8:10::100"]
    bucket = plan.bucket_of6("2001:db8:20::5", 4, 1)
    assert [b["flows"] for b in status["buckets"]] == [int(b == bucket) for b in range(4)]
    assert status["open_tcp_flows"] == 1  # leave --wait waits for it
