"""What the privileged side learnt of other hosts, kept for the console to show with its age: each fleet host's app
(on a controller) and each bucket's owner (on a cluster host). Written by the controller's rollouts and `fleet
status`, and by the cluster agent; read by the receiver, which asks no other host itself."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from deployer.plan.cluster import BucketOwner
from deployer.plan.sightings import HostFact
from deployer.queue.database import Database


@dataclass(frozen=True)
class SeenHost:
    """A fleet host's app as last recorded: `fact` its last answer or problem, `seen_at` its last answer's time."""

    fact: HostFact
    seen_at: float | None


@dataclass(frozen=True)
class OwnerRow:
    owner: BucketOwner
    since: float


class SightingStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    # --- a controller's fleet --------------------------------------------------------------------

    def record_facts(self, facts: Iterable[HostFact]) -> None:
        """Each host's app as it answered; a problem keeps the facts of its last answer, with the problem beside."""
        with self.database.write() as conn:
            for f in facts:
                if f.problem is not None:
                    conn.execute(
                        "INSERT INTO fleet_hosts (host, app, health, problem, checked_at) VALUES (?, ?, '{}', ?, ?) "
                        "ON CONFLICT (host, app) DO UPDATE SET problem = excluded.problem, "
                        "checked_at = excluded.checked_at",
                        (f.host, f.app, f.problem, f.checked_at),
                    )
                    continue
                conn.execute(
                    "INSERT INTO fleet_hosts (host, app, tag, port_set, health, last_job, last_status, seen_at, "
                    "problem, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?) "
                    "ON CONFLICT (host, app) DO UPDATE SET tag = excluded.tag, port_set = excluded.port_set, "
                    "health = excluded.health, last_job = excluded.last_job, last_status = excluded.last_status, "
                    "seen_at = excluded.seen_at, problem = NULL, checked_at = excluded.checked_at",
                    (
                        f.host,
                        f.app,
                        f.tag,
                        f.port_set,
                        json.dumps(dict(f.health), sort_keys=True),
                        f.last_job,
                        f.last_status,
                        f.checked_at,
                        f.checked_at,
                    ),
                )

    def seen_hosts(self) -> list[SeenHost]:
        rows = self.database.read(
            "SELECT host, app, checked_at, tag, port_set, health, last_job, last_status, problem, seen_at "
            "FROM fleet_hosts ORDER BY app, host"
        )
        return [SeenHost(HostFact(*row[:5], _health(row[5]), *row[6:9]), row[9]) for row in rows]

    # --- a cluster host's buckets ----------------------------------------------------------------

    def record_cluster(
        self,
        *,
        host: str,
        address: str,
        healthy: bool,
        intent: str,
        problem: str | None,
        owners: Iterable[BucketOwner],
    ) -> None:
        """The agent's heartbeat and each bucket's owner; a bucket's `since` stays while its owner and state do."""
        now = self.database.clock()
        owners = list(owners)
        with self.database.write() as conn:
            conn.execute(
                "INSERT INTO cluster_agent (id, host, address, healthy, intent, problem, heartbeat_at) "
                "VALUES (0, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET host = excluded.host, "
                "address = excluded.address, healthy = excluded.healthy, intent = excluded.intent, "
                "problem = excluded.problem, heartbeat_at = excluded.heartbeat_at",
                (host, address, int(healthy), intent, problem, now),
            )
            conn.executemany(
                "INSERT INTO bucket_owners (bucket, state, owner, known, since) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (bucket) DO UPDATE SET since = CASE WHEN bucket_owners.owner IS excluded.owner "
                "AND bucket_owners.state IS excluded.state AND bucket_owners.known IS excluded.known "
                "THEN bucket_owners.since ELSE excluded.since END, "
                "state = excluded.state, owner = excluded.owner, known = excluded.known",
                [(o.bucket, o.state, o.owner, int(o.known), now) for o in owners],
            )
            conn.execute("DELETE FROM bucket_owners WHERE bucket >= ?", (len(owners),))

    def cluster_agent(self) -> dict[str, Any] | None:
        rows = self.database.read("SELECT host, address, healthy, intent, problem, heartbeat_at FROM cluster_agent")
        if not rows:
            return None
        agent = dict(zip(("host", "address", "healthy", "intent", "problem", "heartbeat_at"), rows[0]))
        agent["healthy"] = bool(agent["healthy"])
        return agent

    def bucket_owners(self) -> list[OwnerRow]:
        rows = self.database.read("SELECT bucket, state, owner, known, since FROM bucket_owners ORDER BY bucket")
        return [OwnerRow(BucketOwner(b, state, owner, bool(known)), since) for b, state, owner, known, since in rows]


def _health(text: str | None) -> dict[str, str]:
    try:
        health = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in health.items()} if isinstance(health, dict) else {}
