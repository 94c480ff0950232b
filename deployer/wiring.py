"""Build the real engine from a config: the one place that picks the concrete adapters.

It also puts together what each process of the deployer runs with: the worker (its launcher, reconcile and
checks), a job's own process (its journal and tools: `python -m deployer.cli.job` calls `build_journal` and
`build_job_tools`), the supervisor's children (spawn), the watchdog's engine and the controller's client of its
hosts. The command line calls these and runs what it gets.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deployer import audit
from deployer.adapters import listeners
from deployer.adapters.api_client import SignedClient, Signer
from deployer.adapters.deadlines import Deadlines
from deployer.adapters.docker_host import DockerHost
from deployer.adapters.github import GitHubHttp
from deployer.adapters.host_setup import HostSetup, configures_cluster, shipped_sources
from deployer.adapters.image_archive import PreloadedImage, load_image
from deployer.adapters.iptables import Netfilter
from deployer.adapters.ipv6_sysctls import Ipv6Sysctls
from deployer.adapters.keepalived import Keepalived
from deployer.adapters.nftables import Nftables
from deployer.adapters.probes import Probes, check_registry
from deployer.adapters.processes import die_with_parent, run_hook, start_job
from deployer.adapters.processes import spawn as spawn_process
from deployer.adapters.registry_manifest import manifest_answer
from deployer.adapters.report_http import ReportHttp
from deployer.adapters.routing import Routing
from deployer.adapters.shared_address import SharedAddress
from deployer.audit import build_journal
from deployer.audit.log import AuditLog
from deployer.audit.sinks import AuditSink
from deployer.config import AppConfig, Config
from deployer.config.accounts import receiver_account
from deployer.config.fleet import FleetConfig
from deployer.config.model import ReportsSetup
from deployer.errors import DeployerError, UnsafePath
from deployer.fleet.client import FleetClient
from deployer.fleet.sightings import RecordingHosts
from deployer.folders import space_problem
from deployer.host import responder
from deployer.host.checks import HostChecks, HostProbes
from deployer.host.cluster import ClusterAgent, ClusterControl, ClusterPaths
from deployer.host.engine import DockerPort, Engine
from deployer.host.flows import FlowSampler
from deployer.host.ipv6_forwarding import ensure_ipv6_forwarding
from deployer.host.netfilter.backend import NetfilterBackend
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.host.state import Publish, StateStore
from deployer.journal import Journal, log_sink
from deployer.plan import app_chain, nft, socket_activation
from deployer.plan.containers import selector
from deployer.plan.image_wait import ManifestAnswer
from deployer.plan.records import AppState
from deployer.plan.setup import Sources
from deployer.queue import database
from deployer.queue.database import queue_path
from deployer.queue.model import Job
from deployer.queue.queue import Queue
from deployer.report.outbox import AuditEntries, GithubFeed, NotifyFeed, Outbox, backlog, feed_names
from deployer.worker import assets
from deployer.worker.child import process_launcher
from deployer.worker.loop import Worker, host_checks
from deployer.worker.registries import RegistryWatch
from deployer.worker.run import WORKER_ACTOR, EngineLike, JobTools

log = logging.getLogger("deployer.wiring")
# The clone the deployer runs from (an editable install): `deployer setup` installs its units and docs from it.
CHECKOUT = Path(__file__).resolve().parents[1]


def build_engine(
    config: Config,
    journal: Journal | None = None,
    *,
    preloaded: str | None = None,
    docker: DockerPort | None = None,
    netfilter: NetfilterBackend | None = None,
) -> Engine:
    """The engine with the real adapters.

    `preloaded`: an image reference already on the host (from a release asset), deployed without a pull;
    `docker` and `netfilter` replace two of the adapters (a benchmark's wrappers).
    """
    docker = docker or DockerHost(config.settings.docker_host)
    chosen, other = build_netfilter(config)
    chosen6, leftovers6 = build_netfilters6(config)
    return Engine(
        config,
        PreloadedImage(docker, preloaded) if preloaded is not None else docker,
        netfilter or chosen,
        retired_netfilter=None if netfilter is not None else other,  # a supplied adapter comes without a pair
        netfilter6=chosen6,
        leftovers6=leftovers6,
        forwarding6=functools.partial(
            ensure_ipv6_forwarding,
            Ipv6Sysctls(),
            fix=config.settings.ipv6_forwarding == "fix",
            skip=[config.settings.bridge],
        ),
        routing=Routing(),
        prober=Probes(),
        run_hook=run_hook,
        journal=journal or build_journal(config),
        shared_address=SharedAddress() if config.cluster is not None else None,
        cluster_nft=Nftables() if config.cluster is not None and config.cluster.address6 is not None else None,
        publish=build_live_publisher(config),
    )


def build_live_publisher(config: Config) -> Publish:
    """What the engine tells the queue of every record it writes: what GET /apps/<app> answers is the host's own
    record, after a deploy run by hand as after a job.

    Before any `serve` made the queue there is nothing to tell (serve publishes every app when it starts), and
    the command must not make the shared folder with root's modes. A queue that cannot be written loses this copy
    only: the record is on disk and the deploy is done, so that is logged, and the next job or start catches up.
    """
    path = queue_path(config.settings.state_dir)
    opened: list[Queue] = []

    def publish(state: AppState) -> None:
        if not path.exists():
            return
        try:
            if not opened:
                opened.append(Queue(path))
            opened[0].live.publish(state)
        except DeployerError as exc:
            log.warning("the queue's copy of what is live of %s was not updated: %s", state.app, exc)

    return publish


def build_netfilter(config: Config) -> tuple[NetfilterBackend, NetfilterBackend]:
    """The backend `[deployer] backend` names, and the other one, whose rules reconcile removes after a switch."""
    iptables = Netfilter(wait_seconds=config.settings.iptables_wait)
    ports = {app.name: app_chain.ports(app) for app in config.apps.values()}
    nftables = NftablesBackend(
        Nftables(),
        iptables,
        table=nft.table_name(config.settings.chain_prefix),
        prefix=config.settings.chain_prefix,
        reader=Nftables(handles=True),
        generation=Path(config.settings.state_dir) / "locks" / "nftables.generation",
        ports=lambda app: ports.get(app, ()),
    )
    return (nftables, iptables) if config.settings.backend == "nftables" else (iptables, nftables)


def build_netfilter6(config: Config) -> NetfilterBackend | None:
    """The IPv6 rules' backend on a dual-stack host (`[deployer] ipv6`): ip6tables, or the nftables backend's
    `table ip6` (a flip writes it in one transaction with the IPv4 table); None otherwise."""
    chosen, _ = build_netfilters6(config)
    return chosen


def build_netfilters6(config: Config) -> tuple[NetfilterBackend | None, list[NetfilterBackend]]:
    """The IPv6 backend in use (None with IPv6 off), and the ones not in use, where uninstall still looks for IPv6
    rules an earlier config left (after IPv6 was turned off, or the backend switched)."""
    settings = config.settings
    ip6tables = Netfilter(wait_seconds=settings.iptables_wait, ipv6=True)
    ports = {app.name: app_chain.ports(app) for app in config.apps.values()}
    nftables = NftablesBackend(
        Nftables(),
        ip6tables,
        table=nft.table_name(settings.chain_prefix),
        prefix=settings.chain_prefix,
        reader=Nftables(handles=True),
        generation=Path(settings.state_dir) / "locks" / "nftables6.generation",
        ports=lambda app: ports.get(app, ()),
        family="ip6",
    )
    if not settings.ipv6:
        return None, [ip6tables, nftables]
    return (nftables, [ip6tables]) if settings.backend == "nftables" else (ip6tables, [nftables])


# --- what the deploy worker acts with besides the engine ----------------------------------------


def build_host_probes(config: Config) -> tuple[Callable[[], object], Callable[[], object]]:
    """The worker's health probes: Docker answers, and the nat table can be read."""
    return (
        lambda: DockerHost(config.settings.docker_host, timeout=5).ping(),
        lambda: Netfilter(wait_seconds=config.settings.iptables_wait).save_nat(),
    )


def build_host_checks(config: Config) -> HostChecks:
    """`deployer check`'s probes: Docker (ping, a short timeout), each registry the apps pull from (/v2/), the
    netfilter backend in use (its nat rules read), keepalived's version with [cluster]."""
    settings = config.settings
    if settings.backend == "nftables":
        nftables = Nftables()

        def netfilter() -> object:
            return nftables.run("list tables")
    else:

        def netfilter() -> object:
            return Netfilter(wait_seconds=settings.iptables_wait).save_nat()

    registries = sorted({app.registry for app in config.apps.values() if app.registry})
    keepalived = Keepalived(ClusterPaths.under(settings.state_dir).folder)
    probes = HostProbes(
        docker=lambda: DockerHost(settings.docker_host, timeout=5).ping(),
        netfilter=netfilter,
        registries={registry: functools.partial(check_registry, registry) for registry in registries},
        keepalived=keepalived.version if config.cluster is not None else None,
    )
    return HostChecks(config, probes)


def build_registry_watch(config: Config) -> RegistryWatch | None:
    """Whether every registry an app pulls from answers, probed in parallel off the heartbeat; None when no app
    names one."""
    registries = sorted({app.registry for app in config.apps.values() if app.registry})
    if not registries:
        return None
    return RegistryWatch({registry: functools.partial(check_registry, registry) for registry in registries})


def build_image_loader(config: Config) -> Callable[[Path, str, str], str]:
    """Loads a `docker save` archive and tags its image `image:tag`; returns that reference."""
    return lambda path, image, tag: load_image(DockerHost(config.settings.docker_host), path, image, tag)


def build_asset_http() -> GitHubHttp:
    return GitHubHttp()


# --- the worker and a job's own process ----------------------------------------------------------


def prepare_shared(config: Config, journal: Journal | None = None) -> Queue:
    """The queue's and the audit log's folders, shared with the receiver's group when run as root; returns the queue.

    Run before the receiver starts. A planted link or odd file there is refused, and recorded as
    `security.refused` before the error stops the start.
    """
    state_dir = config.settings.state_dir
    group = receiver_account(config.server).group if os.geteuid() == 0 else None
    try:
        database.prepare_folder(state_dir, group)
        audit.prepare_folder(state_dir, group)  # the receiver records deliveries there
        queue = Queue.for_state_dir(state_dir)
        queue.heartbeat.worker_status()  # creates the tables now, as the privileged user
    except UnsafePath as exc:
        journal = journal or build_journal(config)
        journal.record("security.refused", outcome="failed", actor=WORKER_ACTOR, reason=str(exc), **exc.context)
        raise
    return queue


def build_worker(config: Config, queue: Queue | None = None, journal: Journal | None = None) -> Worker:
    """The worker with its real launcher (start_job), reconcile (the engine), checks and registry check."""
    journal = journal or build_journal(config)
    queue = queue or Queue.for_state_dir(config.settings.state_dir)

    def reconcile(app: str | None) -> list[str]:
        return build_engine(config, journal).reconcile(app, actor=WORKER_ACTOR)

    def disk() -> str:
        return space_problem(config.settings.state_dir) or "ok"

    registries = build_registry_watch(config)
    return Worker(
        config,
        queue,
        journal,
        launch=process_launcher(config, start_job),
        reconcile=reconcile,
        checks=host_checks(build_host_probes(config)),
        disk=disk,
        registry=registries.last if registries else None,
        registry_watch=registries.watch if registries else None,
        flows=build_flow_sampler(config).sample,
    )


def build_flow_sampler(config: Config) -> FlowSampler:
    """The heartbeat's sample of the live flows (one conntrack dump) and the live containers' health (one list)."""
    settings = config.settings
    netfilter = Netfilter(wait_seconds=settings.iptables_wait)
    docker_host = DockerHost(settings.docker_host, timeout=5)
    return FlowSampler(
        config,
        StateStore(settings.state_dir),
        conntrack=lambda: netfilter.conntrack_list([]),
        containers=lambda: docker_host.container_states(selector(settings)),
    )


def build_job_tools(config: Config, journal: Journal) -> JobTools:
    """What a job's own process acts with: the engine, the release asset loader, a controller's fleet client."""
    load_image = build_image_loader(config)

    def engine(preloaded: str | None) -> EngineLike:
        return build_engine(config, journal, preloaded=preloaded)

    def load_asset(job: Job) -> str:
        return assets.load_release_asset(config, job, http=build_asset_http(), load_image=load_image)

    def fleet() -> Any:
        assert config.fleet is not None
        return build_fleet_client(config.fleet, Queue.for_state_dir(config.settings.state_dir))

    def manifest(app: AppConfig, tag: str) -> ManifestAnswer:
        return manifest_answer(app, tag, config.registries.get(app.registry or ""))

    return JobTools(engine=engine, load_asset=load_asset, fleet=fleet if config.fleet else None, manifest=manifest)


def build_host_setup(root: Path) -> HostSetup:
    """`deployer setup`'s effects under `root`: the host's accounts, files and systemctl."""
    return HostSetup(root)


def setup_sources(units: Sequence[str]) -> Sources:
    """What setup installs, read from the clone this deployer runs from."""
    return shipped_sources(CHECKOUT, units)


def setup_configures_cluster(config: Path) -> bool:
    return configures_cluster(config)


def build_server_client(url: str, sign: Signer, *, ca_file: Path | None = None) -> SignedClient:
    """The signed client of one running receiver: what `deployer redeploy` sends through."""
    return SignedClient(url, sign, ca_file=ca_file)


def build_fleet_client(fleet: FleetConfig, queue: Queue | None = None) -> FleetClient | RecordingHosts:
    """The controller's client of its hosts, one signed client each; with `queue`, what the hosts answer of their
    apps is kept there for the console."""
    client = FleetClient(fleet, connect=SignedClient)
    return client if queue is None else RecordingHosts(client, queue.sightings.record_facts, clock=queue.clock)


def build_maintenance_server(config: Config, listener: socket.socket | None = None) -> responder.Responder:
    """The maintenance responder's server, bound now (a taken port fails before anything else), with deadlines."""
    return responder.make_server(config, deadlines=Deadlines(), listener=listener)


def receiver_listener(config: Config) -> socket.socket:
    """serve's listening socket for gunicorn: the one a `.socket` unit passed (LISTEN_FDS, LISTEN_PID naming serve),
    else [server] listen bound now, so a taken port stops serve before anything starts."""
    server = config.server
    descriptor = socket_activation.receiver_descriptor(os.environ, os.getpid())
    if descriptor is None:
        return listeners.bind(server.host, server.port)
    for name in socket_activation.VARIABLES:  # taken: not for the children, whatever their pid
        os.environ.pop(name, None)
    return listeners.adopt(descriptor, server.host, server.port)


# --- the cluster agent and its commands ------------------------------------------------------------


def build_cluster_agent(config: Config, journal: Journal | None = None) -> ClusterAgent:
    return ClusterAgent(
        config,
        Netfilter(wait_seconds=config.settings.iptables_wait),
        Keepalived(ClusterPaths.under(config.settings.state_dir).folder),
        SharedAddress(),
        journal=journal or build_journal(config),
        prober=Probes(),
        owners=Queue.for_state_dir(config.settings.state_dir).sightings.record_cluster,
        nft=Nftables() if config.cluster is not None and config.cluster.address6 is not None else None,
    )


def build_cluster_control(config: Config) -> ClusterControl:
    return ClusterControl(config, Netfilter(wait_seconds=config.settings.iptables_wait), build_journal(config))


__all__ = [
    "build_asset_http",
    "build_cluster_agent",
    "build_cluster_control",
    "build_engine",
    "build_fleet_client",
    "build_host_checks",
    "build_host_setup",
    "build_host_probes",
    "build_image_loader",
    "build_job_tools",
    "build_journal",
    "build_live_publisher",
    "build_maintenance_server",
    "build_netfilter",
    "build_registry_watch",
    "build_server_client",
    "build_worker",
    "die_with_parent",
    "prepare_shared",
    "setup_configures_cluster",
    "setup_sources",
    "spawn_process",
    "start_job",
]


def build_outbox(setup: ReportsSetup) -> Outbox:
    """The report loop: a feed for GitHub and one per [[notify]] target, over this host's audit log and queue."""
    state_dir = setup.settings.state_dir
    http = ReportHttp(timeout=setup.reports.timeout)
    links = setup.job_pages
    feeds: list[Any] = [GithubFeed(setup.reports.github, setup.github_api, http, links)] if setup.reports.github else []
    feeds += [NotifyFeed(target, http, links) for target in setup.reports.notify]
    journal = Journal([log_sink, AuditSink.for_state_dir(state_dir)], secrets=setup.reports.secrets())
    queue = Queue.for_state_dir(state_dir)
    return Outbox(feeds, queue.reports, AuditEntries(AuditLog.for_state_dir(state_dir)), journal)


def begin_reports(config: Config, queue: Queue) -> None:
    """Each feed's cursor, created at the audit log's head before the receiver starts, so no entry written from
    then on is missed however late the report loop starts."""
    head = AuditEntries(AuditLog.for_state_dir(config.settings.state_dir)).head()
    names = feed_names(config.reports)
    queue.reports.retire_others(names)
    for name in names:
        queue.reports.begin(name, head)


def report_backlog(config: Config) -> list[dict[str, Any]]:
    """Each report feed's backlog: how many audit entries it is behind, its retry and its last problem."""
    head = AuditEntries(AuditLog.for_state_dir(config.settings.state_dir)).head()
    cursors = Queue.for_state_dir(config.settings.state_dir).reports.cursors()
    return backlog([c for c in cursors if c.feed in feed_names(config.reports)], head)
