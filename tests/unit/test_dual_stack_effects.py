"""A dual-stack host (`[deployer] ipv6 = true`) through the engine's hand-written fakes: the exact order of the
effects on both families. The IPv6 chain is the IPv4 one with each instance's IPv6 address; on iptables its move
commits first; conntrack filters get their IPv6 twins; a chain that fell behind (a crash between the two
commits) is repaired by reconcile. A host-bound app's socket match and its page reach its IPv6 clients too.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from deployer.errors import BootError, UsageError
from deployer.host import modes
from support.configs import host_bound_app
from support.engine_fakes import NEW, OLD, OLD_RULE, FakeNetfilter, Host, dnat

OLD6, NEW6 = "fd6e:3b1d:5e2a::2", "fd6e:3b1d:5e2a::3"
NEW_RULE = dnat(NEW, "green", "v2")
OLD_RULE6 = OLD_RULE.replace(f"{OLD}:80", f"[{OLD6}]:80")
NEW_RULE6 = NEW_RULE.replace(f"{NEW}:80", f"[{NEW6}]:80")
MASQUERADE = '-o deployer0 -m comment --comment "deployer: loopback clients" -j MASQUERADE'
HEADS = "*nat | :DEPLOYER - [0:0] | :DEPLOYER-POSTROUTING - [0:0] | :DEPLOYER-web - [0:0]"
BASE = (
    f"restore {HEADS} | -A DEPLOYER-POSTROUTING -s 127.0.0.0/8 {MASQUERADE} | -A DEPLOYER -j DEPLOYER-web | "
    "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER | -I OUTPUT 1 -m addrtype --dst-type LOCAL -j DEPLOYER | "
    "-A POSTROUTING -j DEPLOYER-POSTROUTING | COMMIT"
)
BASE6 = (  # ::1 is left alone: IPv6 has no route_localnet (plan/rules.py)
    f"ip6 restore {HEADS} | -A DEPLOYER -j DEPLOYER-web | -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER | "
    "-I OUTPUT 1 ! -d ::1/128 -m addrtype --dst-type LOCAL -j DEPLOYER | -A POSTROUTING -j DEPLOYER-POSTROUTING | COMMIT"
)
PREPARE_BRIDGE = ["network deployer deployer0 fd6e:3b1d:5e2a:eeb9::/64", "route_localnet deployer0"]


def dual_host(tmp_path) -> Host:
    host = Host(tmp_path)
    host.dual_stack()
    host.engine().deploy("web", "v1", actor="cli:ann")
    return host


def test_the_first_deploy_builds_both_families_base_and_points_both_chains_at_blue(tmp_path):
    host = Host(tmp_path)
    host.dual_stack()
    host.engine().deploy("web", "v1", actor="cli:ann")
    assert host.taken() == [
        "pull 127.0.0.1:5000/web:v1",
        "network deployer deployer0 fd6e:3b1d:5e2a:eeb9::/64",  # the network is made dual-stack
        "run deployer-web-blue 127.0.0.1:5000/web:v1 restart=no",
        "probe 127.0.0.1:18081",
        "probe 127.0.0.1:18081",
        # The same gate over the instance's IPv6 address: its addresses may still be tentative after its start.
        f"probe {OLD6}:80",
        f"probe {OLD6}:80",
        "restart-policy deployer-web-blue unless-stopped",
        *PREPARE_BRIDGE,
        BASE,
        BASE6,  # the same jumps and chains in ip6tables
        # Both chains were empty: nothing to shadow, each is written whole, IPv6 first.
        f"ip6 restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE6} | COMMIT",
        f"restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE} | COMMIT",
    ]
    assert host.netfilter6 is not None and host.netfilter6.list_chain("DEPLOYER-web") == [OLD_RULE6]


def test_a_deploy_moves_both_families_ipv6_first_then_tidies_and_cleans_both_families_flows(tmp_path):
    host = dual_host(tmp_path)
    host.taken()
    host.engine().deploy("web", "v2", actor="cli:ann")
    flips = [e for e in host.effects if "restore" in e or e.startswith("conntrack")]
    assert flips == [
        f"ip6 restore *nat | -I DEPLOYER-web 1 {NEW_RULE6.removeprefix('-A DEPLOYER-web ')} | COMMIT",
        f"restore *nat | -I DEPLOYER-web 1 {NEW_RULE.removeprefix('-A DEPLOYER-web ')} | COMMIT",
        f"restore *nat | :DEPLOYER-web - [0:0] | {NEW_RULE} | COMMIT",
        f"ip6 restore *nat | :DEPLOYER-web - [0:0] | {NEW_RULE6} | COMMIT",
        # The drain and the cleanup read both families: conntrack lists IPv4 unless told -f ipv6.
        f"conntrack -L -p tcp --orig-port-dst 18080 --reply-src {OLD} --state ESTABLISHED",
        f"conntrack -L -f ipv6 -p tcp --orig-port-dst 18080 --reply-src {OLD6} --state ESTABLISHED",
        f"conntrack -D -p tcp --orig-port-dst 18080 --reply-src {OLD}",
        f"conntrack -D -f ipv6 -p tcp --orig-port-dst 18080 --reply-src {OLD6}",
    ]
    assert host.chain() == [NEW_RULE]
    assert host.netfilter6 is not None and host.netfilter6.list_chain("DEPLOYER-web") == [NEW_RULE6]


def test_a_crash_between_the_two_commits_is_repaired_by_reconcile_on_the_ipv6_side_only(tmp_path):
    host = dual_host(tmp_path)
    assert host.netfilter6 is not None
    host.netfilter6.restore(f"*nat\n:DEPLOYER-web - [0:0]\n{OLD_RULE6.replace(OLD6, 'fd6e:3b1d:5e2a::99')}\nCOMMIT\n")
    host.taken()
    assert host.engine().reconcile("web", actor="cli:ann") == [
        f"IPv6 rules of web pointed at blue {OLD} (v1), as the IPv4 ones"
    ]
    assert [e for e in host.effects if "restore" in e] == [
        f"ip6 restore *nat | -I DEPLOYER-web 1 {OLD_RULE6.removeprefix('-A DEPLOYER-web ')} | COMMIT",
        f"ip6 restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE6} | COMMIT",
    ]
    assert host.netfilter6.list_chain("DEPLOYER-web") == [OLD_RULE6]
    assert host.chain() == [OLD_RULE]


def test_status_shows_both_families_and_an_ipv6_drift(tmp_path):
    host = dual_host(tmp_path)
    [status] = host.engine().status("web")
    assert status.rules_match and "IPv6: 1 rule, in step with IPv4" in status.notes
    assert [c["address6"] for c in status.containers] == [OLD6]
    assert host.netfilter6 is not None
    host.netfilter6.restore("*nat\n:DEPLOYER-web - [0:0]\nCOMMIT\n")
    [status] = host.engine().status("web")
    assert not status.rules_match
    assert "IPv6: the rules differ from what the record calls for (0 live, 1 wanted)" in status.notes


def test_an_app_that_opts_out_has_an_empty_ipv6_chain(tmp_path):
    host = Host(tmp_path)
    host.dual_stack()
    web = replace(host.config.apps["web"], ipv6=False)
    host.config = replace(host.config, apps={"web": web})
    host.engine().deploy("web", "v1", actor="cli:ann")
    assert host.netfilter6 is not None and host.netfilter6.list_chain("DEPLOYER-web") == []
    assert host.chain() == [OLD_RULE]
    assert not any("-f ipv6" in e for e in host.effects)


def test_the_ipv6_rules_take_each_twin_from_docker_now_not_from_what_the_process_learnt_before(tmp_path):
    host = dual_host(tmp_path)
    engine = host.engine()
    engine.chains.ipv6_of[OLD] = "fd6e:3b1d:5e2a::99"  # a twin of an earlier container that had the same IPv4
    host.taken()
    assert engine.reconcile("web", actor="cli:ann") == []  # the IPv6 chain is right: nothing to repair
    assert host.netfilter6 is not None and host.netfilter6.list_chain("DEPLOYER-web") == [OLD_RULE6]
    assert engine.chains.ipv6_of[OLD] == OLD6


def test_once_ipv6_is_turned_off_reconcile_removes_the_ipv6_rules_an_earlier_config_left(tmp_path):
    host = dual_host(tmp_path)
    ip6 = host.netfilter6
    assert ip6 is not None and ip6.list_chain("DEPLOYER-web") == [OLD_RULE6]
    host.config = replace(host.config, settings=replace(host.config.settings, ipv6=False))
    host.netfilter6 = None
    engine = host.engine()
    engine.chains.leftovers6 = (ip6,)  # what wiring gives a host with IPv6 off: the IPv6 backends, to empty
    host.taken()
    assert engine.reconcile(actor="cli:ann") == ["IPv6 rules of an earlier config removed (FakeNetfilter)"]
    assert ip6.list_chain("DEPLOYER-web") is None and ip6.list_chain("DEPLOYER") is None
    assert host.chain() == [OLD_RULE]  # IPv4 untouched
    assert engine.reconcile(actor="cli:ann") == []


def test_a_failover_cleans_the_dead_instances_ipv6_flows_by_the_twin_its_record_keeps(tmp_path):
    host = dual_host(tmp_path)
    state = host.engine().store.load("web")
    assert state.active is not None and state.active.address6 == OLD6
    host.docker.stop(state.active.container_id, 0)  # dead: Docker no longer tells its addresses
    host.taken()
    # A fresh process (the watchdog's), which has not learnt the twin from Docker while it lived.
    engine = host.engine()
    assert modes.failover_on(
        engine, host.config.apps["web"], container_id=state.active.container_id, failures=3, last="x"
    )
    assert [e for e in host.effects if e.startswith("conntrack")] == [
        f"conntrack -D -p tcp --orig-port-dst 18080 --reply-src {OLD}",
        f"conntrack -D -f ipv6 -p tcp --orig-port-dst 18080 --reply-src {OLD6}",
    ]


def test_the_watchdogs_retry_chain_is_written_and_removed_in_both_families_ipv6_first(tmp_path):
    host = dual_host(tmp_path)
    host.taken()
    engine = host.engine()
    modes.ensure_retries(engine.chains, [host.config.apps["web"]])
    rule = (
        "-A DEPLOYER-RETRY -i deployer0 -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate DNAT "
        '--ctorigdstport 18080 ! --ctstatus ASSURED --ctdir REPLY -m comment --comment "web: a refusal of its '
        'instance becomes a retry" -j DROP'
    )
    chain = f"*mangle | :DEPLOYER-RETRY - [0:0] | {rule} | -I PREROUTING 1 -j DEPLOYER-RETRY | COMMIT"
    assert host.taken() == [f"ip6 restore {chain}", f"restore {chain}"]
    assert modes.remove_retries(engine.chains) == ["mangle chain DEPLOYER-RETRY", "IPv6 mangle chain DEPLOYER-RETRY"]
    removal = "*mangle | -D PREROUTING -j DEPLOYER-RETRY | -F DEPLOYER-RETRY | -X DEPLOYER-RETRY | COMMIT"
    assert host.taken() == [f"restore {removal}", f"ip6 restore {removal}"]


def test_rules_ipv6_prints_the_ipv6_familys_transaction_as_it_is_applied(tmp_path):
    host = dual_host(tmp_path)
    engine = host.engine()
    assert engine.rules_text("web", ipv6=True) == "\n".join(
        [
            *HEADS.split(" | "),
            OLD_RULE6,  # no masquerade of loopback clients: IPv6 has no route_localnet
            "-A DEPLOYER -j DEPLOYER-web",
            "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER",
            "-I OUTPUT 1 ! -d ::1/128 -m addrtype --dst-type LOCAL -j DEPLOYER",
            "-A POSTROUTING -j DEPLOYER-POSTROUTING",
            "COMMIT",
            "",
        ]
    )
    assert f"--to-destination {OLD}:80" in engine.rules_text("web")  # without --ipv6: the IPv4 family's, as before


def test_rules_ipv6_on_the_nftables_backend_prints_the_table_ip6_commands(tmp_path):
    host = dual_host(tmp_path)
    host.config = replace(host.config, settings=replace(host.config.settings, backend="nftables"))
    text = host.engine().rules_text("web", ipv6=True)
    assert text.startswith("add table ip6 deployer\n") and " ip deployer " not in text, text
    assert "insert rule ip6 deployer OUTPUT ip6 daddr != ::1 fib daddr type local jump DEPLOYER\n" in text
    assert text.endswith(f'add element ip6 deployer tcp-ports {{ 18080 comment "web blue v1" : {OLD6} . 80 }}\n')


def test_rules_ipv6_on_a_host_without_ipv6_is_a_usage_error_that_says_why(tmp_path):
    with pytest.raises(UsageError, match=r"IPv6 is off on this host \(\[deployer\] ipv6 = false\)"):
        Host(tmp_path).engine().rules_text("web", ipv6=True)


def test_the_hosts_ipv6_forwarding_changes_are_audited_once_a_process(tmp_path):
    host = Host(tmp_path)
    host.dual_stack()
    changes = ["net.ipv6.conf.eth0.accept_ra=2 (was 1): eth0 keeps its default route", "net.ipv6.conf.all.forwarding=1"]
    asked = []
    host.forwarding6 = lambda: asked.append("asked") or changes
    engine = host.engine()
    engine.deploy("web", "v1", actor="cli:ann")
    engine.deploy("web", "v2", actor="cli:ann")
    assert asked == ["asked"]
    assert [e["detail"] for e in host.events if e["event"] == "host.sysctl"] == changes


# --- a host-bound app (a server on the host itself) ---------------------------------------------

SOCKET_RULES = [
    "-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 18080 -m socket --nowildcard -m comment --comment "
    '"web: a socket listens" -j RETURN',
    '-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 18080 -m comment --comment "web: nothing listens" '
    "-j REDIRECT --to-ports 8999",
]
HOSTBOUND_JUMP = "-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND"
# The same text in both families: the socket match, REDIRECT and the address type read the same in ip6tables.
SOCKET_CHAIN = (
    f"*nat | :DEPLOYER-HOSTBOUND - [0:0] | {' | '.join(SOCKET_RULES)} | "
    "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND | COMMIT"
)
PAGE = '-A DEPLOYER-web -p tcp -m tcp --dport 18080 -m comment --comment "web maintenance" -j REDIRECT --to-ports 8999'


def host_bound(tmp_path) -> Host:
    """A dual-stack host whose app `web` is a server on the host itself, listening on port 18080."""
    host = Host(tmp_path)
    host.dual_stack()
    host.config = replace(host.config, apps={"web": host_bound_app("web", 18080)})
    return host


def test_reconcile_writes_a_host_bound_apps_socket_match_in_both_families_and_then_changes_nothing(tmp_path):
    host = host_bound(tmp_path)
    engine = host.engine()
    assert engine.reconcile("web", actor="cli:ann") == [
        "jumps and chains of web restored",
        "socket-match rules of the host-bound apps written (DEPLOYER-HOSTBOUND)",
        "IPv6 socket-match rules of the host-bound apps written (DEPLOYER-HOSTBOUND)",
    ]
    assert host.taken() == [
        *PREPARE_BRIDGE,
        BASE,
        BASE6,
        f"restore {SOCKET_CHAIN}",
        f"ip6 restore {SOCKET_CHAIN}",  # no Docker read for twins: the app chain has no DNAT
    ]
    assert host.netfilter6 is not None
    for family in (host.netfilter, host.netfilter6):
        assert family.list_chain("DEPLOYER-HOSTBOUND") == SOCKET_RULES
        assert family.tables["nat"]["PREROUTING"][0] == HOSTBOUND_JUMP  # before the jump to the app chains
        assert family.list_chain("DEPLOYER-web") == []
    assert engine.reconcile("web", actor="cli:ann") == []
    assert not [e for e in host.taken() if "restore" in e]
    [status] = engine.status("web")
    assert status.rules_match, status
    assert "IPv6: the socket-match rules are in place" in status.notes
    assert "IPv6: 0 rules, in step with IPv4" in status.notes


def test_maintenance_of_a_host_bound_app_redirects_its_ipv6_clients_too(tmp_path):
    host = host_bound(tmp_path)
    host.engine().reconcile("web", actor="cli:ann")
    host.taken()
    modes.maintenance_on(host.engine(), "web", actor="cli:ann")
    modes.maintenance_off(host.engine(), "web", actor="cli:ann")
    assert [e for e in host.effects if "restore" in e] == [
        f"ip6 restore *nat | :DEPLOYER-web - [0:0] | {PAGE} | COMMIT",  # an empty chain: written whole
        f"restore *nat | :DEPLOYER-web - [0:0] | {PAGE} | COMMIT",
        # Back to an empty chain: no rule to put in front, so each family is rewritten, in the tidy's order.
        "restore *nat | :DEPLOYER-web - [0:0] | COMMIT",
        "ip6 restore *nat | :DEPLOYER-web - [0:0] | COMMIT",
    ]
    assert not [e for e in host.effects if e.startswith("conntrack")]  # nothing was DNATed: no flow to clean


def test_a_host_bound_apps_ipv6_socket_match_or_page_gone_is_seen_by_status_and_repaired_by_reconcile(tmp_path):
    host = host_bound(tmp_path)
    engine = host.engine()
    engine.reconcile("web", actor="cli:ann")
    modes.maintenance_on(engine, "web", actor="cli:ann")
    ip6 = host.netfilter6
    assert ip6 is not None
    ip6.restore(f"*nat\n-D PREROUTING {HOSTBOUND_JUMP.removeprefix('-A PREROUTING ')}\n:DEPLOYER-web - [0:0]\nCOMMIT\n")
    [status] = engine.status("web")
    assert not status.rules_match
    assert status.live_rules == [PAGE, *SOCKET_RULES]  # the IPv4 side, as it was
    assert "IPv6: the socket-match rules or their PREROUTING jump differ from what the config calls for" in (
        status.notes
    )
    assert "IPv6: the rules differ from what the record calls for (0 live, 1 wanted)" in status.notes
    host.taken()
    assert engine.reconcile("web", actor="cli:ann") == [
        "IPv6 socket-match rules of the host-bound apps written (DEPLOYER-HOSTBOUND)",
        "IPv6 rules of web set as its record says",
    ]
    assert [e for e in host.effects if "restore" in e] == [
        "ip6 restore *nat | -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND | COMMIT",
        f"ip6 restore *nat | :DEPLOYER-web - [0:0] | {PAGE} | COMMIT",
    ]
    [status] = engine.status("web")
    assert status.rules_match, status


def test_rules_ipv6_of_a_host_bound_app_shows_its_socket_rules_in_the_ipv6_transaction(tmp_path):
    host = host_bound(tmp_path)
    modes.maintenance_on(host.engine(), "web", actor="cli:ann")
    assert host.engine().rules_text("web", ipv6=True) == "\n".join(
        [
            *HEADS.split(" | "),
            ":DEPLOYER-HOSTBOUND - [0:0]",
            PAGE,
            "-A DEPLOYER -j DEPLOYER-web",
            "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER",
            "-I OUTPUT 1 ! -d ::1/128 -m addrtype --dst-type LOCAL -j DEPLOYER",
            "-A POSTROUTING -j DEPLOYER-POSTROUTING",
            *SOCKET_RULES,
            "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND",
            "COMMIT",
            "",
        ]
    )


def test_a_host_bound_apps_ipv6_rules_go_once_ipv6_is_turned_off(tmp_path):
    host = host_bound(tmp_path)
    host.engine().reconcile("web", actor="cli:ann")
    ip6 = host.netfilter6
    assert ip6 is not None and ip6.list_chain("DEPLOYER-HOSTBOUND") == SOCKET_RULES
    host.config = replace(host.config, settings=replace(host.config.settings, ipv6=False))
    host.netfilter6 = None
    engine = host.engine()
    engine.chains.leftovers6 = (ip6,)  # what wiring gives a host with IPv6 off: the IPv6 backends, to empty
    assert engine.reconcile(actor="cli:ann") == ["IPv6 rules of an earlier config removed (FakeNetfilter)"]
    assert ip6.tables["nat"]["PREROUTING"] == [] and ip6.list_chain("DEPLOYER-HOSTBOUND") is None
    assert host.netfilter.list_chain("DEPLOYER-HOSTBOUND") == SOCKET_RULES  # IPv4 untouched


def test_teardown_removes_a_host_bound_apps_socket_match_from_both_families(tmp_path):
    host = host_bound(tmp_path)
    engine = host.engine()
    engine.reconcile("web", actor="cli:ann")
    assert engine.chains.teardown()
    for family in (host.netfilter, host.netfilter6):
        assert family is not None
        assert family.tables["nat"] == {c: [] for c in FakeNetfilter.BUILTIN["nat"]}


def ipv4_only_network(tmp_path, *, explicit: bool) -> Host:
    """IPv6 on, by default or said, and a Docker network made IPv4-only before: no instance gets an IPv6 address."""
    host = Host(tmp_path)
    host.dual_stack()
    host.config = replace(host.config, settings=replace(host.config.settings, ipv6_explicit=explicit))
    host.docker.next_address6 = None
    return host


def test_by_default_an_ipv4_only_network_serves_ipv4_clients_alone_and_status_says_why(tmp_path):
    host = ipv4_only_network(tmp_path, explicit=False)
    host.engine().deploy("web", "v1", actor="cli:ann")
    assert host.chain() == [OLD_RULE]
    assert host.netfilter6 is not None and host.netfilter6.list_chain("DEPLOYER-web") == []  # no IPv6 rule to nothing
    [status] = host.engine().status("web")
    assert status.rules_match
    assert (
        "IPv6: not served: the instances have no IPv6 address, because the Docker network 'deployer' was made "
        "without IPv6. Remove it while nothing runs on it, and the next deploy makes it dual-stack (docs/ipv6.md)"
    ) in status.notes


def test_with_ipv6_said_in_the_config_an_instance_without_an_ipv6_address_fails_the_deploy(tmp_path):
    host = ipv4_only_network(tmp_path, explicit=True)
    with pytest.raises(BootError, match=r"has no IPv6 address on network 'deployer', and \[deployer\] ipv6 = true"):
        host.engine().deploy("web", "v1", actor="cli:ann")
    assert host.chain() is None


def test_the_hosts_ipv6_forwarding_is_made_safe_before_docker_makes_the_dual_stack_network(tmp_path):
    """Docker writes all.forwarding=1 itself when it makes a network with IPv6: accept_ra=2 must be there first."""
    host = Host(tmp_path)
    host.dual_stack()
    host.forwarding6 = lambda: host.effects.add("ipv6 forwarding made safe") or []
    host.engine().deploy("web", "v1", actor="cli:ann")
    network = "network deployer deployer0 fd6e:3b1d:5e2a:eeb9::/64"
    assert host.effects.index("ipv6 forwarding made safe") < host.effects.index(network)
    assert host.effects.count("ipv6 forwarding made safe") == 1  # once a process
