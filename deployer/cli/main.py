"""The command line: a thin layer over the engine. Errors become one clear line and an exit code here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

import shtab

from deployer import config as config_module
from deployer.cli import audit as audit_cli
from deployer.cli import canary as canary_cli
from deployer.cli import check as check_cli
from deployer.cli import cluster as cluster_cli
from deployer.cli import console as console_cli
from deployer.cli import fleet as fleet_cli
from deployer.cli import forward as forward_cli
from deployer.cli import ops as ops_cli
from deployer.cli import report as report_cli
from deployer.cli import server as server_cli
from deployer.cli import setup as setup_cli
from deployer.errors import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    DeployerError,
    DockerUnavailable,
    StateError,
    UsageError,
)
from deployer.folders import space_problem
from deployer.queue.database import queue_path
from deployer.queue.queue import Queue
from deployer.wiring import build_engine, report_backlog
from deployer.worker.faults import fault_lines

Handler = Callable[[argparse.Namespace], int]
COMPLETION_SHELLS = ("bash", "zsh")

EPILOG = """\
The config file is --config, else $DEPLOYER_CONFIG, else /etc/deployer/deployer.toml.
--config/-c and --quiet/-q go before or after the command: deployer status -c x.toml.
With --json, a command prints one JSON document on stdout, an error too: {"error": ..., "exit_code": ...};
each document's fields are in docs/deploys.md, "JSON output".

exit codes, the same for every command:
""" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


def _global_flags(defaults: bool, config: bool = True) -> argparse.ArgumentParser:
    """--config and --quiet, which people type before the command or after it.

    The top-level parser gives the defaults; under a command they default to SUPPRESS, so a flag given
    before the command is not overwritten by the command's parser when it is not repeated after it.
    A command that reads no config (redeploy) does not list --config.
    """
    unset = {} if defaults else {"default": argparse.SUPPRESS}
    flags = argparse.ArgumentParser(add_help=False)
    if config:
        flags.add_argument("--config", "-c", help="path of the TOML config file", **unset)
    flags.add_argument("--quiet", "-q", action="store_true", help="print only warnings and the result", **unset)
    return flags


COMMAND_FLAGS = _global_flags(defaults=False)
CLIENT_FLAGS = _global_flags(defaults=False, config=False)


def _command(
    sub: argparse._SubParsersAction,
    name: str,
    handler: Handler,
    help: str,
    example: str,
    description: str | None = None,
    *,
    reads_config: bool = True,
) -> argparse.ArgumentParser:
    """One command (or a nested action such as `audit verify`): help with an example, and the global flags."""
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        parents=[COMMAND_FLAGS if reads_config else CLIENT_FLAGS],
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, **({} if reads_config else {"needs_config": False}))
    return parser


def package_version() -> str:
    """The installed package's version, from its metadata (pyproject.toml's), so it is written in one place."""
    try:
        return version("deployer")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document for tools (docs/deploys.md, JSON output)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deployer",
        description="Zero-downtime deploys of Docker apps by flipping DNAT rules.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_flags(defaults=True)],
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {package_version()}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(
        sub,
        "deploy",
        cmd_deploy,
        "deploy a tag of an app with zero downtime",
        "deployer deploy demo v2",
        "Pull APP's image at TAG, start it on the idle port set, health-check it, flip the DNAT rules\n"
        "to it in one transaction, clean conntrack, drain and stop the old instance.\n"
        "With --canary PERCENT, the flip splits new connections instead and both instances serve\n"
        "until `deployer promote` or `deployer abort` (e.g. deployer deploy demo v2 --canary 10 --sticky).",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")
    p.add_argument("tag", help="the image tag to deploy")
    canary_cli.add_deploy_flags(p)
    add_json_flag(p)

    p = _command(
        sub,
        "rollback",
        cmd_rollback,
        "go back to the previous release, behind the same health gate",
        "deployer rollback demo",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")
    add_json_flag(p)

    p = _command(
        sub,
        "status",
        cmd_status,
        "show the active release of each app and whether the live rules match",
        "deployer status demo --json",
        "Show the active release of each app and whether the live rules match. First, one line per\n"
        "fault of the host the worker has seen (docker, netfilter, disk, a stale worker heartbeat):\n"
        "what is wrong, since when, and which jobs wait on it. Exits 1 when the rules of an app differ\n"
        "or a fault is open, 69 when Docker does not answer.",
    )
    p.add_argument("app", nargs="?", help="only this app (default: every app)")
    add_json_flag(p)

    p = _command(
        sub,
        "rules",
        cmd_rules,
        "print the transaction for an app (iptables-restore text, or nft commands on "
        "the nftables backend), without applying it",
        "deployer rules demo",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")
    p.add_argument(
        "--ipv6",
        action="store_true",
        help="the IPv6 family's transaction (ip6tables-restore text, or nft commands for table ip6) on a "
        "dual-stack host",
    )
    add_json_flag(p)

    p = _command(
        sub,
        "reconcile",
        cmd_reconcile,
        "bring rules, containers and the record back into agreement (also runs when the server starts)",
        "deployer reconcile",
    )
    p.add_argument("app", nargs="?", help="only this app (default: every app)")

    p = _command(
        sub,
        "uninstall",
        cmd_uninstall,
        "remove the deployer's containers, nat rules and records from this host (images stay)",
        "deployer uninstall --yes",
    )
    p.add_argument("--yes", action="store_true", help="confirm: the apps stop serving")

    p = _command(
        sub,
        "completion",
        cmd_completion,
        "print the shell completion script for bash or zsh",
        "deployer completion bash > /etc/bash_completion.d/deployer",
        "Print a completion script generated from this parser, so it knows every command and flag of\n"
        "this version. bash: source it, or install it as /etc/bash_completion.d/deployer. zsh: install\n"
        "it as _deployer in a folder of $fpath.",
        reads_config=False,
    )
    p.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell the script is for")

    for register in _extensions():
        register(sub, _command)
    return parser


def _extensions() -> list[Callable[..., None]]:
    """Commands that live beside their own concern: the server, the audit log, maintenance, forwarding."""
    return [
        server_cli.register,
        report_cli.register,
        audit_cli.register,
        check_cli.register,
        ops_cli.register,
        forward_cli.register,
        cluster_cli.register,
        canary_cli.register,
        fleet_cli.register,
        setup_cli.register,
        console_cli.register,
    ]


def _engine(args: argparse.Namespace):

    return build_engine(args.loaded_config)


def cmd_deploy(args: argparse.Namespace) -> int:
    split = canary_cli.canary_start(args, args.loaded_config.app(args.app).canary_bake)
    result = _engine(args).deploy(args.app, args.tag, actor=config_module.local_actor(), canary_split=split)
    if args.json:
        print_json(asdict(result))
        return 0
    if split is not None:
        print(
            f"{result.app}: canary {result.tag} on {result.port_set} ({result.container}) gets {split.weight}% of "
            f"new connections{' by client address' if split.sticky else ''}; {result.previous_tag} the rest"
        )
        return 0
    print(
        f"{result.app}: {result.tag} is live on {result.port_set} ({result.container}, {result.digest or 'no digest'})"
        + (f", replacing {result.previous_tag}" if result.previous_tag else "")
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    result = _engine(args).rollback(args.app, actor=config_module.local_actor())
    if args.json:
        print_json(asdict(result))
        return 0
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
    return lines + report_lines(config)


def report_lines(config: config_module.Config) -> list[str]:
    """Each report feed that is behind: how far, and why (the backlog of GitHub's statuses and notifications)."""
    if not (config.reports.github or config.reports.notify) or not queue_path(config.settings.state_dir).exists():
        return []
    try:
        rows = report_backlog(config)
    except DeployerError as exc:
        return [f"report: {exc}"]
    return [line for line in report_cli.backlog_lines(rows, time.time()) if not line.endswith("caught up")]


def status_exit_code(rules_match: Sequence[bool], faults: Sequence[str]) -> int:
    """0 when every app's rules match and no fault is open, else 1: a script can gate on `deployer status`."""
    return EXIT_FAILED if faults or not all(rules_match) else 0


def cmd_status(args: argparse.Namespace) -> int:
    faults = host_faults(args.loaded_config)
    for line in [] if args.json else faults:
        print(line)
    try:
        statuses = _engine(args).status(args.app)
    except DockerUnavailable as exc:
        if args.json:
            raise
        if not any(line.startswith("fault docker:") for line in faults):
            print(f"fault docker: {exc}")
        return exc.exit_code
    code = status_exit_code([s.rules_match for s in statuses], faults)
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2, default=str))
        return code
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
    return code


def cmd_rules(args: argparse.Namespace) -> int:
    text = _engine(args).rules_text(args.app, ipv6=args.ipv6)
    if args.json:
        backend = args.loaded_config.settings.backend
        print_json(
            {"app": args.app, "backend": backend, "family": "ipv6" if args.ipv6 else "ipv4", "transaction": text}
        )
        return 0
    sys.stdout.write(text)
    return 0


def completion_script(shell: str) -> str:
    """The completion script for `shell`, generated by shtab from the parser itself."""
    return shtab.complete(build_parser(), shell=shell)


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(completion_script(args.shell))
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
        raise UsageError("uninstall stops every app of this deployer; confirm with --yes")
    for item in _engine(args).uninstall(actor=config_module.local_actor()):
        print(f"removed {item}")
    return 0


def print_json(document: object) -> None:
    """The one JSON document a command prints with --json."""
    print(json.dumps(document, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("sh").setLevel(logging.WARNING)  # it logs every process start at INFO
    try:
        # A client command (redeploy) runs on an operator's machine, which has no config file.
        # The maintenance responder runs unprivileged: it loads what the receiver loads, never the worker's secrets.
        needs_config = getattr(args, "needs_config", True)
        load = {"receiver": config_module.load_receiver, "reports": config_module.load_reports}.get(
            needs_config, config_module.load
        )
        args.loaded_config = load(config_module.config_path(args.config)) if needs_config else None
        return args.handler(args)
    except DeployerError as exc:
        return report_error(args, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return report_error(args, "interrupted", EXIT_INTERRUPTED)


def report_error(args: argparse.Namespace, message: str, code: int) -> int:
    """The one place an error becomes its line on stderr and its exit code; with --json, a JSON document too."""
    print(f"deployer: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print_json({"error": message, "exit_code": code})
    return code
