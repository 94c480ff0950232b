"""`deployer forward` (on the new host) and `deployer forward-return` (on the old host). Thin: forwarder.py acts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from deployer import config as config_module
from deployer.cli.ops import seconds
from deployer.errors import InvalidForwarding
from deployer.plan import forwarding
from deployer.wiring import build_engine


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "forward",
        cmd_forward,
        "send an app's external ports to the host it is moving from, or stop (--off)",
        "deployer forward demo --to 203.0.113.7 --to 2001:db8::7 --masquerade",
        "On the new host, while DNS still points at the old one: DNAT the app's external ports to\n"
        "OLD_ADDR (the same port numbers unless --port says otherwise) in one transaction on the app's\n"
        "chain, after switching on IPv4 forwarding and accepting the forwarded flows in FORWARD.\n"
        "On a dual-stack host ([deployer] ipv6) a second --to names the old host's IPv6 address, and\n"
        "IPv6 clients are forwarded there too; without it they are refused while the app is forwarded.\n"
        "By default clients keep their addresses: the old host must route the replies back with\n"
        "`deployer forward-return`. With --masquerade the old host sees this host as the client.\n"
        "Checks first (route, forwarding, the old host answering) and changes nothing when one fails.\n"
        "--off flips back to the local instance (or to nothing), lets forwarded connections finish\n"
        "(drain_seconds) and removes the rules. A later `deployer deploy` replaces the forward too.",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--to",
        action="append",
        metavar="OLD_ADDR",
        help="the old host's IPv4 address; again for its IPv6 address (at most one of each family)",
    )
    what.add_argument("--off", action="store_true", help="stop forwarding")
    p.add_argument(
        "--masquerade",
        action="store_true",
        help="rewrite the clients' source to this host's address (works over any routed network)",
    )
    p.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="EXTERNAL[/PROTO]=PORT",
        help="send an external port to another port on the old host, e.g. 1000=2000 (repeatable)",
    )

    p = command(
        sub,
        "forward-return",
        cmd_forward_return,
        "on the old host: route replies to connections forwarded by the new host back through it",
        "deployer forward-return --via 203.0.113.20 --dev eth1",
        "Mark connections that arrive from NEW_ADDR on DEV (by its MAC address; on a tunnel, by the\n"
        "device), copy the mark onto their replies, and route marked packets through table --table,\n"
        "whose default route is NEW_ADDR: the new host then sees the replies it must un-DNAT, and the\n"
        "app sees the clients' own addresses. Needs a layer-2 link or a tunnel to the new host and\n"
        "loose or no reverse-path filtering on it. Checks first and changes nothing when one fails.\n"
        "--off stops marking, waits up to --drain seconds for marked connections, removes the rules,\n"
        "the ip rule and the table's routes. On a dual-stack host ([deployer] ipv6) a second --via names\n"
        "the new host's IPv6 address on the link: the same rules in ip6tables, ip -6 rule and route.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--via",
        action="append",
        metavar="NEW_ADDR",
        help="the new host's IPv4 address on the link; again for its IPv6 address (dual-stack hosts)",
    )
    what.add_argument("--off", action="store_true", help="remove the return path")
    p.add_argument("--dev", help="the link to the new host (an Ethernet device or a tunnel)")
    p.add_argument(
        "--mark",
        type=_number,
        default=forwarding.DEFAULT_MARK,
        help=f"connection mark bit (default {forwarding.DEFAULT_MARK:#x})",
    )
    p.add_argument(
        "--table",
        type=_number,
        default=forwarding.DEFAULT_TABLE,
        help=f"routing table for the replies (default {forwarding.DEFAULT_TABLE})",
    )
    p.add_argument(
        "--priority",
        type=_number,
        default=forwarding.DEFAULT_PRIORITY,
        help=f"priority of its ip rule (default {forwarding.DEFAULT_PRIORITY})",
    )
    p.add_argument(
        "--drain",
        type=seconds,
        default=10.0,
        help="--off: seconds to wait for marked connections to finish (default 10)",
    )


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (decimal or 0x...)") from None


def _forwarder(args: argparse.Namespace):

    return build_engine(args.loaded_config).forwarder


def cmd_forward(args: argparse.Namespace) -> int:
    actor = config_module.local_actor()
    if args.off:
        if args.masquerade or args.port:
            raise InvalidForwarding("--off takes no --masquerade or --port")
        changes = _forwarder(args).forward_off(args.app, actor=actor)
        print("\n".join(changes) if changes else f"{args.app}: not forwarding; nothing to remove")
        return 0
    forwarder = _forwarder(args)
    target = forwarder.forward(args.app, args.to, masquerade=args.masquerade, ports=tuple(args.port), actor=actor)
    print(f"{args.app}: {forwarding.describe(target.detail()).removeprefix('mode: ')}")
    refused = forwarding.ipv6_refused(target, forwarder.chains.dual(forwarder.config.app(args.app)))
    if refused:
        print(f"  {refused}", file=sys.stderr)
    if not target.masquerade:
        print(
            "  the old host must route replies back: deployer forward-return --via <this host's address> "
            + ("--via <its IPv6 address> " if target.address6 else "")
            + "--dev <its link to this host>",
            file=sys.stderr,
        )
    return 0


def cmd_forward_return(args: argparse.Namespace) -> int:
    actor = config_module.local_actor()
    if args.off:
        if args.dev:
            raise InvalidForwarding("--off takes no --dev: it removes what the record says")
        removed = _forwarder(args).forward_return_off(
            drain=args.drain, mark=args.mark, table=args.table, priority=args.priority, actor=actor
        )
        print("\n".join(f"removed {item}" for item in removed) if removed else "no return path to remove")
        return 0
    if not args.dev:
        raise InvalidForwarding("--via needs --dev, the link to the new host")
    path = _forwarder(args).forward_return(
        tuple(args.via), args.dev, mark=args.mark, table=args.table, priority=args.priority, actor=actor
    )
    recognised = f"MAC {path.lladdr}" if path.lladdr else f"device {path.dev}"
    where = f"{path.via} and {path.via6}" if path.via6 else path.via
    print(
        f"replies to connections from {where} ({recognised}) return through it: fwmark {path.fwmark} "
        f"-> table {path.table} (priority {path.priority})"
    )
    return 0
