"""The bucket rules as exact iptables-save text, the buckets' ranking, the notify lines, and the hash model."""

import re
from pathlib import Path

import pytest

from deployer import config
from deployer.plan import cluster
from deployer.plan.rules import ChainNames, parse_table
from support.configs import CLUSTER_APPS

NAMES = ChainNames("DEPLOYER")
PATH = Path("/etc/deployer/deployer.toml")
DATA = {
    "apps": {
        **CLUSTER_APPS,
        "local": {
            "image": "r.example/local",
            "ports": [{"external": 8080, "container": 80, "blue": 7001, "green": 7002}],
        },
    },
    "cluster": {
        "address": "198.18.10.100",
        "interface": "eth0",
        "subnet": "198.18.10.0/24",
        "buckets": 6,
        "hash_seed": "0xdeadbeef",
        "host": "h1",
        "hosts": [
            {"name": "h1", "address": "198.18.10.1"},
            {"name": "h2", "address": "198.18.10.2"},
            {"name": "h3", "address": "198.18.10.3"},
        ],
    },
}
LOADED = config.parse(DATA, path=PATH, environ={})
CLUSTER = LOADED.cluster
APPS = list(LOADED.apps.values())

RELAYED_HEAD = [
    "-A DEPLOYER-CLUSTER -i eth0 -p tcp -m pkttype --pkt-type unicast -m connmark --mark 0x4000000/0x4000000 "
    '-m comment --comment "cluster: relayed, of a flow this host took in" -j RETURN',
]
RELAYED_TAIL = [
    "-A DEPLOYER-CLUSTER -i eth0 -m pkttype --pkt-type unicast "
    '-m comment --comment "cluster: relayed, not taken from a peer now" -j DROP',
]
HEAD = [
    *RELAYED_HEAD,
    *RELAYED_TAIL,
    "-A DEPLOYER-CLUSTER -m cluster --cluster-total-nodes 1 --cluster-local-node 1 "
    '--cluster-hash-seed 0x00000000 -m comment --comment "cluster: take the frame in"',
    "-A DEPLOYER-CLUSTER -p tcp -m connmark --mark 0x4000000/0x4000000 -m comment "
    '--comment "cluster: a flow this host took in" -j RETURN',
]
TAIL = '-A DEPLOYER-CLUSTER -m comment --comment "cluster: another host answers" -j DROP'


def test_the_chain_takes_new_flows_of_its_buckets_only_and_keeps_its_own_tcp_flows():
    assert cluster.chain_rules(NAMES, CLUSTER, APPS, cluster.Intake.of({5, 0})) == [
        *HEAD,
        "-A DEPLOYER-CLUSTER -p tcp -m multiport --dports 80,443 -m conntrack --ctstate NEW -m cluster "
        "--cluster-total-nodes 6 --cluster-local-node 1 --cluster-hash-seed 0xdeadbeef "
        "-j CONNMARK --set-xmark 0x4000000/0x4000000",
        "-A DEPLOYER-CLUSTER -p tcp -m multiport --dports 80,443 -m conntrack --ctstate NEW -m cluster "
        "--cluster-total-nodes 6 --cluster-local-node 6 --cluster-hash-seed 0xdeadbeef "
        "-j CONNMARK --set-xmark 0x4000000/0x4000000",
        "-A DEPLOYER-CLUSTER -p tcp -m connmark --mark 0x4000000/0x4000000 -j RETURN",
        "-A DEPLOYER-CLUSTER -p udp -m multiport --dports 53 -m cluster --cluster-total-nodes 6 "
        "--cluster-local-node 1 --cluster-hash-seed 0xdeadbeef -j RETURN",
        "-A DEPLOYER-CLUSTER -p udp -m multiport --dports 53 -m cluster --cluster-total-nodes 6 "
        "--cluster-local-node 6 --cluster-hash-seed 0xdeadbeef -j RETURN",
        TAIL,
    ]


def test_owning_no_bucket_keeps_the_own_tcp_flows_and_drops_the_rest():
    assert cluster.chain_rules(NAMES, CLUSTER, APPS, cluster.Intake()) == [*HEAD, TAIL]


def test_more_than_15_ports_take_several_multiport_rules():
    many = config.parse(
        {
            **DATA,
            "apps": {
                "web": {
                    "image": "r.example/web",
                    "cluster": True,
                    "ports": [
                        {"external": 1000 + i, "container": 2000 + i, "blue": 3000 + i, "green": 4000 + i}
                        for i in range(16)
                    ],
                }
            },
        },
        path=PATH,
        environ={},
    )
    rules = cluster.chain_rules(NAMES, many.cluster, many.apps.values(), cluster.Intake.of({1}))
    assert [r.split(" -m conntrack")[0].split("--dports ")[1] for r in rules if "multiport" in r] == [
        ",".join(str(1000 + i) for i in range(15)),
        "1015",
    ]


def test_a_bucket_let_go_is_relayed_to_every_peer_and_one_the_host_is_master_of_is_taken_from_a_relay():
    """Bucket 1 was let go (its new SYNs and datagrams copied to h2, ranked next for it, by TEE), bucket 3 is this host's since a
    moment (taken from the peer that relays it, by the frames sent to this host's own MAC), bucket 0 is taken in."""
    node = "-m cluster --cluster-total-nodes 6 --cluster-local-node {} --cluster-hash-seed 0xdeadbeef"
    unicast = "-A DEPLOYER-CLUSTER -i eth0 -p {} -m pkttype --pkt-type unicast -m multiport --dports {}"
    assert cluster.chain_rules(NAMES, CLUSTER, APPS, cluster.Intake.of({0}, relayed_in={3}, relayed_out={1})) == [
        *RELAYED_HEAD,
        f"{unicast.format('tcp', '80,443')} -m conntrack --ctstate NEW {node.format(4)} "
        "-j CONNMARK --set-xmark 0x4000000/0x4000000",
        "-A DEPLOYER-CLUSTER -i eth0 -p tcp -m pkttype --pkt-type unicast -m connmark --mark 0x4000000/0x4000000 "
        "-j RETURN",
        f"{unicast.format('udp', '53')} {node.format(4)} -j RETURN",
        *RELAYED_TAIL,
        *HEAD[2:],
        "-A DEPLOYER-CLUSTER -p tcp -m multiport --dports 80,443 -m conntrack --ctstate NEW "
        f"{node.format(1)} -j CONNMARK --set-xmark 0x4000000/0x4000000",
        "-A DEPLOYER-CLUSTER -p tcp -m connmark --mark 0x4000000/0x4000000 -j RETURN",
        f"-A DEPLOYER-CLUSTER -p udp -m multiport --dports 53 {node.format(1)} -j RETURN",
        "-A DEPLOYER-CLUSTER -p tcp -m multiport --dports 80,443 -m conntrack --ctstate NEW "
        f"{node.format(2)} -j TEE --gateway 198.18.10.2",
        f"-A DEPLOYER-CLUSTER -p udp -m multiport --dports 53 {node.format(2)} -j TEE --gateway 198.18.10.2",
        TAIL,
    ]


def test_the_start_transaction_writes_the_chain_and_inserts_the_jump_first():
    assert cluster.render_ensure(parse_table("", "mangle"), NAMES, CLUSTER, APPS, cluster.Intake()) == "\n".join(
        [
            "*mangle",
            ":DEPLOYER-CLUSTER - [0:0]",
            *HEAD,
            TAIL,
            "-I PREROUTING 1 -d 198.18.10.100/32 -j DEPLOYER-CLUSTER",
            "COMMIT",
            "",
        ]
    )


def test_the_start_transaction_keeps_a_jump_that_is_there():
    saved = (
        "*mangle\n:PREROUTING ACCEPT [0:0]\n:DEPLOYER-CLUSTER - [0:0]\n"
        "-A PREROUTING -d 198.18.10.100/32 -j DEPLOYER-CLUSTER\nCOMMIT\n"
    )
    text = cluster.render_ensure(cluster.parse(saved), NAMES, CLUSTER, APPS, cluster.Intake())
    assert "PREROUTING" not in text


def test_a_node_mask_change_rewrites_the_owned_chain_and_nothing_else():
    text = cluster.render_owned(NAMES, CLUSTER, APPS, cluster.Intake.of({2}))
    lines = text.splitlines()
    assert lines[:2] == ["*mangle", ":DEPLOYER-CLUSTER - [0:0]"] and lines[-1] == "COMMIT"
    assert all(line.startswith("-A DEPLOYER-CLUSTER ") for line in lines[2:-1])
    assert re.findall(r"--cluster-total-nodes 6 --cluster-local-node (\d+) ", text) == ["3", "3"]
    assert "TEE" not in text and "--set-xmark" in text


def test_removal_deletes_the_jump_then_the_chain():
    saved = (
        "*mangle\n:PREROUTING ACCEPT [0:0]\n:DEPLOYER-CLUSTER - [0:0]\n"
        "-A PREROUTING -d 198.18.10.100/32 -j DEPLOYER-CLUSTER\n-A DEPLOYER-CLUSTER -j DROP\nCOMMIT\n"
    )
    assert cluster.render_removal(cluster.parse(saved), NAMES) == "\n".join(
        [
            "*mangle",
            "-D PREROUTING -d 198.18.10.100/32 -j DEPLOYER-CLUSTER",
            "-F DEPLOYER-CLUSTER",
            "-X DEPLOYER-CLUSTER",
            "COMMIT",
            "",
        ]
    )
    assert cluster.render_removal(cluster.parse("*mangle\nCOMMIT\n"), NAMES) is None


def test_each_bucket_has_a_home_host_and_backups_that_spread_a_failed_hosts_buckets():
    assert [cluster.ranking(CLUSTER, b) for b in range(6)] == [
        ["h1", "h2", "h3"],
        ["h2", "h3", "h1"],
        ["h3", "h1", "h2"],
        ["h1", "h3", "h2"],
        ["h2", "h1", "h3"],
        ["h3", "h2", "h1"],
    ]
    assert [cluster.priority(CLUSTER, b, "h1") for b in range(6)] == [200, 190, 195, 200, 195, 190]
    assert cluster.home_buckets(CLUSTER, "h2") == [1, 4]


def test_notify_lines_parse_and_other_lines_do_not():
    assert cluster.parse_notice('INSTANCE "b3" MASTER 200\n') == cluster.Notice(3, "MASTER", 200)
    assert cluster.parse_notice('INSTANCE "b0" FAULT 195') == cluster.Notice(0, "FAULT", 195)
    assert cluster.parse_notice('GROUP "g" MASTER 0') is None
    assert cluster.parse_notice('INSTANCE "web" MASTER 200') is None


def test_a_bucket_is_taken_only_after_the_handover_delay():
    states = {0: "MASTER", 1: "MASTER", 2: "BACKUP"}
    since = {0: 10.0, 1: 10.96, 2: 5.0}
    assert cluster.owned_buckets(states, since, now=11.0, delay=0.05) == {0}
    assert cluster.owned_buckets(states, since, now=11.02, delay=0.05) == {0, 1}


def test_a_bucket_let_go_is_relayed_to_the_peer_ranked_first_for_it_other_than_this_host():
    # rankings: b0 h1 h2 h3, b1 h2 h3 h1, b2 h3 h1 h2, b3 h1 h3 h2, b4 h2 h1 h3, b5 h3 h2 h1
    assert [cluster.relay_target(CLUSTER, b) for b in range(6)] == [
        "198.18.10.2",
        "198.18.10.2",
        "198.18.10.3",
        "198.18.10.3",
        "198.18.10.2",
        "198.18.10.3",
    ]


def test_a_bucket_taken_by_a_host_of_higher_priority_is_relayed_only_by_the_host_ranked_right_after_its_home():
    # h1's rank: b0 first, b1 third, b2 second, b3 first, b4 second, b5 third
    assert [cluster.relays_when_outranked(CLUSTER, b) for b in range(6)] == [False, False, True, False, True, False]


@pytest.mark.parametrize(
    "states, since, releases, now, in_service, steady, owned, relayed_in, relayed_out, next_at",
    [
        # master for the handover delay: taken in; master for less: taken from relays; a steady backup: relays too
        ({0: "MASTER", 1: "MASTER", 2: "BACKUP"}, {0: 9.0, 1: 10.9}, {}, 11.0, True, True, {0}, {1, 2}, set(), 11.15),
        # keepalived just started: no relays of the buckets it is backup of
        ({0: "MASTER", 1: "MASTER", 2: "BACKUP"}, {0: 9.0, 1: 10.9}, {}, 11.0, True, False, {0}, {1}, set(), 11.15),
        # out of service: no bucket taken in, no relay taken
        ({0: "MASTER", 1: "BACKUP"}, {0: 9.0}, {}, 11.0, False, True, set(), set(), set(), None),
        # let go: relayed at once, until the relaying ends
        ({0: "FAULT"}, {}, {0: 10.0}, 10.5, False, True, set(), set(), {0}, 12.3),
        ({0: "FAULT"}, {}, {0: 10.0}, 12.3, False, True, set(), set(), set(), None),
        # a peer of higher priority took it: relayed, and its relays not taken here
        ({0: "BACKUP", 1: "BACKUP"}, {}, {0: 10.0}, 10.1, True, True, set(), {1}, {0}, 12.3),
        # leaving: keepalived has not said FAULT yet, the bucket is relayed all the same
        ({0: "MASTER"}, {0: 1.0}, {0: 10.0}, 10.05, False, True, set(), set(), {0}, 12.3),
        # master again, in service: the release ends, the bucket comes back through the peer's relays
        ({0: "MASTER"}, {0: 10.5}, {0: 10.0}, 10.6, True, True, set(), {0}, set(), 10.75),
    ],
)
def test_the_intake_follows_keepalived_and_each_release(
    states, since, releases, now, in_service, steady, owned, relayed_in, relayed_out, next_at
):
    decision = cluster.decide_intake(
        states, since, releases, now, buckets=4, in_service=in_service, steady=steady, delay=0.25, relay_for=2.3
    )
    assert decision.intake == cluster.Intake.of(owned, relayed_in, relayed_out)
    assert set(decision.releases) == relayed_out
    assert decision.next_at == (pytest.approx(next_at) if next_at is not None else None)


def test_a_bucket_let_go_is_relayed_past_a_failure_detection_and_the_handover_delay():
    assert cluster.relay_seconds(CLUSTER) == pytest.approx(2 * 0.25 + 4 * 0.2)
    assert cluster.relay_seconds(CLUSTER) > 3.6 * CLUSTER.advert_interval + CLUSTER.handover_delay


def test_leaving_is_refused_when_no_peer_would_take_the_buckets():
    assert cluster.leave_problem(CLUSTER, {0: "MASTER", 1: "BACKUP"}) is None
    assert cluster.leave_problem(CLUSTER, {b: "MASTER" for b in range(6)}) == (
        "this host is master of every bucket (6); no other host is healthy to take them"
    )
    assert cluster.leave_problem(CLUSTER, {}) == "keepalived has not reported any bucket yet"


def test_the_hash_spreads_sources_over_all_buckets_and_is_stable():
    sources = [f"198.18.20.{i}" for i in range(1, 129)]
    buckets = [cluster.bucket_of(s, 6, 0xDEADBEEF) for s in sources]
    assert set(buckets) == set(range(6))
    assert all(buckets.count(b) >= 8 for b in range(6))
    assert buckets == [cluster.bucket_of(s, 6, 0xDEADBEEF) for s in sources]
    assert buckets != [cluster.bucket_of(s, 6, 1) for s in sources]


def test_the_hash_model_gives_the_buckets_the_kernel_gave():
    # What xt_cluster answered for these sources in a namespace (one rule per bucket, one datagram per source);
    # tests/integration/test_cluster.py::test_the_hash_model_predicts_the_kernels_buckets checks 64 sources.
    assert [cluster.bucket_of(f"198.18.78.{i}", 32, 0xDEADBEEF) for i in range(10, 16)] == [10, 0, 6, 8, 31, 11]
    assert [cluster.bucket_of(f"198.18.78.{i}", 6, 12345) for i in range(10, 16)] == [0, 4, 0, 1, 1, 4]


def test_flows_are_counted_per_bucket_only_when_this_host_took_them_in():
    lines = [
        "tcp      6 431999 ESTABLISHED src=198.18.20.1 dst=198.18.10.100 sport=40000 dport=80 src=172.24.0.2 "
        "dst=198.18.20.1 sport=8080 dport=40000 [ASSURED] mark=67108864 use=1",
        "tcp      6 431999 ESTABLISHED src=198.18.20.2 dst=198.18.10.100 sport=40000 dport=80 src=172.24.0.2 "
        "dst=198.18.20.2 sport=8080 dport=40000 [ASSURED] mark=0 use=1",
        "tcp      6 110 TIME_WAIT src=198.18.20.3 dst=198.18.10.100 sport=40000 dport=80 src=172.24.0.2 "
        "dst=198.18.20.3 sport=8080 dport=40000 [ASSURED] mark=67108864 use=1",
    ]
    counts = cluster.flows_per_bucket(lines, CLUSTER)
    assert sum(counts.values()) == 2
    assert counts[cluster.bucket_of("198.18.20.1", 6, 0xDEADBEEF)] >= 1
    assert cluster.open_tcp_flows(lines, CLUSTER) == 1


UNICAST = config.parse({**DATA, "cluster": {**DATA["cluster"], "unicast": True}}, path=PATH, environ={}).cluster
VRRP_CHAIN = [
    '-A DEPLOYER-VRRP -s 198.18.10.2/32 -m comment --comment "cluster: VRRP from h2" -j RETURN',
    '-A DEPLOYER-VRRP -s 198.18.10.3/32 -m comment --comment "cluster: VRRP from h3" -j RETURN',
    '-A DEPLOYER-VRRP -m comment --comment "cluster: VRRP from anyone else" -j DROP',
]


def test_with_unicast_vrrp_from_anyone_but_the_other_hosts_is_dropped_on_the_cluster_interface():
    assert cluster.render_vrrp_filter(cluster.parse_filter(""), NAMES, UNICAST) == "\n".join(
        ["*filter", ":DEPLOYER-VRRP - [0:0]", *VRRP_CHAIN, "-I INPUT 1 -i eth0 -p 112 -j DEPLOYER-VRRP", "COMMIT", ""]
    )


def test_the_vrrp_chain_is_rewritten_and_a_jump_that_is_there_kept_as_iptables_save_prints_it():
    saved = (
        "*filter\n:INPUT ACCEPT [0:0]\n:DEPLOYER-VRRP - [0:0]\n-A INPUT -i eth0 -p vrrp -j DEPLOYER-VRRP\n"
        "-A DEPLOYER-VRRP -s 198.18.10.9/32 -j RETURN\nCOMMIT\n"
    )
    assert cluster.render_vrrp_filter(cluster.parse_filter(saved), NAMES, UNICAST) == "\n".join(
        ["*filter", ":DEPLOYER-VRRP - [0:0]", *VRRP_CHAIN, "COMMIT", ""]
    )


def test_a_jump_from_another_interface_is_replaced():
    saved = "*filter\n:INPUT ACCEPT [0:0]\n:DEPLOYER-VRRP - [0:0]\n-A INPUT -i eth9 -p vrrp -j DEPLOYER-VRRP\nCOMMIT\n"
    assert cluster.render_vrrp_filter(cluster.parse_filter(saved), NAMES, UNICAST) == "\n".join(
        [
            "*filter",
            ":DEPLOYER-VRRP - [0:0]",
            *VRRP_CHAIN,
            "-D INPUT -i eth9 -p vrrp -j DEPLOYER-VRRP",
            "-I INPUT 1 -i eth0 -p 112 -j DEPLOYER-VRRP",
            "COMMIT",
            "",
        ]
    )


def test_without_unicast_the_vrrp_filter_is_removed_if_a_previous_start_left_it_and_nothing_is_done_otherwise():
    saved = (
        "*filter\n:INPUT ACCEPT [0:0]\n:DEPLOYER-VRRP - [0:0]\n-A INPUT -i eth0 -p vrrp -j DEPLOYER-VRRP\n"
        '-A DEPLOYER-VRRP -m comment --comment "cluster: VRRP from anyone else" -j DROP\nCOMMIT\n'
    )
    assert cluster.render_vrrp_filter(cluster.parse_filter(saved), NAMES, CLUSTER) == "\n".join(
        ["*filter", "-D INPUT -i eth0 -p vrrp -j DEPLOYER-VRRP", "-F DEPLOYER-VRRP", "-X DEPLOYER-VRRP", "COMMIT", ""]
    )
    assert (
        cluster.render_vrrp_filter(cluster.parse_filter("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"), NAMES, CLUSTER)
        is None
    )
