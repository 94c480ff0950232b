"""keepalived's configuration, rendered from [cluster]. Pure: the text, exactly; nothing is written here.

Membership and failover are keepalived's: one VRRP instance per bucket, every host in every instance, with
priorities rotated so that each bucket has a home host and ordered backups (`plan.cluster.ranking`). keepalived
tells the deployer what it became through `vrrp_notify_fifo` (`INSTANCE "b0" MASTER 200`), and the deployer turns
"which buckets am I master of" into its node mask.

Two track files put every instance of this host into FAULT at once, so its peers take all its buckets:
`track-health`, written by the agent from its own view (are this host's active instances healthy?), and
`track-leave`, which the agent writes when `deployer cluster leave` or `join` asks it to. A non-zero number in either means FAULT (weight 0).

With `unicast = true`, each instance sends its adverts to the other hosts' addresses (`unicast_peer`) instead of
the VRRP multicast group, and takes adverts only from them (`check_unicast_src`); the cluster's filter chain
(`plan.cluster.vrrp_filter_rules`) drops VRRP from any other source before keepalived sees it. VRRP itself carries
no authentication: see docs/cluster.md for what each mode trusts.

keepalived 2.2.7 wants a virtual address on a VRRPv3 instance. Each instance gets one that harms nothing:
127.255.<router id>.1/32 on `lo`, an address nobody routes to and no ARP is ever sent for.
"""

from __future__ import annotations

from pathlib import Path

from deployer.config.cluster import ClusterConfig
from deployer.plan.cluster import instance_name, priority

HEALTH_TRACK = "deployer_health"
LEAVE_TRACK = "deployer_leave"


def router_id(cluster: ClusterConfig, bucket: int) -> int:
    return cluster.router_id_base + bucket


def placeholder_address(cluster: ClusterConfig, bucket: int) -> str:
    return f"127.255.{router_id(cluster, bucket)}.1/32"


def render_config(
    cluster: ClusterConfig, *, notify_fifo: Path, health_file: Path, leave_file: Path, source: Path
) -> str:
    """The whole keepalived.conf of this host."""
    me = cluster.peer(cluster.host)
    lines = [
        f"# Rendered by the deployer from [cluster] in {source}; changes here are overwritten.",
        "global_defs {",
        f"    router_id deployer-{cluster.host}",
        f"    vrrp_notify_fifo {notify_fifo}",
        "    vrrp_garp_master_repeat 1",
        "    vrrp_garp_master_refresh 0",
        "}",
        "",
        f"track_file {HEALTH_TRACK} {{",
        f"    file {health_file}",
        "    weight 0",
        "}",
        "",
        f"track_file {LEAVE_TRACK} {{",
        f"    file {leave_file}",
        "    weight 0",
        "}",
    ]
    for bucket in range(cluster.buckets):
        lines += [
            "",
            f"vrrp_instance {instance_name(bucket)} {{",
            "    state BACKUP",
            f"    interface {cluster.interface}",
            f"    virtual_router_id {router_id(cluster, bucket)}",
            "    version 3",
            f"    priority {priority(cluster, bucket, cluster.host)}",
            f"    advert_int {cluster.advert_interval:g}",
        ]
        if cluster.unicast:
            lines.append(f"    unicast_src_ip {me.address}")
            if cluster.peers:
                lines += [
                    "    check_unicast_src",
                    "    unicast_peer {",
                    *(f"        {peer.address}" for peer in cluster.peers),
                    "    }",
                ]
        else:
            lines.append(f"    mcast_src_ip {me.address}")
        lines += [
            "    track_file {",
            f"        {HEALTH_TRACK}",
            f"        {LEAVE_TRACK}",
            "    }",
            "    virtual_ipaddress {",
            f"        {placeholder_address(cluster, bucket)} dev lo",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"
