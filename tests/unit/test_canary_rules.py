"""The canary's split: the rules as exact text (as iptables-save prints them), the weight's bounds, the record's
transitions, and a model of the kernel's source-address hash that predicts the sticky split."""

import ipaddress

import pytest

from deployer.config import AppConfig, HealthCheck, PortMapping
from deployer.errors import CanaryError
from deployer.plan import app_chain, canary
from deployer.plan.records import SERVING, AppState
from deployer.plan.rules import ChainNames
from support.instances import BLUE, GREEN

NAMES = ChainNames("DEPLOYER")
DEMO = AppConfig(
    name="demo",
    image="127.0.0.1:5000/demo",
    ports=(PortMapping(1000, 8080, "tcp", 1001, 1002), PortMapping(1000, 9090, "udp", 1001, 1002)),
    health=HealthCheck(type="http", port=8080, path="/healthz"),
    status_port=1005,
)
NOW = "2026-11-21T11:00:00.000Z"

ACTIVE = [
    '-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m comment --comment "demo blue v1" '
    "-j DNAT --to-destination 172.18.0.2:8080",
    '-A DEPLOYER-demo -p udp -m udp --dport 1000 -m comment --comment "demo blue v1" '
    "-j DNAT --to-destination 172.18.0.2:9090",
]
STATUS = [
    '-A DEPLOYER-demo -p tcp -m tcp --dport 1005 -m comment --comment "demo status blue v1" '
    "-j DNAT --to-destination 172.18.0.2:8080"
]
ONLY_CANARY = [
    '-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m comment --comment "demo green v2 canary" '
    "-j DNAT --to-destination 172.18.0.3:8080",
    '-A DEPLOYER-demo -p udp -m udp --dport 1000 -m comment --comment "demo green v2 canary" '
    "-j DNAT --to-destination 172.18.0.3:9090",
]


def split_of(probability: str) -> list[str]:
    return [
        f"-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m statistic --mode random --probability {probability} "
        '-m comment --comment "demo green v2 canary" -j DNAT --to-destination 172.18.0.3:8080',
        f"-A DEPLOYER-demo -p udp -m udp --dport 1000 -m statistic --mode random --probability {probability} "
        '-m comment --comment "demo green v2 canary" -j DNAT --to-destination 172.18.0.3:9090',
        *ACTIVE,
    ]


def chain_at(weight: int, *, sticky: bool = False, seed: int = canary.LEGACY_SEED) -> list[str]:
    state = AppState(
        app="demo", active=BLUE, mode=canary.MODE, mode_detail=canary.Split(GREEN, weight, sticky, seed, NOW).detail()
    )
    return app_chain.for_record(NAMES, DEMO, state, 8999)


# --- the rules, exact ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight, printed", [(1, "0.00999999978"), (10, "0.10000000009"), (50, "0.50000000000"), (99, "0.99000000022")]
)
def test_a_split_puts_the_canary_rule_in_front_of_each_port_with_the_probability_iptables_save_prints(weight, printed):
    assert chain_at(weight) == split_of(printed) + STATUS


def test_weight_0_is_the_plain_chain_of_the_active_instance():
    assert chain_at(0) == ACTIVE + STATUS


def test_weight_100_is_the_plain_chain_of_the_canary():
    assert chain_at(100) == ONLY_CANARY + STATUS


def test_a_sticky_split_matches_a_hash_of_the_source_address_on_the_nearest_fraction_of_nodes():
    rules = chain_at(10, sticky=True, seed=0x1234)
    assert rules[0] == (
        "-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m cluster --cluster-local-nodemask 0x00000001 "
        "--cluster-total-nodes 10 --cluster-hash-seed 0x00001234 "
        '-m comment --comment "demo green v2 canary" -j DNAT --to-destination 172.18.0.3:8080'
    )
    assert rules[2:] == ACTIVE + STATUS
    assert [canary.sticky_nodes(w) for w in (1, 10, 37, 50, 60, 99)] == [
        (1, 32),
        (1, 10),
        (3, 8),
        (1, 2),
        (3, 5),
        (31, 32),
    ]


def test_a_sticky_canary_on_most_nodes_puts_the_active_instance_in_front_on_the_other_nodes():
    # iptables 1.8.9 restores no nodemask above 32 (it saves 0x7fffffff, then refuses it): 99% is the canary
    # everywhere but node 0 of 32.
    rules = chain_at(99, sticky=True, seed=1)
    assert rules == [
        "-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m cluster --cluster-local-nodemask 0x00000001 "
        "--cluster-total-nodes 32 --cluster-hash-seed 0x00000001 "
        '-m comment --comment "demo blue v1" -j DNAT --to-destination 172.18.0.2:8080',
        "-A DEPLOYER-demo -p udp -m udp --dport 1000 -m cluster --cluster-local-nodemask 0x00000001 "
        "--cluster-total-nodes 32 --cluster-hash-seed 0x00000001 "
        '-m comment --comment "demo blue v1" -j DNAT --to-destination 172.18.0.2:9090',
        *ONLY_CANARY,
        *STATUS,
    ]
    assert list(canary.canary_nodes(99)) == list(range(1, 32))
    assert all(
        int(r.split("--cluster-local-nodemask ")[1].split()[0], 16) <= 32
        for w in range(1, 100)
        for r in chain_at(w, sticky=True)
        if "cluster" in r
    )


@pytest.mark.parametrize("weight", [0, 100, -1, 101, 10.5, "10", True])
def test_a_weight_outside_1_to_99_is_refused_with_what_to_do_instead(weight):
    with pytest.raises(CanaryError, match=r"whole percentage from 1 to 99.*deployer abort.*deployer promote"):
        canary.check_weight(weight)
    with pytest.raises(CanaryError):
        canary.started(
            AppState(app="demo", active=BLUE), GREEN, weight=weight, sticky=False, seed=1, now=NOW, actor="t"
        )


# --- the record ----------------------------------------------------------------------------------


def test_a_canary_keeps_the_active_instance_and_names_the_canary_in_its_detail():
    state = canary.started(
        AppState(app="demo", active=BLUE, previous=None),
        GREEN,
        weight=10,
        sticky=True,
        seed=7,
        now=NOW,
        actor="cli:root",
        bake_until="2026-11-21T11:10:00.000Z",
    )
    assert state.active == BLUE and state.mode == canary.MODE
    assert canary.Split.of(state) == canary.Split(GREEN, 10, True, 7, NOW, "2026-11-21T11:10:00.000Z", "cli:root")


def test_promote_records_the_canary_as_the_release_and_the_old_active_as_previous():
    state = canary.started(
        AppState(app="demo", active=BLUE), GREEN, weight=10, sticky=False, seed=7, now=NOW, actor="t"
    )
    after = canary.promoted(state, now=NOW)
    assert (after.active, after.previous, after.mode, after.mode_detail) == (GREEN, BLUE, SERVING, {})


def test_abort_leaves_the_active_instance_and_forgets_the_canary():
    start = AppState(app="demo", active=BLUE, previous=GREEN)
    after = canary.aborted(canary.started(start, GREEN, weight=10, sticky=False, seed=7, now=NOW, actor="t"), now=NOW)
    assert (after.active, after.previous, after.mode, after.mode_detail) == (BLUE, GREEN, SERVING, {})


def test_promote_abort_and_reweight_need_a_canary_and_a_deploy_during_one_is_refused():
    plain = AppState(app="demo", active=BLUE)
    for decide in (canary.promoted, canary.aborted):
        with pytest.raises(CanaryError, match="runs no canary"):
            decide(plain, now=NOW)
    running = canary.started(plain, GREEN, weight=10, sticky=False, seed=7, now=NOW, actor="t")
    assert canary.reweighted(running, 10, now=NOW) is None
    assert canary.Split.of(canary.reweighted(running, 50, now=NOW)).weight == 50
    with pytest.raises(CanaryError, match=r"promote demo` or `deployer abort demo` first"):
        canary.refuse_deploy(running)
    canary.refuse_deploy(plain)


def test_a_sticky_weight_change_forgets_the_udp_flows_of_both_instances_and_a_per_connection_one_none():
    plain = AppState(app="demo", active=BLUE)
    sticky = canary.started(plain, GREEN, weight=10, sticky=True, seed=7, now=NOW, actor="t")
    per_connection = canary.started(plain, GREEN, weight=10, sticky=False, seed=7, now=NOW, actor="t")
    assert canary.rehashed_udp(canary.reweighted(sticky, 50, now=NOW)) == sorted({BLUE.address, GREEN.address})
    assert canary.rehashed_udp(canary.reweighted(per_connection, 50, now=NOW)) == []
    assert canary.rehashed_udp(plain) == []


def test_status_says_the_split_and_the_effective_share():
    running = canary.started(
        AppState(app="demo", active=BLUE), GREEN, weight=1, sticky=True, seed=7, now=NOW, actor="t"
    )
    assert app_chain.notes(DEMO, running) == [
        f"mode: canary v2 on green (172.18.0.3) takes 1% by client address (sticky) (effective 3.12%), v1 the rest; "
        f"since {NOW}"
    ]


# --- the kernel's hash ---------------------------------------------------------------------------

SOURCES = [str(ipaddress.ip_address("198.18.1.10") + i) for i in range(64)]


def test_the_hash_model_spreads_addresses_over_the_nodes():
    counts = [0] * 10
    for i in range(10000):
        counts[canary.cluster_node(str(ipaddress.ip_address("10.0.0.0") + i), 10, 99)] += 1
    assert all(900 < c < 1100 for c in counts)


def test_the_hash_model_matches_known_values():
    # Checked on this kernel by tests/integration/test_canary.py, which sends from each address and sees where
    # the sticky rule put it; these pin the model so a refactoring cannot change it silently.
    assert [canary.cluster_node(a, 32, 0x5EED0001) for a in SOURCES[:4]] == KNOWN_NODES


KNOWN_NODES = [15, 16, 2, 10]


@pytest.mark.parametrize(
    "address, node",
    [
        ("fd42:d0c::3", 13),
        ("fd42:d0c:ffff::1", 13),  # the same first 32 bits: the same node, whatever follows
        ("253.66.13.12", 13),  # fd42:0d0c as an IPv4 address: the same four bytes
        ("fd42:d0d::3", 20),
        ("2001:db8::1", 16),
        ("2001:db8:85a3::8a2e:370:7334", 16),
        ("::1", 25),
        ("::ffff:198.18.1.10", 25),
        ("0.0.0.0", 25),
    ],
)
def test_an_ipv6_client_is_placed_by_the_first_32_bits_of_its_address(address, node):
    # xt_cluster hashes one 32-bit word of an IPv6 source (canary.hashed_bytes); checked on this kernel, for
    # both ip6tables' cluster match and the nftables table's jhash, by tests/integration/test_nftables_table.py.
    assert canary.cluster_node(address, 32, 0x5EED0001) == node


@pytest.mark.parametrize(
    "seed, ok",
    [
        (0, True),
        (7, True),
        (0xFFFFFFFF, True),
        (-1, False),
        (0x100000000, False),
        (True, False),
        ("7", False),
        (1.0, False),
    ],
)
def test_a_seed_is_a_whole_number_of_32_bits(seed, ok):
    if ok:
        assert canary.check_seed(seed) == seed
    else:
        with pytest.raises(CanaryError, match="the hash seed must be a whole number from 0 to 0xffffffff"):
            canary.check_seed(seed)
