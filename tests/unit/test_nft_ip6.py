"""The nftables backend's IPv6 table (`table ip6`): the same iptables text as for IPv4, with IPv6 addresses,
translated into the table and back exactly (plan/nft/, family ip6); and both families' tables written in one
transaction (NftablesBackend.restore_pair), through hand-written fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.errors import RulesError
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.plan import hostbound, nft, rules
from deployer.plan.rules import ChainNames
from support.configs import host_bound_app
from support.nft_fakes import FakeIptables, FakeRunner

NAMES = ChainNames("DEPLOYER")
IP6 = nft.IP6

# As ip6tables-save prints the deployer's rules, less what the nftables backend cannot write: an app chain's
# rule without a comment naming its app.
MASQUERADE = (
    '-A DEPLOYER-POSTROUTING -s ::1/128 -o br-x -m comment --comment "deployer: loopback clients" -j MASQUERADE'
)
RANDOM = (
    "-A DEPLOYER-web -p tcp -m tcp --dport 1000 -m statistic --mode random --probability 0.20000000019 "
    '-m comment --comment "web blue v2 canary" -j DNAT --to-destination [fd42:d0c::3]:8080'
)
STICKY = (
    "-A DEPLOYER-web -p tcp -m tcp --dport 1001 -m cluster --cluster-local-nodemask 0x00000001 "
    "--cluster-total-nodes 32 --cluster-hash-seed 0x00000001 "
    '-m comment --comment "web blue v2 canary" -j DNAT --to-destination [fd42:d0c::3]:8080'
)
GREEN_UDP = (
    '-A DEPLOYER-web -p udp -m udp --dport 1000 -m comment --comment "web green v1" '
    "-j DNAT --to-destination [fd42:d0c::2]:8080"
)
GREEN_TCP = (
    '-A DEPLOYER-web -p tcp -m tcp --dport 1001 -m comment --comment "web green v1" '
    "-j DNAT --to-destination [fd42:d0c::2]:8080"
)
BLUE_TCP = GREEN_TCP.replace("green v1", "blue v2").replace("::2]", "::3]")
REDIRECT = (
    '-A DEPLOYER-web -p tcp -m tcp --dport 1002 -m comment --comment "web maintenance" -j REDIRECT --to-ports 9999'
)
SAVED = "\n".join(
    [
        "*nat",
        ":DEPLOYER - [0:0]",
        ":DEPLOYER-POSTROUTING - [0:0]",
        ":DEPLOYER-web - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER",
        "-A DEPLOYER -j DEPLOYER-web",
        MASQUERADE,
        RANDOM,
        STICKY,
        GREEN_UDP,
        GREEN_TCP,
        "COMMIT",
        "",
    ]
)


def _translate(text: str, live: nft.Table, whole: bool = True) -> nft.Translation:
    return nft.translate_restore(text, "deployer", "DEPLOYER", live, whole=whole, family=IP6)


def _ports(app: str) -> list[nft.Key]:
    return {"web": [("tcp", 1002), ("udp", 1000), ("tcp", 1001)]}.get(app, [])


def test_the_ip6_table_is_declared_with_ipv6_instances_and_looks_up_through_dnat_ip6():
    assert nft.base_declarations("deployer", IP6) == [
        "add table ip6 deployer",
        "add chain ip6 deployer PREROUTING { type nat hook prerouting priority dstnat - 5; policy accept; }",
        "add chain ip6 deployer OUTPUT { type nat hook output priority -105; policy accept; }",
        "add chain ip6 deployer POSTROUTING { type nat hook postrouting priority srcnat + 5; policy accept; }",
    ]
    assert nft.map_declarations("deployer", IP6)[1:] == [
        "add map ip6 deployer tcp-ports { type inet_service : ipv6_addr . inet_service; size 65536; }",
        "add map ip6 deployer udp-ports { type inet_service : ipv6_addr . inet_service; size 65536; }",
        "add map ip6 deployer maintenance-tcp { type inet_service : inet_service; size 65536; }",
    ]
    assert nft.dispatch("DEPLOYER", IP6) == (
        "meta l4proto tcp redirect to :tcp dport map @maintenance-tcp",
        "jump DEPLOYER-SPLITS",
        "dnat ip6 to tcp dport map @tcp-ports",
        "dnat ip6 to udp dport map @udp-ports",
    )
    assert nft.family_of("ip6") is IP6 and nft.family_of("ip") is nft.IP
    with pytest.raises(RulesError, match="family ip or ip6, not 'inet'"):
        nft.family_of("inet")


def test_a_first_write_of_the_ip6tables_text_is_one_transaction_on_the_ip6_table():
    translation = _translate(SAVED, nft.Table(family=IP6))
    assert translation.nat == (
        "add table ip6 deployer\n"
        "add chain ip6 deployer PREROUTING { type nat hook prerouting priority dstnat - 5; policy accept; }\n"
        "add chain ip6 deployer OUTPUT { type nat hook output priority -105; policy accept; }\n"
        "add chain ip6 deployer POSTROUTING { type nat hook postrouting priority srcnat + 5; policy accept; }\n"
        "add map ip6 deployer tcp-ports { type inet_service : ipv6_addr . inet_service; size 65536; }\n"
        "add map ip6 deployer udp-ports { type inet_service : ipv6_addr . inet_service; size 65536; }\n"
        "add map ip6 deployer maintenance-tcp { type inet_service : inet_service; size 65536; }\n"
        "add chain ip6 deployer DEPLOYER-SPLITS\n"
        "add chain ip6 deployer DEPLOYER\n"
        "flush chain ip6 deployer DEPLOYER\n"
        "add rule ip6 deployer DEPLOYER meta l4proto tcp redirect to :tcp dport map @maintenance-tcp\n"
        "add rule ip6 deployer DEPLOYER jump DEPLOYER-SPLITS\n"
        "add rule ip6 deployer DEPLOYER dnat ip6 to tcp dport map @tcp-ports\n"
        "add rule ip6 deployer DEPLOYER dnat ip6 to udp dport map @udp-ports\n"
        "add chain ip6 deployer DEPLOYER-POSTROUTING\n"
        "flush chain ip6 deployer DEPLOYER-POSTROUTING\n"
        "add rule ip6 deployer PREROUTING fib daddr type local jump DEPLOYER\n"
        'add rule ip6 deployer DEPLOYER-POSTROUTING ip6 saddr ::1 oifname "br-x" masquerade '
        'comment "deployer: loopback clients"\n'
        'add element ip6 deployer tcp-ports { 1001 comment "web green v1" : fd42:d0c::2 . 8080 }\n'
        'add element ip6 deployer udp-ports { 1000 comment "web green v1" : fd42:d0c::2 . 8080 }\n'
        "flush chain ip6 deployer DEPLOYER-SPLITS\n"
        "add rule ip6 deployer DEPLOYER-SPLITS tcp dport 1000 numgen random mod 100 < 20 "
        'dnat to [fd42:d0c::3]:8080 comment "web blue v2 canary"\n'
        "add rule ip6 deployer DEPLOYER-SPLITS tcp dport 1001 jhash @nh,64,32 mod 32 seed 0x1 < 1 "
        'dnat to [fd42:d0c::3]:8080 comment "web blue v2 canary"\n'
    )


# What the chains render for a first deploy on a dual-stack host (rules.render_restore(..., ipv6=True)): the
# OUTPUT jump leaves ::1 alone, and DEPLOYER-POSTROUTING stays empty.
DUAL_STACK = f"""*nat
:DEPLOYER - [0:0]
:DEPLOYER-POSTROUTING - [0:0]
:DEPLOYER-web - [0:0]
{GREEN_TCP}
-A DEPLOYER -j DEPLOYER-web
-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER
-I OUTPUT 1 ! -d ::1/128 -m addrtype --dst-type LOCAL -j DEPLOYER
-A POSTROUTING -j DEPLOYER-POSTROUTING
COMMIT
"""


def test_the_dual_stack_chains_ipv6_text_is_written_with_the_output_jump_that_leaves_loopback_alone():
    assert _translate(DUAL_STACK, nft.Table(family=IP6)).nat.splitlines()[-5:] == [
        "flush chain ip6 deployer DEPLOYER-POSTROUTING",
        "insert rule ip6 deployer PREROUTING fib daddr type local jump DEPLOYER",
        "insert rule ip6 deployer OUTPUT ip6 daddr != ::1 fib daddr type local jump DEPLOYER",
        "add rule ip6 deployer POSTROUTING jump DEPLOYER-POSTROUTING",
        'add element ip6 deployer tcp-ports { 1001 comment "web green v1" : fd42:d0c::2 . 8080 }',
    ]
    # As nft lists it (nftables 1.0.6), read back as ip6tables-save prints it.
    listed = "ip6 daddr != ::1 fib daddr type local jump DEPLOYER"
    assert nft.rule_to_iptables("OUTPUT", listed, IP6) == (
        "-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DEPLOYER"
    )


def test_what_a_table_of_one_family_cannot_hold_is_refused():
    v4 = GREEN_TCP.replace("[fd42:d0c::2]", "172.18.0.2")
    with pytest.raises(RulesError, match='needs backend = "iptables"'):
        _translate(f"*nat\n{v4}\nCOMMIT\n", nft.Table(family=IP6))
    with pytest.raises(RulesError, match='needs backend = "iptables"'):
        nft.translate_restore(f"*nat\n{GREEN_TCP}\nCOMMIT\n", "deployer", "DEPLOYER", nft.Table())
    with pytest.raises(RulesError, match='needs backend = "iptables"'):
        nft.rule_to_nft(MASQUERADE.split(" ", 2)[2])  # ::1 in a table ip
    bare = STICKY.replace('-m comment --comment "web blue v2 canary" ', "")  # names no app
    with pytest.raises(RulesError, match='needs backend = "iptables"'):
        _translate(f"*nat\n{bare}\nCOMMIT\n", nft.Table(family=IP6))


def test_an_ip6_flips_takeover_replaces_the_elements_and_its_tidy_has_nothing_left_to_do():
    live = nft.Table(
        elements=[nft.element_of("DEPLOYER-web", line.split(" ", 2)[2], IP6) for line in (GREEN_UDP, GREEN_TCP)],
        family=IP6,
    )
    blue_udp = GREEN_UDP.replace("green v1", "blue v2").replace("::2]", "::3]")
    takeover = _translate(
        rules.render_takeover(NAMES, "web", [blue_udp, BLUE_TCP], [GREEN_UDP, GREEN_TCP]), live, whole=False
    )
    assert takeover.nat == (
        "delete element ip6 deployer tcp-ports { 1001 }\n"
        "delete element ip6 deployer udp-ports { 1000 }\n"
        'add element ip6 deployer tcp-ports { 1001 comment "web blue v2" : fd42:d0c::3 . 8080 }\n'
        'add element ip6 deployer udp-ports { 1000 comment "web blue v2" : fd42:d0c::3 . 8080 }\n'
    )
    after = nft.Table(elements=takeover.apps["web"][0], family=IP6)
    assert _translate(rules.render_chain(NAMES, "web", [blue_udp, BLUE_TCP]), after, whole=False).nat == ""
    assert _translate(rules.render_chain(NAMES, "web", [BLUE_TCP]), after, whole=False).nat == (
        "delete element ip6 deployer udp-ports { 1000 }\n"
    )
    assert nft.app_view("DEPLOYER-web", takeover.apps["web"][0], [], _ports("web")) == [blue_udp, BLUE_TCP]


def test_maintenance_and_a_sticky_canary_on_the_ip6_table():
    live = nft.Table(
        chains={"DEPLOYER-SPLITS": []},
        elements=[nft.element_of("DEPLOYER-web", GREEN_TCP.split(" ", 2)[2], IP6)],
        family=IP6,
    )
    on = _translate(rules.render_takeover(NAMES, "web", [REDIRECT, STICKY], [GREEN_TCP]), live, whole=False)
    assert on.nat == (
        'add element ip6 deployer maintenance-tcp { 1002 comment "web maintenance" : 9999 }\n'
        "flush chain ip6 deployer DEPLOYER-SPLITS\n"
        "add rule ip6 deployer DEPLOYER-SPLITS tcp dport 1001 jhash @nh,64,32 mod 32 seed 0x1 < 1 "
        'dnat to [fd42:d0c::3]:8080 comment "web blue v2 canary"\n'
    )
    elements, splits = on.apps["web"]
    assert nft.app_view("DEPLOYER-web", elements, splits, _ports("web")) == [REDIRECT, STICKY, GREEN_TCP]


# As `nft -a list table ip6 deployer` printed what the first write above made (nftables 1.0.6).
LISTING = """table ip6 deployer { # handle 7
	map tcp-ports { # handle 4
		type inet_service : ipv6_addr . inet_service
		size 65536
		elements = { 1001 comment "web green v1" : fd42:d0c::2 . 8080 }
	}

	map udp-ports { # handle 5
		type inet_service : ipv6_addr . inet_service
		size 65536
		elements = { 1000 comment "web green v1" : fd42:d0c::2 . 8080 }
	}

	map maintenance-tcp { # handle 6
		type inet_service : inet_service
		size 65536
	}

	chain PREROUTING { # handle 1
		type nat hook prerouting priority dstnat - 5; policy accept;
		fib daddr type local jump DEPLOYER # handle 14
	}

	chain OUTPUT { # handle 2
		type nat hook output priority -105; policy accept;
	}

	chain POSTROUTING { # handle 3
		type nat hook postrouting priority srcnat + 5; policy accept;
	}

	chain DEPLOYER-SPLITS { # handle 7
		tcp dport 1000 numgen random mod 100 < 20 dnat to [fd42:d0c::3]:8080 comment "web blue v2 canary" # handle 18
		tcp dport 1001 jhash @nh,64,32 mod 32 seed 0x1 < 1 dnat to [fd42:d0c::3]:8080 comment "web blue v2 canary" # handle 19
	}

	chain DEPLOYER { # handle 8
		meta l4proto tcp redirect to :tcp dport map @maintenance-tcp # handle 9
		jump DEPLOYER-SPLITS # handle 10
		dnat ip6 to tcp dport map @tcp-ports # handle 11
		dnat ip6 to udp dport map @udp-ports # handle 12
	}

	chain DEPLOYER-POSTROUTING { # handle 13
		ip6 saddr ::1 oifname "br-x" masquerade comment "deployer: loopback clients" # handle 15
	}
}
"""


def test_the_ip6_listing_reads_back_as_the_ip6tables_save_text():
    table = nft.parse_listing(LISTING, IP6)
    assert table.dispatching("DEPLOYER", exact=True)
    # The text written, with the base chains the table declares: each nat table has them.
    base = "".join(f":{chain} ACCEPT [0:0]\n" for chain in ("PREROUTING", "OUTPUT", "POSTROUTING"))
    assert table.saved("DEPLOYER", _ports) == SAVED.replace("*nat\n", "*nat\n" + base)
    # Round trip: what the listing says, written again, changes nothing.
    again = _translate(rules.render_chain(NAMES, "web", [RANDOM, STICKY, GREEN_UDP, GREEN_TCP]), table)
    assert again.nat == ""
    # Read as a table ip, the same listing is nobody's: no split, no element of an instance.
    assert nft.parse_listing(LISTING).splits("DEPLOYER") == [] and nft.parse_listing(LISTING).elements == []


def test_an_address_crosses_as_each_side_prints_it():
    assert nft.destination("fd42:d0c::3", 8080) == "[fd42:d0c::3]:8080"
    assert nft.destination("172.18.0.3", 80) == "172.18.0.3:80"
    assert (IP6.prefix_to_nft("::1/128"), IP6.prefix_to_iptables("::1")) == ("::1", "::1/128")
    assert (IP6.prefix_to_nft("fd00::/8"), IP6.prefix_to_iptables("fd00::/8")) == ("fd00::/8", "fd00::/8")
    assert (nft.IP.prefix_to_nft("127.0.0.0/8"), nft.IP.prefix_to_iptables("10.0.0.1")) == (
        "127.0.0.0/8",
        "10.0.0.1/32",
    )
    for line in (
        GREEN_UDP.replace("fd42:d0c::2", "::ffff:172.18.0.2"),
        GREEN_UDP.replace("fd42:d0c::2", "2001:db8:1:2:3:4:5:6"),
    ):
        found = nft.element_of("DEPLOYER-web", line.split(" ", 2)[2], IP6)
        assert found.rule("DEPLOYER-web") == line
    forward = (
        "-A DEPLOYER-SNAT -d fd42:d0c::9/128 -p tcp -m tcp --dport 8080 -m conntrack --ctstate DNAT "
        '-m comment --comment "web forward" -j MASQUERADE'
    )
    body = forward.split(" ", 2)[2]
    assert nft.rule_to_nft(body, IP6) == (
        'ip6 daddr fd42:d0c::9 tcp dport 8080 ct status dnat masquerade comment "web forward"'
    )
    assert nft.rule_to_iptables("DEPLOYER-SNAT", nft.rule_to_nft(body, IP6), IP6) == forward


def test_a_host_bound_apps_socket_match_becomes_rules_of_the_ip6_table_and_reads_back_as_ip6tables_prints_it():
    """The text is the IPv4 one (test_maintenance_rules.py), written to ip6tables as it is (test_dual_stack_effects)."""
    web = host_bound_app("web", 80)
    text = hostbound.render_ensure(rules.SavedTable(), NAMES, {"web": web}, 8999)
    socket_rules = [
        "-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 80 -m socket --nowildcard -m comment --comment "
        '"web: a socket listens" -j RETURN',
        '-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 80 -m comment --comment "web: nothing listens" '
        "-j REDIRECT --to-ports 8999",
    ]
    written = [
        "add chain ip6 deployer DEPLOYER-HOSTBOUND",
        "flush chain ip6 deployer DEPLOYER-HOSTBOUND",
        'add rule ip6 deployer DEPLOYER-HOSTBOUND tcp dport 80 socket transparent { 0, 1 } return comment "web: a '
        'socket listens"',
        'add rule ip6 deployer DEPLOYER-HOSTBOUND tcp dport 80 redirect to :8999 comment "web: nothing listens"',
        "insert rule ip6 deployer PREROUTING fib daddr type local jump DEPLOYER-HOSTBOUND",
    ]
    assert _translate(text, nft.Table(family=IP6)).nat.splitlines() == [
        *nft.base_declarations("deployer", IP6),
        *written,
    ]
    # As nft lists the rules, read back as ip6tables-save prints them: drift detection compares the same text.
    for line, rule in zip(
        written[2:], [*socket_rules, "-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND"], strict=True
    ):
        chain, listed = line.split(" ")[4], line.split(" ", 5)[5]
        assert nft.rule_to_iptables(chain, listed, IP6) == rule


# --- the backend: both families in one transaction --------------------------------------------------------------


V4_LISTING = LISTING.replace("table ip6", "table ip").replace("ipv6_addr", "ipv4_addr")
V4_LISTING = V4_LISTING.replace("fd42:d0c::2", "172.18.0.2").replace("[fd42:d0c::3]", "172.18.0.3")
V4_LISTING = V4_LISTING.replace("dnat ip6", "dnat ip").replace("ip6 saddr ::1", "ip saddr 127.0.0.0/8")
V4_LISTING = V4_LISTING.replace("jhash @nh,64,32", "jhash ip saddr")


def _v4(line: str) -> str:
    return line.replace("[fd42:d0c::3]", "172.18.0.3").replace("[fd42:d0c::2]", "172.18.0.2")


def _pair(tmp_path: Path) -> tuple[NftablesBackend, NftablesBackend, FakeRunner, FakeRunner]:
    writer = FakeRunner()
    reader = FakeRunner({"list table ip deployer": V4_LISTING, "list table ip6 deployer": LISTING})
    made = [
        NftablesBackend(
            writer,
            FakeIptables(name),  # type: ignore[arg-type]
            table="deployer",
            prefix="DEPLOYER",
            reader=reader,
            generation=tmp_path / f"{name}.generation",
            ports=_ports,
            family=family,
        )
        for family, name in (("ip", "iptables"), ("ip6", "ip6tables"))
    ]
    return made[0], made[1], writer, reader


def test_a_dual_stack_flip_writes_both_tables_in_one_transaction_and_keeps_both_pictures(tmp_path):
    v4, v6, writer, reader = _pair(tmp_path)
    before4, before6 = v4.list_chain("DEPLOYER-web") or [], v6.list_chain("DEPLOYER-web") or []
    assert before6 == [RANDOM, STICKY, GREEN_UDP, GREEN_TCP] and before4 == [_v4(line) for line in before6]
    wanted6 = [BLUE_TCP, GREEN_UDP]
    v4.restore_pair(
        rules.render_takeover(NAMES, "web", [_v4(line) for line in wanted6], before4),
        v6,
        rules.render_takeover(NAMES, "web", wanted6, before6),
    )
    assert writer.ran == [
        "delete element ip deployer tcp-ports { 1001 }\n"
        'add element ip deployer tcp-ports { 1001 comment "web blue v2" : 172.18.0.3 . 8080 }\n'
        "flush chain ip deployer DEPLOYER-SPLITS\n"
        "add rule ip deployer DEPLOYER-SPLITS tcp dport 1000 numgen random mod 100 < 20 "
        'dnat to 172.18.0.3:8080 comment "web blue v2 canary"\n'
        "delete element ip6 deployer tcp-ports { 1001 }\n"
        'add element ip6 deployer tcp-ports { 1001 comment "web blue v2" : fd42:d0c::3 . 8080 }\n'
        "flush chain ip6 deployer DEPLOYER-SPLITS\n"
        "add rule ip6 deployer DEPLOYER-SPLITS tcp dport 1000 numgen random mod 100 < 20 "
        'dnat to [fd42:d0c::3]:8080 comment "web blue v2 canary"\n'
    ]
    # Each backend keeps what it committed (the blue forward shadows the sticky split of its port, and the
    # random split stays), and counts it in its own file: the next flip reads nothing.
    assert v6.list_chain("DEPLOYER-web") == [RANDOM, GREEN_UDP, BLUE_TCP]
    assert v4.list_chain("DEPLOYER-web") == [_v4(RANDOM), _v4(GREEN_UDP), _v4(BLUE_TCP)]
    assert reader.ran == ["list table ip deployer", "list table ip6 deployer"]
    assert (tmp_path / "iptables.generation").read_text() == (tmp_path / "ip6tables.generation").read_text()
    assert (tmp_path / "ip6tables.generation").read_text() == f"{1:020d}"


def test_a_refused_pair_changes_neither_picture_and_both_tables_are_read_again(tmp_path):
    v4, v6, writer, reader = _pair(tmp_path)
    before4, before6 = v4.list_chain("DEPLOYER-web") or [], v6.list_chain("DEPLOYER-web") or []
    writer.refuse = True
    with pytest.raises(RulesError, match="nft refused"):
        v4.restore_pair(
            rules.render_chain(NAMES, "web", [_v4(BLUE_TCP)]), v6, rules.render_chain(NAMES, "web", [BLUE_TCP])
        )
    assert len(writer.ran) == 1 and "ip deployer" in writer.ran[0] and "ip6 deployer" in writer.ran[0]
    assert (v4.picture, v6.picture) == (None, None)
    assert not (tmp_path / "iptables.generation").exists() and not (tmp_path / "ip6tables.generation").exists()
    assert (v4.list_chain("DEPLOYER-web"), v6.list_chain("DEPLOYER-web")) == (before4, before6)
    assert reader.ran == ["list table ip deployer", "list table ip6 deployer"] * 2


def test_a_rule_either_table_cannot_hold_writes_nothing_to_either(tmp_path):
    v4, v6, writer, _ = _pair(tmp_path)
    filtered = f"*filter\n-A DEPLOYER-FORWARD -j ACCEPT\nCOMMIT\n*nat\n{_v4(GREEN_TCP)}\nCOMMIT\n"
    with pytest.raises(RulesError, match='needs backend = "iptables"'):
        v4.restore_pair(filtered, v6, f"*nat\n{_v4(GREEN_TCP)}\nCOMMIT\n")  # an IPv4 address for the ip6 table
    assert writer.ran == [] and v4.iptables.ran == []  # type: ignore[attr-defined]


def test_a_pair_with_filter_rules_and_one_empty_side(tmp_path):
    v4, v6, writer, _ = _pair(tmp_path)
    v4.restore_pair(
        "*filter\n-A DEPLOYER-FORWARD -j ACCEPT\nCOMMIT\n*nat\n:DEPLOYER-api - [0:0]\nCOMMIT\n",
        v6,
        "*filter\n-A DEPLOYER-FORWARD -s fd42::/64 -j ACCEPT\nCOMMIT\n*nat\n:DEPLOYER-api - [0:0]\nCOMMIT\n",
    )
    assert v4.iptables.ran == ["iptables *filter | -A DEPLOYER-FORWARD -j ACCEPT | COMMIT"]  # type: ignore[attr-defined]
    assert v6.iptables.ran == [  # type: ignore[attr-defined]
        "ip6tables *filter | -A DEPLOYER-FORWARD -s fd42::/64 -j ACCEPT | COMMIT"
    ]
    assert writer.ran == ["add chain ip deployer DEPLOYER-api\nadd chain ip6 deployer DEPLOYER-api\n"]
    v4.restore_pair("", v6, rules.render_chain(NAMES, "api", []))
    v4.restore_pair(rules.render_chain(NAMES, "api", []), v6, "")
    assert len(writer.ran) == 1  # both already hold the empty chain: nothing to write, on either side alone
    with pytest.raises(RulesError, match="both are ip deployer"):
        v4.restore_pair(rules.render_chain(NAMES, "api", []), v4, rules.render_chain(NAMES, "api", []))
