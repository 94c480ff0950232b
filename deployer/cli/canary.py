"""Commands for a running canary: change its weight, promote it, abort it. Thin: host/canary.py acts."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime

from deployer import config as config_module
from deployer.config.fields import parse_duration
from deployer.errors import CanaryError, UsageError
from deployer.host import canary as canary_ops
from deployer.host.engine import CanaryStart
from deployer.plan import canary
from deployer.wiring import build_engine


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "canary",
        cmd_canary,
        "change the share of new connections a running canary gets",
        "deployer canary demo 50",
        "Rewrite APP's split in one transaction: PERCENT (1-99) of new tcp connections and new udp flows\n"
        "go to the canary, the rest to the active instance. Open connections stay where they are.",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")
    p.add_argument("percent", type=percent, help="the share of new connections the canary gets, 1-99")

    p = command(
        sub,
        "promote",
        cmd_promote,
        "make the canary the release: all traffic to it, the old one stops",
        "deployer promote demo",
        "Move every new connection of APP to the canary in one transaction, record it as the release\n"
        "(the old instance becomes the rollback target), clean its udp flows, drain and stop the old one.",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")

    p = command(
        sub,
        "abort",
        cmd_abort,
        "end a canary: all traffic back to the active instance, the canary stops",
        "deployer abort demo",
        "Move every new connection of APP back to the active instance in one transaction, then drain\n"
        "and stop the canary.",
    )
    p.add_argument("app", help="the app's name, as in [apps.APP]")


def add_deploy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--canary",
        type=percent,
        metavar="PERCENT",
        help="start a canary: the new instance gets PERCENT (1-99) of new connections, the old one "
        "keeps serving the rest until promote or abort",
    )
    parser.add_argument(
        "--sticky",
        action="store_true",
        help="with --canary: split by client source address, so each client stays on one instance",
    )
    parser.add_argument(
        "--seed",
        type=seed,
        help="with --sticky: the hash seed, which decides which addresses go to the canary "
        "(default: a random one for each canary)",
    )
    parser.add_argument(
        "--bake",
        type=duration,
        metavar="TIME",
        help="with --canary: promote by itself after TIME (600, 10m, 1h) if the canary stayed "
        "healthy (needs `deployer watch`)",
    )


def canary_start(args: argparse.Namespace, app_bake: float | None = None) -> CanaryStart | None:
    """The split a deploy asks for: the flags (--bake, else the app's canary_bake), else none."""
    if args.canary is None:
        if args.sticky or args.bake or args.seed is not None:
            raise UsageError("--sticky, --seed and --bake go with --canary")
        return None
    if args.seed is not None and not args.sticky:
        raise UsageError("--seed goes with --sticky: only a sticky split hashes addresses")
    bake_until = canary.bake_deadline(datetime.now(UTC), args.bake or app_bake)
    if args.seed is None:
        return CanaryStart(args.canary, args.sticky, bake_until=bake_until)
    return CanaryStart(args.canary, args.sticky, args.seed, bake_until)


def percent(text: str) -> int:
    try:
        return canary.check_weight(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole percentage from 1 to 99, not {text!r}") from None
    except CanaryError as exc:  # the same words the engine would use
        raise argparse.ArgumentTypeError(str(exc)) from None


def seed(text: str) -> int:
    """`--seed`: a whole number in decimal or 0x hex, 32 bits."""
    try:
        return canary.check_seed(int(text, 0))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 to {canary.SEED_MAX:#x} (decimal or 0x hex), not {text!r}"
        ) from None
    except CanaryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(text: str) -> float:
    """`--bake`: a time greater than 0, in the config's duration format."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text!r}")
    return value


def _engine(args: argparse.Namespace):

    return build_engine(args.loaded_config)


def cmd_canary(args: argparse.Namespace) -> int:

    after = canary_ops.reweight(_engine(args), args.app, args.percent, actor=config_module.local_actor())
    print(
        f"{args.app}: the canary " + ("already had" if after is None else "now gets") + f" {args.percent}% of "
        "new connections"
    )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:

    after = canary_ops.promote(_engine(args), args.app, actor=config_module.local_actor())
    assert after.active is not None
    print(
        f"{args.app}: {after.active.tag} is the release on {after.active.port_set}; "
        f"{after.previous.tag if after.previous else 'the old instance'} stopped"
    )
    return 0


def cmd_abort(args: argparse.Namespace) -> int:

    after = canary_ops.abort(_engine(args), args.app, actor=config_module.local_actor())
    assert after.active is not None
    print(f"{args.app}: the canary stopped; {after.active.tag} on {after.active.port_set} serves everything")
    return 0
