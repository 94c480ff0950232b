"""The bench's plan: its sizes, its port layout inside 24000-24999, its names and its configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.plan import (
    DATAPATHS,
    DNAT_TARGETS,
    IPTABLES_PATHS,
    IPV6_PATHS,
    NFT_PATHS,
    PINNED_PATHS,
    Ports,
    RunNames,
    app_toml,
    baseline_of,
    deployer_toml,
    filler_chains,
    host_and_port,
    pinning_for,
    plan_for,
    prefix_of_chain,
    round_order,
    tags_for,
    visits,
)
from deployer import config as config_module


def test_quick_plan_is_small_and_full_plan_has_the_issue_defaults():
    quick, full = plan_for(True), plan_for(False)
    assert (quick.deploys, quick.rounds, quick.flips_per_point) == (2, 1, 2)
    assert full.flips_per_point == 16
    assert (full.deploys, full.scale_points) == (20, (1, 10, 100, 1000))
    assert (full.nft_points, full.reconcile_points) == ((1, 10, 100, 1000, 10000), (1, 100, 1000, 10000))
    # quick keeps a point above 100 for each, so a growth figure is still computed
    assert (quick.nft_points, quick.reconcile_points, quick.one_read_per_app_up_to) == (
        (1, 100, 1000),
        (1, 100, 1000),
        100,
    )
    assert plan_for(False, deploys=5, rounds=2).deploys == 5
    assert full.rounds % 2 == 0, "an odd number of rounds leaves the order unbalanced"
    assert tags_for(quick) == ["v1", "v2", "v3"]


def test_data_path_rounds_alternate_their_order():
    paths = ("direct", "dnat", "haproxy")
    assert [round_order(paths, n) for n in range(3)] == [
        ["direct", "dnat", "haproxy"],
        ["haproxy", "dnat", "direct"],
        ["direct", "dnat", "haproxy"],
    ]


def test_every_port_of_every_block_stays_in_the_bench_range():
    for block in range(10):
        ports = Ports.block(block)
        used = [ports.haproxy, ports.nginx, ports.release_receiver, ports.release_registry, ports.release_github]
        used += [ports.filler(i) for i in range(1000)]
        apps = [ports.datapath, ports.scale, ports.release]
        for app in [*apps, *(ports.scenario(s) for s in ("ours", "seed", "stop-start", "naive"))]:
            used += [app.tcp, app.tcp_blue, app.tcp_green, app.udp, app.udp_blue, app.udp_green]
        assert all(ports.base <= p < ports.base + 100 for p in used)
        singles = [p for p in used if p not in {ports.filler(i) for i in range(1000)}]
        assert len(singles) == len(set(singles)), "two uses of one port"
    with pytest.raises(ValueError):
        Ports(24050)
    with pytest.raises(ValueError):
        Ports(25000)


def test_run_names_derive_from_the_prefix():
    names = RunNames("DB1A2B3")
    assert (names.owner, names.network, names.bridge, names.netns_prefix) == (
        "db1a2b3",
        "db1a2b3",
        "br-db1a2b3",
        "db1a2b3",
    )
    assert str(names.scratch) == "/tmp/deployer-bench-DB1A2B3"
    assert prefix_of_chain("DB1A2B3-ours") == "DB1A2B3" and prefix_of_chain("DB1A2B3") == "DB1A2B3"
    assert prefix_of_chain("DT1A2B3-web") is None and prefix_of_chain("DOCKER") is None
    with pytest.raises(ValueError):
        RunNames("DT1A2B3")


def test_the_rendered_config_loads_and_says_what_the_bench_meant(tmp_path: Path):
    names = RunNames("DBABCDE")
    ports = Ports.block(3).scenario("seed")
    text = app_toml("seed", "127.0.0.1:5000/deployer-bench", ports, bind="0.0.0.0", drain_seconds=1.5, stop_timeout=5)
    path = tmp_path / "deployer.toml"
    (tmp_path / "hooks").mkdir()  # a configured hooks folder must exist, as bench_config makes it
    path.write_text(deployer_toml(names, tmp_path / "state", tmp_path / "hooks", [text]))
    config = config_module.load(path)
    assert config.settings.chain_prefix == "DBABCDE" and config.settings.bridge == "br-dbabcde"
    app = config.app("seed")
    assert app.bind == "0.0.0.0" and app.drain_seconds == 1.5 and app.env["DRAIN_TIMEOUT"] == "3"
    assert [(p.protocol, p.external, p.blue, p.green) for p in app.ports] == [
        ("tcp", 24310, 24311, 24312),
        ("udp", 24313, 24314, 24315),
    ]
    assert app.health.path == "/healthz" and app.health.interval == 0.1


def test_stand_in_apps_are_rendered_like_the_deployer_renders_an_app_chain():
    chains = filler_chains(RunNames("DBABCDE"), Ports.block(0), range(2))
    assert chains == {
        "f0000": [
            '-A DBABCDE-f0000 -p tcp -m tcp --dport 24070 -m comment --comment "f0000 blue stand-in" '
            "-j DNAT --to-destination 198.51.100.1:8080"
        ],
        "f0001": [
            '-A DBABCDE-f0001 -p tcp -m tcp --dport 24071 -m comment --comment "f0001 blue stand-in" '
            "-j DNAT --to-destination 198.51.100.2:8080"
        ],
    }


def test_scale_points_are_visited_up_then_down_with_half_the_flips_each_way():
    assert visits((1, 10, 100), 4) == [(1, 2), (10, 2), (100, 2), (100, 2), (10, 2), (1, 2)]
    assert visits((1, 10), 3) == [(1, 2), (10, 2), (10, 1), (1, 1)]
    assert visits((1, 10), 1) == [(1, 1), (10, 1)]


def test_pinned_rounds_put_wrk_on_the_first_core_and_the_container_and_proxies_on_the_second():
    pinning = pinning_for({3, 1, 0}, 4)
    assert (pinning.load, pinning.backend, pinning.skipped) == (0, 1, None)
    assert pinning.as_dict() == {"load_cpu": 0, "backend_cpu": 1, "proxies_cpu": 1}
    assert pinning.wrap(["wrk", "-t1", "http://x/"]) == ["taskset", "-c", "0", "wrk", "-t1", "http://x/"]
    assert pinning_for([5, 2], 1).as_dict() == {"load_cpu": 2, "backend_cpu": 5, "proxies_cpu": 5}


def test_pinned_rounds_are_skipped_on_one_core_or_when_none_are_asked_for_and_say_why():
    one = pinning_for({0}, 4)
    assert (one.load, one.backend) == (None, None)
    assert one.as_dict() == {"skipped": "one core only (CPU 0): wrk and the container cannot be kept apart"}
    assert pinning_for({0, 1}, 0).skipped == "no pinned rounds asked for (--pinned-rounds 0)"


def test_pinned_rounds_measure_paths_of_the_first_set_with_direct_and_a_target_among_them():
    quick, full = plan_for(True), plan_for(False)
    assert (quick.pinned_rounds, quick.pinned_paths) == (1, ("direct", "dnat"))
    assert (full.pinned_rounds, full.pinned_paths) == (4, PINNED_PATHS)
    assert full.pinned_rounds % 2 == 0, "an odd number of rounds leaves the order unbalanced"
    assert plan_for(False, pinned_rounds=0).pinned_rounds == 0 and plan_for(False, rounds=2).pinned_rounds == 4
    for paths in (quick.pinned_paths, full.pinned_paths):
        assert paths[0] == "direct" and set(paths) <= set(IPTABLES_PATHS) and set(paths) & set(DNAT_TARGETS)
    assert set(DNAT_TARGETS) <= set(DATAPATHS)


def test_ipv6_paths_share_the_rounds_of_both_backends_and_are_judged_against_ipv6_direct():
    assert IPV6_PATHS == ("direct6", "dnat6", "dnat6-nft") and set(IPV6_PATHS) <= set(DATAPATHS)
    assert IPTABLES_PATHS == ("direct", "dnat", "dnat-addr", "haproxy", "nginx", "docker", "direct6", "dnat6")
    assert NFT_PATHS == ("direct", "nft", "nft-addr", "direct6", "dnat6-nft")
    assert PINNED_PATHS == ("direct", "dnat", "dnat-addr", "haproxy", "direct6", "dnat6")
    assert {p: baseline_of(p) for p in ("direct", "dnat", "nft", "split", *IPV6_PATHS)} == {
        "direct": "direct",
        "dnat": "direct",
        "nft": "direct",
        "split": "direct",
        "direct6": "direct6",
        "dnat6": "direct6",
        "dnat6-nft": "direct6",
    }
    assert (DNAT_TARGETS["dnat6"], DNAT_TARGETS["dnat6-nft"]) == (
        ", IPv6, against IPv6 direct",
        ", IPv6, nftables backend, against IPv6 direct",
    )
    # Each set with an IPv6 DNAT path measures its direct6 in the same rounds.
    for paths in (IPTABLES_PATHS, NFT_PATHS, PINNED_PATHS):
        assert {baseline_of(p) for p in paths} <= set(paths)
    # The CI smoke stays IPv4 only, as short as before; every full run is dual-stack.
    assert (plan_for(True).ipv6, plan_for(False).ipv6, plan_for(False, ipv6=False).ipv6) == (False, True, False)


def test_a_run_has_ipv6_networks_of_its_own_apart_from_the_machines_and_the_tests():
    import ipaddress

    names = RunNames("DB1A2B3")
    assert (names.subnet6, names.outside6) == ("fd42:be4c:1a2b::/64", "fd42:be4c:1a2b:1::/64")
    assert RunNames("DB0A2B3").subnet6 == "fd42:be4c:a2b::/64"  # written as Docker and the config compress it
    others = [ipaddress.ip_network(n) for n in ("fd00::/64", "fd42:7e57:d0c::/64", "fd42:7e57:a::/64")]
    ours = [ipaddress.ip_network(n) for n in (names.subnet6, names.outside6, RunNames("DB1A2C3").subnet6)]
    assert not any(a.overlaps(b) for a in ours for b in others)
    assert not any(a.overlaps(b) for i, a in enumerate(ours) for b in ours[i + 1 :])


def test_a_dual_stack_config_loads_with_the_runs_ipv6_subnet(tmp_path: Path):
    names = RunNames("DBABCDE")
    (tmp_path / "hooks").mkdir()
    path = tmp_path / "deployer.toml"
    text = app_toml("datapath", "127.0.0.1:5000/deployer-bench", Ports.block(0).datapath)
    path.write_text(deployer_toml(names, tmp_path / "state", tmp_path / "hooks", [text], "nftables", ipv6=True))
    settings = config_module.load(path).settings
    assert (settings.ipv6, settings.ipv6_subnet, settings.backend) == (True, "fd42:be4c:abcd::/64", "nftables")
    path.write_text(deployer_toml(names, tmp_path / "state", tmp_path / "hooks", [text]))
    assert config_module.load(path).settings.ipv6 is False


def test_a_target_is_split_into_what_a_socket_connects_to_for_both_families():
    assert host_and_port("127.0.0.1:24040") == ("127.0.0.1", 24040)
    assert host_and_port("[fd42:be4c:1a2b::2]:8080") == ("fd42:be4c:1a2b::2", 8080)
