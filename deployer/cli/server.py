"""Commands of the server side: `serve`, `worker`, and the `redeploy` client. Thin: they wire and report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from deployer import wiring
from deployer.cli.ops import seconds
from deployer.config.accounts import root_warning
from deployer.config.fleet import check_server_url, is_loopback_url
from deployer.errors import EXIT_FAILED, ConfigError, UsageError
from deployer.fleet.client import job_id_of, operator_signer
from deployer.plan.printable import printable
from deployer.queue.model import JobStatus
from deployer.worker import supervisor

log = logging.getLogger("deployer.serve")


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "serve",
        cmd_serve,
        "run the webhook receiver (gunicorn) and the deploy worker",
        "deployer serve --watch",
        "Serve POST /hooks/github, POST /deploy, GET /jobs/<id>, GET /apps/<app>, GET /audit and GET /healthz with\n"
        "gunicorn on [server] listen, and run the deploy worker, which reconciles every app first. As\n"
        "root, gunicorn runs as [server] user (default deployer, which `deployer setup` creates;\n"
        'user = "root" only when written, with a warning at every start): it only enqueues; the worker\n'
        "alone uses Docker and netfilter. SIGTERM waits for a running deploy; a second one stops it.\n"
        "A gunicorn that dies is started again after 1 s, doubling to 30 s while it keeps dying; serve\n"
        "binds [server] listen once (or takes the socket of the .socket unit that started it) and hands\n"
        "it to each gunicorn, so connections made meanwhile wait in its backlog and are answered.\n"
        "With --watch, the failover watchdog runs beside the worker, and the maintenance responder in\n"
        "a child process on the port serve binds, as [server] user too.",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="also run the maintenance responder and the failover watchdog (see deployer watch)",
    )
    command(
        sub,
        "worker",
        cmd_worker,
        "run only the deploy worker (when gunicorn runs separately)",
        "deployer worker",
        "Reconcile every app, then run queued jobs, one at a time per app. One worker per state folder.",
    )
    p = command(
        sub,
        "redeploy",
        cmd_redeploy,
        "ask a running server to redeploy an app, signed with an operator key",
        "deployer redeploy demo v1.2.0 --url https://deploy.example:8443 --key-id alice "
        "--secret-file ~/.deployer/alice --wait",
        "Send a signed POST /deploy. Without TAG the server redeploys the app's active release.\n"
        "With --wait, follow the job (GET /jobs/<id>) to its end and show each step.\n"
        "Exit codes: 0 queued (or, with --wait, succeeded or already active), 1 failed or\n"
        "superseded, 2 bad flags, 65 refused by the server, 69 the server cannot be reached,\n"
        "75 the server answered 429 (too many requests) or 503 (not ready): try again later.",
        reads_config=False,
    )
    p.add_argument("app", help="the app's name on the server")
    p.add_argument("tag", nargs="?", help="the tag to deploy (default: the app's active release)")
    p.add_argument(
        "--url",
        required=True,
        help="the server's base URL, e.g. https://deploy.example:8443; plain "
        "http only to this host itself, or with --insecure-http",
    )
    p.add_argument(
        "--ca-file",
        type=Path,
        help="the CA bundle that verifies the server's certificate (a private CA); default: the system's",
    )
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="accept a plain http:// URL to another host: its signed request can be read and replayed",
    )
    p.add_argument("--key-id", required=True, help="the operator key id ([server.operators.KEY_ID])")
    p.add_argument("--secret-file", required=True, type=Path, help="file holding that key's secret")
    p.add_argument("--reason", help="why, for the audit record")
    p.add_argument(
        "--action",
        choices=["promote", "abort"],
        help="instead of a redeploy, promote or abort the app's running canary (no TAG)",
    )
    p.add_argument("--wait", action="store_true", help="follow the job to its end")
    p.add_argument("--timeout", type=seconds, default=1800.0, help="seconds --wait waits (default 1800)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document: the queued job, or with --wait the job as it ended",
    )
    p.set_defaults(needs_config=False)


# --- serve and worker ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:

    config = args.loaded_config
    if (warning := root_warning(config.server)) is not None:
        log.warning("warning: %s", warning)
    queue = wiring.prepare_shared(config)
    wiring.begin_reports(config, queue)  # before the receiver queues anything: no entry is missed
    worker = wiring.build_worker(config, queue)
    return supervisor.serve(
        config,
        worker,
        spawn=wiring.spawn_process,
        build_engine=wiring.build_engine,
        listen=wiring.receiver_listener,
        watch=args.watch,
    )


def cmd_worker(args: argparse.Namespace) -> int:

    config = args.loaded_config
    return supervisor.run_worker(wiring.build_worker(config, wiring.prepare_shared(config)))


# --- the redeploy client --------------------------------------------------------------------------


def read_secret_file(path: Path) -> str:
    try:
        secret = path.expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc.strerror}", key="--secret-file") from None
    if not secret:
        raise ConfigError(f"the secret file {path} is empty", key="--secret-file")
    return secret


def cmd_redeploy(args: argparse.Namespace) -> int:
    check_server_url(args.url, insecure_http=args.insecure_http, path=None, key="--url", consent="pass --insecure-http")
    if args.ca_file is not None and not args.ca_file.expanduser().is_file():
        raise ConfigError(f"names no file: {args.ca_file}", key="--ca-file")
    if args.insecure_http and args.url.startswith("http://") and not is_loopback_url(args.url):
        print(
            f"deployer: warning: plain http to {args.url} (--insecure-http): anyone on the path can read and "
            f"replay this signed request",
            file=sys.stderr,
            flush=True,
        )
    client = wiring.build_server_client(
        args.url,
        operator_signer(args.key_id, read_secret_file(args.secret_file)),
        ca_file=args.ca_file.expanduser() if args.ca_file else None,
    )
    if args.action and args.tag:
        raise UsageError(f"--action {args.action} takes no TAG: it ends the running canary")
    request = {
        "app": args.app,
        **({"tag": args.tag} if args.tag else {}),
        **({"action": args.action} if args.action else {}),
        **({"reason": args.reason} if args.reason else {}),
    }
    _, answer = client.request("POST", "/deploy", json.dumps(request).encode())
    job_id = job_id_of(answer.get("job"), "the job id the server answered")
    what = f"{args.action} of the canary" if args.action else args.tag or "the active release"
    if not args.json:
        print(f"{args.app}: queued {job_id} ({what})", flush=True)
    if not args.wait:
        if args.json:
            print(json.dumps({"app": args.app, "job": job_id, "tag": args.tag, "action": args.action}, indent=2))
        return 0
    return follow(client.job_updates(job_id, timeout=args.timeout), job_id, timeout=args.timeout, as_json=args.json)


def follow(updates: Iterable[dict[str, Any]], job_id: str, *, timeout: float, as_json: bool = False) -> int:
    """Print each new step of the job as the updates come (with as_json, the job as it ended, alone);
    the exit code says how it ended."""
    shown, job = 0, {}
    for job in updates:
        for step in [] if as_json else job.get("steps", [])[shown:]:
            print("  " + printable(describe_step(step)), flush=True)
        shown = len(job.get("steps", []))
    status = job["status"]
    if as_json:  # JSON escapes C0 controls itself; DEL, C1 and the like are escaped here, line by line
        print("\n".join(printable(line) for line in json.dumps(job, indent=2, default=str).splitlines()))
        return 0 if status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED) else EXIT_FAILED
    if status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED):
        print(printable(f"{job['app']}: {status}: {job.get('reason') or ''}".rstrip(": ")))
        return 0
    if status in (JobStatus.FAILED, JobStatus.SUPERSEDED):
        print(printable(f"{job['app']}: {status}: {job.get('reason') or ''}".rstrip(": ")), file=sys.stderr)
        return 1
    print(
        printable(f"{job['app']}: still {status} after {timeout:g} s; follow it with GET /jobs/{job_id}"),
        file=sys.stderr,
    )
    return 1


def describe_step(step: dict[str, Any]) -> str:
    detail = step.get("detail") or {}
    parts = [step["name"], "..." if step.get("outcome") == "running" else step.get("outcome") or ""]
    if "duration_ms" in detail:
        parts.append(f"{detail['duration_ms']}ms")
    for key in ("tag", "image", "digest", "to", "reason", "error", "detail"):
        if detail.get(key):
            parts.append(f"{key}={detail[key]}")
    return " ".join(p for p in parts if p)
