"""Commands of the server side: `serve`, `worker`, and the `redeploy` client. Thin: they wire and report."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from deployer.config import Config
from deployer.errors import (
    DeployerError,
    InvalidRequest,
    MalformedRequest,
    PayloadTooLarge,
    RequestRejected,
    Unauthorized,
    UnknownApp,
    UnknownJob,
    UnsupportedMediaType,
)
from deployer.server import signatures

GUNICORN_STOP_SECONDS = 15
CLIENT_TIMEOUT = 30
REJECTIONS = {400: MalformedRequest, 401: Unauthorized, 404: UnknownApp, 413: PayloadTooLarge,
              415: UnsupportedMediaType, 422: InvalidRequest}


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(sub, "serve", cmd_serve, "run the webhook receiver (gunicorn) and the deploy worker",
                "deployer serve --watch",
                "Serve POST /hooks/github, POST /deploy, GET /jobs/<id>, GET /audit and GET /healthz with\n"
                "gunicorn on [server] listen, and run the deploy worker, which reconciles every app first. As\n"
                "root with [server] user and group set, gunicorn runs as that user: it only enqueues; the worker\n"
                "alone uses Docker and netfilter. SIGTERM waits for a running deploy; a second one stops it.\n"
                "With --watch, the maintenance responder and the failover watchdog run beside the worker,\n"
                "as `deployer watch` runs them.")
    p.add_argument("--watch", action="store_true",
                   help="also run the maintenance responder and the failover watchdog (see deployer watch)")
    command(sub, "worker", cmd_worker, "run only the deploy worker (when gunicorn runs separately)",
            "deployer worker",
            "Reconcile every app, then run queued jobs, one at a time per app. One worker per state folder.")
    p = command(sub, "redeploy", cmd_redeploy, "ask a running server to redeploy an app, signed with an operator key",
                "deployer redeploy demo v1.2.0 --url https://deploy.example:8443 --key-id alice "
                "--secret-file ~/.deployer/alice --wait",
                "Send a signed POST /deploy. Without TAG the server redeploys the app's active release.\n"
                "With --wait, follow the job (GET /jobs/<id>) to its end and show each step.\n"
                "Exit codes: 0 queued (or, with --wait, succeeded or already active), 1 failed or\n"
                "superseded, 2 refused by the server.")
    p.add_argument("app")
    p.add_argument("tag", nargs="?")
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--key-id", required=True, help="the operator key id ([server.operators.KEY_ID])")
    p.add_argument("--secret-file", required=True, type=Path, help="file holding that key's secret")
    p.add_argument("--reason", help="why, for the audit record")
    p.add_argument("--wait", action="store_true", help="follow the job to its end")
    p.add_argument("--timeout", type=float, default=1800, help="seconds --wait waits (default 1800)")
    p.set_defaults(needs_config=False)


# --- serve and worker ----------------------------------------------------------------------------


def gunicorn_argv(config: Config) -> list[str]:
    server = config.server
    return [sys.executable, "-m", "gunicorn", "--workers", str(server.workers), "--bind", server.listen,
            "--worker-class", "sync", "--timeout", "30", "--graceful-timeout", "10", "--access-logfile", "-",
            "--error-logfile", "-", "--log-level", "info", "--name", "deployer-receiver",
            *_no_control_socket(), "deployer.server.web:create_app()"]


def _no_control_socket() -> list[str]:
    """Newer gunicorn opens a control socket in $HOME; the receiver needs none (and may have no home)."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def start_gunicorn(config: Config, log: Any = None) -> subprocess.Popen:
    """gunicorn with the app factory; as `[server] user` (whole process tree) when serve runs as root.

    `log`: a file for its output (default: this process's stdout and stderr).
    """
    from deployer.server.worker import child_environment

    env = child_environment()  # carries the *_env secrets the receiver needs
    env["DEPLOYER_CONFIG"] = str(config.path)
    drop: dict[str, Any] = {}
    user, group = config.server.user, config.server.group
    if user is not None and os.geteuid() == 0:
        drop = {"user": user, "group": group or user, "extra_groups": []}
    elif user is not None:
        import pwd

        if pwd.getpwuid(os.geteuid()).pw_name != user:
            raise DeployerError(f"[server] user is {user!r}: start serve as root (it drops to {user!r} for "
                                f"gunicorn), or as {user!r} itself")
    try:
        return subprocess.Popen(gunicorn_argv(config), env=env, stdin=subprocess.DEVNULL, umask=0o007,
                                stdout=log, stderr=subprocess.STDOUT if log is not None else None, **drop)
    except (OSError, KeyError) as exc:
        raise DeployerError(f"cannot start gunicorn: {exc}") from None


def _prepare(config: Config):
    from deployer import audit
    from deployer.server.jobs import Queue, prepare_folder

    group = config.server.group if os.geteuid() == 0 else None
    prepare_folder(config.settings.state_dir, group)
    audit.prepare_folder(config.settings.state_dir, group)  # the receiver records deliveries there
    queue = Queue.for_state_dir(config.settings.state_dir)
    queue.worker_status()  # creates the tables now, as the privileged user
    return queue


def _stop_on_signals(worker) -> None:
    """The first SIGTERM/SIGINT stops claiming and waits for running deploys; the second kills them."""
    def handle(signum: int, _frame: Any) -> None:
        if worker.stopping.is_set():
            worker.kill_children()
        worker.stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def cmd_serve(args: argparse.Namespace) -> int:
    from deployer.server.worker import build_worker

    config: Config = args.loaded_config
    queue = _prepare(config)
    worker = build_worker(config, queue)
    stop_watch = _start_watch(config) if args.watch else None
    gunicorn = start_gunicorn(config)
    gunicorn_died = threading.Event()

    def watch() -> None:
        gunicorn.wait()
        if not worker.stopping.is_set():
            gunicorn_died.set()
            worker.stopping.set()

    threading.Thread(target=watch, name="gunicorn-watch", daemon=True).start()
    _stop_on_signals(worker)
    try:
        worker.start()
        worker.run()
    finally:
        worker.stopping.set()
        _stop_gunicorn(gunicorn)
        if stop_watch is not None:
            stop_watch()
    if gunicorn_died.is_set():
        print(f"deployer: gunicorn exited with status {gunicorn.returncode}; the worker stopped too", file=sys.stderr)
        return 1
    return 0


def _start_watch(config: Config) -> Callable[[], None]:
    """The maintenance responder and the failover watchdog in threads beside the worker; returns their stop.

    The responder binds its port here, so a taken port stops serve before gunicorn starts.
    """
    from deployer.host.watchdog import run_watchdog
    from deployer.host.wiring import build_engine
    from deployer.server import responder

    stop = threading.Event()
    server = responder.make_server(config)
    threads = [threading.Thread(target=run_watchdog, args=(config, stop, build_engine), name="watchdog", daemon=True),
               threading.Thread(target=responder.serve, args=(config, stop, server), name="responder", daemon=True)]
    for thread in threads:
        thread.start()

    def finish() -> None:
        stop.set()  # the watchdog removes its retry rules on the way out
        for thread in threads:
            thread.join(timeout=30)

    return finish


def _stop_gunicorn(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # gunicorn's graceful shutdown: finish the requests in flight
    try:
        process.wait(GUNICORN_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cmd_worker(args: argparse.Namespace) -> int:
    from deployer.server.worker import build_worker

    config: Config = args.loaded_config
    worker = build_worker(config, _prepare(config))
    _stop_on_signals(worker)
    worker.start()
    worker.run()
    return 0


# --- the redeploy client --------------------------------------------------------------------------


class SignedClient:
    """Signs each request with an operator key, as the README describes ("Signing a manual request")."""

    def __init__(self, base_url: str, key_id: str, secret: str, *, timeout: float = CLIENT_TIMEOUT) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.prefix = urlsplit(self.base_url).path
        self.key_id = key_id
        self.secret = secret
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
        import requests

        headers = signatures.sign_request(self.secret, method=method, path=self.prefix + path, key_id=self.key_id,
                                          timestamp=int(time.time()), nonce=secrets.token_urlsafe(24), body=body)
        if body:
            headers["Content-Type"] = "application/json"
        try:
            response = self.session.request(method, self.base_url + path, data=body, headers=headers,
                                            timeout=self.timeout)
        except requests.RequestException as exc:
            raise DeployerError(f"cannot reach {self.base_url}: {type(exc).__name__}") from None
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text[:200]}
        if response.status_code >= 400:
            message = f"the server refused the request ({response.status_code}): {data.get('error', '')}"
            raise REJECTIONS.get(response.status_code, DeployerError)(message)
        return response.status_code, data


def read_secret_file(path: Path) -> str:
    try:
        secret = path.expanduser().read_text().strip()
    except OSError as exc:
        raise RequestRejected(f"cannot read the secret file {path}: {exc.strerror}") from None
    if not secret:
        raise RequestRejected(f"the secret file {path} is empty")
    return secret


def cmd_redeploy(args: argparse.Namespace) -> int:
    client = SignedClient(args.url, args.key_id, read_secret_file(args.secret_file))
    request = {"app": args.app, **({"tag": args.tag} if args.tag else {}),
               **({"reason": args.reason} if args.reason else {})}
    _, answer = client.request("POST", "/deploy", json.dumps(request).encode())
    job_id = answer["job"]
    print(f"{args.app}: queued {job_id} ({args.tag or 'the active release'})", flush=True)
    if not args.wait:
        return 0
    return follow(client, job_id, timeout=args.timeout)


def follow(client: SignedClient, job_id: str, *, timeout: float, interval: float = 1.0) -> int:
    """Print each new step of the job until it ends; the exit code says how it ended."""
    deadline = time.monotonic() + timeout
    shown = 0
    while True:
        try:
            _, job = client.request("GET", f"/jobs/{job_id}")
        except UnknownApp:
            raise UnknownJob(f"the server does not know job {job_id}") from None
        for step in job.get("steps", [])[shown:]:
            print("  " + describe_step(step), flush=True)
        shown = len(job.get("steps", []))
        status = job["status"]
        if status in ("succeeded", "skipped"):
            print(f"{job['app']}: {status}: {job.get('reason') or ''}".rstrip(": "))
            return 0
        if status in ("failed", "superseded"):
            print(f"{job['app']}: {status}: {job.get('reason') or ''}".rstrip(": "), file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"{job['app']}: still {status} after {timeout:g} s; follow it with GET /jobs/{job_id}",
                  file=sys.stderr)
            return 1
        time.sleep(interval)


def describe_step(step: dict[str, Any]) -> str:
    detail = step.get("detail") or {}
    parts = [step["name"], "..." if step.get("outcome") == "running" else step.get("outcome") or ""]
    if "duration_ms" in detail:
        parts.append(f"{detail['duration_ms']}ms")
    for key in ("tag", "image", "digest", "to", "reason", "error", "detail"):
        if detail.get(key):
            parts.append(f"{key}={detail[key]}")
    return " ".join(p for p in parts if p)
