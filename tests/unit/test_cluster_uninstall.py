"""`deployer uninstall` on a cluster host: the shared address first, then the cluster's chains, then the apps.

Without its chain a host takes in every frame sent to the shared address and answers every flow, its peers' too;
with the address gone first it receives none of them, so no moment answers a flow that is another host's.
"""

from __future__ import annotations

from deployer.config import parse
from deployer.host.engine import Engine
from deployer.journal import Journal
from deployer.plan import cluster as plan
from deployer.plan.rules import ChainNames
from support.engine_fakes import Effects, FakeClock, FakeDocker, FakeNetfilter, FakeProber, NoRouting

CLUSTER = {
    "address": "198.18.10.100",
    "interface": "eth0",
    "subnet": "198.18.10.0/24",
    "buckets": 4,
    "hash_seed": 1,
    "host": "h1",
    "unicast": True,
    "hosts": [{"name": "h1", "address": "198.18.10.1"}, {"name": "h2", "address": "198.18.10.2"}],
}

CLUSTER6 = {
    **CLUSTER,
    "address6": "2001:db8:10::100",
    "subnet6": "2001:db8:10::/64",
    "hosts": [{**h, "address6": f"2001:db8:10::{i + 1}"} for i, h in enumerate(CLUSTER["hosts"])],
}


class FakeShared:
    def __init__(self, effects: Effects) -> None:
        self.effects = effects

    def join(self, interface: str, address: str, mac: str, *, arp_mangle: bool, address6: str | None = None) -> None:
        raise AssertionError("uninstall joins nothing")

    def own_mac(self, interface: str) -> str:
        raise AssertionError("uninstall reads no MAC")

    def part(self, interface: str, address: str, mac: str, *, address6: str | None = None) -> None:
        self.effects.add(f"part {address} {mac} {interface}" + (f" {address6}" if address6 else ""))


class FakeNft:
    """The shared IPv6 address's table, there until deleted."""

    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.table = True

    def run(self, text: str) -> str:
        if text.startswith("list tables"):
            return "table ip6 deployer\ntable ip6 deployer-cluster\n" if self.table else "table ip6 deployer\n"
        self.effects.add(f"nft {' '.join(text.split())}")
        self.table = False
        return ""


def cluster_host(tmp_path, effects: Effects, shared: FakeShared | None, nft: FakeNft | None = None):
    (tmp_path / "hooks").mkdir()
    config = parse(
        {
            "deployer": {
                "state_dir": str(tmp_path / "state"),
                "hooks_dir": str(tmp_path / "hooks"),
                "network": "deployer",
                "bridge": "deployer0",
                "ipv6": nft is not None,
            },
            "apps": {
                "web": {
                    "image": "127.0.0.1:5000/web",
                    "cluster": True,
                    "ports": [{"external": 80, "container": 8080, "blue": 8001, "green": 8002}],
                }
            },
            "cluster": CLUSTER6 if nft is not None else CLUSTER,
        },
        path=tmp_path / "deployer.toml",
        environ={},
    )
    netfilter = FakeNetfilter(effects)
    names = ChainNames(config.settings.chain_prefix)
    assert config.cluster is not None
    # What a running agent left: the owned chain and its jump, the VRRP chain and its jump.
    netfilter.restore(
        plan.render_ensure(plan.SavedTable(), names, config.cluster, config.apps.values(), plan.Intake.of({0, 2}))
    )
    netfilter.restore(plan.render_vrrp_filter(plan.SavedTable(), names, config.cluster) or "")
    effects.clear()
    clock = FakeClock()
    engine = Engine(
        config,
        FakeDocker(effects),
        netfilter,
        routing=NoRouting(),
        prober=FakeProber(effects),
        run_hook=lambda *a: None,
        journal=Journal([lambda event: None], clock=clock),
        environ={},
        clock=clock,
        sleep=clock.sleep,
        shared_address=shared,
        cluster_nft=nft,
    )
    return engine, netfilter, names


def test_uninstall_takes_the_shared_address_off_before_the_cluster_chains(tmp_path):
    effects = Effects()
    engine, netfilter, names = cluster_host(tmp_path, effects, FakeShared(effects))
    removed = engine.uninstall(actor="cli:ann")
    assert removed[:3] == [
        "shared address 198.18.10.100 on eth0",
        "mangle chain DEPLOYER-CLUSTER",
        "filter chain DEPLOYER-VRRP",
    ]
    order = [
        line.split(" ")[0] + (" mangle" if "*mangle" in line else " filter" if "*filter" in line else "")
        for line in effects
        if line.startswith(("part", "restore"))
    ]
    assert order[:3] == ["part", "restore mangle", "restore filter"]
    assert effects[0].startswith("part 198.18.10.100 ")
    assert plan.chain(names) not in netfilter.tables["mangle"]
    assert not any(plan.chain(names) in rule for rule in netfilter.tables["mangle"]["PREROUTING"])
    assert plan.vrrp_chain(names) not in netfilter.tables["filter"]
    assert not any(plan.vrrp_chain(names) in rule for rule in netfilter.tables["filter"]["INPUT"])


def test_a_second_uninstall_finds_no_cluster_chain_to_remove(tmp_path):
    effects = Effects()
    engine, netfilter, names = cluster_host(tmp_path, effects, FakeShared(effects))
    engine.uninstall(actor="cli:ann")
    again = engine.uninstall(actor="cli:ann")
    assert again[0] == "shared address 198.18.10.100 on eth0"  # taken off again: parting checks nothing first
    assert not [item for item in again if "DEPLOYER-CLUSTER" in item or "DEPLOYER-VRRP" in item]


def test_uninstall_takes_both_shared_addresses_off_before_the_chains_and_the_ipv6_table(tmp_path):
    effects = Effects()
    nft = FakeNft(effects)
    engine, netfilter, names = cluster_host(tmp_path, effects, FakeShared(effects), nft)
    removed = engine.uninstall(actor="cli:ann")
    assert removed[:5] == [
        "shared address 198.18.10.100 on eth0",
        "shared address 2001:db8:10::100 on eth0",
        "mangle chain DEPLOYER-CLUSTER",
        "filter chain DEPLOYER-VRRP",
        "nftables table ip6 deployer-cluster",
    ]
    assert effects[0] == "part 198.18.10.100 03:00:c6:12:0a:64 eth0 2001:db8:10::100"
    assert "nft add table ip6 deployer-cluster delete table ip6 deployer-cluster" in effects
    assert "nftables table ip6 deployer-cluster" not in engine.uninstall(actor="cli:ann")
