"""`deployer setup`: a production host's accounts, folders, config, secrets, units and docs. Thin: it wires and
prints; deployer/plan/setup.py decides the steps, deployer/adapters/host_setup.py carries them out."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from deployer import wiring
from deployer.errors import UsageError
from deployer.plan import setup


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "setup",
        cmd_setup,
        "set this host up for production: user, folders, example config, secrets, units, man page",
        "deployer setup --dry-run",
        "Create what a production host needs, and change only what is missing or differs, so a second run\n"
        "changes nothing and says so: the system group and user deployer (no home, no login shell);\n"
        "/etc/deployer (root:deployer 0750) with an example deployer.toml and the receiver's secrets\n"
        "github-secret and operators/admin (generated, root:deployer 0640), each written only when absent;\n"
        "/var/lib/deployer/state with its queue and audit folders (root:deployer 2770); the systemd units\n"
        "deployer-serve.service (serve), deployer-watch.service and, with a [cluster] table,\n"
        "deployer-cluster.service in /etc/systemd/system, then systemctl daemon-reload; the bash and zsh\n"
        "completions and the man page under /usr/local/share. A link planted where a file goes is refused.\n"
        "The reload is left out where systemd does not run (a chroot, an image build).\n"
        "Units are enabled and started only with --enable (serve, and the cluster agent when configured).",
        reads_config=False,
    )
    p.add_argument("--dry-run", action="store_true", help="print the steps it would take and change nothing")
    p.add_argument(
        "--enable",
        action="store_true",
        help="also systemctl enable --now deployer-serve.service (and deployer-cluster.service with [cluster])",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="install every file under DIR, like DESTDIR (default /); the accounts are this host's",
    )


def cmd_setup(args: argparse.Namespace) -> int:
    root = args.root
    if not root.is_absolute() or not root.is_dir():
        raise UsageError(f"--root must name an existing folder by its absolute path, not {str(root)!r}")
    if args.enable and root != Path("/"):
        raise UsageError("--enable starts the units on this host: it does not go with --root")
    if os.geteuid() != 0 and not args.dry_run and root == Path("/"):
        raise UsageError("setup creates an account and root's files: run it as root (sudo deployer setup)")
    warning = setup.interpreter_warning(sys.executable, os.path.realpath(sys.executable))
    if warning is not None:
        print(f"deployer: {warning}", file=sys.stderr)
    host = wiring.build_host_setup(root)
    booted = host.systemctl.booted()
    if args.enable and not booted:
        raise UsageError("--enable starts the units, and systemd does not run this host (no /run/systemd/system)")
    options = setup.Options(
        root=root,
        enable=args.enable,
        cluster=wiring.setup_configures_cluster(setup.Layout(root).config),
        systemd_running=booted,
    )
    wanted = setup.targets(options, wiring.setup_sources(setup.units_of(options)))
    steps = setup.steps(wanted, host.facts(wanted))
    if args.dry_run or not steps:
        for line in setup.describe(steps, dry_run=args.dry_run):
            print(line)
        return 0
    for step in steps:
        print(step, flush=True)
        host.apply(step)
    if not args.enable:
        config = setup.Layout(root).config
        print(f"next: your apps in {config}, then `deployer -c {config} check` (docs/production.md)")
    return 0
