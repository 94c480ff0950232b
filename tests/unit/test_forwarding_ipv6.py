"""A forward to the old host's IPv6 address too (`deployer forward APP --to OLD4 --to OLD6 --masquerade`): the
validation, the records old and new, the exact text of each IPv6 rule on both backends, the preflight decisions,
and the order of the effects on a dual-stack host through the engine's hand-written fakes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import InvalidForwarding
from deployer.host.engine import Engine
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.journal import Journal
from deployer.plan import forwarding, rules
from deployer.plan.forwarding import FamilyFacts, ForwardFacts, Peer, Route, Target, check_forward
from deployer.plan.records import AppState
from deployer.plan.rules import ChainNames
from support.configs import FORWARDED_DEMO
from support.engine_fakes import Host
from support.nft_fakes import FakeIptables, FakeRunner
from support.return_path import RESTORE, new_return_mangle

NAMES = ChainNames("DEPLOYER")
OLD, OLD6 = "203.0.113.7", "2001:db8::7"
APP = FORWARDED_DEMO.apps["demo"]
MASQ = forwarding.plan_target(APP, OLD, masquerade=True)
BOTH = forwarding.plan_target(APP, [OLD, OLD6], masquerade=True, ipv6=True)
COMMENT6 = f'-m comment --comment "demo forward {OLD6}"'
EMPTY_FILTER = rules.parse_table(
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "filter"
)
EMPTY_NAT = rules.parse_table("*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", "nat")
# `ip6tables-save -t filter` on a host where Docker's ip6tables option is on: DOCKER-USER first in FORWARD, and
# another app ("api") forwarding already.
DOCKER_FILTER6 = rules.parse_table(
    "\n".join(
        [
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD DROP [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":DEPLOYER-FORWARD - [0:0]",
            ":DOCKER-USER - [0:0]",
            "-A FORWARD -j DOCKER-USER",
            "-A DEPLOYER-FORWARD -d 2001:db8::9/128 -p tcp -m tcp --dport 2000 -m conntrack --ctstate DNAT "
            '-m comment --comment "api forward 2001:db8::9" -j ACCEPT',
            "-A DOCKER-USER -j DEPLOYER-FORWARD",
            "-A DOCKER-USER -j RETURN",
            "COMMIT",
            "",
        ]
    ),
    "filter",
)


def _app(**changes: Any):
    return replace(APP, **changes)


# --- the target ------------------------------------------------------------------------------------------


def test_one_address_of_each_family_in_either_order():
    assert BOTH == forwarding.plan_target(APP, [OLD6, OLD], masquerade=True, ipv6=True)
    assert (BOTH.address, BOTH.address6, BOTH.masquerade) == (OLD, OLD6, True)
    assert BOTH.ports == MASQ.ports
    # An address as the user wrote it is kept as ip6tables-save and nft print it: lower case, zeros folded.
    spelled = forwarding.plan_target(APP, [OLD, "2001:DB8:0:0::7"], masquerade=True, ipv6=True)
    assert spelled.address6 == OLD6
    assert BOTH.twins6 == {OLD: OLD6} and MASQ.twins6 == {}


@pytest.mark.parametrize(
    "addresses, masquerade, ipv6, app, message",
    [
        ([OLD, "203.0.113.8"], True, True, APP, "--to 203.0.113.7 and --to 203.0.113.8: at most one address of each"),
        ([OLD, OLD6, "2001:db8::8"], True, True, APP, "--to 2001:db8::7 and --to 2001:db8::8: at most one address"),
        ([OLD6], True, True, APP, "needs the old host's IPv4 address beside it"),
        ([OLD, "::1"], True, True, APP, "--to ::1 is not the unicast address of another host"),
        ([OLD, "fe80::7"], True, True, APP, "--to fe80::7 is not the unicast address of another host"),
        ([OLD, "ff02::1"], True, True, APP, "--to ff02::1 is not the unicast address of another host"),
        ([OLD, "::ffff:203.0.113.9"], True, True, APP, "is not the unicast address of another host"),
        ([OLD, "2001:db8::7%eth0"], True, True, APP, "an address with a zone is a link.s"),
        ([OLD, OLD6], True, False, APP, r"IPv6 is off on this host \(\[deployer\] ipv6\)"),
        ([OLD, OLD6], True, True, _app(ipv6=False), "app 'demo' has ipv6 = false; it has no IPv6 chain"),
        ([OLD, OLD6], True, True, _app(host_bound=True), "app 'demo' is host-bound"),
    ],
)
def test_ipv6_target_refusals(addresses, masquerade, ipv6, app, message):
    with pytest.raises(InvalidForwarding, match=message) as caught:
        forwarding.plan_target(app, addresses, masquerade=masquerade, ipv6=ipv6)
    assert caught.value.exit_code == 2


def test_the_record_keeps_both_addresses_and_an_old_record_still_reads():
    detail = BOTH.detail(since="2026-12-08T00:00:00Z")
    assert (detail["to"], detail["to6"]) == (OLD, OLD6)
    assert Target.from_detail(detail) == BOTH
    # A record written before forwards named an IPv6 address has no "to6": it reads as an IPv4-only forward.
    old = MASQ.detail(since="2026-12-01T00:00:00Z")
    assert "to6" not in old and Target.from_detail(old) == MASQ and Target.from_detail(old).address6 is None


def test_status_names_both_addresses_or_says_ipv6_clients_are_refused():
    both = AppState("demo", mode="forward", mode_detail=BOTH.detail())
    only4 = AppState("demo", mode="forward", mode_detail=MASQ.detail())
    assert forwarding.status_notes(["mode: forward"], both, dual=True) == [
        f"mode: forward to {OLD} and [{OLD6}] (1000/tcp, 1000/udp, 1443/tcp; masquerading clients)"
    ]
    refused = (
        "IPv6 clients are refused while forwarded: the forward names no IPv6 address of the old host (add --to OLD6)"
    )
    assert forwarding.status_notes(["mode: forward"], only4, dual=True) == [
        f"mode: forward to {OLD} (1000/tcp, 1000/udp, 1443/tcp; masquerading clients)",
        refused,
    ]
    # An IPv4-only host (or an app with ipv6 = false) has no IPv6 clients to speak of.
    assert forwarding.status_notes(["mode: forward"], only4, dual=False) == [
        f"mode: forward to {OLD} (1000/tcp, 1000/udp, 1443/tcp; masquerading clients)"
    ]
    assert forwarding.twins6(both) == {OLD: OLD6} and forwarding.twins6(only4) == {}
    assert forwarding.twins6(AppState("demo", mode_detail=BOTH.detail())) == {}  # serving: no forward


# --- the rules, exact -----------------------------------------------------------------------------------------


def test_the_ipv6_app_chain_dnats_to_the_old_hosts_ipv6_address():
    wanted = forwarding.app_rules(NAMES, "demo", BOTH)
    assert rules.for_ipv6(wanted, BOTH.twins6) == [
        '-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m comment --comment "demo forward 203.0.113.7" '
        f"-j DNAT --to-destination [{OLD6}]:1000",
        '-A DEPLOYER-demo -p udp -m udp --dport 1000 -m comment --comment "demo forward 203.0.113.7" '
        f"-j DNAT --to-destination [{OLD6}]:1000",
        '-A DEPLOYER-demo -p tcp -m tcp --dport 1443 -m comment --comment "demo forward 203.0.113.7" '
        f"-j DNAT --to-destination [{OLD6}]:1443",
    ]
    # Without an IPv6 address the IPv6 chain stays empty: its clients are refused, as before.
    assert rules.for_ipv6(forwarding.app_rules(NAMES, "demo", MASQ), MASQ.twins6) == []


ACCEPT6 = [
    f"-A DEPLOYER-FORWARD -d {OLD6}/128 -p tcp -m tcp --dport 1000 -m conntrack --ctstate DNAT {COMMENT6} -j ACCEPT",
    f"-A DEPLOYER-FORWARD -s {OLD6}/128 -p tcp -m tcp --sport 1000 -m conntrack --ctstate DNAT {COMMENT6} -j ACCEPT",
    f"-A DEPLOYER-FORWARD -d {OLD6}/128 -p udp -m udp --dport 1000 -m conntrack --ctstate DNAT {COMMENT6} -j ACCEPT",
    f"-A DEPLOYER-FORWARD -s {OLD6}/128 -p udp -m udp --sport 1000 -m conntrack --ctstate DNAT {COMMENT6} -j ACCEPT",
    f"-A DEPLOYER-FORWARD -d {OLD6}/128 -p tcp -m tcp --dport 1443 -m conntrack --ctstate DNAT {COMMENT6} -j ACCEPT",
    f"-A DEPLOYER-FORWARD -s {OLD6}/128 -p tcp -m tcp --sport 1443 -m conntrack --ctstate DNAT {COMMENT6} -j ACCEPT",
]
MASQUERADE6 = [
    f"-A DEPLOYER-SNAT -d {OLD6}/128 -p tcp -m tcp --dport 1000 -m conntrack --ctstate DNAT {COMMENT6} -j MASQUERADE",
    f"-A DEPLOYER-SNAT -d {OLD6}/128 -p udp -m udp --dport 1000 -m conntrack --ctstate DNAT {COMMENT6} -j MASQUERADE",
    f"-A DEPLOYER-SNAT -d {OLD6}/128 -p tcp -m tcp --dport 1443 -m conntrack --ctstate DNAT {COMMENT6} -j MASQUERADE",
]
# ip6tables on a Docker 20.10 host with Docker's ip6tables option off, as the deployer runs it: Docker writes
# nothing there, so FORWARD is the kernel's (or the host firewall's), without DOCKER-USER.
EXTRAS6 = "\n".join(
    [
        "*filter",
        ":DEPLOYER-FORWARD - [0:0]",
        *ACCEPT6,
        "-I FORWARD 1 -j DEPLOYER-FORWARD",
        "COMMIT",
        "*nat",
        ":DEPLOYER-SNAT - [0:0]",
        *MASQUERADE6,
        "-A POSTROUTING -j DEPLOYER-SNAT",
        "COMMIT",
        "",
    ]
)


def test_ip6tables_accept_and_masquerade_rules_go_first_in_forward_without_docker_user():
    assert forwarding.accept_rules(NAMES, "demo", BOTH, ipv6=True) == ACCEPT6
    assert forwarding.masquerade_rules(NAMES, "demo", BOTH, ipv6=True) == MASQUERADE6
    assert forwarding.render_extras(EMPTY_FILTER, EMPTY_NAT, NAMES, "demo", BOTH, ipv6=True) == EXTRAS6
    # The IPv4 rules of the same target are unchanged by the IPv6 address.
    assert forwarding.accept_rules(NAMES, "demo", BOTH) == forwarding.accept_rules(NAMES, "demo", MASQ)
    # A forward without an IPv6 address has no IPv6 rules, and removes those an earlier one left.
    assert forwarding.render_extras(EMPTY_FILTER, EMPTY_NAT, NAMES, "demo", MASQ, ipv6=True) is None
    left_filter = rules.parse_table(EXTRAS6.split("*nat")[0].replace("-I FORWARD 1", "-A FORWARD"), "filter")
    left_nat = rules.parse_table("*nat\n" + EXTRAS6.split("*nat\n")[1], "nat")
    assert forwarding.render_extras(left_filter, left_nat, NAMES, "demo", MASQ, ipv6=True) == "\n".join(
        [
            "*filter",
            "-D FORWARD -j DEPLOYER-FORWARD",
            "-F DEPLOYER-FORWARD",
            "-X DEPLOYER-FORWARD",
            "COMMIT",
            "*nat",
            "-D POSTROUTING -j DEPLOYER-SNAT",
            "-F DEPLOYER-SNAT",
            "-X DEPLOYER-SNAT",
            "COMMIT",
            "",
        ]
    )
    assert forwarding.render_extras(left_filter, left_nat, NAMES, "demo", BOTH, ipv6=True) is None


def test_ip6tables_with_docker_user_gets_the_jump_there_as_iptables_does():
    text = forwarding.render_extras(DOCKER_FILTER6, EMPTY_NAT, NAMES, "demo", BOTH, ipv6=True) or ""
    # The jump is in DOCKER-USER already: the chain is rewritten in place, the other app's rule kept.
    assert text.split("*nat")[0].splitlines() == [
        "*filter",
        ":DEPLOYER-FORWARD - [0:0]",
        "-A DEPLOYER-FORWARD -d 2001:db8::9/128 -p tcp -m tcp --dport 2000 -m conntrack --ctstate DNAT "
        '-m comment --comment "api forward 2001:db8::9" -j ACCEPT',
        *ACCEPT6,
        "COMMIT",
    ]
    # Without the jump, it goes first in DOCKER-USER, as iptables' does.
    unjumped = rules.SavedTable({**DOCKER_FILTER6.chains, "DOCKER-USER": ["-A DOCKER-USER -j RETURN"]})
    text = forwarding.render_extras(unjumped, EMPTY_NAT, NAMES, "demo", BOTH, ipv6=True) or ""
    assert "-I DOCKER-USER 1 -j DEPLOYER-FORWARD" in text.splitlines()


def test_the_nftables_backend_writes_the_ipv6_masquerade_in_table_ip6_and_accepts_through_ip6tables():
    writer, ip6tables = FakeRunner(), FakeIptables("ip6tables")
    backend = NftablesBackend(
        writer,
        ip6tables,  # type: ignore[arg-type]
        table="deployer",
        prefix="DEPLOYER",
        reader=FakeRunner(),
        family="ip6",
    )
    backend.restore(EXTRAS6)
    assert writer.ran == [
        "add table ip6 deployer\n"
        "add chain ip6 deployer PREROUTING { type nat hook prerouting priority dstnat - 5; policy accept; }\n"
        "add chain ip6 deployer OUTPUT { type nat hook output priority -105; policy accept; }\n"
        "add chain ip6 deployer POSTROUTING { type nat hook postrouting priority srcnat + 5; policy accept; }\n"
        "add chain ip6 deployer DEPLOYER-SNAT\n"
        "flush chain ip6 deployer DEPLOYER-SNAT\n"
        f'add rule ip6 deployer DEPLOYER-SNAT ip6 daddr {OLD6} tcp dport 1000 ct status dnat masquerade comment "demo forward {OLD6}"\n'
        f'add rule ip6 deployer DEPLOYER-SNAT ip6 daddr {OLD6} udp dport 1000 ct status dnat masquerade comment "demo forward {OLD6}"\n'
        f'add rule ip6 deployer DEPLOYER-SNAT ip6 daddr {OLD6} tcp dport 1443 ct status dnat masquerade comment "demo forward {OLD6}"\n'
        "add rule ip6 deployer POSTROUTING jump DEPLOYER-SNAT\n"
    ]
    assert ip6tables.ran == [
        " | ".join(
            ["ip6tables *filter", ":DEPLOYER-FORWARD - [0:0]", *ACCEPT6, "-I FORWARD 1 -j DEPLOYER-FORWARD", "COMMIT"]
        )
    ]


# --- preflight ------------------------------------------------------------------------------------------------

ON_LINK = Route("unicast", dev="eth1")
READY = ForwardFacts(
    ip_forward=True,
    ip_forward_writable=True,
    route=ON_LINK,
    peer=Peer(True),
    ports={1000: None, 1443: None},
    ipv6=FamilyFacts(Route("unicast", dev="eth1", gateway="2001:db8::1"), Peer(True), {1000: None, 1443: None}),
)


def test_a_ready_ipv6_target_passes_even_through_a_gateway_as_it_is_masqueraded():
    assert check_forward("demo", BOTH, READY, "serving", {}) == []
    # Naming the IPv6 address again, or adding it to an IPv4-only forward of the same host, is no conflict.
    assert check_forward("demo", BOTH, READY, "forward", BOTH.detail()) == []
    assert check_forward("demo", BOTH, READY, "forward", MASQ.detail()) == []
    # Keeping client addresses needs the old host's IPv6 address on a link of this host too.
    keeping = replace(BOTH, masquerade=False)
    assert check_forward("demo", keeping, READY, "serving", {}) == [
        f"{OLD6} is reached through the gateway 2001:db8::1 on eth1, not on a link of its own: keeping client "
        "addresses needs a direct link or a tunnel to the old host, whose replies come back the same way; use "
        "--masquerade over a routed network"
    ]
    on_link = replace(READY, ipv6=replace(READY.ipv6, route=ON_LINK))
    assert check_forward("demo", keeping, on_link, "serving", {}) == []


@pytest.mark.parametrize(
    "ipv6, detail, expected",
    [
        (
            FamilyFacts(Route(None, error="Network is unreachable"), Peer(False)),
            {},
            [f"no route to {OLD6} (Network is unreachable)"],
        ),
        (
            FamilyFacts(Route("local", dev="lo"), Peer(False)),
            {},
            [f"{OLD6} is an address of this host: forwarding to it would loop"],
        ),
        (
            FamilyFacts(ON_LINK, Peer(False), {1000: "no answer within 2s", 1443: "no answer within 2s"}),
            {},
            [
                f"{OLD6} does not answer on eth1: no ICMP echo reply, no neighbour entry",
                f"[{OLD6}]:1000/tcp does not accept connections from this host (no answer within 2s): "
                "is the app running on the old host?",
                f"[{OLD6}]:1443/tcp does not accept connections from this host (no answer within 2s): "
                "is the app running on the old host?",
            ],
        ),
        (
            READY.ipv6,
            {**BOTH.detail(), "to6": "2001:db8::8"},
            ["app 'demo' already forwards IPv6 clients to 2001:db8::8; run `deployer forward demo --off` first"],
        ),
    ],
)
def test_ipv6_preflight_refusals(ipv6, detail, expected):
    facts = replace(READY, ipv6=ipv6)
    assert check_forward("demo", BOTH, facts, "forward" if detail else "serving", detail) == expected


# --- the effects on a dual-stack host ---------------------------------------------------------------------------


class Routing:
    """The new host's routes, sysctls and the old host's answers, as the routing adapter reports them."""

    def __init__(self, effects: list[str]) -> None:
        self.effects = effects
        self.sysctls = {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"}
        self.ip_rules: dict[bool, list[dict[str, Any]]] = {False: [], True: []}  # by family: ipv6?
        self.routes: dict[bool, list[dict[str, Any]]] = {False: [], True: []}  # table 202's

    def route_get(self, address: str) -> Route:
        return Route("unicast", dev="eth1")

    def probe_peer(self, address: str, dev: str | None, timeout: float = 1.0) -> Peer:
        self.effects.append(f"probe {address}")
        return Peer(True, "52:54:00:ab:cd:ef", ("REACHABLE",))

    def link(self, name: str) -> forwarding.Link:
        return forwarding.Link(name, True, True, True, ("203.0.113.7",), ("2001:db8:1::7",))

    def rules(self, ipv6: bool = False) -> list[dict[str, Any]]:
        return list(self.ip_rules[ipv6])

    def table_routes(self, table: int, ipv6: bool = False) -> list[dict[str, Any]]:
        return list(self.routes[ipv6])

    def run(self, command: list[str]) -> None:
        """`ip` as the kernel would take it: the rule and the table's route kept, by family."""
        self.effects.append(" ".join(command))
        ipv6, what, verb = command[1] == "-6", command[2], command[3]
        if (what, verb) == ("rule", "add"):
            self.ip_rules[ipv6].append(OUR_RULE6)
        elif (what, verb) == ("rule", "del"):
            self.ip_rules[ipv6].remove(OUR_RULE6)
        elif (what, verb) == ("route", "replace"):
            self.routes[ipv6] = [{"dst": "default", "gateway": command[6], "dev": command[8]}]
        elif (what, verb) == ("route", "flush"):
            self.routes[ipv6] = []

    def tcp_open(self, address: str, port: int, timeout: float = 2.0) -> str | None:
        return None

    def sysctl(self, key: str) -> str | None:
        return self.sysctls.get(key)

    def sysctl_writable(self, key: str) -> bool:
        return True

    def set_sysctl(self, key: str, value: str) -> None:
        self.effects.append(f"sysctl {key}={value}")
        self.sysctls[key] = value


HEAD = "*nat | :DEPLOYER - [0:0] | :DEPLOYER-POSTROUTING - [0:0] | :DEPLOYER-web - [0:0]"


def forwarding_host(tmp_path: Path, *, dual: bool = True) -> tuple[Host, Engine]:
    host = Host(tmp_path)
    if dual:
        host.dual_stack()
    engine = Engine(
        host.config,
        host.docker,
        host.netfilter,
        routing=Routing(host.effects),  # type: ignore[arg-type]
        prober=host.prober,
        run_hook=host.run_hook,
        journal=Journal([host.events.append], clock=host.clock),
        environ={},
        clock=host.clock,
        sleep=host.clock.sleep,
        netfilter6=host.netfilter6,
        forwarding6=lambda: host.effects.add("ipv6 forwarding checked") or [],
    )
    return host, engine


NEW4, NEW6 = "198.51.100.7", "2001:db8:5::7"
FWD = '-m comment --comment "web forward 198.51.100.7"'
DNAT4 = f"-A DEPLOYER-web -p tcp -m tcp --dport 18080 {FWD} -j DNAT --to-destination {NEW4}:18080"
DNAT6 = f"-A DEPLOYER-web -p tcp -m tcp --dport 18080 {FWD} -j DNAT --to-destination [{NEW6}]:18080"


def _extras(address: str, bits: int, jump: str) -> str:
    comment = f'-m comment --comment "web forward {address}"'
    return " | ".join(
        [
            "*filter",
            ":DEPLOYER-FORWARD - [0:0]",
            f"-A DEPLOYER-FORWARD -d {address}/{bits} -p tcp -m tcp --dport 18080 -m conntrack --ctstate DNAT "
            f"{comment} -j ACCEPT",
            f"-A DEPLOYER-FORWARD -s {address}/{bits} -p tcp -m tcp --sport 18080 -m conntrack --ctstate DNAT "
            f"{comment} -j ACCEPT",
            jump,
            "COMMIT",
            "*nat",
            ":DEPLOYER-SNAT - [0:0]",
            f"-A DEPLOYER-SNAT -d {address}/{bits} -p tcp -m tcp --dport 18080 -m conntrack --ctstate DNAT "
            f"{comment} -j MASQUERADE",
            "-A POSTROUTING -j DEPLOYER-SNAT",
            "COMMIT",
        ]
    )


def test_forward_to_both_addresses_writes_ip6tables_first_and_off_removes_both(tmp_path):
    host, engine = forwarding_host(tmp_path)
    target = engine.forwarder.forward("web", [NEW4, NEW6], masquerade=True, actor="cli:ann")
    assert target.address6 == NEW6
    assert (
        host.taken()
        == [
            f"probe {NEW4}",
            f"probe {NEW6}",
            "ipv6 forwarding checked",  # accept_ra kept before forwarding, as for the instances
            "ip6 restore " + _extras(NEW6, 128, "-I FORWARD 1 -j DEPLOYER-FORWARD"),
            "restore " + _extras(NEW4, 32, "-I FORWARD 1 -j DEPLOYER-FORWARD"),
            "network deployer deployer0 fd6e:3b1d:5e2a:eeb9::/64",
            "route_localnet deployer0",
            "restore " + HEAD + " | -A DEPLOYER-POSTROUTING -s 127.0.0.0/8 -o deployer0 -m comment --comment "
            '"deployer: loopback clients" -j MASQUERADE | -A DEPLOYER -j DEPLOYER-web | -I PREROUTING 1 -m addrtype '
            "--dst-type LOCAL -j DEPLOYER | -I OUTPUT 1 -m addrtype --dst-type LOCAL -j DEPLOYER | -A POSTROUTING -j "
            "DEPLOYER-POSTROUTING | COMMIT",
            "ip6 restore " + HEAD + " | -A DEPLOYER -j DEPLOYER-web | -I PREROUTING 1 -m addrtype --dst-type LOCAL -j "
            "DEPLOYER | -I OUTPUT 1 ! -d ::1/128 -m addrtype --dst-type LOCAL -j DEPLOYER | -A POSTROUTING -j "
            "DEPLOYER-POSTROUTING | COMMIT",
            f"ip6 restore *nat | :DEPLOYER-web - [0:0] | {DNAT6} | COMMIT",
            f"restore *nat | :DEPLOYER-web - [0:0] | {DNAT4} | COMMIT",
        ]
    )
    record = engine.store.load("web")
    assert (record.mode, record.mode_detail["to"], record.mode_detail["to6"]) == ("forward", NEW4, NEW6)
    assert host.netfilter6 is not None and host.netfilter6.list_chain("DEPLOYER-web") == [DNAT6]
    [status] = engine.status("web")
    assert status.rules_match, status.notes
    assert f"mode: forward to {NEW4} and [{NEW6}] (18080/tcp; masquerading clients)" in status.notes
    assert "IPv6: 1 rule, in step with IPv4" in status.notes
    assert f"{DNAT6}\n" in engine.rules_text("web", ipv6=True)  # `deployer rules web --ipv6`: the rule as applied

    # Drift on the IPv6 side alone shows in status and reconcile repairs it.
    host.netfilter6.restore("*filter\n-D FORWARD -j DEPLOYER-FORWARD\nCOMMIT\n*nat\n-F DEPLOYER-web\nCOMMIT\n")
    host.routing_sysctl = engine.forwarder.routing.sysctls  # type: ignore[attr-defined]
    engine.forwarder.routing.sysctls["net/ipv6/conf/all/forwarding"] = "0"  # type: ignore[attr-defined]
    host.taken()
    [status] = engine.status("web")
    assert not status.rules_match
    assert "the forward's IPv6 accept and masquerade rules are missing or changed" in status.notes
    assert "IPv6 forwarding is off" in status.notes
    assert "IPv4 forwarding is off" not in status.notes
    repairs = engine.reconcile("web", actor="cli:ann")
    assert f"accept rules of web's forward to {NEW4} and [{NEW6}] restored" in repairs
    assert f"IPv6 rules of web forwarded to [{NEW6}] again" in repairs
    assert host.netfilter6.list_chain("DEPLOYER-web") == [DNAT6]
    assert "ipv6 forwarding checked" in host.taken()

    # Off: both chains emptied (no local instance), the forwarded IPv6 flows drained and forgotten, both
    # families' accept and masquerade rules gone.
    changes = engine.forwarder.forward_off("web", actor="cli:ann")
    assert changes == [
        f"web no longer forwards to {NEW4} and [{NEW6}]",
        f"accept and masquerade rules for {NEW4} and [{NEW6}] removed",
    ]
    taken = host.taken()
    assert set(taken[:2]) == {
        "ip6 restore *nat | :DEPLOYER-web - [0:0] | COMMIT",
        "restore *nat | :DEPLOYER-web - [0:0] | COMMIT",
    }
    assert f"conntrack -L -f ipv6 -p tcp --orig-port-dst 18080 --reply-src {NEW6} --state ESTABLISHED" in taken
    assert f"conntrack -D -f ipv6 -p tcp --orig-port-dst 18080 --reply-src {NEW6}" in taken
    for netfilter in (host.netfilter, host.netfilter6):
        assert "DEPLOYER-FORWARD" not in netfilter.tables["filter"] and "DEPLOYER-SNAT" not in netfilter.tables["nat"]
        assert netfilter.tables["filter"]["FORWARD"] == [] and netfilter.tables["nat"]["POSTROUTING"] == [
            "-A POSTROUTING -j DEPLOYER-POSTROUTING"
        ]
    assert engine.store.load("web").mode_detail == {}


def test_an_ipv4_only_forward_on_a_dual_stack_host_leaves_the_ipv6_chain_empty_and_says_so(tmp_path):
    host, engine = forwarding_host(tmp_path)
    engine.forwarder.forward("web", [NEW4], masquerade=True, actor="cli:ann")
    taken = host.taken()
    assert not any(line.startswith("ip6 restore *filter") for line in taken)
    assert host.netfilter6 is not None and host.netfilter6.list_chain("DEPLOYER-web") == []
    [status] = engine.status("web")
    assert status.rules_match
    assert (
        "IPv6 clients are refused while forwarded: the forward names no IPv6 address of the old host (add --to OLD6)"
    ) in status.notes
    # Adding the IPv6 address later is a change of the same forward, not a conflict.
    engine.forwarder.forward("web", [NEW4, NEW6], masquerade=True, actor="cli:ann")
    assert host.netfilter6.list_chain("DEPLOYER-web") == [DNAT6]
    # Uninstall takes both families' forwarding chains.
    removed = engine.forwarder.uninstall()
    assert removed == ["forwarding chains DEPLOYER-FORWARD and DEPLOYER-SNAT"]
    assert "DEPLOYER-FORWARD" not in host.netfilter6.tables["filter"]
    assert "DEPLOYER-SNAT" not in host.netfilter6.tables["nat"]


# --- the return path on the old host, over IPv6 ---------------------------------------------------------------

VIA4, NEW6_LINK = "203.0.113.20", "2001:db8:1::20"
PATH6 = forwarding.ReturnPath(VIA4, "eth1", "52:54:00:ab:cd:ef", via6=NEW6_LINK)
EMPTY_MANGLE = rules.parse_table("*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "mangle")


@pytest.mark.parametrize(
    "given, message",
    [
        ([VIA4, NEW6_LINK, "2001:db8:1::21"], "at most one address of each family"),
        ([NEW6_LINK], "--via needs the new host's IPv4 address on the link"),
        ([VIA4, "fe80::20"], "give its global or unique local IPv6 address on the link"),
        ([VIA4, "::1"], "--via ::1 is not the unicast address of another host"),
        ([VIA4, "new-host"], "is not an IPv4 or IPv6 address"),
    ],
)
def test_return_address_refusals(given, message):
    with pytest.raises(InvalidForwarding, match=message):
        forwarding.return_addresses(given)


def test_the_return_record_keeps_the_ipv6_address_and_an_old_one_still_reads():
    assert forwarding.return_addresses([NEW6_LINK, VIA4]) == (VIA4, NEW6_LINK)
    record = PATH6.record()
    assert record["via6"] == NEW6_LINK and forwarding.ReturnPath.from_record(record) == PATH6
    old = replace(PATH6, via6=None).record()
    assert "via6" not in old and forwarding.ReturnPath.from_record(old).via6 is None


def test_ip6tables_mangle_marks_by_the_same_mac_and_restores_in_both_hooks():
    assert forwarding.render_return(EMPTY_MANGLE, NAMES, PATH6, ipv6=True) == "\n".join(
        [*new_return_mangle(NEW6_LINK), ""]
    )
    # A path without an IPv6 address has no IPv6 chains, and removes those an earlier one left.
    assert forwarding.render_return(EMPTY_MANGLE, NAMES, replace(PATH6, via6=None), ipv6=True) is None
    live = rules.parse_table(
        forwarding.render_return(EMPTY_MANGLE, NAMES, PATH6, ipv6=True)
        .replace("-I PREROUTING 1", "-A PREROUTING")
        .replace("-I OUTPUT 1", "-A OUTPUT"),
        "mangle",
    )
    assert forwarding.render_return(live, NAMES, replace(PATH6, via6=None), ipv6=True) == "\n".join(
        [
            "*mangle",
            "-D PREROUTING -j DEPLOYER-RETURN",
            "-F DEPLOYER-RETURN",
            "-X DEPLOYER-RETURN",
            "-D OUTPUT -j DEPLOYER-RETURN-LOCAL",
            "-F DEPLOYER-RETURN-LOCAL",
            "-X DEPLOYER-RETURN-LOCAL",
            "COMMIT",
            "",
        ]
    )


OUR_RULE6 = {"priority": 202, "src": "all", "fwmark": "0x2000000", "fwmask": "0x2000000", "table": "202"}


def test_ip6_route_and_rule_commands_and_their_removal():
    assert forwarding.route_commands(PATH6, [], ipv6=True) == [
        ["ip", "-6", "route", "replace", "default", "via", NEW6_LINK, "dev", "eth1", "table", "202"],
        ["ip", "-6", "rule", "add", "fwmark", "0x2000000/0x2000000", "lookup", "202", "priority", "202"],
    ]
    assert forwarding.route_commands(PATH6, [OUR_RULE6], ipv6=True) == [
        ["ip", "-6", "route", "replace", "default", "via", NEW6_LINK, "dev", "eth1", "table", "202"],
    ]
    assert forwarding.route_commands(replace(PATH6, via6=None), [], ipv6=True) == []
    route6 = {"dst": "default", "gateway": NEW6_LINK, "dev": "eth1"}
    assert forwarding.route_removal_commands(PATH6, [OUR_RULE6], [route6], ipv6=True) == [
        ["ip", "-6", "rule", "del", "fwmark", "0x2000000/0x2000000", "lookup", "202", "priority", "202"],
        ["ip", "-6", "route", "flush", "table", "202"],
    ]


def test_ipv6_flows_that_arrived_before_the_marking_are_forgotten_in_conntracks_ipv6_table():
    assert forwarding.unmarked_flows(PATH6, ["2001:db8:1::7"], ipv6=True) == [
        ["-f", "ipv6", "-p", "tcp", "--orig-dst", "2001:db8:1::7", "--mark", "0/0x2000000", "--state", "SYN_RECV"],
        ["-f", "ipv6", "-p", "udp", "--orig-dst", "2001:db8:1::7", "--mark", "0/0x2000000"],
    ]


def test_parse_link_keeps_global_ipv6_addresses_only():
    data = [
        {
            "ifname": "eth1",
            "flags": ["BROADCAST", "UP", "LOWER_UP"],
            "link_type": "ether",
            "addr_info": [
                {"family": "inet", "local": "203.0.113.7", "scope": "global"},
                {"family": "inet6", "local": "2001:db8:1::7", "scope": "global"},
                {"family": "inet6", "local": "fe80::1", "scope": "link"},
            ],
        }
    ]
    link = forwarding.parse_link("eth1", data)
    assert (link.addresses, link.addresses6) == (("203.0.113.7",), ("2001:db8:1::7",))


def return_facts6(**changes: Any) -> forwarding.ReturnFacts:
    six = forwarding.ReturnFamily(Route("unicast", dev="eth1"), Peer(True, "52:54:00:ab:cd:ef", ("REACHABLE",)), [], [])
    return forwarding.ReturnFacts(
        link=forwarding.Link("eth1", True, True, True),
        route=Route("unicast", dev="eth1"),
        rp_filter_all=0,
        rp_filter_dev=2,
        peer=Peer(True, "52:54:00:ab:cd:ef", ("REACHABLE",)),
        rules=[],
        table_routes=[],
        ipv6=replace(six, **changes),
    )


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, []),
        (
            {"route": Route("unicast", dev="eth0", gateway="2001:db8::1")},
            [
                f"{NEW6_LINK} is not on eth1's link (it is reached through 2001:db8::1 on eth0): the new host must "
                "be a neighbour on eth1, over a layer-2 link or a tunnel"
            ],
        ),
        ({"peer": Peer(False)}, [f"{NEW6_LINK} does not answer on eth1: no ICMP echo reply, no neighbour entry"]),
        (
            {"peer": Peer(True, "52:54:00:00:00:99", ("REACHABLE",))},
            [
                f"{VIA4} and {NEW6_LINK} are not the same host on eth1 (MAC 52:54:00:ab:cd:ef and "
                "52:54:00:00:00:99): both must be the new host's addresses on that link"
            ],
        ),
        (
            {"rules": [{"priority": 202, "src": "all", "table": "100"}]},
            [
                "ip -6 rule 202: from all lookup 100 already uses priority 202: choose others with --priority, "
                "--mark or --table"
            ],
        ),
        (
            {"table_routes": [{"dst": "2001:db8:9::/64", "gateway": "2001:db8:1::1", "dev": "eth1"}]},
            [
                "IPv6 routing table 202 is in use (1 route(s), e.g. 2001:db8:9::/64 via 2001:db8:1::1 dev eth1): "
                "choose another with --table"
            ],
        ),
    ],
)
def test_ipv6_return_preflight(changes, expected):
    assert forwarding.check_return(PATH6, return_facts6(**changes)) == expected


def test_forward_return_over_both_families_on_a_dual_stack_old_host_and_off_removes_both(tmp_path):
    host, engine = forwarding_host(tmp_path)
    path = engine.forwarder.forward_return([VIA4, NEW6_LINK], "eth1", actor="cli:ann")
    assert (path.via, path.via6, path.lladdr) == (VIA4, NEW6_LINK, "52:54:00:ab:cd:ef")
    unmarked = "--mark 0/0x2000000"
    assert host.taken() == [
        f"probe {VIA4}",
        f"probe {NEW6_LINK}",
        # The routes and rules first, both families, so the first marked reply has its way back.
        f"ip -4 route replace default via {VIA4} dev eth1 table 202",
        "ip -4 rule add fwmark 0x2000000/0x2000000 lookup 202 priority 202",
        f"ip -6 route replace default via {NEW6_LINK} dev eth1 table 202",
        "ip -6 rule add fwmark 0x2000000/0x2000000 lookup 202 priority 202",
        "ip6 restore " + " | ".join(new_return_mangle(NEW6_LINK)),
        "restore " + " | ".join(new_return_mangle(VIA4)),
        # Flows that began unmarked are forgotten: to the link's IPv4 address, and to its IPv6 address in
        # conntrack's IPv6 table (no IPv6 twin of an IPv4 filter: conntrack refuses a mismatched family).
        f"conntrack -D -p tcp --orig-dst 203.0.113.7 {unmarked} --state SYN_RECV",
        f"conntrack -D -p udp --orig-dst 203.0.113.7 {unmarked}",
        f"conntrack -D -f ipv6 -p tcp --orig-dst 2001:db8:1::7 {unmarked} --state SYN_RECV",
        f"conntrack -D -f ipv6 -p udp --orig-dst 2001:db8:1::7 {unmarked}",
    ]
    assert engine.forwarder.load_return()["via6"] == NEW6_LINK

    removed = engine.forwarder.forward_return_off(drain=1, actor="cli:ann")
    assert removed == [
        "mangle chains",
        "IPv6 mangle chains",
        "ip rule fwmark 0x2000000/0x2000000 lookup 202 priority 202",
        "the routes of table 202",
        "ip -6 rule fwmark 0x2000000/0x2000000 lookup 202 priority 202",
        "the IPv6 routes of table 202",
    ]
    taken = host.taken()
    # Marking stops first in both families, while marked connections of both drain.
    assert taken[:2] == [
        f"ip6 restore *mangle | :DEPLOYER-RETURN - [0:0] | -A DEPLOYER-RETURN {RESTORE} | COMMIT",
        f"restore *mangle | :DEPLOYER-RETURN - [0:0] | -A DEPLOYER-RETURN {RESTORE} | COMMIT",
    ]
    assert "conntrack -L -f ipv6 -p tcp --mark 0x2000000/0x2000000 --state ESTABLISHED" in taken
    assert host.netfilter6 is not None
    for netfilter in (host.netfilter, host.netfilter6):
        assert not any(chain.startswith("DEPLOYER-RETURN") for chain in netfilter.tables["mangle"])
        assert netfilter.tables["mangle"]["PREROUTING"] == [] and netfilter.tables["mangle"]["OUTPUT"] == []
    assert engine.forwarder.load_return() is None


def test_an_ipv6_return_path_needs_ipv6_on(tmp_path):
    host, engine = forwarding_host(tmp_path, dual=False)
    with pytest.raises(InvalidForwarding, match=r"--via 2001:db8:1::20: IPv6 is off on this host"):
        engine.forwarder.forward_return([VIA4, NEW6_LINK], "eth1", actor="cli:ann")
    assert host.taken() == []
