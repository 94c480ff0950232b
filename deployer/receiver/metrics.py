"""GET /metrics: the deployer's numbers in Prometheus's exposition format, computed at each scrape from what is
shared on disk, and who may read them.

gunicorn runs several receiver processes, and any of them answers a scrape, so nothing is counted in a process's
memory: each scrape reads the queue database (jobs, what is live, the worker's heartbeat and faults) and the audit
log (flips, refused requests) and renders them through a fresh registry; two processes asked at once answer the
same. `facts` reads, `families` shapes them (pure), `render` writes the text the scraper asked for. The cost grows
with the history kept: one row a finished job, one a flip and one a refusal row (docs/metrics.md has the figures).

Who may read them: `[server] metrics_token_file` (or `_env`) as a bearer token, `[server] metrics_allow` as the
networks the peer's address must be in, both when both are set; with neither, nobody.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from deployer import signatures
from deployer.audit import AuditLog
from deployer.config import ServerConfig
from deployer.errors import Forbidden
from deployer.queue.flows import FlowSample
from deployer.queue.live import LiveRelease
from deployer.queue.model import JobStatus
from deployer.queue.queue import Queue

DEPLOY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)  # seconds
FLIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # seconds
# The parts a fault can be open on (`deployer status`): each is reported, 0 while it is well, so an alert sees it.
FAULT_PARTS = ("worker", "docker", "netfilter", "registry", "disk", "image")
# A refusal's reason is its status, named: a bounded label, where the recorded reasons are free text.
REASONS = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    421: "misdirected",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}

Backlog = Callable[[], Mapping[str, int]]  # feed -> entries not sent yet (the report loop's feeds)


@dataclass(frozen=True)
class Facts:
    """What one scrape reports, read from the queue and the audit log at once (plain values)."""

    outcomes: Sequence[tuple[str, str, str, int]] = ()  # (app, kind, status, count) of finished jobs
    run_times: Sequence[tuple[str, float]] = ()  # (app, seconds) of jobs that succeeded or failed
    flips: Sequence[tuple[str | None, float]] = ()  # (app, milliseconds) of each flip's commit
    live: Sequence[LiveRelease] = ()
    statuses: Mapping[str, int] = field(default_factory=dict)  # jobs in each status
    faults: Sequence[str] = ()  # the parts with an open fault
    refusals: Sequence[tuple[int | None, int]] = ()  # (status, count) of refused requests
    backlog: Mapping[str, int] | None = None  # None: no outbox to report on
    flows: Sequence[FlowSample] = ()  # the worker's last sample of each app's live flows


def facts(queue: Queue, audit: AuditLog, *, now: float, stale_after: float, backlog: Backlog | None = None) -> Facts:
    """Read what a scrape reports. Raises StateError or AuditError when a store cannot be read."""
    return Facts(
        outcomes=queue.jobs.outcomes(),
        run_times=queue.jobs.run_times(),
        flips=audit.flip_commits(),
        live=queue.live.releases(),
        statuses=queue.jobs.status_counts(),
        faults=open_faults(
            queue.heartbeat.worker_status(),
            [job.waiting_on for job in queue.jobs.waiting() if job.waiting_on],
            now=now,
            stale_after=stale_after,
        ),
        refusals=audit.refusals(),
        backlog=dict(backlog()) if backlog is not None else None,
        flows=sorted(queue.flows.samples().values(), key=lambda sample: sample.app),
    )


def open_faults(
    worker: Mapping[str, Any] | None, waiting_on: Iterable[str], *, now: float, stale_after: float
) -> list[str]:
    """The parts `deployer status` names a fault on: a missing or stale heartbeat (`worker`), what the worker's
    checks found wrong, what a waiting job waits on."""
    parts = set(waiting_on) | set((worker or {}).get("faults") or {})
    if worker is None or now - worker["heartbeat_at"] >= stale_after:
        parts.add("worker")
    return sorted(parts)


def families(found: Facts) -> list[Metric]:
    """The metric families of `found`, in the order the scrape shows them. Pure."""
    deploys = CounterMetricFamily(
        "deployer_deploys",
        "Jobs that ended, by app, kind (release, redeploy, rollout, promote, abort) and outcome "
        "(succeeded, failed, superseded, skipped).",
        labels=["app", "kind", "outcome"],
    )
    for app, kind, status, count in found.outcomes:
        deploys.add_metric([app, kind, status], count)
    jobs = GaugeMetricFamily("deployer_jobs", "Jobs in each status now.", labels=["status"])
    for status in JobStatus:
        jobs.add_metric([status.value], found.statuses.get(status, 0))
    live = InfoMetricFamily(
        "deployer_live_release", "What serves each app now: its tag, port set and image digest.", labels=["app"]
    )
    canary = GaugeMetricFamily(
        "deployer_canary_weight", "The percent of new flows an app's canary gets; 0 without a canary.", labels=["app"]
    )
    for release in found.live:
        if release.tag is not None:
            live.add_metric(
                [release.app], {"tag": release.tag, "set": release.port_set or "", "digest": release.digest or ""}
            )
        canary.add_metric([release.app], release.canary_weight or 0)
    faults = GaugeMetricFamily(
        "deployer_open_faults",
        "1 while a fault of the host is open on the part, as deployer status shows it.",
        labels=["part"],
    )
    for part in sorted(set(FAULT_PARTS) | set(found.faults)):
        faults.add_metric([part], 1 if part in found.faults else 0)
    refused = CounterMetricFamily(
        "deployer_rejected_requests",
        "Requests the receiver refused, by reason (the answer's status, named), as the receivers have recorded them.",
        labels=["reason"],
    )
    for reason, count in sorted(rejection_reasons(found.refusals).items()):
        refused.add_metric([reason], count)
    result = [
        deploys,
        histogram(
            "deployer_deploy_duration_seconds",
            "How long each job that succeeded or failed ran, from its (last) start to its end.",
            found.run_times,
            DEPLOY_BUCKETS,
        ),
        histogram(
            "deployer_flip_commit_seconds",
            "How long each flip's rules took to commit: from the transaction's start until new flows take them.",
            [(app, ms / 1000) for app, ms in found.flips if app is not None],
            FLIP_BUCKETS,
        ),
        live,
        canary,
        jobs,
        faults,
        refused,
    ]
    if found.backlog is not None:
        backlog = GaugeMetricFamily("deployer_outbox_backlog", "Outbox entries not sent yet, by feed.", labels=["feed"])
        for feed, count in sorted(found.backlog.items()):
            backlog.add_metric([feed], count)
        result.append(backlog)
    if found.flows:  # none until the worker has sampled them
        flows = GaugeMetricFamily(
            "deployer_live_flows",
            "Live flows each instance of an app answers (live, canary, old), as the worker last sampled conntrack.",
            labels=["app", "instance"],
        )
        for sample in found.flows:
            for role, count in sample.counts().items():
                flows.add_metric([sample.app, role], count)
        sampled = GaugeMetricFamily("deployer_live_flows_sampled", "When the live flows were sampled (unix time).")
        sampled.add_metric([], max(sample.sampled_at for sample in found.flows))
        result += [flows, sampled]
    return result


def histogram(
    name: str, documentation: str, values: Iterable[tuple[str, float]], bounds: Sequence[float]
) -> HistogramMetricFamily:
    """One histogram per app over `values` ((app, seconds) pairs), with the cumulative buckets of `bounds`."""
    by_app: dict[str, list[float]] = {}
    for app, value in values:
        by_app.setdefault(app, []).append(float(value))
    family = HistogramMetricFamily(name, documentation, labels=["app"])
    for app, seen in sorted(by_app.items()):
        buckets = [(format_bound(bound), sum(1 for v in seen if v <= bound)) for bound in bounds]
        family.add_metric([app], [*buckets, ("+Inf", len(seen))], sum(seen))
    return family


def format_bound(bound: float) -> str:
    """A bucket's `le` as Prometheus's clients write it: 1.0, 0.005, 2.5."""
    return repr(float(bound))


def rejection_reasons(refusals: Iterable[tuple[int | None, int]]) -> dict[str, int]:
    """(status, count) rows summed by reason: a known status's name, `error` for another 5xx, `other` for another
    4xx, `overflow` for the rows that fold a minute's sources past the receivers' limit."""
    found: dict[str, int] = {}
    for status, count in refusals:
        if not isinstance(status, int):
            reason = "overflow"
        else:
            reason = REASONS.get(status) or ("error" if status >= 500 else "other")
        found[reason] = found.get(reason, 0) + int(count or 0)
    return found


class DeployerCollector(Collector):
    """The families of one scrape, read when the registry collects: nothing is kept between scrapes."""

    def __init__(self, read: Callable[[], Facts]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield from families(self.read())


def registry(read: Callable[[], Facts]) -> CollectorRegistry:
    """A registry of the deployer's families only: no process or platform metrics of the gunicorn process that
    answers, which would differ from one process to the next."""
    found = CollectorRegistry(auto_describe=False)
    found.register(DeployerCollector(read))
    return found


def render(source: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The body and its content type: OpenMetrics when the scraper asks for it, else the text format."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(source), content_type


# --- who may scrape --------------------------------------------------------------------------------


def check_scraper(server: ServerConfig, address: str | None, authorization: str | None) -> None:
    """Raise Forbidden or Unauthorized unless this scraper may read the metrics (see the module's docstring)."""
    if server.metrics_token is None and not server.metrics_allow:
        raise Forbidden("metrics are not enabled: set [server] metrics_allow or metrics_token_file")
    if server.metrics_allow and not allowed_address(address, server.metrics_allow):
        raise Forbidden("this address may not read the metrics ([server] metrics_allow)")
    if server.metrics_token is not None:
        signatures.verify_bearer(server.metrics_token, authorization)


def allowed_address(address: str | None, networks: Sequence[str]) -> bool:
    try:
        peer = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped  # an IPv4 client of a dual-stack socket
    return any(peer in ipaddress.ip_network(network) for network in networks)
