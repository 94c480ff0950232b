"""The nftables backend: the iptables chains translated into nft text and back, exactly (plan/nft.py), and the
backend's routing of a transaction (host/nft_backend.py) through hand-written fakes."""

from __future__ import annotations

import pytest

from deployer.config import AppConfig, HealthCheck, PortMapping
from deployer.errors import RulesError
from deployer.host.nft_backend import NftablesBackend
from deployer.plan import canary, hostbound, maintenance, nft, rules
from deployer.plan.rules import ChainNames, Forward, SavedTable

NAMES = ChainNames("DEPLOYER")
BLUE = Forward("tcp", 18080, "172.18.0.2", 80, "web blue v1").rule("DEPLOYER-web")
GREEN = Forward("tcp", 18080, "172.18.0.3", 80, "web green v2").rule("DEPLOYER-web")
UDP = Forward("udp", 18081, "172.18.0.3", 53, "web green v2").rule("DEPLOYER-web")


def test_a_first_deploy_becomes_one_nft_transaction_with_the_base_chains_in_front():
    text = rules.render_restore(SavedTable(), NAMES, "deployer0", {"web": [BLUE]})
    assert nft.translate_restore(text, "deployer") == ((
        "add table ip deployer\n"
        "add chain ip deployer PREROUTING { type nat hook prerouting priority dstnat - 5; policy accept; }\n"
        "add chain ip deployer OUTPUT { type nat hook output priority -105; policy accept; }\n"
        "add chain ip deployer POSTROUTING { type nat hook postrouting priority srcnat + 5; policy accept; }\n"
        "add chain ip deployer DEPLOYER\n"
        "flush chain ip deployer DEPLOYER\n"
        "add chain ip deployer DEPLOYER-POSTROUTING\n"
        "flush chain ip deployer DEPLOYER-POSTROUTING\n"
        "add chain ip deployer DEPLOYER-web\n"
        "flush chain ip deployer DEPLOYER-web\n"
        'add rule ip deployer DEPLOYER-POSTROUTING ip saddr 127.0.0.0/8 oifname "deployer0" masquerade '
        'comment "deployer: loopback clients"\n'
        'add rule ip deployer DEPLOYER-web tcp dport 18080 dnat to 172.18.0.2:80 comment "web blue v1"\n'
        "add rule ip deployer DEPLOYER jump DEPLOYER-web\n"
        "insert rule ip deployer PREROUTING fib daddr type local jump DEPLOYER\n"
        "insert rule ip deployer OUTPUT fib daddr type local jump DEPLOYER\n"
        "add rule ip deployer POSTROUTING jump DEPLOYER-POSTROUTING\n"), "")


def test_a_flip_is_an_add_only_insert_then_a_tidy_that_declares_the_chain():
    takeover = rules.render_takeover(NAMES, "web", [GREEN, UDP], [BLUE])
    assert nft.translate_restore(takeover, "deployer") == ((
        'insert rule ip deployer DEPLOYER-web udp dport 18081 dnat to 172.18.0.3:53 comment "web green v2"\n'
        'insert rule ip deployer DEPLOYER-web tcp dport 18080 dnat to 172.18.0.3:80 comment "web green v2"\n'), "")
    assert nft.translate_restore(rules.render_chain(NAMES, "web", [GREEN]), "deployer") == ((
        "add chain ip deployer DEPLOYER-web\n"
        "flush chain ip deployer DEPLOYER-web\n"
        'add rule ip deployer DEPLOYER-web tcp dport 18080 dnat to 172.18.0.3:80 comment "web green v2"\n'), "")


def test_each_rule_the_backend_writes_comes_back_as_the_line_iptables_save_prints():
    app = AppConfig(name="web", image="web", ports=(PortMapping(18080, 80, "tcp", 18081, 18082),),
                    health=HealthCheck(type="tcp", port=80))
    written = [*maintenance.redirect_rules("DEPLOYER-web", app, 8999),  # maintenance
               Forward("tcp", 1005, "172.18.0.3", 8080, "web status green v2").rule("DEPLOYER-web"),  # drain port
               GREEN, UDP, rules.app_jump(NAMES, "web"), *rules.builtin_jumps(NAMES).values(),
               *rules.postrouting_rules(NAMES, "deployer0")]
    for line in written:
        chain, body = line.split(" ", 2)[1], line.split(" ", 2)[2]
        assert nft.rule_to_iptables(chain, nft.rule_to_nft(body)) == line
    assert nft.rule_to_nft(written[0].split(" ", 2)[2]) == 'tcp dport 18080 redirect to :8999 comment "web maintenance"'


def test_what_the_backend_cannot_write_is_refused_before_anything_is_applied():
    split = canary.split_rules("DEPLOYER-web", [Forward("tcp", 18080, "172.18.0.2", 80, "web blue v1")],
                               [Forward("tcp", 18080, "172.18.0.3", 80, "web green v2 canary")], 10)
    socket = hostbound.app_rules(NAMES, _host_bound(), 8999)[0]
    for line in (split[0], socket):
        with pytest.raises(RulesError, match='needs backend = "iptables" for now'):
            nft.translate_restore(f"*nat\n{line}\nCOMMIT\n", "deployer")
    quoted = Forward("tcp", 18080, "172.18.0.3", 80, 'web "green"').rule("DEPLOYER-web")
    with pytest.raises(RulesError, match="no double quote"):
        nft.translate_restore(f"*nat\n{quoted}\nCOMMIT\n", "deployer")
    with pytest.raises(RulesError, match="top of a chain only"):
        nft.translate_restore(f"*nat\n-I DEPLOYER-web 2 {GREEN.split(' ', 2)[2]}\nCOMMIT\n", "deployer")


def _host_bound() -> AppConfig:
    return AppConfig(name="nginx", image="", ports=(PortMapping(80, 80, "tcp", 0, 0),),
                     health=HealthCheck(type="tcp", port=80), host_bound=True)


LISTING = """table ip deployer { # handle 1
	chain PREROUTING { # handle 1
		type nat hook prerouting priority dstnat - 5; policy accept;
		fib daddr type local jump DEPLOYER # handle 10
	}

	chain DEPLOYER { # handle 4
		jump DEPLOYER-web # handle 9
	}

	chain DEPLOYER-web { # handle 6
		tcp dport 18080 dnat to 172.18.0.3:80 comment "web green v2" # handle 8
		tcp dport 18080 dnat to 172.18.0.2:80 comment "web blue v1" # handle 7
		ip daddr 10.0.0.1 counter packets 0 bytes 0 accept # handle 11
	}
}
"""


def test_a_listing_reads_as_iptables_save_text_and_a_foreign_rule_never_equals_a_wanted_one():
    listing = nft.parse_listing(LISTING)
    assert listing.saved() == (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:DEPLOYER - [0:0]\n:DEPLOYER-web - [0:0]\n"
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER\n"
        "-A DEPLOYER -j DEPLOYER-web\n"
        f"{GREEN}\n{BLUE}\n"
        '-A DEPLOYER-web -m comment --comment "nft: ip daddr 10.0.0.1 counter packets 0 bytes 0 accept"\n'
        "COMMIT\n")
    assert listing.rules("DEPLOYER-other") is None


def test_a_teardown_deletes_rules_by_the_handles_read_and_removes_the_table():
    listing = nft.parse_listing(LISTING)
    text = rules.render_teardown(rules.parse_nat(listing.saved()), NAMES)
    nat, other = nft.translate_restore(text, "deployer", listing)
    assert (nat.splitlines()[4:], other) == ([
        "delete rule ip deployer PREROUTING handle 10",
        "flush chain ip deployer DEPLOYER", "flush chain ip deployer DEPLOYER-web",
        "delete chain ip deployer DEPLOYER", "delete chain ip deployer DEPLOYER-web",
        "delete table ip deployer"], "")
    with pytest.raises(RulesError, match="no such rule to delete"):
        nft.translate_restore(f"*nat\n-D DEPLOYER-web {UDP.split(' ', 2)[2]}\nCOMMIT\n", "deployer", listing)


# --- the backend, through fakes -------------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, tables: dict[str, str]) -> None:
        self.tables = tables  # "list ..." command -> its output; a missing one fails as nft does
        self.ran: list[str] = []

    def run(self, text: str) -> str:
        self.ran.append(text)
        if text.startswith("list "):
            if text not in self.tables:
                raise RulesError("nft refused the transaction: Error: No such file or directory")
            return self.tables[text]
        return ""


class FakeIptables:
    def __init__(self) -> None:
        self.ran: list[str] = []

    def save_table(self, table: str) -> str:
        self.ran.append(f"save {table}")
        return f"*{table}\nCOMMIT\n"

    def restore(self, text: str) -> None:
        self.ran.append("restore " + " | ".join(text.strip().splitlines()))


def test_the_backend_writes_nat_in_its_table_and_leaves_filter_to_iptables():
    runner, iptables = FakeRunner({}), FakeIptables()
    backend = NftablesBackend(runner, iptables, table="deployer")  # type: ignore[arg-type]
    assert backend.save_table("nat") == "*nat\nCOMMIT\n"  # no table yet
    assert backend.list_chain("DEPLOYER-web") is None
    backend.restore(f"*filter\n-A DEPLOYER-FORWARD -j ACCEPT\nCOMMIT\n*nat\n{GREEN}\nCOMMIT\n")
    assert iptables.ran == ["restore *filter | -A DEPLOYER-FORWARD -j ACCEPT | COMMIT"]
    assert runner.ran[-1] == ('add rule ip deployer DEPLOYER-web tcp dport 18080 dnat to 172.18.0.3:80 '
                              'comment "web green v2"\n')
    assert backend.save_table("mangle") == "*mangle\nCOMMIT\n" and iptables.ran[-1] == "save mangle"


def test_the_backend_reads_handles_only_for_a_transaction_that_deletes():
    runner = FakeRunner({"list table ip deployer": LISTING, "list chain ip deployer DEPLOYER-web": LISTING})
    backend = NftablesBackend(runner, FakeIptables(), table="deployer")  # type: ignore[arg-type]
    foreign = '-A DEPLOYER-web -m comment --comment "nft: ip daddr 10.0.0.1 counter packets 0 bytes 0 accept"'
    assert backend.list_chain("DEPLOYER-web") == [GREEN, BLUE, foreign]
    backend.restore(rules.render_chain(NAMES, "web", [GREEN]))
    assert runner.ran[1:] == [nft.translate_restore(rules.render_chain(NAMES, "web", [GREEN]), "deployer")[0]]
    backend.restore(f"*nat\n-D DEPLOYER-web {BLUE.split(' ', 2)[2]}\nCOMMIT\n")
    assert runner.ran[2:] == ["list table ip deployer", "delete rule ip deployer DEPLOYER-web handle 7\n"]


def test_without_libnftables_the_table_reads_as_empty_and_a_write_says_what_is_missing():
    class Missing:
        def run(self, text: str) -> str:
            raise RulesError("libnftables.so.1 is not installed (Debian: apt-get install libnftables1)")

    backend = NftablesBackend(Missing(), FakeIptables(), table="deployer")  # type: ignore[arg-type]
    assert (backend.save_table("nat"), backend.list_chain("DEPLOYER-web")) == ("*nat\nCOMMIT\n", None)
    with pytest.raises(RulesError, match="is not installed"):
        backend.restore(rules.render_chain(NAMES, "web", [GREEN]))
