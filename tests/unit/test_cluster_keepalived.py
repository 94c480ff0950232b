"""keepalived's configuration, rendered from [cluster], as exact text."""

from pathlib import Path

from deployer.plan.keepalived import render_config
from support.configs import cluster_config

PATH = Path("/etc/deployer/deployer.toml")
STATE = Path("/var/lib/deployer/state/cluster")


def cluster(host: str, **extra):
    hosts = [{"name": "a", "address": "198.18.10.1"}, {"name": "b", "address": "198.18.10.2"}]
    table = {
        "interface": "eth1",
        "buckets": 3,
        "hash_seed": 7,
        "host": host,
        "advert_interval": 0.2,
        "router_id_base": 60,
        "hosts": hosts,
        **extra,
    }
    return cluster_config(PATH, table).cluster


def render(host: str, **extra) -> str:
    return render_config(
        cluster(host, **extra),
        notify_fifo=STATE / "notify.fifo",
        health_file=STATE / "track-health",
        leave_file=STATE / "track-leave",
        source=PATH,
    )


def instance(bucket: int, priority: int, source: str, advert: str = "0.2") -> str:
    return f"""
vrrp_instance b{bucket} {{
    state BACKUP
    interface eth1
    virtual_router_id {60 + bucket}
    version 3
    priority {priority}
    advert_int {advert}
    mcast_src_ip {source}
    track_file {{
        deployer_health
        deployer_leave
    }}
    virtual_ipaddress {{
        127.255.{60 + bucket}.1/32 dev lo
    }}
}}
"""


HEAD = """\
# Rendered by the deployer from [cluster] in /etc/deployer/deployer.toml; changes here are overwritten.
global_defs {
    router_id deployer-%s
    vrrp_notify_fifo /var/lib/deployer/state/cluster/notify.fifo
    vrrp_garp_master_repeat 1
    vrrp_garp_master_refresh 0
}

track_file deployer_health {
    file /var/lib/deployer/state/cluster/track-health
    weight 0
}

track_file deployer_leave {
    file /var/lib/deployer/state/cluster/track-leave
    weight 0
}
"""


def test_the_config_of_a_home_host_and_a_backup():
    assert render("a") == HEAD % "a" + instance(0, 200, "198.18.10.1") + instance(1, 195, "198.18.10.1") + instance(
        2, 200, "198.18.10.1"
    )
    assert render("b") == HEAD % "b" + instance(0, 195, "198.18.10.2") + instance(1, 200, "198.18.10.2") + instance(
        2, 195, "198.18.10.2"
    )


def test_the_advert_interval_is_written_as_configured():
    assert "    advert_int 1\n" in render("a", advert_interval=1)
    assert "    advert_int 0.05\n" in render("a", advert_interval=0.05)


def unicast_instance(bucket: int, priority: int, source: str, peers: list[str]) -> str:
    return f"""
vrrp_instance b{bucket} {{
    state BACKUP
    interface eth1
    virtual_router_id {60 + bucket}
    version 3
    priority {priority}
    advert_int 0.2
    unicast_src_ip {source}
    check_unicast_src
    unicast_peer {{
{"".join(f"        {peer}{chr(10)}" for peer in peers)}    }}
    track_file {{
        deployer_health
        deployer_leave
    }}
    virtual_ipaddress {{
        127.255.{60 + bucket}.1/32 dev lo
    }}
}}
"""


def test_with_unicast_each_instance_sends_to_the_other_hosts_and_takes_adverts_from_them_only():
    three = [
        {"name": "a", "address": "198.18.10.1"},
        {"name": "b", "address": "198.18.10.2"},
        {"name": "c", "address": "198.18.10.3"},
    ]
    assert render("b", unicast=True, hosts=three) == HEAD % "b" + unicast_instance(
        0, 195, "198.18.10.2", ["198.18.10.1", "198.18.10.3"]
    ) + unicast_instance(1, 200, "198.18.10.2", ["198.18.10.1", "198.18.10.3"]) + unicast_instance(
        2, 190, "198.18.10.2", ["198.18.10.1", "198.18.10.3"]
    )
    assert "mcast_src_ip" not in render("b", unicast=True, hosts=three)


def test_a_lone_host_with_unicast_names_its_source_and_no_peer():
    text = render("a", unicast=True, hosts=[{"name": "a", "address": "198.18.10.1"}])
    assert "    unicast_src_ip 198.18.10.1\n    track_file {\n" in text
    assert "unicast_peer" not in text and "check_unicast_src" not in text
