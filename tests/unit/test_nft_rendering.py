"""The nftables table and its transactions, rendered as exact text (plan/nft.py)."""

from __future__ import annotations

from deployer.plan import nft
from deployer.plan.rules import Forward

WEB_BLUE = [Forward("tcp", 18080, "172.18.0.2", 80, "web blue v1"), Forward("udp", 18081, "172.18.0.2", 53, "web")]
WEB_GREEN = [Forward("tcp", 18080, "172.18.0.3", 80, "web green v2"), Forward("udp", 18081, "172.18.0.3", 53, "web")]


def test_the_whole_table_declares_empties_and_fills_everything_in_one_transaction():
    api = [Forward("tcp", 9000, "172.18.0.9", 8080, "api blue v3")]
    assert nft.render_table("deployer", "deployer0", 8999, WEB_BLUE + api, maintenance_ports=[9000]) == (
        "add table ip deployer\n"
        "add map ip deployer tcp-ports { type inet_service : ipv4_addr . inet_service; size 65536; }\n"
        "add map ip deployer udp-ports { type inet_service : ipv4_addr . inet_service; size 65536; }\n"
        "add set ip deployer maintenance-tcp { type inet_service; }\n"
        "add chain ip deployer prerouting { type nat hook prerouting priority dstnat - 5; policy accept; }\n"
        "add chain ip deployer output { type nat hook output priority -105; policy accept; }\n"
        "add chain ip deployer postrouting { type nat hook postrouting priority srcnat + 5; policy accept; }\n"
        "add chain ip deployer serve\n"
        "flush chain ip deployer prerouting\n"
        "flush chain ip deployer output\n"
        "flush chain ip deployer postrouting\n"
        "flush chain ip deployer serve\n"
        "flush map ip deployer tcp-ports\n"
        "flush map ip deployer udp-ports\n"
        "flush set ip deployer maintenance-tcp\n"
        "add rule ip deployer prerouting fib daddr type local jump serve\n"
        "add rule ip deployer output fib daddr type local jump serve\n"
        'add rule ip deployer postrouting ip saddr 127.0.0.0/8 oifname "deployer0" masquerade\n'
        "add rule ip deployer serve tcp dport @maintenance-tcp redirect to :8999\n"
        "add rule ip deployer serve dnat ip to tcp dport map @tcp-ports\n"
        "add rule ip deployer serve dnat ip to udp dport map @udp-ports\n"
        "add element ip deployer tcp-ports { 9000 : 172.18.0.9 . 8080, 18080 : 172.18.0.2 . 80 }\n"
        "add element ip deployer udp-ports { 18081 : 172.18.0.2 . 53 }\n"
        "add element ip deployer maintenance-tcp { 9000 }\n"
    )


def test_a_flip_deletes_the_ports_as_read_and_adds_the_wanted_elements():
    assert nft.render_flip("deployer", WEB_BLUE, WEB_GREEN) == (
        "delete element ip deployer tcp-ports { 18080 }\n"
        "delete element ip deployer udp-ports { 18081 }\n"
        "add element ip deployer tcp-ports { 18080 : 172.18.0.3 . 80 }\n"
        "add element ip deployer udp-ports { 18081 : 172.18.0.3 . 53 }\n"
    )


def test_a_first_flip_only_adds_and_a_flip_to_the_same_elements_is_nothing():
    assert nft.render_flip("deployer", [], WEB_BLUE[:1]) == (
        "add element ip deployer tcp-ports { 18080 : 172.18.0.2 . 80 }\n")
    assert nft.render_flip("deployer", WEB_BLUE, list(reversed(WEB_BLUE))) is None


def test_maintenance_adds_or_deletes_the_apps_tcp_ports_in_the_redirect_set():
    assert nft.render_maintenance("deployer", [18080, 9000], on=True) == (
        "add element ip deployer maintenance-tcp { 9000, 18080 }\n")
    assert nft.render_maintenance("deployer", [18080], on=False) == (
        "delete element ip deployer maintenance-tcp { 18080 }\n")


def test_the_table_is_named_after_the_prefix_and_torn_down_whole():
    assert nft.table_name("DEPLOYER") == "deployer"
    assert nft.render_teardown("deployer") == "delete table ip deployer\n"
