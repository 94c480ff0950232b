"""Commands for operating apps beside deploys: maintenance, the responder, the watchdog, drain. Thin: modes.py acts."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable

from deployer import config as config_module
from deployer.config import Config
from deployer.config.fields import parse_duration
from deployer.host import modes, responder
from deployer.host.watchdog import run_watchdog, watched_apps
from deployer.wiring import build_engine, build_maintenance_server, spawn_process
from deployer.worker import supervisor


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "maintenance",
        cmd_maintenance,
        "show the maintenance page on an app's ports instead of the app, or end that",
        'deployer maintenance on demo --message "Back at 10:00 UTC"',
        "on: move every tcp external port of APP to the maintenance responder (503, Retry-After and the\n"
        "app's page), in one transaction on the app's chain; open connections stay where they are. It is\n"
        "refused when no responder answers on [deployer] maintenance_port.\n"
        "off: serve the app again; refused while its instance fails its health check. It also ends an\n"
        "automatic failover. A deploy during maintenance keeps the page up.",
    )
    p.add_argument("action", choices=["on", "off"], help="on: show the page; off: serve the app again")
    p.add_argument("app", help="the app's name, as in [apps.APP]")
    p.add_argument("--message", help="a line shown on the page (on only)")

    p = command(
        sub,
        "maintenance-server",
        cmd_maintenance_server,
        "run the maintenance responder: 503, Retry-After and each app's page, on [deployer] maintenance_port",
        "deployer maintenance-server",
        "Answer on every local address on [deployer] maintenance_port until SIGTERM or Ctrl-C.\n"
        "`deployer watch` runs one too, unless --no-responder; `deployer serve --watch` starts this\n"
        "command as its child, as [server] user, on a socket it has bound.",
    )
    p.add_argument("--listen-fd", type=int, help="answer on this inherited listening socket (serve --watch uses it)")
    p.set_defaults(needs_config="receiver")  # it may run unprivileged: never the worker's secrets

    p = command(
        sub,
        "watch",
        cmd_watch,
        "fail apps over to the maintenance page when their instance dies, and back when it recovers",
        "deployer watch",
        "Probe each app's active instance every [apps.NAME.watchdog] interval; after `failures` failed\n"
        "probes in a row its ports go to the maintenance page, after `recoveries` passing probes in a row\n"
        "they come back. A deploy of a new instance also ends a failover. Runs the maintenance responder\n"
        "as well, in a child process, unless --no-responder. Runs until SIGTERM or Ctrl-C.",
    )
    p.add_argument(
        "--no-responder",
        action="store_true",
        help="another process (deployer maintenance-server or serve) runs the responder",
    )

    p = command(
        sub,
        "drain",
        cmd_drain,
        "take the host out of an upstream load balancer: close the app's status port",
        "deployer drain demo --wait --timeout 120",
        "Remove APP's status-port forward, so the upstream's health checks fail and it sends no new\n"
        "sessions. With --wait, wait until conntrack shows none of the app's tcp connections open and none\n"
        "closed in the last --settle seconds (and at least that long); exit 1 if that has not happened\n"
        "after --timeout.",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")
    p.add_argument("--wait", action="store_true", help="wait until the app is idle")
    p.add_argument("--timeout", type=seconds, default=300.0, help="seconds --wait waits at most (default 300)")
    p.add_argument(
        "--settle",
        type=seconds,
        default=5.0,
        help="seconds without a new or closing connection that count as idle, and the least the wait "
        "lasts (default 5); make it longer than the upstream's check interval x fall",
    )

    p = command(
        sub,
        "undrain",
        cmd_undrain,
        "put the host back into the upstream's rotation: restore the status port",
        "deployer undrain demo",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")


def seconds(text: str) -> float:
    """An argparse type: a time that is not negative (--timeout, --settle, rollout --bake), as the config writes it."""
    try:
        value = float(parse_duration(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _engine(args: argparse.Namespace):

    return build_engine(args.loaded_config)


def cmd_maintenance(args: argparse.Namespace) -> int:
    actor = config_module.local_actor()
    engine = _engine(args)
    if args.action == "on":
        modes.maintenance_on(engine, args.app, actor=actor, message=args.message)
        ports = ", ".join(
            sorted({f"{p.external}/tcp" for p in engine.config.app(args.app).ports if p.protocol == "tcp"})
        )
        print(f"{args.app}: maintenance page on ({ports} -> the responder on port {engine.settings.maintenance_port})")
        return 0
    if args.message:
        print("deployer: --message goes with 'maintenance on'", file=sys.stderr)
        return 2
    after = modes.maintenance_off(engine, args.app, actor=actor)
    if after is None:
        print(f"{args.app}: was not in maintenance; nothing changed")
    elif after.active:
        print(f"{args.app}: serving again ({after.active.tag} on {after.active.port_set}, {after.active.address})")
    else:
        print(f"{args.app}: maintenance off")
    return 0


def cmd_maintenance_server(args: argparse.Namespace) -> int:

    config: Config = args.loaded_config
    stop = supervisor.stop_on_signals()
    listener = responder.inherited_listener(args.listen_fd) if args.listen_fd is not None else None
    # binds now, so a taken port fails before anything else
    server = build_maintenance_server(config, listener)
    return supervisor.run_threads(
        stop,
        lambda: responder.serve(config, stop, server),
        announce=f"maintenance responder on port {config.settings.maintenance_port}",
    )


def cmd_watch(args: argparse.Namespace) -> int:

    config: Config = args.loaded_config
    stop = supervisor.stop_on_signals()
    ready = threading.Event()
    targets = [lambda: run_watchdog(config, stop, build_engine, ready=ready)]
    if not args.no_responder:
        # The watchdog needs root; the responder, which anyone reaches, runs in a child (as [server] user).
        supervisor.receiver_user(config)  # a missing user fails now, not in the restart loop
        listener = supervisor.bind_listener(config)  # a taken port fails now, not in a thread
        targets.append(
            lambda: supervisor.keep_running(
                "the maintenance responder", lambda: supervisor.start_responder(config, spawn_process, listener), stop
            )
        )
    names = ", ".join(a.name for a in watched_apps(config)) or "no app (every watchdog is disabled)"
    return supervisor.run_threads(
        stop,
        *targets,
        ready=ready,
        announce=f"watching {names}"
        + ("" if args.no_responder else f"; maintenance responder on port {config.settings.maintenance_port}"),
    )


def cmd_drain(args: argparse.Namespace) -> int:
    actor = config_module.local_actor()
    engine = _engine(args)
    after = modes.drain_app(engine, args.app, actor=actor)
    port = engine.config.app(args.app).status_port
    print(
        f"{args.app}: drained: status port {port} closed; the upstream stops sending new sessions"
        if after
        else f"{args.app}: already drained (status port {port} closed)",
        flush=True,
    )
    if not args.wait:
        return 0
    result = modes.wait_drained(engine, args.app, actor=actor, timeout=args.timeout, settle=args.settle)
    if result.idle:
        print(
            f"{args.app}: idle after {result.waited:g} s: no connection open, none closed in the last {args.settle:g} s"
        )
        return 0
    print(
        f"{args.app}: not idle after {result.waited:g} s: {result.open} connection(s) open, {result.recent} "
        f"closed in the last {args.settle:g} s",
        file=sys.stderr,
    )
    return 1


def cmd_undrain(args: argparse.Namespace) -> int:
    engine = _engine(args)
    after = modes.undrain_app(engine, args.app, actor=config_module.local_actor())
    port = engine.config.app(args.app).status_port
    if after is None:
        print(f"{args.app}: was not drained; nothing changed")
    elif after.active is None:
        print(f"{args.app}: undrained; the status port opens once a release is deployed")
    elif after.mode != "serving":
        print(f"{args.app}: undrained; the status port opens when maintenance ends")
    else:
        print(
            f"{args.app}: back in rotation: status port {port} forwards to {after.active.port_set} "
            f"{after.active.address}:{engine.config.app(args.app).health.port}"
        )
    return 0
