"""The console's fleet page (on a controller) and cluster page (on a cluster host), on the console's blueprint.

Both show what the privileged side recorded in the queue (deployer/queue/sightings.py), with its age: the
receiver asks no other host itself, and holds no key to one.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, render_template

from deployer.errors import UnknownPage
from deployer.plan.cluster import ranking
from deployer.plan.job_states import JobKind
from deployer.receiver.console.fleet_views import bucket_lines, fleet_grid, rollouts_newest_first
from deployer.receiver.console.pages import console

ROLLOUTS_SHOWN = 10
AGENT_STALE_SECONDS = 15.0  # the agent records at least every 5 s (host/cluster.py, OWNERS_HEARTBEAT)


def _receiver() -> Any:
    return current_app.extensions["deployer"]


@console.app_context_processor
def _navigation() -> dict[str, bool]:
    """Whether the navigation links the fleet and cluster pages: only where the config makes them mean something."""
    config = current_app.extensions["deployer"].config
    return {"console_fleet": bool(config.fleet_hosts), "console_cluster": config.cluster is not None}


@console.app_template_filter("age")
def _age(moment: float | None, now: float) -> str:
    """How long ago a fact was learnt, in the unit that reads best."""
    if moment is None:
        return "never"
    seconds = max(0.0, now - moment)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


@console.route("/fleet", methods=["GET"])
def fleet_page():
    """On a controller: each host's tag, port set and health per app, the hosts that differ, each rollout's hosts.
    Example: https://controller/console/fleet"""
    receiver = _receiver()
    config = receiver.config
    if not config.fleet_hosts:
        raise UnknownPage("this deployer is not a fleet controller: it has no [fleet] table")
    rollouts = [
        job for app in config.fleet_apps for job in receiver.queue.jobs.jobs(app=app) if job.kind == JobKind.ROLLOUT
    ]
    return render_template(
        "console/fleet.html",
        grid=fleet_grid(config.fleet_hosts, config.fleet_apps, receiver.queue.sightings.seen_hosts()),
        rollouts=rollouts_newest_first(rollouts, receiver.queue.rollouts.rollout_hosts, ROLLOUTS_SHOWN),
        now=receiver.clock(),
    )


@console.route("/cluster", methods=["GET"])
def cluster_page():
    """On a cluster host: which host owns each bucket of the shared address, this host's own marked.
    Example: https://host/console/cluster"""
    receiver = _receiver()
    cluster = receiver.config.cluster
    if cluster is None:
        raise UnknownPage("this host is not a cluster member: it has no [cluster] table")
    homes = {b: ranking(cluster, b)[0] for b in range(cluster.buckets)}
    return render_template(
        "console/cluster.html",
        cluster=cluster,
        agent=receiver.queue.sightings.cluster_agent(),
        buckets=bucket_lines(cluster.host, cluster.buckets, receiver.queue.sightings.bucket_owners(), homes),
        now=receiver.clock(),
        stale_after=AGENT_STALE_SECONDS,
    )
