"""The nftables backend: the iptables chains translated into the table's maps and chains and back, exactly
(plan/nft.py), and the backend's planning of a transaction (host/netfilter/nftables.py) through hand-written fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.config import AppConfig, HealthCheck, PortMapping
from deployer.errors import RulesError
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.plan import app_chain, canary, forwarding, hostbound, maintenance, nft, rules
from deployer.plan.rules import ChainNames, Forward, SavedTable
from support.configs import host_bound_app

NAMES = ChainNames("DEPLOYER")
BLUE = Forward("tcp", 18080, "172.18.0.2", 80, "web blue v1").rule("DEPLOYER-web")
GREEN = Forward("tcp", 18080, "172.18.0.3", 80, "web green v2").rule("DEPLOYER-web")
UDP = Forward("udp", 18081, "172.18.0.3", 53, "web green v2").rule("DEPLOYER-web")
REDIRECT = maintenance.redirect_rule("DEPLOYER-web", "web", 18080, 8999)


def _translate(text: str, live: nft.Table, whole: bool = True) -> nft.Translation:
    return nft.translate_restore(text, "deployer", "DEPLOYER", live, whole=whole)


def _elements(*lines: str) -> nft.Table:
    return nft.Table(elements=[nft.element_of(line.split(" ", 2)[1], line.split(" ", 2)[2]) for line in lines])


def test_a_first_deploy_becomes_one_transaction_the_base_chains_the_lookups_and_the_apps_elements():
    text = rules.render_restore(SavedTable(), NAMES, "deployer0", {"web": [BLUE]})
    translation = _translate(text, nft.Table())
    assert translation.nat == (
        "add table ip deployer\n"
        "add chain ip deployer PREROUTING { type nat hook prerouting priority dstnat - 5; policy accept; }\n"
        "add chain ip deployer OUTPUT { type nat hook output priority -105; policy accept; }\n"
        "add chain ip deployer POSTROUTING { type nat hook postrouting priority srcnat + 5; policy accept; }\n"
        "add map ip deployer tcp-ports { type inet_service : ipv4_addr . inet_service; size 65536; }\n"
        "add map ip deployer udp-ports { type inet_service : ipv4_addr . inet_service; size 65536; }\n"
        "add map ip deployer maintenance-tcp { type inet_service : inet_service; size 65536; }\n"
        "add chain ip deployer DEPLOYER-SPLITS\n"
        "add chain ip deployer DEPLOYER\n"
        "flush chain ip deployer DEPLOYER\n"
        "add rule ip deployer DEPLOYER meta l4proto tcp redirect to :tcp dport map @maintenance-tcp\n"
        "add rule ip deployer DEPLOYER jump DEPLOYER-SPLITS\n"
        "add rule ip deployer DEPLOYER dnat ip to tcp dport map @tcp-ports\n"
        "add rule ip deployer DEPLOYER dnat ip to udp dport map @udp-ports\n"
        "add chain ip deployer DEPLOYER-POSTROUTING\n"
        "flush chain ip deployer DEPLOYER-POSTROUTING\n"
        'add rule ip deployer DEPLOYER-POSTROUTING ip saddr 127.0.0.0/8 oifname "deployer0" masquerade '
        'comment "deployer: loopback clients"\n'
        "insert rule ip deployer PREROUTING fib daddr type local jump DEPLOYER\n"
        "insert rule ip deployer OUTPUT fib daddr type local jump DEPLOYER\n"
        "add rule ip deployer POSTROUTING jump DEPLOYER-POSTROUTING\n"
        'add element ip deployer tcp-ports { 18080 comment "web blue v1" : 172.18.0.2 . 80 }\n'
    )
    assert (translation.other, translation.apps) == ("", {"web": (_elements(BLUE).elements, [])})


def test_a_flips_takeover_replaces_the_elements_it_shadows_and_leaves_its_tidy_nothing_to_do():
    takeover = _translate(rules.render_takeover(NAMES, "web", [GREEN, UDP], [BLUE]), _elements(BLUE), whole=False)
    assert takeover.nat == (
        "delete element ip deployer tcp-ports { 18080 }\n"
        'add element ip deployer tcp-ports { 18080 comment "web green v2" : 172.18.0.3 . 80 }\n'
        'add element ip deployer udp-ports { 18081 comment "web green v2" : 172.18.0.3 . 53 }\n'
    )
    after = nft.Table(elements=takeover.apps["web"][0])
    assert _translate(rules.render_chain(NAMES, "web", [GREEN, UDP]), after, whole=False).nat == ""
    # The tidy of a chain that lost a port deletes that port's element.
    assert _translate(rules.render_chain(NAMES, "web", [GREEN]), after, whole=False).nat == (
        "delete element ip deployer udp-ports { 18081 }\n"
    )


def test_maintenance_takes_a_tcp_port_from_its_forward_and_gives_it_back():
    on = _translate(
        rules.render_takeover(NAMES, "web", [REDIRECT, UDP], [GREEN, UDP]), _elements(GREEN, UDP), whole=False
    )
    assert on.nat == (
        "delete element ip deployer tcp-ports { 18080 }\n"
        'add element ip deployer maintenance-tcp { 18080 comment "web maintenance" : 8999 }\n'
    )
    off = _translate(
        rules.render_takeover(NAMES, "web", [GREEN, UDP], [REDIRECT, UDP]),
        nft.Table(elements=on.apps["web"][0]),
        whole=False,
    )
    assert off.nat == (
        "delete element ip deployer maintenance-tcp { 18080 }\n"
        'add element ip deployer tcp-ports { 18080 comment "web green v2" : 172.18.0.3 . 80 }\n'
    )


def test_an_app_with_no_rules_has_an_empty_chain_of_its_name_until_its_first_element():
    live = rules.parse_nat(nft.parse_listing(LISTING).saved("DEPLOYER", _ports))
    ensure = _translate(
        rules.render_restore(live, NAMES, "deployer0", {}, ensure_apps=["nginx"]), nft.parse_listing(LISTING)
    )
    assert ensure.nat.splitlines()[-1] == "add chain ip deployer DEPLOYER-nginx" and ensure.markers == {"nginx": True}
    marked = nft.parse_listing(
        LISTING.replace("\tchain DEPLOYER {", "\tchain DEPLOYER-nginx {\n\t}\n\n\tchain DEPLOYER {")
    )
    assert marked.view("DEPLOYER", _ports)["DEPLOYER-nginx"] == []
    assert rules.app_jump(NAMES, "nginx") in marked.view("DEPLOYER", _ports)["DEPLOYER"]
    page = maintenance.redirect_rule("DEPLOYER-nginx", "nginx", 80, 8999)
    first = _translate(rules.render_chain(NAMES, "nginx", [page]), marked)
    assert first.nat.splitlines()[-3:] == [
        'add element ip deployer maintenance-tcp { 80 comment "nginx maintenance" : 8999 }',
        "flush chain ip deployer DEPLOYER-nginx",
        "delete chain ip deployer DEPLOYER-nginx",
    ]


ACTIVE = [
    Forward("tcp", 18080, "172.18.0.2", 80, "web blue v1"),
    Forward("udp", 18081, "172.18.0.2", 53, "web blue v1"),
]
CANARY = [
    Forward("tcp", 18080, "172.18.0.3", 80, "web green v2 canary"),
    Forward("udp", 18081, "172.18.0.3", 53, "web green v2 canary"),
]


@pytest.mark.parametrize(
    "weight, sticky, test",
    [
        (10, False, "numgen random mod 100 < 10"),
        (10, True, "jhash ip saddr mod 10 seed 0x5eed0001 < 1"),
        (60, True, "jhash ip saddr mod 5 seed 0x5eed0001 < 3"),
    ],
)
def test_a_canarys_split_is_a_rule_of_the_splits_chain_and_reads_back_as_iptables_prints_it(weight, sticky, test):
    wanted = canary.split_rules("DEPLOYER-web", ACTIVE, CANARY, weight, sticky=sticky, seed=0x5EED0001)
    splits = [nft.rule_of("DEPLOYER-web", line.split(" ", 2)[2]) for line in wanted[:2]]
    assert [s.nft for s in splits] == [  # type: ignore[union-attr]
        f'tcp dport 18080 {test} dnat to 172.18.0.3:80 comment "web green v2 canary"',
        f'udp dport 18081 {test} dnat to 172.18.0.3:53 comment "web green v2 canary"',
    ]
    assert [s.rule("DEPLOYER-web") for s in splits] == wanted[:2]
    live = nft.Table(chains={"DEPLOYER-SPLITS": []}, elements=[nft.element(f) for f in ACTIVE])
    started = _translate(
        rules.render_takeover(NAMES, "web", wanted, [f.rule("DEPLOYER-web") for f in ACTIVE]), live, whole=False
    )
    added = "".join(f"add rule ip deployer DEPLOYER-SPLITS {s.nft}\n" for s in splits)  # type: ignore[union-attr]
    assert started.nat == "flush chain ip deployer DEPLOYER-SPLITS\n" + added
    elements, written = started.apps["web"]
    assert nft.app_view("DEPLOYER-web", elements, written, [("tcp", 18080), ("udp", 18081)]) == wanted


def test_a_promoted_canary_replaces_the_elements_and_empties_the_splits_chain():
    wanted = canary.split_rules("DEPLOYER-web", ACTIVE, CANARY, 10)
    splits = [nft.rule_of("DEPLOYER-web", line.split(" ", 2)[2]) for line in wanted[:2]]
    live = nft.Table(
        chains={"DEPLOYER-SPLITS": [(s.nft, 0) for s in splits]},  # type: ignore[union-attr]
        elements=[nft.element(f) for f in ACTIVE],
    )
    promoted = _translate(
        rules.render_takeover(NAMES, "web", [f.rule("DEPLOYER-web") for f in CANARY], wanted), live, whole=False
    )
    assert promoted.nat == (
        "delete element ip deployer tcp-ports { 18080 }\n"
        "delete element ip deployer udp-ports { 18081 }\n"
        'add element ip deployer tcp-ports { 18080 comment "web green v2 canary" : 172.18.0.3 . 80 }\n'
        'add element ip deployer udp-ports { 18081 comment "web green v2 canary" : 172.18.0.3 . 53 }\n'
        "flush chain ip deployer DEPLOYER-SPLITS\n"
    )


def test_a_maintenance_redirect_behind_a_split_of_its_port_is_refused():
    split = canary.split_rules("DEPLOYER-web", ACTIVE, CANARY, 10)[0]
    with pytest.raises(RulesError, match="before a canary's split"):
        _translate(rules.render_chain(NAMES, "web", [split, REDIRECT]), nft.Table())


LEGACY = """table ip deployer { # handle 1
	chain PREROUTING { # handle 1
		type nat hook prerouting priority dstnat - 5; policy accept;
		fib daddr type local jump DEPLOYER # handle 10
	}

	chain DEPLOYER { # handle 4
		jump DEPLOYER-web # handle 9
		jump DEPLOYER-api # handle 12
	}

	chain DEPLOYER-web { # handle 6
		tcp dport 18080 dnat to 172.18.0.3:80 comment "web green v2" # handle 8
	}

	chain DEPLOYER-api { # handle 7
		tcp dport 9000 dnat to 172.18.0.9:8080 comment "api blue v1" # handle 11
	}
}
"""


HALF = """table ip deployer { # handle 1
	map tcp-ports { # handle 2
		type inet_service : ipv4_addr . inet_service
		elements = { 18080 comment "web green v2" : 172.18.0.3 . 80 }
	}

	map udp-ports { # handle 3
		type inet_service : ipv4_addr . inet_service
	}

	map maintenance-tcp { # handle 5
		type inet_service : inet_service
	}

	chain DEPLOYER { # handle 4
		jump DEPLOYER-api # handle 12
		meta l4proto tcp redirect to :tcp dport map @maintenance-tcp # handle 13
		jump DEPLOYER-SPLITS # handle 14
		dnat ip to tcp dport map @tcp-ports # handle 15
		dnat ip to udp dport map @udp-ports # handle 16
	}

	chain DEPLOYER-SPLITS { # handle 6
	}

	chain DEPLOYER-api { # handle 7
		tcp dport 9000 dnat to 172.18.0.9:8080 comment "api blue v1" # handle 11
	}
}
"""


def test_the_layout_of_one_chain_per_app_moves_into_the_maps_one_app_at_a_time_never_without_a_dnat():
    legacy = nft.parse_listing(LEGACY)
    view = legacy.view("DEPLOYER", _ports)
    assert view["DEPLOYER-web"] == [
        '-A DEPLOYER-web -m comment --comment "nft: tcp dport 18080 dnat to 172.18.0.3:80 comment \\"web green v2\\""'
    ]
    moved = _translate(rules.render_chain(NAMES, "web", [GREEN]), legacy)
    assert moved.nat.splitlines()[4:] == [
        "add chain ip deployer DEPLOYER-SPLITS",
        "add chain ip deployer DEPLOYER",
        "flush chain ip deployer DEPLOYER",
        "add rule ip deployer DEPLOYER jump DEPLOYER-api",  # api's old chain still serves, in front
        "add rule ip deployer DEPLOYER meta l4proto tcp redirect to :tcp dport map @maintenance-tcp",
        "add rule ip deployer DEPLOYER jump DEPLOYER-SPLITS",
        "add rule ip deployer DEPLOYER dnat ip to tcp dport map @tcp-ports",
        "add rule ip deployer DEPLOYER dnat ip to udp dport map @udp-ports",
        'add element ip deployer tcp-ports { 18080 comment "web green v2" : 172.18.0.3 . 80 }',
        "flush chain ip deployer DEPLOYER-web",
        "delete chain ip deployer DEPLOYER-web",
    ]
    assert not moved.ready
    half = nft.parse_listing(HALF)
    assert half.dispatching("DEPLOYER") and not half.dispatching("DEPLOYER", exact=True)
    api = Forward("tcp", 9000, "172.18.0.9", 8080, "api blue v1").rule("DEPLOYER-api")
    last = _translate(rules.render_chain(NAMES, "api", [api]), half)
    assert last.nat.splitlines()[4:] == [
        'add element ip deployer tcp-ports { 9000 comment "api blue v1" : 172.18.0.9 . 8080 }',
        "delete rule ip deployer DEPLOYER handle 12",
        "flush chain ip deployer DEPLOYER-api",
        "delete chain ip deployer DEPLOYER-api",
    ]
    assert last.ready


def test_a_changed_comment_alone_replaces_the_element():
    relabelled = Forward("tcp", 18080, "172.18.0.3", 80, "web blue v2").rule("DEPLOYER-web")
    assert _translate(rules.render_chain(NAMES, "web", [relabelled]), _elements(GREEN), whole=False).nat == (
        "delete element ip deployer tcp-ports { 18080 }\n"
        'add element ip deployer tcp-ports { 18080 comment "web blue v2" : 172.18.0.3 . 80 }\n'
    )


def test_each_rule_of_an_app_chain_is_one_element_and_comes_back_as_the_line_iptables_save_prints():
    status = Forward("tcp", 1005, "172.18.0.3", 8080, "web status green v2").rule("DEPLOYER-web")
    for line in (REDIRECT, status, GREEN, UDP):
        found = nft.element_of("DEPLOYER-web", line.split(" ", 2)[2])
        assert found.rule("DEPLOYER-web") == line
    assert nft.element_of("DEPLOYER-web", REDIRECT.split(" ", 2)[2]).text() == '18080 comment "web maintenance" : 8999'
    target = forwarding.Target(
        "10.0.0.2", True, (forwarding.PortTarget("tcp", 18080, 8080), forwarding.PortTarget("udp", 18081, 9090))
    )
    for line in (
        rules.app_jump(NAMES, "web"),
        *rules.builtin_jumps(NAMES).values(),
        *rules.postrouting_rules(NAMES, "deployer0"),
        *forwarding.masquerade_rules(NAMES, "web", target),
        *hostbound.app_rules(NAMES, host_bound_app("nginx", 80), 8999),
        hostbound.jump(NAMES),
    ):
        chain, body = line.split(" ", 2)[1], line.split(" ", 2)[2]
        assert nft.rule_to_iptables(chain, nft.rule_to_nft(body)) == line


def test_what_the_backend_cannot_write_is_refused_before_anything_is_applied():
    split = canary.split_rules(
        "DEPLOYER-web",
        [Forward("tcp", 18080, "172.18.0.2", 80, "web blue v1")],
        [Forward("tcp", 18080, "172.18.0.3", 80, "web green v2 canary")],
        10,
    )
    marked = "-A DEPLOYER-POSTROUTING -m mark --mark 0x1 -j MASQUERADE"
    odd = split[0].replace(canary.probability(10), "0.12345678901")  # no weight of canary.py's
    for line in (odd, marked):
        with pytest.raises(RulesError, match='needs backend = "iptables" for now'):
            _translate(f"*nat\n{line}\nCOMMIT\n", nft.Table())
    quoted = Forward("tcp", 18080, "172.18.0.3", 80, 'web "green"').rule("DEPLOYER-web")
    with pytest.raises(RulesError, match="no double quote"):
        _translate(f"*nat\n{quoted}\nCOMMIT\n", nft.Table())
    with pytest.raises(RulesError, match="top of a chain only"):
        _translate(f"*nat\n-I DEPLOYER-web 2 {GREEN.split(' ', 2)[2]}\nCOMMIT\n", nft.Table())
    stranger = Forward("tcp", 18080, "172.18.0.3", 80, "api blue v1").rule("DEPLOYER-web")
    with pytest.raises(RulesError, match="does not name the app of DEPLOYER-web"):
        _translate(f"*nat\n{stranger}\nCOMMIT\n", nft.Table())
    api = Forward("tcp", 18080, "172.18.0.9", 80, "api blue v1").rule("DEPLOYER-api")
    with pytest.raises(RulesError, match="18080/tcp is already in the nftables maps, for api"):
        _translate(rules.render_chain(NAMES, "web", [GREEN]), _elements(api), whole=False)


LISTING = """table ip deployer { # handle 1
	map tcp-ports { # handle 1
		type inet_service : ipv4_addr . inet_service
		size 65536
		elements = { 18080 comment "web green v2" : 172.18.0.3 . 80,
			     9000 comment "api blue v1" : 172.18.0.9 . 8080, 7 : 10.0.0.1 . 7 }
	}

	map udp-ports { # handle 2
		type inet_service : ipv4_addr . inet_service
		size 65536
		elements = { 18081 comment "web green v2" : 172.18.0.3 . 53 }
	}

	map maintenance-tcp { # handle 3
		type inet_service : inet_service
		size 65536
	}

	chain PREROUTING { # handle 4
		type nat hook prerouting priority dstnat - 5; policy accept;
		fib daddr type local jump DEPLOYER # handle 10
	}

	chain DEPLOYER { # handle 5
		meta l4proto tcp redirect to :tcp dport map @maintenance-tcp # handle 6
		jump DEPLOYER-SPLITS # handle 11
		dnat ip to tcp dport map @tcp-ports # handle 7
		dnat ip to udp dport map @udp-ports # handle 8
	}

	chain DEPLOYER-SPLITS { # handle 9
	}
}
"""


def _ports(app: str) -> list[nft.Key]:
    return {"web": [("udp", 18081), ("tcp", 18080)]}.get(app, [])


def test_a_listing_reads_as_iptables_save_text_in_the_order_the_engine_renders():
    table = nft.parse_listing(LISTING)
    assert table.saved("DEPLOYER", _ports) == (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:DEPLOYER - [0:0]\n:DEPLOYER-api - [0:0]\n:DEPLOYER-web - [0:0]\n"
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER\n"
        "-A DEPLOYER -j DEPLOYER-api\n-A DEPLOYER -j DEPLOYER-web\n"
        '-A DEPLOYER -m comment --comment "nft: tcp-ports element 7 : 10.0.0.1 . 7"\n'
        '-A DEPLOYER-api -p tcp -m tcp --dport 9000 -m comment --comment "api blue v1" '
        "-j DNAT --to-destination 172.18.0.9:8080\n"
        f"{UDP}\n{GREEN}\n"
        "COMMIT\n"
    )


def test_without_its_lookups_the_top_chain_shows_no_jump_and_a_foreign_rule_never_equals_a_wanted_one():
    broken = LISTING.replace(
        "\t\tdnat ip to udp dport map @udp-ports # handle 8\n",
        "\t\tip daddr 10.0.0.1 counter packets 0 bytes 0 accept # handle 8\n",
    )
    view = nft.parse_listing(broken).view("DEPLOYER", _ports)
    assert view["DEPLOYER"][3:] == [
        '-A DEPLOYER -m comment --comment "nft: ip daddr 10.0.0.1 counter packets 0 bytes 0 accept"',
        '-A DEPLOYER -m comment --comment "nft: tcp-ports element 7 : 10.0.0.1 . 7"',
    ]
    assert rules.app_jump(NAMES, "web") not in view["DEPLOYER"]
    ensure = rules.render_restore(
        rules.parse_nat(nft.parse_listing(broken).saved("DEPLOYER", _ports)),
        NAMES,
        "deployer0",
        {},
        ensure_apps=["web"],
    )
    assert (
        "add rule ip deployer DEPLOYER dnat ip to udp dport map @udp-ports"
        in _translate(ensure, nft.parse_listing(broken)).nat
    )


def test_an_apps_removal_deletes_its_elements_and_a_teardown_the_table():
    table = nft.parse_listing(LISTING)
    live = rules.parse_nat(table.saved("DEPLOYER", _ports))
    removal = _translate(rules.render_removal(live, NAMES, ["web"]) or "", table)
    assert removal.nat.splitlines()[-2:] == [
        "delete element ip deployer tcp-ports { 18080 }",
        "delete element ip deployer udp-ports { 18081 }",
    ]
    assert removal.apps == {"web": ([], [])}
    teardown = _translate(rules.render_teardown(live, NAMES) or "", table)
    assert (teardown.nat, teardown.removes_table) == ("delete table ip deployer\n", True)
    with pytest.raises(RulesError, match="no such rule to delete"):
        _translate(f"*nat\n-D DEPLOYER-web {BLUE.split(' ', 2)[2]}\nCOMMIT\n", table)


def test_an_apps_ports_are_its_config_ports_then_its_status_port():
    app = AppConfig(
        name="web",
        image="web",
        ports=(PortMapping(18080, 80, "tcp", 1, 2), PortMapping(18080, 53, "udp", 3, 4)),
        health=HealthCheck(type="tcp", port=80),
        status_port=1005,
    )
    assert app_chain.ports(app) == [("tcp", 18080), ("udp", 18080), ("tcp", 1005)]


# --- the backend, through fakes -------------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, listing: str | None = None) -> None:
        self.listing = listing  # what `list table` prints; None: there is no table, as nft says
        self.ran: list[str] = []
        self.refuse = False

    def run(self, text: str) -> str:
        self.ran.append(text)
        if text.startswith("list "):
            if self.listing is None:
                raise RulesError("nft refused the transaction: Error: No such file or directory")
            return self.listing
        if self.refuse:
            raise RulesError("nft refused the transaction: Error: Could not process rule: File exists")
        return ""


class FakeIptables:
    def __init__(self) -> None:
        self.ran: list[str] = []

    def save_table(self, table: str) -> str:
        self.ran.append(f"save {table}")
        return f"*{table}\nCOMMIT\n"

    def restore(self, text: str) -> None:
        self.ran.append("restore " + " | ".join(text.strip().splitlines()))


def _backend(tmp_path: Path, listing: str | None = LISTING) -> tuple[NftablesBackend, FakeRunner, FakeRunner]:
    writer, reader = FakeRunner(), FakeRunner(listing)
    backend = NftablesBackend(
        writer,
        FakeIptables(),
        table="deployer",
        prefix="DEPLOYER",  # type: ignore[arg-type]
        reader=reader,
        generation=tmp_path / "nftables.generation",
        ports=_ports,
    )
    return backend, writer, reader


def test_the_backend_writes_nat_in_its_table_and_leaves_filter_to_iptables(tmp_path):
    backend, writer, reader = _backend(tmp_path, listing=None)
    assert backend.save_table("nat") == "*nat\nCOMMIT\n"  # no table yet
    assert backend.list_chain("DEPLOYER-web") is None
    backend.restore(f"*filter\n-A DEPLOYER-FORWARD -j ACCEPT\nCOMMIT\n*nat\n:DEPLOYER-web - [0:0]\n{GREEN}\nCOMMIT\n")
    iptables = backend.iptables
    assert iptables.ran == ["restore *filter | -A DEPLOYER-FORWARD -j ACCEPT | COMMIT"]  # type: ignore[attr-defined]
    assert writer.ran[-1].endswith(
        'add element ip deployer tcp-ports { 18080 comment "web green v2" : 172.18.0.3 . 80 }\n'
    )
    assert backend.save_table("mangle") == "*mangle\nCOMMIT\n"


def test_a_flip_reads_nothing_while_no_other_process_has_written(tmp_path):
    backend, writer, reader = _backend(tmp_path)
    before = backend.list_chain("DEPLOYER-web")
    assert before == [UDP, GREEN] and reader.ran == ["list table ip deployer"]  # the first read is whole
    blue = [
        Forward("udp", 18081, "172.18.0.2", 53, "web blue v3").rule("DEPLOYER-web"),
        Forward("tcp", 18080, "172.18.0.2", 80, "web blue v3").rule("DEPLOYER-web"),
    ]
    backend.restore(rules.render_takeover(NAMES, "web", blue, before or []))
    assert backend.list_chain("DEPLOYER-web") == blue  # what it committed, kept
    backend.restore(rules.render_chain(NAMES, "web", blue))  # the tidy: nothing to write
    assert reader.ran == ["list table ip deployer"]
    assert writer.ran == [
        "delete element ip deployer tcp-ports { 18080 }\n"
        "delete element ip deployer udp-ports { 18081 }\n"
        'add element ip deployer tcp-ports { 18080 comment "web blue v3" : 172.18.0.2 . 80 }\n'
        'add element ip deployer udp-ports { 18081 comment "web blue v3" : 172.18.0.2 . 53 }\n'
    ]
    assert (tmp_path / "nftables.generation").read_text() == f"{1:020d}"


def test_a_canary_through_the_backend_rewrites_the_splits_chain_from_what_is_kept(tmp_path):
    backend, writer, reader = _backend(tmp_path)
    before = backend.list_chain("DEPLOYER-web") or []
    active = [
        Forward("udp", 18081, "172.18.0.3", 53, "web green v2"),
        Forward("tcp", 18080, "172.18.0.3", 80, "web green v2"),
    ]
    wanted = canary.split_rules(
        "DEPLOYER-web", active, [Forward("tcp", 18080, "172.18.0.4", 80, "web blue v3 canary")], 25
    )
    backend.restore(rules.render_takeover(NAMES, "web", wanted, before))
    assert writer.ran == [
        "flush chain ip deployer DEPLOYER-SPLITS\n"
        "add rule ip deployer DEPLOYER-SPLITS tcp dport 18080 numgen random mod 100 < 25 "
        'dnat to 172.18.0.4:80 comment "web blue v3 canary"\n'
    ]
    assert backend.list_chain("DEPLOYER-web") == [wanted[0], *before] and reader.ran == ["list table ip deployer"]


def test_a_commit_by_another_process_or_a_refused_one_makes_the_next_flip_read_the_table(tmp_path):
    backend, writer, reader = _backend(tmp_path)
    backend.restore(rules.render_takeover(NAMES, "web", [GREEN], backend.list_chain("DEPLOYER-web") or []))
    (tmp_path / "nftables.generation").write_text(f"{7:020d}")  # another deployer process committed
    backend.list_chain("DEPLOYER-web")
    assert reader.ran == ["list table ip deployer"] * 2
    writer.refuse = True
    with pytest.raises(RulesError, match="File exists"):
        backend.restore(rules.render_takeover(NAMES, "web", [BLUE], [UDP, GREEN]))
    backend.list_chain("DEPLOYER-web")
    assert reader.ran == ["list table ip deployer"] * 3


def test_without_a_generation_file_every_flip_reads_the_table(tmp_path):
    writer, reader = FakeRunner(), FakeRunner(LISTING)
    backend = NftablesBackend(
        writer,
        FakeIptables(),
        table="deployer",
        prefix="DEPLOYER",  # type: ignore[arg-type]
        reader=reader,
        ports=_ports,
    )
    backend.restore(rules.render_takeover(NAMES, "web", [BLUE], backend.list_chain("DEPLOYER-web") or []))
    backend.list_chain("DEPLOYER-web")
    assert reader.ran == ["list table ip deployer"] * 3


def test_after_a_count_it_cannot_read_the_backend_writes_one_no_process_has_seen(tmp_path):
    (tmp_path / "nftables.generation").write_text("garbage")
    backend, writer, reader = _backend(tmp_path)
    backend.restore(rules.render_takeover(NAMES, "web", [BLUE], backend.list_chain("DEPLOYER-web") or []))
    assert int((tmp_path / "nftables.generation").read_text()) > 10**15
    backend.list_chain("DEPLOYER-web")
    assert reader.ran == ["list table ip deployer"] * 3  # nothing was trusted: each call read the table


def test_a_planted_link_is_not_written_through(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "nftables.generation").symlink_to(target)
    backend, writer, _ = _backend(tmp_path)
    backend.restore(rules.render_takeover(NAMES, "web", [BLUE], backend.list_chain("DEPLOYER-web") or []))
    assert target.read_text() == "keep" and writer.ran


def test_without_libnftables_the_table_reads_as_empty_and_a_write_says_what_is_missing(tmp_path):
    class Missing:
        def run(self, text: str) -> str:
            raise RulesError("libnftables.so.1 is not installed (Debian: apt-get install libnftables1)")

    backend = NftablesBackend(Missing(), FakeIptables(), table="deployer", prefix="DEPLOYER")  # type: ignore[arg-type]
    assert (backend.save_table("nat"), backend.list_chain("DEPLOYER-web")) == ("*nat\nCOMMIT\n", None)
    with pytest.raises(RulesError, match="is not installed"):
        backend.restore(rules.render_chain(NAMES, "web", [GREEN]))


def test_a_rule_deleted_by_its_handle_leaves_the_next_commands_on_the_table():
    listing = """table ip deployer { # handle 1
	chain POSTROUTING { # handle 3
		type nat hook postrouting priority srcnat + 5; policy accept;
		jump DEPLOYER-POSTROUTING # handle 5
		jump DEPLOYER-SNAT # handle 6
	}
	chain DEPLOYER-SNAT { # handle 4
	}
}
"""
    text = "*nat\n-D POSTROUTING -j DEPLOYER-SNAT\n-F DEPLOYER-SNAT\n-X DEPLOYER-SNAT\nCOMMIT\n"
    assert _translate(text, nft.parse_listing(listing)).nat.splitlines()[4:] == [  # after the base chains
        "delete rule ip deployer POSTROUTING handle 6",
        "flush chain ip deployer DEPLOYER-SNAT",
        "delete chain ip deployer DEPLOYER-SNAT",
    ]
