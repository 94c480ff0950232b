"""The shared IPv6 address's nftables table as exact text, the neighbour discovery word, and the IPv6 hash model."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from deployer import config
from deployer.plan import cluster, cluster6
from deployer.plan.canary import cluster_node
from deployer.plan.cluster import Intake
from deployer.plan.rules import ChainNames
from support.configs import CLUSTER_APPS

NAMES = ChainNames("DEPLOYER")
DATA = {
    "deployer": {"ipv6": True},
    "apps": CLUSTER_APPS,
    "cluster": {
        "address": "198.18.10.100",
        "interface": "eth1",
        "subnet": "198.18.10.0/24",
        "address6": "fd00:c6::100",
        "subnet6": "fd00:c6::/64",
        "buckets": 6,
        "hash_seed": "0xdeadbeef",
        "host": "h1",
        "hosts": [
            {"name": "h1", "address": "198.18.10.1", "address6": "fd00:c6::1"},
            {"name": "h2", "address": "198.18.10.2", "address6": "fd00:c6::2"},
            {"name": "h3", "address": "198.18.10.3", "address6": "fd00:c6::3"},
        ],
    },
}
LOADED = config.parse(DATA, path=Path("/etc/deployer/deployer.toml"), environ={})
CLUSTER = LOADED.cluster
APPS = list(LOADED.apps.values())
AT = "add rule ip6 deployer-cluster buckets "
HASH = "jhash ip6 saddr mod 6 seed 0xdeadbeef"
MARK = "ct mark & 0x4000000 == 0x4000000"


def test_the_chain_takes_in_its_buckets_takes_relays_relays_what_it_let_go_and_drops_the_rest():
    assert cluster6.chain_rules(CLUSTER, APPS, Intake.of([0, 3], [1], [2])) == [
        f'iifname "eth1" meta pkttype host meta l4proto tcp {MARK} return '
        'comment "cluster: relayed, of a flow this host took in"',
        f'iifname "eth1" meta pkttype host tcp dport {{ 80, 443 }} ct state new {HASH} {{ 1 }} '
        "ct mark set ct mark | 0x4000000",
        f'iifname "eth1" meta pkttype host meta l4proto tcp {MARK} return',
        f'iifname "eth1" meta pkttype host udp dport {{ 53 }} {HASH} {{ 1 }} return',
        'iifname "eth1" meta pkttype host drop comment "cluster: relayed, not taken from a peer now"',
        'meta pkttype set host comment "cluster: take the frame in"',
        'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } return comment "cluster: neighbour discovery"',
        f'meta l4proto tcp {MARK} return comment "cluster: a flow this host took in"',
        f"tcp dport {{ 80, 443 }} ct state new {HASH} {{ 0, 3 }} ct mark set ct mark | 0x4000000",
        f"meta l4proto tcp {MARK} return",
        f"udp dport {{ 53 }} {HASH} {{ 0, 3 }} return",
        f"tcp dport {{ 80, 443 }} ct state new {HASH} 2 dup to fd00:c6::3",  # bucket 2's home, h3
        f"udp dport {{ 53 }} {HASH} 2 dup to fd00:c6::3",
        'drop comment "cluster: another host answers"',
    ]


def test_owning_nothing_keeps_the_own_tcp_flows_and_neighbour_discovery_and_drops_the_rest():
    assert cluster6.chain_rules(CLUSTER, APPS, Intake())[-3:] == [
        'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } return comment "cluster: neighbour discovery"',
        f'meta l4proto tcp {MARK} return comment "cluster: a flow this host took in"',
        'drop comment "cluster: another host answers"',
    ]


def test_the_start_makes_the_table_again_with_the_rewrite_the_chain_and_the_jump_in_one_transaction():
    text = cluster6.render_ensure(NAMES, CLUSTER, APPS, Intake(), "4e:e0:8e:cc:fe:a3")
    lines = text.splitlines()
    assert lines[:5] == [
        "add table ip6 deployer-cluster",
        "delete table ip6 deployer-cluster",
        "add table ip6 deployer-cluster",
        "add chain ip6 deployer-cluster nd { type filter hook output priority filter; policy accept; }",
        "add rule ip6 deployer-cluster nd ip6 saddr fd00:c6::100 icmpv6 type { nd-neighbor-solicit, "
        "nd-neighbor-advert } @th,192,16 { 0x0101, 0x0201 } @th,48,16 0 @th,208,48 set 0x0300c6120a64 "
        '@th,48,16 set 0x08da comment "cluster: neighbour discovery with the multicast MAC"',
    ]
    assert lines[5] == "add chain ip6 deployer-cluster buckets"
    assert lines[6:-2] == [AT + rule for rule in cluster6.chain_rules(CLUSTER, APPS, Intake())]
    assert lines[-2:] == [
        "add chain ip6 deployer-cluster prerouting { type filter hook prerouting priority mangle; policy accept; }",
        "add rule ip6 deployer-cluster prerouting ip6 daddr fd00:c6::100 jump buckets",
    ]


def test_a_change_of_buckets_rewrites_the_bucket_chain_alone():
    text = cluster6.render_owned(NAMES, CLUSTER, APPS, Intake.of([0]))
    assert text.splitlines() == [
        "flush chain ip6 deployer-cluster buckets",
        *(AT + rule for rule in cluster6.chain_rules(CLUSTER, APPS, Intake.of([0]))),
    ]


def test_removal_deletes_the_table_whether_it_is_there_or_not():
    assert cluster6.render_removal(NAMES) == "add table ip6 deployer-cluster\ndelete table ip6 deployer-cluster\n"
    assert cluster6.has_table("table ip deployer\ntable ip6 deployer-cluster\n", NAMES)
    assert not cluster6.has_table("table ip6 deployer\n", NAMES)


def icmpv6_checksum(source: str, destination: str, message: bytes) -> int:
    """RFC 4443's checksum: the one's-complement sum over the pseudo-header and the message."""
    pseudo = (
        ipaddress.IPv6Address(source).packed
        + ipaddress.IPv6Address(destination).packed
        + struct.pack("!I3xB", len(message), 58)
    )
    data = pseudo + message
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize("flags", [0x60, 0xE0, 0x20])
@pytest.mark.parametrize("own", ["4e:e0:8e:cc:fe:a3", "5e:36:e1:40:0e:ad", "02:00:00:00:00:01", "ff:ff:ff:ff:ff:fe"])
def test_the_word_keeps_an_advertisement_checksum_right_when_its_mac_is_rewritten(own, flags):
    """An NA as the host's kernel sends it, checksummed; the rule's rewrite (the MAC at byte 26, the word at 6);
    the checksum in the packet, untouched, is the right one for the rewritten message."""
    target = ipaddress.IPv6Address("fd00:c6::100").packed
    option = bytes([2, 1]) + bytes.fromhex(own.replace(":", ""))
    head = bytes([136, 0]) + b"\0\0" + bytes([flags, 0, 0, 0]) + target + option
    checksum = icmpv6_checksum("fd00:c6::100", "fd00:c6::c8", head)
    sent = head[:2] + struct.pack("!H", checksum) + head[4:]
    word = cluster6.nd_word(own, "03:00:c6:12:0a:64")
    rewritten = sent[:6] + struct.pack("!H", word) + sent[8:26] + bytes.fromhex("0300c6120a64")
    assert icmpv6_checksum("fd00:c6::100", "fd00:c6::c8", rewritten) == 0  # verified: sums to all ones


def test_the_words_the_kernel_took():
    # The members' own MACs and words of runs where a client accepted the rewritten advertisements (docs/ipv6.md).
    assert [
        cluster6.nd_word(own, "03:00:c6:12:0a:64")
        for own in ("4e:e0:8e:cc:fe:a3", "5e:36:e1:40:0e:ad", "d6:9b:ff:e9:92:aa", "52:5b:57:00:35:12")
    ] == [0x08DA, 0x7AAD, 0x95B9, 0x0AF7]


def test_the_ipv6_hash_model_gives_the_buckets_nftables_gave_and_spreads_one_64():
    # What `jhash ip6 saddr mod 6 seed 0x5eed` answered in a namespace, one datagram per source.
    one_64 = [cluster.bucket_of6(f"fd00:c6::{0x200 + i:x}", 6, 0x5EED) for i in range(16)]
    assert one_64 == [1, 5, 4, 4, 2, 4, 0, 5, 4, 3, 1, 1, 2, 0, 4, 4]
    assert [cluster.bucket_of6(s, 6, 0x5EED) for s in ("2001:db8::5", "2001:dbd:5::a", "2001:dc7:f::14")] == [0, 3, 3]
    # The cluster match put all 16 in one bucket: it hashes the first 32 bits (its model is the canary's).
    assert {cluster_node(f"fd00:c6::{0x200 + i:x}", 6, 0x5EED) for i in range(16)} == {1}


def test_flows_are_counted_per_bucket_for_ipv6_sources_by_the_ipv6_hash():
    lines = [
        "tcp      6 431999 ESTABLISHED src=fd00:c6::201 dst=fd00:c6::100 sport=40000 dport=80 src=fd6e::2 "
        "dst=fd00:c6::201 sport=8080 dport=40000 [ASSURED] mark=67108864 use=1",
        "udp      17 29 src=fd00:c6::206 dst=fd00:c6::100 sport=40000 dport=53 src=fd6e::2 dst=fd00:c6::206 "
        "sport=5353 dport=40000 mark=67108864 use=1",
        "udp      17 29 src=fd00:c6::207 dst=fd00:c6::100 sport=40000 dport=53 src=fd6e::2 dst=fd00:c6::207 "
        "sport=5353 dport=40000 mark=0 use=1",
    ]
    seeded = type(CLUSTER)(**{**CLUSTER.__dict__, "hash_seed": 0x5EED})
    assert cluster.flows_per_bucket(lines, seeded) == {0: 1, 1: 0, 2: 0, 3: 0, 4: 0, 5: 1}
    assert cluster.conntrack_filter6(CLUSTER) == ["-f", "ipv6", "--orig-dst", "fd00:c6::100"]
