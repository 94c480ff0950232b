"""`deployer rollout` and `deployer fleet status`, on a controller ([fleet]). Thin: deployer/fleet/rollout.py acts.

`rollout` queues a job in this controller's own queue; its worker runs it (`deployer worker` or `serve`).
Whatever a host answered (tags, reasons, job ids, errors) is printed through `printable`: no control character
from a host reaches the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from deployer import config as config_module
from deployer.cli.ops import seconds
from deployer.config.fleet import FleetConfig, check_canary, check_max_parallel
from deployer.errors import ConfigError, DeployerError, InvalidTag, StateError, UsageError
from deployer.plan import rollout as plan
from deployer.plan.printable import printable
from deployer.plan.tags import DOCKER_TAG_RE
from deployer.queue.accept import accept
from deployer.queue.model import Job, JobKind, JobStatus
from deployer.queue.queue import Queue
from deployer.wiring import build_fleet_client, build_journal

POLL_SECONDS = 0.5
WORKER_STALE_SECONDS = 15.0  # as /healthz judges the worker's heartbeat


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "rollout",
        cmd_rollout,
        "roll a tag out across the fleet's hosts, batch by batch (docs/fleet.md)",
        "deployer rollout web v2 --canary-host h1 --max-parallel 50% --bake 10m --wait\n  deployer rollout web --abort",
        "Queue a rollout in this controller's queue; its worker runs it. The canary batch goes first,\n"
        "then batches of --max-parallel hosts: each host gets a signed POST /deploy and is followed to\n"
        "its end (GET /jobs/<id>), then baked. A host already on TAG is skipped. At the first failure\n"
        "(a failed health gate, a host that does not answer within [fleet] host_timeout) the rollout\n"
        "stops and, unless --no-revert, deploys back the tag each done host had. With --wait, show each\n"
        "host's progress; exit 1 when it failed, naming the host and the reason. A rollout resumes\n"
        "after any number of controller restarts until its [fleet] deadline, then gives up as for a\n"
        "failure. `rollout APP --abort` gives up APP's queued or running rollout now: recorded in the\n"
        "queue, carried out by the worker (at once, or when it next runs).",
    )
    p.add_argument("app", help="the fleet app's name, as in [fleet] apps")
    p.add_argument("tag", nargs="?", help="the image tag to roll out (none with --abort)")
    p.add_argument(
        "--abort",
        action="store_true",
        help="stop APP's queued or running rollout: the hosts it changed go back, unless it was "
        "started with --no-revert; the hosts not reached stay",
    )
    p.add_argument(
        "--max-parallel",
        metavar="COUNT_OR_PERCENT",
        help="hosts per batch: a count or a percentage such as 50%% (default: [fleet] max_parallel)",
    )
    first = p.add_mutually_exclusive_group()
    first.add_argument(
        "--canary-host",
        metavar="HOST",
        help="the first batch, alone: this host of [[fleet.hosts]] (default: [fleet] canary)",
    )
    first.add_argument(
        "--canary-hosts",
        metavar="COUNT",
        type=host_count,
        help="the first batch, alone: this many hosts (default: [fleet] canary)",
    )
    p.add_argument("--canary", dest="retired_canary", help=argparse.SUPPRESS)  # refused, naming the new flags
    p.add_argument(
        "--bake",
        type=seconds,
        metavar="TIME",
        help="time to wait between batches: 600, 10m, 1h (default: [fleet] bake)",
    )
    p.add_argument("--no-revert", action="store_true", help="on a failure, leave the done hosts on TAG")
    p.add_argument("--reason", help="why, for the audit records of the controller and each host")
    p.add_argument("--wait", action="store_true", help="follow the rollout to its end")
    p.add_argument("--timeout", type=seconds, default=3600.0, help="seconds --wait waits (default 3600)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document: the queued job, or with --wait the job as it ended",
    )

    p = command(
        sub,
        "fleet",
        cmd_fleet_status,
        "the fleet's hosts: each one's tag, port set and health",
        "deployer fleet status web",
        "Without an action: the same as `deployer fleet status`.",
    )
    p.add_argument("--json", action="store_true", help="print JSON for tools")
    p.set_defaults(app=None)
    actions = p.add_subparsers(dest="fleet_action", metavar="ACTION")
    s = command(
        actions,
        "status",
        cmd_fleet_status,
        "ask each host of [fleet] (signed GET /apps/<app>) what it runs; hosts that differ are marked",
        "deployer fleet status web --json",
        "One line per host and app: the live tag, the port set, the host's health and its last job.\n"
        "A host whose tag differs from what most hosts run is marked DIFFERS. Exit 1 when a host\n"
        "does not answer or any differs.",
    )
    s.add_argument("app", nargs="?", help="only this fleet app (default: every one)")
    s.add_argument("--json", action="store_true", help="print JSON for tools")


def fleet_of(config: config_module.Config, app: str | None = None) -> FleetConfig:
    if config.fleet is None:
        raise ConfigError("this deployer is not a controller: it has no [fleet] table", path=config.path, key="fleet")
    if app is not None and app not in config.fleet.apps:
        raise ConfigError(
            f"app {app!r} is not a fleet app (listed: {', '.join(config.fleet.apps)})",
            path=config.path,
            key="fleet.apps",
        )
    return config.fleet


def host_count(text: str) -> int:
    """`--canary-hosts`: a whole number of hosts; the fleet's size bounds it once the config is read."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of hosts, not {text!r}")
    return int(text)


def rollout_options(args: argparse.Namespace, fleet: FleetConfig) -> plan.Options:
    """The flags over [fleet]'s values; a bad one is refused before anything is queued."""
    max_parallel = check_max_parallel(
        args.max_parallel if args.max_parallel is not None else fleet.max_parallel,
        len(fleet.hosts),
        path=None,
        key="--max-parallel",
    )
    if args.canary_host is not None:
        canary = check_canary(args.canary_host, fleet.host_names, path=None, key="--canary-host")
        if not isinstance(canary, str):  # a name of digits only would read as a count
            raise ConfigError(f"names no host of [[fleet.hosts]] ({', '.join(fleet.host_names)})", key="--canary-host")
    elif args.canary_hosts is not None:
        canary = check_canary(args.canary_hosts, fleet.host_names, path=None, key="--canary-hosts")
    else:
        canary = check_canary(fleet.canary, fleet.host_names, path=None, key="--canary")
    return plan.Options(
        max_parallel=max_parallel,
        canary=canary,
        bake=args.bake if args.bake is not None else fleet.bake,
        revert=not args.no_revert,
    )


def cmd_rollout(args: argparse.Namespace) -> int:
    if args.retired_canary is not None:
        raise UsageError(
            "rollout --canary is now --canary-host HOST (a host's name) or --canary-hosts COUNT (how many hosts)"
        )
    config = args.loaded_config
    fleet = fleet_of(config, args.app)
    if args.abort:
        return abort_rollout(args, config)
    if args.tag is None:
        raise InvalidTag("give the TAG to roll out (or --abort to stop the running rollout)", app=args.app)
    if not DOCKER_TAG_RE.fullmatch(args.tag):
        raise InvalidTag(f"{args.tag[:60]!r} is not a valid Docker tag", app=args.app)
    options = rollout_options(args, fleet)
    queue = Queue.for_state_dir(config.settings.state_dir)
    journal = build_journal(config)
    actor = config_module.local_actor()
    source = {**options.as_dict(), **({"reason": args.reason} if args.reason else {})}
    job = queue.jobs.submit_manual(
        app=args.app, tag=args.tag, actor=actor, kind=JobKind.ROLLOUT, source=source, hold=True
    )
    accept(
        queue.jobs,
        journal,
        job,
        job=job.id,
        app=args.app,
        tag=args.tag,
        actor=actor,
        kind=JobKind.ROLLOUT,
        rollout=job.id,
        **source,
    )
    if not args.json:
        print(f"{args.app}: queued rollout {job.id} of {args.tag} over {', '.join(fleet.host_names)}", flush=True)
    if fleet.insecure_hosts:
        print(f"deployer: warning: {insecure_warning(fleet.insecure_hosts)}", file=sys.stderr, flush=True)
    warn_without_worker(queue, "the rollout waits")
    if not args.wait:
        if args.json:
            print(
                json.dumps(
                    {"app": args.app, "tag": args.tag, "rollout": job.id, "hosts": list(fleet.host_names), **source},
                    indent=2,
                )
            )
        return 0
    return follow(queue, job, timeout=args.timeout, as_json=args.json)


def abort_rollout(args: argparse.Namespace, config: config_module.Config) -> int:
    """Record the abort of the app's latest queued or running rollout; its own run carries it out.

    Not carried out here: the rollout's run is the one writer of its hosts' records, and a worker that starts
    meanwhile would race a revert done from the command line. A recorded abort outlives the controller."""
    if args.tag is not None:
        raise InvalidTag("--abort takes no TAG: it stops the app's running rollout", app=args.app)
    queue = Queue.for_state_dir(config.settings.state_dir)
    live = [
        j
        for j in queue.jobs.jobs(app=args.app)
        if j.kind == JobKind.ROLLOUT and j.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    ]
    if not live:
        raise StateError(f"no rollout of {args.app} is queued or running")
    job, actor = live[-1], config_module.local_actor()
    if queue.rollouts.request_abort(job.id, actor=actor, reason=args.reason):
        build_journal(config).record(
            "rollout.aborted",
            job=job.id,
            rollout=job.id,
            app=args.app,
            tag=job.tag,
            actor=actor,
            **({"reason": args.reason} if args.reason else {}),
        )
        print(
            f"{args.app}: abort of rollout {job.id} ({job.tag}) recorded; the hosts it changed go back "
            f"unless it was started with --no-revert",
            flush=True,
        )
    else:
        print(f"{args.app}: rollout {job.id} ({job.tag}) was already asked to stop", flush=True)
    warn_without_worker(queue, "the abort is carried out when it next runs")
    if not args.wait:
        return 0
    follow(queue, job, timeout=args.timeout)
    ended = queue.jobs.get(job.id)
    return 0 if ended is not None and ended.done else 1


def warn_without_worker(queue: Queue, consequence: str) -> None:
    worker = queue.heartbeat.worker_status()
    if worker is None or time.time() - worker["heartbeat_at"] > WORKER_STALE_SECONDS:
        print(
            f"deployer: no worker runs on this controller's state folder: {consequence} (`deployer worker` or "
            f"`deployer serve`)",
            file=sys.stderr,
            flush=True,
        )


def follow(
    queue: Queue, job: Job, *, timeout: float, sleep: Callable[[float], None] = time.sleep, as_json: bool = False
) -> int:
    """Print each host's progress as the worker records it (with as_json, the rollout as it ended, alone);
    the exit code says how the rollout ended."""
    deadline, shown = time.monotonic() + timeout, 0
    current: Job | None = job
    while True:
        steps = queue.jobs.steps(job.id)
        for step in [] if as_json else steps[shown:]:
            line = describe(step)
            if line:
                print("  " + printable(line), flush=True)
        shown = len(steps)
        current = queue.jobs.get(job.id)
        if current is None or current.done or time.monotonic() > deadline:
            break
        sleep(POLL_SECONDS)
    if as_json:
        return print_rollout(job, current, steps)
    if current is not None and current.status == JobStatus.SUCCEEDED:
        print(f"{job.app}: {printable(current.reason)}")
        return 0
    if current is not None and current.done:
        print(f"{job.app}: rollout {current.status}: {printable(current.reason)}", file=sys.stderr)
        return 1
    print(
        f"{job.app}: rollout {job.id} still {current.status if current else '?'} after {timeout:g} s; "
        f"it goes on (the worker runs it)",
        file=sys.stderr,
    )
    return 1


def print_rollout(job: Job, current: Job | None, steps: list[dict[str, Any]]) -> int:
    """`rollout --wait --json`: the rollout's job, its end and each host's last state, as one document."""
    hosts = {
        step["detail"]["host"]: step["detail"]
        for step in steps
        if step["name"] == "rollout.host" and (step.get("detail") or {}).get("host")
    }
    document = {
        "rollout": job.id,
        "app": job.app,
        "tag": job.tag,
        "status": current.status if current else None,
        "done": bool(current and current.done),
        "reason": current.reason if current else None,
        "hosts": hosts,
    }
    print("\n".join(printable(line) for line in json.dumps(document, indent=2, default=str).splitlines()))
    return 0 if current is not None and current.status == JobStatus.SUCCEEDED else 1


def describe(step: dict[str, Any]) -> str | None:
    detail = step.get("detail") or {}
    if step["name"] == "rollout.host":
        words = [detail.get("host", "?"), detail.get("state", "?"), detail.get("tag", "")]
        words += [f"job={detail['host_job']}"] if detail.get("host_job") else []
        words += [f"({detail['reason']})"] if detail.get("reason") else []
        return " ".join(w for w in words if w)
    if step["name"] == "rollout.planned":
        return (
            "batches: "
            + " | ".join(", ".join(b) for b in detail.get("batches", []))
            + (f"; skipped (already on the tag): {', '.join(detail['skipped'])}" if detail.get("skipped") else "")
        )
    if step["name"] == "rollout.insecure":
        return "warning: " + insecure_warning(detail.get("hosts") or [])
    if step["name"] == "rollout.bake":
        return f"baking {detail.get('seconds')} s after batch {detail.get('batch')}"
    if step["name"] == "rollout.stopping":
        return f"stopping: {detail.get('reason')}" + ("" if detail.get("revert", True) else " (--no-revert)")
    if step["name"] == "rollout.resumed":
        return "resumed: " + ", ".join(f"{h} {s}" for h, s in (detail.get("states") or {}).items())
    return None


def insecure_warning(hosts: list[str] | tuple[str, ...]) -> str:
    return (
        f"plain http to {', '.join(hosts)} (insecure_http = true in [[fleet.hosts]]): anyone on the path can "
        f"read the signed requests and answer for {'that host' if len(hosts) == 1 else 'those hosts'}"
    )


def cmd_fleet_status(args: argparse.Namespace) -> int:
    fleet = fleet_of(args.loaded_config, args.app)
    client = build_fleet_client(
        fleet, Queue.for_state_dir(args.loaded_config.settings.state_dir)
    )  # kept for the console
    report: dict[str, dict[str, Any]] = {}
    for app in [args.app] if args.app else list(fleet.apps):
        hosts: dict[str, Any] = {}
        for name in fleet.host_names:
            try:
                hosts[name] = dict(client.status(name, app))
            except DeployerError as exc:
                hosts[name] = {"error": str(exc)}
        differs = plan.odd_ones({h: s.get("tag") for h, s in hosts.items() if "error" not in s})
        for name, status in hosts.items():
            status["differs"] = name in differs
        report[app] = hosts
    bad = any("error" in s or s["differs"] for hosts in report.values() for s in hosts.values())
    if args.json:  # JSON escapes C0 controls itself; DEL, C1 and the like are escaped here, line by line
        print("\n".join(printable(line) for line in json.dumps(report, indent=2, default=str).splitlines()))
        return 1 if bad else 0
    for app, hosts in report.items():
        for name, s in hosts.items():
            print(printable(f"{app} {name}: " + (f"does not answer: {s['error']}" if "error" in s else host_line(s))))
    return 1 if bad else 0


def host_line(status: dict[str, Any]) -> str:
    health = status.get("health") or {}
    unwell = [f"{part} {state}" for part, state in health.items() if state != "ok"]
    last = status.get("last_job") or {}
    parts = [
        f"{status.get('tag') or 'not deployed'} on {status.get('port_set') or '-'}",
        "healthy" if not unwell else "unhealthy: " + ", ".join(unwell),
    ]
    if last:
        parts.append(
            f"last job {last.get('id')} {last.get('status')}"
            + (f" (rollout {last['rollout']})" if last.get("rollout") else "")
        )
    return "; ".join(parts) + ("  DIFFERS" if status.get("differs") else "")
