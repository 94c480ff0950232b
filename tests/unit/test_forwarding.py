"""Forwarding to the old host: rules compared as exact text, `ip` commands exact, preflight decisions."""

from __future__ import annotations

import pytest

from deployer.errors import InvalidForwarding
from deployer.plan import forwarding, rules
from deployer.plan.forwarding import (
    ForwardFacts,
    Link,
    Peer,
    PortTarget,
    ReturnFacts,
    ReturnPath,
    Route,
    Target,
    check_forward,
    check_return,
)
from deployer.plan.records import AppState
from deployer.plan.rules import ChainNames
from support.configs import FORWARDED_DEMO
from support.return_path import RESTORE, mark_rule, new_return_mangle

NAMES = ChainNames("DEPLOYER")
OLD = "203.0.113.7"
NEW = "203.0.113.20"

CONFIG = FORWARDED_DEMO
APP = CONFIG.apps["demo"]
TARGET = forwarding.plan_target(APP, OLD)
MASQ = forwarding.plan_target(APP, OLD, masquerade=True)

# `iptables-save -t filter` on a host running Docker, where another app ("api") already forwards.
FILTER = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DEPLOYER-FORWARD - [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -j DOCKER
-A DEPLOYER-FORWARD -d 203.0.113.9/32 -p tcp -m tcp --dport 2000 -m conntrack --ctstate DNAT -m comment --comment "api forward 203.0.113.9" -j ACCEPT
-A DEPLOYER-FORWARD -s 203.0.113.9/32 -p tcp -m tcp --sport 2000 -m conntrack --ctstate DNAT -m comment --comment "api forward 203.0.113.9" -j ACCEPT
-A DOCKER-USER -j DEPLOYER-FORWARD
-A DOCKER-USER -j RETURN
COMMIT
"""


def table(saved: str, name: str) -> forwarding.SavedTable:
    return rules.parse_table(saved, name)


EMPTY_FILTER = table("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "filter")
EMPTY_NAT = table("*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", "nat")


# --- the target ---------------------------------------------------------------------------------------


def test_every_external_port_goes_to_the_same_number_by_default():
    assert TARGET == Target(
        OLD, False, (PortTarget("tcp", 1000, 1000), PortTarget("udp", 1000, 1000), PortTarget("tcp", 1443, 1443))
    )


def test_port_overrides_by_number_or_by_number_and_protocol():
    target = forwarding.plan_target(APP, OLD, port_specs=["1000=2000", "1000/udp=2001", "1443/tcp=443"])
    assert target.ports == (PortTarget("tcp", 1000, 2000), PortTarget("udp", 1000, 2001), PortTarget("tcp", 1443, 443))


@pytest.mark.parametrize(
    "address, message",
    [
        ("old-host", "is not an IPv4 or IPv6 address"),
        ("203.0.113.300", "is not an IPv4 or IPv6 address"),
        ("127.0.0.1", "not the unicast address of another host"),
        ("0.0.0.0", "not the unicast address of another host"),
        ("224.0.0.5", "not the unicast address of another host"),
    ],
)
def test_bad_addresses_are_refused(address, message):
    with pytest.raises(InvalidForwarding, match=message) as caught:
        forwarding.plan_target(APP, address)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "spec, message",
    [
        ("1000", "must be EXTERNAL=PORT"),
        ("1000=70000", "70000 is not a port number"),
        ("1001=80", r"has no external port 1001 \(it has 1000/tcp, 1000/udp, 1443/tcp\)"),
        ("1443/udp=80", "has no external port 1443/udp"),
    ],
)
def test_bad_port_specs_are_refused(spec, message):
    with pytest.raises(InvalidForwarding, match=message):
        forwarding.plan_target(APP, OLD, port_specs=[spec])


def test_the_target_round_trips_through_the_record():
    detail = MASQ.detail(since="t")
    assert detail == {
        "to": OLD,
        "masquerade": True,
        "since": "t",
        "ports": [
            {"protocol": "tcp", "external": 1000, "to_port": 1000},
            {"protocol": "udp", "external": 1000, "to_port": 1000},
            {"protocol": "tcp", "external": 1443, "to_port": 1443},
        ],
    }
    assert Target.from_detail(detail) == MASQ


def test_status_describes_the_forward_in_place_of_the_bare_mode():
    state = AppState(
        "demo", mode="forward", mode_detail=forwarding.plan_target(APP, OLD, port_specs=["1443=443"]).detail()
    )
    assert forwarding.status_notes(["mode: forward", "drained by alice"], state) == [
        "mode: forward to 203.0.113.7 (1000/tcp, 1000/udp, 1443/tcp->443; keeping client addresses)",
        "drained by alice",
    ]
    assert forwarding.status_notes(["x"], AppState("demo")) == ["x"]


def test_a_deploy_ends_forward_mode_and_leaves_other_modes_alone():
    forwarded = AppState("demo", mode="forward", mode_detail=TARGET.detail())
    assert forwarding.after_promotion(forwarded) == AppState("demo")
    maintenance = AppState("demo", mode="maintenance", mode_detail={"reason": "manual"})
    assert forwarding.after_promotion(maintenance) is maintenance


# --- rules -------------------------------------------------------------------------------------------


def test_the_app_chain_dnats_every_port_to_the_old_host():
    assert forwarding.app_rules(NAMES, "demo", forwarding.plan_target(APP, OLD, port_specs=["1443=443"])) == [
        '-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m comment --comment "demo forward 203.0.113.7" '
        "-j DNAT --to-destination 203.0.113.7:1000",
        '-A DEPLOYER-demo -p udp -m udp --dport 1000 -m comment --comment "demo forward 203.0.113.7" '
        "-j DNAT --to-destination 203.0.113.7:1000",
        '-A DEPLOYER-demo -p tcp -m tcp --dport 1443 -m comment --comment "demo forward 203.0.113.7" '
        "-j DNAT --to-destination 203.0.113.7:443",
    ]


def test_accept_and_masquerade_rules_on_a_host_without_docker():
    assert forwarding.render_extras(
        EMPTY_FILTER,
        EMPTY_NAT,
        NAMES,
        "demo",
        forwarding.plan_target(APP, OLD, masquerade=True, port_specs=["1000/udp=53"]),
    ) == (
        "*filter\n"
        ":DEPLOYER-FORWARD - [0:0]\n"
        "-A DEPLOYER-FORWARD -d 203.0.113.7/32 -p tcp -m tcp --dport 1000 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j ACCEPT\n'
        "-A DEPLOYER-FORWARD -s 203.0.113.7/32 -p tcp -m tcp --sport 1000 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j ACCEPT\n'
        "-A DEPLOYER-FORWARD -d 203.0.113.7/32 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j ACCEPT\n'
        "-A DEPLOYER-FORWARD -s 203.0.113.7/32 -p udp -m udp --sport 53 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j ACCEPT\n'
        "-A DEPLOYER-FORWARD -d 203.0.113.7/32 -p tcp -m tcp --dport 1443 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j ACCEPT\n'
        "-A DEPLOYER-FORWARD -s 203.0.113.7/32 -p tcp -m tcp --sport 1443 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j ACCEPT\n'
        "-I FORWARD 1 -j DEPLOYER-FORWARD\n"
        "COMMIT\n"
        "*nat\n"
        ":DEPLOYER-SNAT - [0:0]\n"
        "-A DEPLOYER-SNAT -d 203.0.113.7/32 -p tcp -m tcp --dport 1000 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j MASQUERADE\n'
        "-A DEPLOYER-SNAT -d 203.0.113.7/32 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j MASQUERADE\n'
        "-A DEPLOYER-SNAT -d 203.0.113.7/32 -p tcp -m tcp --dport 1443 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j MASQUERADE\n'
        "-A POSTROUTING -j DEPLOYER-SNAT\n"
        "COMMIT\n"
    )


def test_on_a_docker_host_other_apps_rules_stay_and_the_jump_is_not_repeated():
    one_port = Target(OLD, False, (PortTarget("tcp", 1000, 1000),))
    assert forwarding.render_extras(table(FILTER, "filter"), EMPTY_NAT, NAMES, "demo", one_port) == (
        "*filter\n"
        ":DEPLOYER-FORWARD - [0:0]\n"
        "-A DEPLOYER-FORWARD -d 203.0.113.9/32 -p tcp -m tcp --dport 2000 -m conntrack --ctstate DNAT "
        '-m comment --comment "api forward 203.0.113.9" -j ACCEPT\n'
        "-A DEPLOYER-FORWARD -s 203.0.113.9/32 -p tcp -m tcp --sport 2000 -m conntrack --ctstate DNAT "
        '-m comment --comment "api forward 203.0.113.9" -j ACCEPT\n'
        "-A DEPLOYER-FORWARD -d 203.0.113.7/32 -p tcp -m tcp --dport 1000 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j ACCEPT\n'
        "-A DEPLOYER-FORWARD -s 203.0.113.7/32 -p tcp -m tcp --sport 1000 -m conntrack --ctstate DNAT "
        '-m comment --comment "demo forward 203.0.113.7" -j ACCEPT\n'
        "COMMIT\n"
    )


def test_the_jump_goes_into_docker_user_when_docker_made_it():
    docker = table(
        FILTER.replace("-A DOCKER-USER -j DEPLOYER-FORWARD\n", "")
        .replace(":DEPLOYER-FORWARD - [0:0]\n", "")
        .replace("-A DEPLOYER-FORWARD", "-A OTHER"),
        "filter",
    )
    text = forwarding.render_extras(docker, EMPTY_NAT, NAMES, "demo", Target(OLD, False, (PortTarget("tcp", 1, 1),)))
    assert "-I DOCKER-USER 1 -j DEPLOYER-FORWARD\n" in text and "-I FORWARD" not in text


def test_nothing_to_do_when_the_rules_are_already_there():
    live = table(FILTER, "filter")
    assert (
        forwarding.render_extras(
            live, EMPTY_NAT, NAMES, "api", Target("203.0.113.9", False, (PortTarget("tcp", 2000, 2000),))
        )
        is None
    )


def test_removal_keeps_other_apps_and_drops_an_emptied_chain_with_its_jumps():
    live = table(FILTER, "filter")
    assert forwarding.render_extras(live, EMPTY_NAT, NAMES, "demo", None) is None
    assert forwarding.render_extras(live, EMPTY_NAT, NAMES, "api", None) == (
        "*filter\n-D DOCKER-USER -j DEPLOYER-FORWARD\n-F DEPLOYER-FORWARD\n-X DEPLOYER-FORWARD\nCOMMIT\n"
    )


def test_an_app_whose_name_starts_like_another_does_not_own_its_rules():
    live = table(FILTER, "filter")
    assert not forwarding.owned_by(live.rules("DEPLOYER-FORWARD")[0], "ap")
    assert forwarding.owned_by(live.rules("DEPLOYER-FORWARD")[0], "api")


def test_teardown_removes_both_shared_chains_and_their_jumps():
    nat = table(
        "*nat\n:POSTROUTING ACCEPT [0:0]\n:DEPLOYER-SNAT - [0:0]\n-A POSTROUTING -j DEPLOYER-SNAT\nCOMMIT\n", "nat"
    )
    assert forwarding.render_extras_teardown(table(FILTER, "filter"), nat, NAMES) == (
        "*filter\n-D DOCKER-USER -j DEPLOYER-FORWARD\n-F DEPLOYER-FORWARD\n-X DEPLOYER-FORWARD\nCOMMIT\n"
        "*nat\n-D POSTROUTING -j DEPLOYER-SNAT\n-F DEPLOYER-SNAT\n-X DEPLOYER-SNAT\nCOMMIT\n"
    )
    assert forwarding.render_extras_teardown(EMPTY_FILTER, EMPTY_NAT, NAMES) is None


# --- the return path ---------------------------------------------------------------------------------

PATH = ReturnPath(NEW, "eth1", "52:54:00:AB:CD:EF")
EMPTY_MANGLE = table("*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "mangle")
MARK_RULE = mark_rule(NEW)


def test_the_mangle_transaction_marks_by_mac_and_restores_in_both_hooks():
    assert forwarding.render_return(EMPTY_MANGLE, NAMES, PATH) == "\n".join([*new_return_mangle(NEW), ""])


def test_on_a_tunnel_the_device_alone_recognises_the_new_host():
    rules = forwarding.return_rules(NAMES, ReturnPath(NEW, "wg0", None, mark=0x100))
    assert rules["DEPLOYER-RETURN"][0] == (
        '-A DEPLOYER-RETURN -i wg0 -m conntrack --ctstate NEW -m comment --comment "deployer: forwarded by '
        '203.0.113.20" -j CONNMARK --set-xmark 0x100/0x100'
    )


def test_flows_that_arrived_before_the_marking_are_forgotten_unless_established():
    assert forwarding.unmarked_flows(
        ReturnPath(NEW, "eth1", None, mark=0x100), ["203.0.113.7", "10.0.0.7", "203.0.113.7"]
    ) == [
        ["-p", "tcp", "--orig-dst", "10.0.0.7", "--mark", "0/0x100", "--state", "SYN_RECV"],
        ["-p", "udp", "--orig-dst", "10.0.0.7", "--mark", "0/0x100"],
        ["-p", "tcp", "--orig-dst", "203.0.113.7", "--mark", "0/0x100", "--state", "SYN_RECV"],
        ["-p", "udp", "--orig-dst", "203.0.113.7", "--mark", "0/0x100"],
    ]
    assert forwarding.unmarked_flows(PATH, []) == []


def live_mangle(mark_rule: bool = True) -> forwarding.SavedTable:
    lines = [
        "*mangle",
        ":PREROUTING ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":DEPLOYER-RETURN - [0:0]",
        ":DEPLOYER-RETURN-LOCAL - [0:0]",
        "-A PREROUTING -j DEPLOYER-RETURN",
        "-A OUTPUT -j DEPLOYER-RETURN-LOCAL",
        *([MARK_RULE] if mark_rule else []),
        f"-A DEPLOYER-RETURN {RESTORE}",
        f"-A DEPLOYER-RETURN-LOCAL {RESTORE}",
        "COMMIT",
    ]
    return table("\n".join(lines) + "\n", "mangle")


def test_off_stops_marking_first_then_removes_everything():
    assert forwarding.render_return(live_mangle(), NAMES, PATH) is None
    assert forwarding.render_return(live_mangle(), NAMES, PATH, mark_new=False) == (
        f"*mangle\n:DEPLOYER-RETURN - [0:0]\n-A DEPLOYER-RETURN {RESTORE}\nCOMMIT\n"
    )
    assert forwarding.render_return(live_mangle(mark_rule=False), NAMES, None) == (
        "*mangle\n-D PREROUTING -j DEPLOYER-RETURN\n-F DEPLOYER-RETURN\n-X DEPLOYER-RETURN\n"
        "-D OUTPUT -j DEPLOYER-RETURN-LOCAL\n-F DEPLOYER-RETURN-LOCAL\n-X DEPLOYER-RETURN-LOCAL\nCOMMIT\n"
    )
    assert forwarding.render_return(EMPTY_MANGLE, NAMES, None) is None


RULES = [
    {"priority": 0, "src": "all", "table": "local"},
    {"priority": 32766, "src": "all", "table": "main"},
    {"priority": 32767, "src": "all", "table": "default"},
]
OUR_RULE = {"priority": 202, "src": "all", "fwmark": "0x2000000", "fwmask": "0x2000000", "table": "202"}
OUR_ROUTE = {"dst": "default", "gateway": NEW, "dev": "eth1", "flags": []}


def test_route_commands_add_the_table_route_then_the_rule_once():
    assert forwarding.route_commands(PATH, RULES) == [
        ["ip", "-4", "route", "replace", "default", "via", NEW, "dev", "eth1", "table", "202"],
        ["ip", "-4", "rule", "add", "fwmark", "0x2000000/0x2000000", "lookup", "202", "priority", "202"],
    ]
    assert forwarding.route_commands(PATH, RULES + [OUR_RULE]) == [
        ["ip", "-4", "route", "replace", "default", "via", NEW, "dev", "eth1", "table", "202"]
    ]


def test_removal_commands_drop_the_rule_then_flush_the_table():
    assert forwarding.route_removal_commands(PATH, RULES + [OUR_RULE], [OUR_ROUTE]) == [
        ["ip", "-4", "rule", "del", "fwmark", "0x2000000/0x2000000", "lookup", "202", "priority", "202"],
        ["ip", "-4", "route", "flush", "table", "202"],
    ]
    assert forwarding.route_removal_commands(PATH, RULES, []) == []


def test_without_a_record_a_table_is_flushed_only_while_our_rule_points_at_it():
    unrecorded = ReturnPath("", "", None)
    assert forwarding.route_removal_commands(unrecorded, RULES, [OUR_ROUTE]) == []
    assert forwarding.route_removal_commands(unrecorded, RULES + [OUR_RULE], [OUR_ROUTE])[-1] == [
        "ip",
        "-4",
        "route",
        "flush",
        "table",
        "202",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (("new-host", "eth1", 0x2000000, 202, 202), "is not an IPv4 or IPv6 address"),
        ((NEW, "eth1; reboot", 0x2000000, 202, 202), "is not an interface name"),
        ((NEW, "eth1", 0x3000000, 202, 202), "must be a single bit"),
        ((NEW, "eth1", 0x2000000, 254, 202), "other than 253, 254 and 255"),
        ((NEW, "eth1", 0x2000000, 202, 32766), "from 1 to 32765"),
    ],
)
def test_bad_return_arguments_are_refused(args, message):
    with pytest.raises(InvalidForwarding, match=message):
        forwarding.check_return_arguments(*args)


# --- preflight -----------------------------------------------------------------------------------------

ON_LINK = Route("unicast", dev="eth1", source="203.0.113.20")
ANSWERS = Peer(echo=True, lladdr="52:54:00:11:22:33", state=("REACHABLE",))


def forward_facts(**changes) -> ForwardFacts:
    facts = {
        "ip_forward": False,
        "ip_forward_writable": True,
        "route": ON_LINK,
        "peer": ANSWERS,
        "ports": {1000: None, 1443: None},
    }
    return ForwardFacts(**{**facts, **changes})


def test_a_ready_host_passes():
    assert check_forward("demo", TARGET, forward_facts(), "serving", {}) == []


def test_forwarding_again_to_the_same_host_is_a_repair_not_a_conflict():
    assert check_forward("demo", TARGET, forward_facts(), "forward", TARGET.detail()) == []


@pytest.mark.parametrize(
    "changes, mode, detail, expected",
    [
        (
            {"route": Route("local", dev="lo")},
            "serving",
            {},
            ["203.0.113.7 is an address of this host: forwarding to it would loop"],
        ),
        (
            {"route": Route(None, error="Network is unreachable")},
            "serving",
            {},
            ["no route to 203.0.113.7 (Network is unreachable)"],
        ),
        ({}, "maintenance", {}, ["app 'demo' is in mode 'maintenance'; leave it first"]),
        (
            {},
            "forward",
            {"to": "203.0.113.8"},
            ["app 'demo' already forwards to 203.0.113.8; run `deployer forward demo --off` first"],
        ),
        (
            {"ip_forward_writable": False},
            "serving",
            {},
            ["IPv4 forwarding is off (net.ipv4.ip_forward=0) and cannot be switched on here"],
        ),
        (
            {"ports": {1000: "Connection refused", 1443: None}},
            "serving",
            {},
            [
                "203.0.113.7:1000/tcp does not accept connections from this host (Connection refused): is the app running on "
                "the old host?"
            ],
        ),
        (
            {
                "peer": Peer(False, None, ("FAILED",)),
                "ports": {1000: "no answer within 2s", 1443: "no answer within 2s"},
            },
            "serving",
            {},
            [
                "203.0.113.7 does not answer on eth1: no ICMP echo reply, no neighbour entry",
                "203.0.113.7:1000/tcp does not accept connections from this host (no answer within 2s): is the app running on "
                "the old host?",
                "203.0.113.7:1443/tcp does not accept connections from this host (no answer within 2s): is the app running on "
                "the old host?",
            ],
        ),
    ],
)
def test_forward_refusals_name_what_is_wrong(changes, mode, detail, expected):
    assert check_forward("demo", TARGET, forward_facts(**changes), mode, detail) == expected


def test_keeping_client_addresses_needs_the_old_host_on_a_link_of_this_host():
    behind = forward_facts(route=Route("unicast", dev="eth0", gateway="198.51.100.1"), peer=Peer(True))
    assert check_forward("demo", TARGET, behind, "serving", {}) == [
        "203.0.113.7 is reached through the gateway 198.51.100.1 on eth0, not on a link of its own: keeping client "
        "addresses needs a direct link or a tunnel to the old host, whose replies come back the same way; use "
        "--masquerade over a routed network"
    ]
    assert check_forward("demo", MASQ, behind, "serving", {}) == []


def test_icmp_filtered_but_arp_answered_counts_as_reachable():
    facts = forward_facts(peer=Peer(False, "52:54:00:11:22:33", ("STALE",)))
    assert check_forward("demo", TARGET, facts, "serving", {}) == []


def return_facts(**changes) -> ReturnFacts:
    facts = {
        "link": Link("eth1", True, True, True),
        "route": Route("unicast", dev="eth1"),
        "rp_filter_all": 0,
        "rp_filter_dev": 2,
        "peer": Peer(True, "52:54:00:ab:cd:ef", ("REACHABLE",)),
        "rules": RULES,
        "table_routes": [],
    }
    return ReturnFacts(**{**facts, **changes})


def test_a_ready_old_host_passes_and_a_repeat_is_not_a_conflict():
    assert check_return(PATH, return_facts()) == []
    again = return_facts(rules=RULES + [OUR_RULE], table_routes=[OUR_ROUTE], recorded=PATH.record())
    assert check_return(PATH, again) == []


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"link": Link("eth1", False)}, ["there is no interface 'eth1'"]),
        ({"link": Link("eth1", True, False, True)}, ["interface eth1 is down"]),
        (
            {"rp_filter_dev": 1},
            [
                "strict reverse-path filtering on eth1 (net.ipv4.conf.eth1.rp_filter=1) drops forwarded "
                "packets, whose client sources route elsewhere: set it to loose, e.g. sysctl -w "
                "net.ipv4.conf.eth1.rp_filter=2"
            ],
        ),
        (
            {"rp_filter_all": 1, "rp_filter_dev": 0},
            [
                "strict reverse-path filtering on eth1 (net.ipv4.conf.all.rp_filter=1) drops forwarded packets, whose client "
                "sources route elsewhere: set it to loose, e.g. sysctl -w net.ipv4.conf.all.rp_filter=2 (and "
                "net.ipv4.conf.eth1.rp_filter to 0 or 2)"
            ],
        ),
        (
            {"route": Route("unicast", dev="eth0", gateway="198.51.100.1")},
            [
                "203.0.113.20 is not on eth1's link (it is reached through 198.51.100.1 on eth0): the new host must be a "
                "neighbour on eth1, over a layer-2 link or a tunnel"
            ],
        ),
        ({"route": Route("local", dev="lo")}, ["203.0.113.20 is an address of this host"]),
        (
            {"peer": Peer(False, None, ("FAILED",))},
            ["203.0.113.20 does not answer on eth1: no ICMP echo reply, no neighbour entry"],
        ),
        (
            {"rules": RULES + [{"priority": 202, "src": "all", "table": "100"}]},
            [
                "ip rule 202: from all lookup 100 already uses priority 202: choose others with --priority, --mark or --table"
            ],
        ),
        (
            {
                "rules": RULES
                + [{"priority": 90, "src": "all", "fwmark": "0x3000000", "fwmask": "0xff000000", "table": "90"}]
            },
            [
                "ip rule 90: from all fwmark 0x3000000/0xff000000 lookup 90 already uses mark 0x2000000: choose others with "
                "--priority, --mark or --table"
            ],
        ),
        (
            {"table_routes": [{"dst": "10.0.0.0/8", "gateway": "198.51.100.1", "dev": "eth0"}]},
            [
                "routing table 202 is in use (1 route(s), e.g. 10.0.0.0/8 via 198.51.100.1 dev eth0): choose another with "
                "--table"
            ],
        ),
        (
            {"recorded": ReturnPath("203.0.113.21", "eth1", None).record()},
            ["replies already return via 203.0.113.21 on eth1; run `deployer forward-return --off` first"],
        ),
    ],
)
def test_return_refusals_name_what_is_wrong(changes, expected):
    assert check_return(PATH, return_facts(**changes)) == expected


# --- what `ip -j` prints ------------------------------------------------------------------------------


def test_parsing_ip_json():
    assert forwarding.parse_route_get(
        [
            {
                "dst": OLD,
                "gateway": "198.51.100.1",
                "dev": "eth0",
                "prefsrc": "198.51.100.9",
                "flags": [],
                "uid": 0,
                "cache": [],
            }
        ]
    ) == Route("unicast", "eth0", "198.51.100.1", "198.51.100.9")
    assert forwarding.parse_route_get([{"type": "local", "dst": OLD, "dev": "lo"}]).kind == "local"
    assert forwarding.parse_link(
        "eth1",
        [
            {
                "ifname": "eth1",
                "flags": ["BROADCAST", "UP", "LOWER_UP"],
                "link_type": "ether",
                "address": "52:54:00:ab:cd:ef",
                "addr_info": [
                    {"family": "inet", "local": "203.0.113.7", "prefixlen": 24},
                    {"family": "inet6", "local": "fe80::1", "prefixlen": 64},
                    {"family": "inet", "local": "10.0.0.7", "prefixlen": 8},
                ],
            }
        ],
    ) == Link("eth1", True, True, True, ("203.0.113.7", "10.0.0.7"))
    assert forwarding.parse_link(
        "wg0", [{"ifname": "wg0", "flags": ["POINTOPOINT", "NOARP", "UP", "LOWER_UP"], "link_type": "none"}]
    ) == Link("wg0", True, True, False)
    assert forwarding.parse_link("eth9", []) == Link("eth9", False)
    assert forwarding.parse_neighbour(NEW, [{"dst": NEW, "lladdr": "52:54:00:ab:cd:ef", "state": ["STALE"]}]) == (
        "52:54:00:ab:cd:ef",
        ("STALE",),
    )
    assert forwarding.parse_neighbour(NEW, [{"dst": NEW, "state": ["INCOMPLETE"]}]) == (None, ("INCOMPLETE",))
