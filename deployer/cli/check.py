"""`deployer check`: the config and the host around it, as the processes that use them see it. Thin: the wiring
builds the probes, deployer/host/checks.py gathers, deployer/plan/checks.py judges."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from deployer import config as config_module
from deployer.errors import EXIT_FAILED, EXIT_OK
from deployer.plan.effective_config import effective_config
from deployer.wiring import build_host_checks


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "check",
        cmd_check,
        "check the config and this host: the receiver's user and its secrets, the state folder, hooks, Docker, "
        "registries, netfilter, keepalived",
        "sudo deployer check --print",
        "Load the config, then check the host around it as the processes that use it see it: the\n"
        "receiver's [server] user exists and can read the files it opens (the config, its secrets,\n"
        "the maintenance pages); the state folder is the deployer's and nothing under it is writable\n"
        "by another user; each hooks folder exists and every hook in it would run; Docker, each\n"
        "registry the apps pull from, the netfilter backend and (with [cluster]) keepalived answer.\n"
        "Prints one line per problem, 'PROBLEM KEY-OR-PATH: what is wrong; how to fix it', then a\n"
        "summary. Exits 0 when all is well, 1 when a problem was found, 2 when the config is invalid.\n"
        "Run it as root, as serve runs.",
    )
    p.add_argument(
        "--print",
        dest="print_config",
        action="store_true",
        help="print the effective config first, as JSON, every secret masked",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON document for tools (docs/deploys.md, JSON output)"
    )
    # Loaded here, not by main: the hooks folders are checked as problems of their own, all of them.
    p.set_defaults(needs_config=False)


def cmd_check(args: argparse.Namespace) -> int:
    config = config_module.load(config_module.config_path(args.config), check_hooks=False)
    report = build_host_checks(config).run()
    shown = str(config.path)
    code = EXIT_OK if report.ok else EXIT_FAILED
    effective = effective_config(config, config.secrets()) if args.print_config else None
    if args.json:
        document = {
            "config": shown,
            "ok": report.ok,
            "problems": [problem.as_dict() for problem in report.problems],
            "checked": list(report.checked),
        }
        if effective is not None:
            document["effective"] = effective
        print(json.dumps(document, indent=2))
        return code
    if effective is not None:
        print(json.dumps(effective, indent=2))
    for problem in report.problems:
        print(problem.line())
    print(report.summary(shown))
    return code
