"""`deployer cluster`: run the agent, show the buckets, leave and join. Thin: deployer/host/cluster.py acts."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from deployer import config as config_module
from deployer.cli.ops import seconds
from deployer.host.cluster import ClusterPaths, cluster_of
from deployer.plan import cluster as plan
from deployer.plan.keepalived import render_config
from deployer.wiring import build_cluster_agent, build_cluster_control


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "cluster",
        cmd_status,
        "share one address across hosts: each answers the flows of its hash buckets (docs/cluster.md)",
        "deployer cluster status",
        "Without an action: the same as `deployer cluster status`.",
    )
    p.add_argument("--json", action="store_true", help="print JSON for tools")
    actions = p.add_subparsers(dest="cluster_action", metavar="ACTION")

    command(
        actions,
        "run",
        cmd_run,
        "run the cluster agent: keepalived, the bucket rules, the health view",
        "deployer cluster run",
        "Write keepalived's config and the track files, add the shared address and the multicast MAC, write\n"
        "the bucket chain (owning nothing), start keepalived, then turn its notify FIFO into the buckets this\n"
        "host takes in, and its health checks into keepalived's track file. Runs until SIGTERM or Ctrl-C; at\n"
        "stop it drops its buckets, then stops keepalived, so its peers take over at once.",
    )

    s = command(
        actions,
        "status",
        cmd_status,
        "each bucket's home, this host's VRRP state of it, whether it takes it in, its live flows",
        "deployer cluster status --json",
    )
    s.add_argument("--json", action="store_true", help="print JSON for tools")

    leave = command(
        actions,
        "leave",
        cmd_leave,
        "hand this host's buckets to its peers",
        "deployer cluster leave --wait --timeout 120",
        "New connections go to the peers at once; established TCP connections finish here. Refused\n"
        "when no other host is healthy to take the buckets, unless --force. With --wait, return once the\n"
        "buckets are gone and the TCP connections this host took in have finished; exit 1 after\n"
        "--timeout.",
    )
    leave.add_argument("--wait", action="store_true", help="wait until the buckets are gone and the flows finished")
    leave.add_argument("--timeout", type=seconds, default=300.0, help="seconds --wait waits at most (default 300)")
    leave.add_argument("--force", action="store_true", help="leave even when no other host would take the buckets")

    join = command(
        actions, "join", cmd_join, "take part again: this host's home buckets come back", "deployer cluster join --wait"
    )
    join.add_argument("--wait", action="store_true", help="wait until the home buckets are back")
    join.add_argument("--timeout", type=seconds, default=60.0, help="seconds --wait waits at most (default 60)")

    command(
        actions, "config", cmd_config, "print the keepalived configuration this host runs", "deployer cluster config"
    )


def _control(args: argparse.Namespace):

    return build_cluster_control(args.loaded_config)


def cmd_run(args: argparse.Namespace) -> int:

    agent = build_cluster_agent(args.loaded_config)
    stop = threading.Event()

    def handle(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    c = agent.cluster
    print(
        f"cluster agent of {c.host}: {c.address}{' and ' + c.address6 if c.address6 else ''} on {c.interface}, "
        "home buckets "
        f"{plan.home_buckets(c, c.host)} of {c.buckets}",
        flush=True,
    )
    agent.run(stop)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _control(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    health = "healthy" if status["healthy"] else f"UNHEALTHY ({status.get('problem') or 'not checked yet'})"
    print(
        f"{status['host']} ({' and '.join(status['addresses'])}): {health}; "
        f"{'joined' if status['intent'] == 'join' else 'LEFT'}; keepalived "
        f"{'pid ' + str(status['keepalived_pid']) if status['keepalived_pid'] else 'NOT RUNNING'}; "
        f"takes in buckets {status['owned'] or 'none'}"
        + (f"; relays {status['relaying']} to its peers" if status.get("relaying") else "")
        + f"; as of {status['updated']}"
    )
    for bucket in status["buckets"]:
        intake = (
            "taken in"
            if bucket["taken_in"]
            else "relayed"
            if bucket.get("relayed")
            else "relays in"
            if bucket.get("taken_from_relays")
            else "-"
        )
        print(
            f"  b{bucket['bucket']:<3} home {bucket['home']:<10} here {bucket['state']:<8} "
            f"{intake:<9} flows {bucket['flows']}"
        )
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    control = _control(args)
    before = control.leave(actor=config_module.local_actor(), wait=args.wait, timeout=args.timeout, force=args.force)
    if args.wait:
        print(f"{control.cluster.host}: left; no bucket taken in, no TCP connection open")
    else:
        print(f"{control.cluster.host}: leaving; buckets {before['owned'] or 'none'} go to the peers")
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    control = _control(args)
    after = control.join(actor=config_module.local_actor(), wait=args.wait, timeout=args.timeout)
    print(
        f"{control.cluster.host}: joined"
        + (
            f"; takes in buckets {after['owned']}"
            if args.wait
            else "; its home buckets come back once its health checks pass"
        )
    )
    return 0


def cmd_config(args: argparse.Namespace) -> int:

    config = args.loaded_config
    c = cluster_of(config)
    paths = ClusterPaths.under(config.settings.state_dir)
    sys.stdout.write(
        render_config(
            c, notify_fifo=paths.fifo, health_file=paths.health_track, leave_file=paths.leave_track, source=config.path
        )
    )
    return 0
