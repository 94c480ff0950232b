"""The [cluster] table: what loads, and the refusal of every config that would split or double the traffic."""

from pathlib import Path

import pytest

from deployer import config
from deployer.config.cluster import ClusterConfig, ClusterHost
from deployer.errors import ConfigError

PATH = Path("/etc/deployer/deployer.toml")
APP = {"image": "registry.example/web", "ports": [{"external": 80, "container": 8080, "blue": 8001, "green": 8002}]}
CLUSTER = {
    "address": "198.18.10.100",
    "interface": "eth0",
    "subnet": "198.18.10.0/24",
    "buckets": 6,
    "hash_seed": "0xdeadbeef",
    "host": "h2",
    "hosts": [
        {"name": "h1", "address": "198.18.10.1"},
        {"name": "h2", "address": "198.18.10.2"},
        {"name": "h3", "address": "198.18.10.3"},
    ],
}


def load(cluster: dict | None = None, *, app: dict | None = None) -> config.Config:
    data = {"apps": {"web": {**APP, **(app or {})}}}
    if cluster is not None:
        data["cluster"] = cluster
    return config.parse(data, path=PATH, environ={})


def refusal(cluster: dict | None = None, *, app: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(cluster, app=app)
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_a_cluster_loads_on_the_nftables_backend_too():
    data = {"deployer": {"backend": "nftables"}, "apps": {"web": {**APP, "cluster": True}}, "cluster": CLUSTER}
    loaded = config.parse(data, path=PATH, environ={})
    assert (loaded.settings.backend, loaded.apps["web"].cluster) == ("nftables", True)


def test_a_cluster_loads_with_its_defaults():
    loaded = load(CLUSTER, app={"cluster": True})
    assert loaded.cluster == ClusterConfig(
        address="198.18.10.100",
        interface="eth0",
        subnet="198.18.10.0/24",
        buckets=6,
        hash_seed=0xDEADBEEF,
        host="h2",
        hosts=(ClusterHost("h1", "198.18.10.1"), ClusterHost("h2", "198.18.10.2"), ClusterHost("h3", "198.18.10.3")),
        advert_interval=0.2,
        router_id_base=50,
        mark=0x4000000,
        multicast_mac="03:00:c6:12:0a:64",
        check_interval=0.2,
        handover_delay=0.25,
        arp="mangle",
    )
    assert loaded.apps["web"].cluster is True


def test_no_cluster_table_means_no_cluster_and_apps_are_not_shared():
    loaded = load()
    assert loaded.cluster is None and loaded.apps["web"].cluster is False


def test_the_handover_delay_outlasts_one_advert_interval_by_default():
    assert load({**CLUSTER, "advert_interval": 1}).cluster.handover_delay == 1.25
    assert load({**CLUSTER, "handover_delay": 0}).cluster.handover_delay == 0


def test_a_decimal_seed_loads_as_a_number():
    assert load({**CLUSTER, "hash_seed": 12345}).cluster.hash_seed == 12345
    assert load({**CLUSTER, "hash_seed": "0012"}).cluster.hash_seed == 12


def test_more_than_32_buckets_is_refused():
    assert refusal({**CLUSTER, "buckets": 33}) == (
        f"{PATH}, key 'cluster.buckets': must be a whole number from 1 to 32 (the cluster match's limit)"
    )


def test_fewer_buckets_than_hosts_is_refused():
    assert refusal({**CLUSTER, "buckets": 2}) == (
        f"{PATH}, key 'cluster.buckets': must be at least the number of hosts (3), so each host is home to a bucket"
    )


def test_a_host_listed_twice_by_name_is_refused():
    hosts = [*CLUSTER["hosts"], {"name": "h1", "address": "198.18.10.9"}]
    assert refusal({**CLUSTER, "hosts": hosts}) == (
        f"{PATH}, key 'cluster.hosts[3]': host 'h1' (198.18.10.9) is listed twice: 'h1' has that name"
    )


def test_a_host_listed_twice_by_address_is_refused():
    hosts = [*CLUSTER["hosts"], {"name": "h4", "address": "198.18.10.3"}]
    assert refusal({**CLUSTER, "hosts": hosts}) == (
        f"{PATH}, key 'cluster.hosts[3]': host 'h4' (198.18.10.3) is listed twice: 'h3' has that address"
    )


def test_a_shared_address_outside_the_subnet_is_refused():
    assert refusal({**CLUSTER, "address": "198.18.11.100"}) == (
        f"{PATH}, key 'cluster.address': 198.18.11.100 is outside the interface's subnet 198.18.10.0/24: "
        "hosts on one L2 segment share the address"
    )


def test_a_host_address_outside_the_subnet_is_refused():
    hosts = [CLUSTER["hosts"][0], {"name": "h2", "address": "10.0.0.2"}, CLUSTER["hosts"][2]]
    assert refusal({**CLUSTER, "hosts": hosts}) == (
        f"{PATH}, key 'cluster.hosts[1].address': 10.0.0.2 is outside the interface's subnet 198.18.10.0/24: "
        "hosts on one L2 segment share the address"
    )


@pytest.mark.parametrize("seed", ["deadbeef", "0xnope", 1.5, True, -1, 2**32, "99999999999"])
def test_a_seed_that_is_not_a_32_bit_number_is_refused(seed):
    assert refusal({**CLUSTER, "hash_seed": seed}) == (
        f"{PATH}, key 'cluster.hash_seed': must be a number from 0 to 4294967295 (or a string such as "
        '"0xdeadbeef"); every host needs the same one'
    )


def test_this_host_must_be_one_of_the_hosts():
    assert refusal({**CLUSTER, "host": "h9"}) == (
        f"{PATH}, key 'cluster.host': must name this host, one of [[cluster.hosts]] (h1, h2, h3)"
    )


def test_a_host_on_the_shared_address_is_refused():
    hosts = [*CLUSTER["hosts"][:2], {"name": "h3", "address": "198.18.10.100"}]
    assert refusal({**CLUSTER, "hosts": hosts}) == (
        f"{PATH}, key 'cluster.hosts[2].address': is the shared address; each host needs an address of its own"
    )


def test_a_mark_of_more_than_one_bit_is_refused():
    assert refusal({**CLUSTER, "mark": 3}) == (
        f"{PATH}, key 'cluster.mark': must be a single bit, e.g. 0x4000000: it is matched with itself as the mask"
    )


def test_router_ids_past_255_are_refused():
    assert refusal({**CLUSTER, "router_id_base": 251}) == (
        f"{PATH}, key 'cluster.router_id_base': must be a whole number from 1 to 250: the buckets' VRRP router ids "
        "run from it and stay at most 255"
    )


def test_a_unicast_mac_is_refused():
    assert refusal({**CLUSTER, "multicast_mac": "02:00:00:00:00:01"}).startswith(
        f"{PATH}, key 'cluster.multicast_mac': must be a multicast MAC address"
    )


def test_an_unknown_key_is_named():
    assert refusal({**CLUSTER, "bukets": 4}).startswith(f"{PATH}, key 'cluster.bukets': unknown key (allowed: ")


def test_an_app_on_the_shared_address_needs_a_cluster():
    assert refusal(app={"cluster": True}) == (
        f"{PATH}, app 'web', key 'cluster': needs a [cluster] table: it names the shared address"
    )


def test_unicast_is_off_by_default_and_names_the_other_hosts_as_peers():
    assert load(CLUSTER).cluster.unicast is False
    loaded = load({**CLUSTER, "unicast": True}).cluster
    assert loaded.unicast is True
    assert loaded.peers == (ClusterHost("h1", "198.18.10.1"), ClusterHost("h3", "198.18.10.3"))


@pytest.mark.parametrize("value", ["yes", 1, "true"])
def test_unicast_must_be_true_or_false(value):
    assert refusal({**CLUSTER, "unicast": value}) == f"{PATH}, key 'cluster.unicast': must be true or false"


# --- the shared IPv6 address -------------------------------------------------------------------------

CLUSTER6 = {
    **CLUSTER,
    "address6": "2001:db8:10::100",
    "subnet6": "2001:db8:10::/64",
    "hosts": [{**h, "address6": f"2001:db8:10::{i + 1}"} for i, h in enumerate(CLUSTER["hosts"])],
}


def load6(cluster: dict, *, ipv6: bool = True) -> config.Config:
    data = {"deployer": {"ipv6": ipv6}, "apps": {"web": {**APP, "cluster": True}}, "cluster": cluster}
    return config.parse(data, path=PATH, environ={})


def refusal6(cluster: dict, *, ipv6: bool = True) -> str:
    with pytest.raises(ConfigError) as caught:
        load6(cluster, ipv6=ipv6)
    return str(caught.value)


def test_a_dual_stack_cluster_loads_with_its_shared_ipv6_address_and_each_hosts_own():
    loaded = load6(CLUSTER6).cluster
    assert (loaded.address6, loaded.subnet6) == ("2001:db8:10::100", "2001:db8:10::/64")
    assert [(h.name, h.address6) for h in loaded.hosts] == [
        ("h1", "2001:db8:10::1"),
        ("h2", "2001:db8:10::2"),
        ("h3", "2001:db8:10::3"),
    ]
    assert loaded.multicast_mac == "03:00:c6:12:0a:64"  # one MAC for both families
    assert load(CLUSTER).cluster.address6 is None


def test_ipv6_on_a_cluster_host_needs_the_shared_ipv6_address():
    assert refusal6(CLUSTER) == (
        f"{PATH}, key 'deployer.ipv6': needs [cluster] address6 and subnet6 on a cluster host, and an address6 for "
        "each of [[cluster.hosts]]: IPv6 clients are served on a shared IPv6 address of their own "
        "(docs/ipv6.md#the-cluster)"
    )


def test_a_shared_ipv6_address_needs_ipv6_on():
    assert refusal6(CLUSTER6, ipv6=False) == (
        f"{PATH}, key 'cluster.address6': needs [deployer] ipv6 = true: the apps' IPv6 rules serve what the shared "
        "IPv6 address takes in"
    )


def test_every_host_needs_an_ipv6_address_of_its_own_in_the_subnet():
    hosts = [*CLUSTER6["hosts"][:2], CLUSTER["hosts"][2]]
    assert refusal6({**CLUSTER6, "hosts": hosts}) == (
        f"{PATH}, key 'cluster.hosts[2].address6': must be an IPv6 address (with [cluster] address6, on every host)"
    )
    hosts = [*CLUSTER6["hosts"][:2], {**CLUSTER6["hosts"][2], "address6": "2001:db8:11::3"}]
    assert refusal6({**CLUSTER6, "hosts": hosts}) == (
        f"{PATH}, key 'cluster.hosts[2].address6': 2001:db8:11::3 is outside the interface's IPv6 subnet "
        "2001:db8:10::/64: hosts on one L2 segment share the address"
    )
    hosts = [*CLUSTER6["hosts"][:2], {**CLUSTER6["hosts"][2], "address6": "2001:db8:10::2"}]
    assert refusal6({**CLUSTER6, "hosts": hosts}) == (
        f"{PATH}, key 'cluster.hosts[2].address6': 2001:db8:10::2 is another host's; each host needs an IPv6 "
        "address of its own"
    )
    hosts = [*CLUSTER6["hosts"][:2], {**CLUSTER6["hosts"][2], "address6": "2001:db8:10::100"}]
    assert refusal6({**CLUSTER6, "hosts": hosts}).endswith(
        "2001:db8:10::100 is the shared IPv6 address; each host needs an IPv6 address of its own"
    )


def test_the_shared_ipv6_address_is_refused_outside_its_subnet_or_without_one():
    assert refusal6({**CLUSTER6, "address6": "fe80::100"}).startswith(
        f"{PATH}, key 'cluster.address6': fe80::100 is outside the interface's IPv6 subnet"
    )
    without = {k: v for k, v in CLUSTER6.items() if k != "subnet6"}
    assert refusal6(without) == f"{PATH}, key 'cluster.subnet6': is required and must be a string"
    assert refusal6({**CLUSTER6, "subnet6": "2001:db8:10::1/64"}) == (
        f"{PATH}, key 'cluster.subnet6': must be the interface's IPv6 subnet, e.g. 2001:db8:10::/64"
    )


def test_a_hosts_ipv6_address_without_the_shared_one_is_refused():
    assert refusal({**CLUSTER, "hosts": CLUSTER6["hosts"]}) == (
        f"{PATH}, key 'cluster.hosts[0].address6': needs [cluster] address6 and subnet6: a host's IPv6 address "
        "serves the shared IPv6 address"
    )
