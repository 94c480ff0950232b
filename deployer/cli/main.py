"""The command line: a thin layer over the engine. Errors become one clear line and an exit code here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Callable, Sequence

from deployer import config as config_module
from deployer.cli import audit as audit_cli
from deployer.cli import cluster as cluster_cli
from deployer.cli import fleet as fleet_cli
from deployer.cli import canary as canary_cli
from deployer.cli import forward as forward_cli
from deployer.cli import ops as ops_cli
from deployer.cli import server as server_cli
from deployer.errors import DeployerError, DockerUnavailable, StateError
from deployer.folders import space_problem
from deployer.queue.database import queue_path
from deployer.queue.queue import Queue
from deployer.worker.faults import fault_lines

Handler = Callable[[argparse.Namespace], int]

EPILOG = """\
The config file is --config, else $DEPLOYER_CONFIG, else /etc/deployer/deployer.toml.
--config/-c and --quiet/-q go before or after the command: deployer status -c x.toml.
Exit codes: 0 done, 1 failed (traffic stays where it was), 2 bad input or config, 75 app busy."""


def _global_flags(defaults: bool) -> argparse.ArgumentParser:
    """--config and --quiet, which people type before the command or after it.

    The top-level parser gives the defaults; under a command they default to SUPPRESS, so a flag given
    before the command is not overwritten by the command's parser when it is not repeated after it.
    """
    unset = {} if defaults else {"default": argparse.SUPPRESS}
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--config", "-c", help="path of the TOML config file", **unset)
    flags.add_argument("--quiet", "-q", action="store_true", help="print only warnings and the result", **unset)
    return flags


COMMAND_FLAGS = _global_flags(defaults=False)


def _command(sub: argparse._SubParsersAction, name: str, handler: Handler, help: str, example: str,
             description: str | None = None) -> argparse.ArgumentParser:
    """One command (or a nested action such as `audit verify`): help with an example, and the global flags."""
    parser = sub.add_parser(name, help=help, description=description or help, parents=[COMMAND_FLAGS],
                            epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deployer", description="Zero-downtime deploys of Docker apps by flipping DNAT rules.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[_global_flags(defaults=True)])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(sub, "deploy", cmd_deploy, "deploy a tag of an app with zero downtime",
                 "deployer deploy demo v2",
                 "Pull APP's image at TAG, start it on the idle port set, health-check it, flip the DNAT rules\n"
                 "to it in one transaction, clean conntrack, drain and stop the old instance.\n"
                 "With --canary PERCENT, the flip splits new connections instead and both instances serve\n"
                 "until `deployer promote` or `deployer abort` (e.g. deployer deploy demo v2 --canary 10 --sticky).")
    p.add_argument("app")
    p.add_argument("tag")
    canary_cli.add_deploy_flags(p)

    p = _command(sub, "rollback", cmd_rollback, "go back to the previous release, behind the same health gate",
                 "deployer rollback demo")
    p.add_argument("app")

    p = _command(sub, "status", cmd_status, "show the active release of each app and whether the live rules match",
                 "deployer status demo --json",
                 "Show the active release of each app and whether the live rules match. First, one line per\n"
                 "fault of the host the worker has seen (docker, netfilter, disk, a stale worker heartbeat):\n"
                 "what is wrong, since when, and which jobs wait on it. Exits 1 when Docker does not answer.")
    p.add_argument("app", nargs="?")
    p.add_argument("--json", action="store_true", help="print JSON for tools")

    p = _command(sub, "rules", cmd_rules, "print the transaction for an app (iptables-restore text, or nft commands on "
                 "the nftables backend), without applying it",
                 "deployer rules demo")
    p.add_argument("app")

    p = _command(sub, "reconcile", cmd_reconcile,
                 "bring rules, containers and the record back into agreement (also runs when the server starts)",
                 "deployer reconcile")
    p.add_argument("app", nargs="?")

    p = _command(sub, "uninstall", cmd_uninstall,
                 "remove the deployer's containers, nat rules and records from this host (images stay)",
                 "deployer uninstall --yes")
    p.add_argument("--yes", action="store_true", help="confirm: the apps stop serving")

    for register in _extensions():
        register(sub, _command)
    return parser


def _extensions() -> list[Callable[..., None]]:
    """Commands that live beside their own concern: the server, the audit log, maintenance, forwarding."""
    return [server_cli.register, audit_cli.register, ops_cli.register, forward_cli.register, cluster_cli.register,
            canary_cli.register, fleet_cli.register]


def _engine(args: argparse.Namespace):
    from deployer.wiring import build_engine

    return build_engine(args.loaded_config)


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        split = canary_cli.canary_start(args, args.loaded_config.app(args.app).canary_bake)
    except argparse.ArgumentTypeError as exc:
        print(f"deployer: {exc}", file=sys.stderr)
        return 2
    result = _engine(args).deploy(args.app, args.tag, actor=config_module.local_actor(), canary_split=split)
    if split is not None:
        print(f"{result.app}: canary {result.tag} on {result.port_set} ({result.container}) gets {split.weight}% of "
              f"new connections{' by client address' if split.sticky else ''}; {result.previous_tag} the rest")
        return 0
    print(f"{result.app}: {result.tag} is live on {result.port_set} ({result.container}, {result.digest or 'no digest'})"
          + (f", replacing {result.previous_tag}" if result.previous_tag else ""))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    result = _engine(args).rollback(args.app, actor=config_module.local_actor())
    print(f"{result.app}: rolled back to {result.tag} on {result.port_set} ({result.container})")
    return 0


def host_faults(config: config_module.Config) -> list[str]:
    """The worker's faults and what waits on them, and a full disk even when the worker cannot say so."""
    lines = []
    problem = space_problem(config.settings.state_dir)
    if queue_path(config.settings.state_dir).exists():
        try:
            queue = Queue.for_state_dir(config.settings.state_dir)
            lines = fault_lines(queue.heartbeat.worker_status(), queue.jobs.waiting(), time.time())
        except StateError as exc:
            lines = [f"fault queue: {exc}"]
    if problem is not None and not any(line.startswith("fault disk:") for line in lines):
        lines.insert(0, f"fault disk: {problem}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    faults = [] if args.json else host_faults(args.loaded_config)
    for line in faults:
        print(line)
    try:
        statuses = _engine(args).status(args.app)
    except DockerUnavailable as exc:
        if args.json:
            raise
        if not any(line.startswith("fault docker:") for line in faults):
            print(f"fault docker: {exc}")
        return 1
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2, default=str))
        return 0
    for s in statuses:
        if s.active:
            a = s.active
            line = f"{s.app}: {a.tag} on {a.port_set} ({a.container_name} {a.address}, {a.digest or 'no digest'})"
        else:
            line = f"{s.app}: not deployed"
        line += "; rules match" if s.rules_match else "; RULES DIFFER (run: deployer reconcile)"
        print(line)
        for note in getattr(s, "notes", []):  # the mode (maintenance, forward ...), a drain
            print(f"  {note}")
        if s.previous:
            print(f"  previous: {s.previous.tag} ({s.previous.digest or 'no digest'})")
        for c in s.containers:
            print(f"  container {c['name']} {c['status']} set={c['set']} tag={c['tag']} address={c['address']}")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    sys.stdout.write(_engine(args).rules_text(args.app))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    repairs = _engine(args).reconcile(args.app, actor=config_module.local_actor())
    for repair in repairs:
        print(f"repaired: {repair}")
    if not repairs:
        print("nothing to repair: rules, containers and records agree")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    if not args.yes:
        print("deployer: uninstall stops every app of this deployer; confirm with --yes", file=sys.stderr)
        return 2
    for item in _engine(args).uninstall(actor=config_module.local_actor()):
        print(f"removed {item}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sh").setLevel(logging.WARNING)  # it logs every process start at INFO
    try:
        # A client command (redeploy) runs on an operator's machine, which has no config file.
        # The maintenance responder runs unprivileged: it loads what the receiver loads, never the worker's secrets.
        needs_config = getattr(args, "needs_config", True)
        load = config_module.load_receiver if needs_config == "receiver" else config_module.load
        args.loaded_config = load(config_module.config_path(args.config)) if needs_config else None
        return args.handler(args)
    except DeployerError as exc:
        print(f"deployer: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("deployer: interrupted", file=sys.stderr)
        return 130

