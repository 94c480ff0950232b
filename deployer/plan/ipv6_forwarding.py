"""Turn IPv6 forwarding on without losing a default route learnt from router advertisements. Pure.

DNAT of IPv6 clients to a container needs `net.ipv6.conf.all.forwarding=1`. A forwarding interface processes
router advertisements (RAs) only where its `accept_ra` is 2, and turning forwarding on deletes at once the
RA-learnt default routes of the interfaces whose `accept_ra` is not 2: a host configured by SLAAC would drop off
IPv6. So every interface that may rely on RAs gets `accept_ra=2` first, and forwarding comes last.

An interface may rely on RAs when its `accept_ra` is 1 and it is not `lo`, an interface the caller skips (the
deployer's own bridge) or a veth of Docker's; or, whatever its name, when it holds a default route learnt from
an RA (`proto ra`). Interfaces with `accept_ra` 0 take no RAs anyway, and 2 already keeps them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

ALL_FORWARDING = "net.ipv6.conf.all.forwarding"
PROC_ROOT = "net/ipv6/conf"
# Docker names the host end of a container's veth pair "veth" and 7 hex digits.
_DOCKER_VETH = re.compile(r"^veth[0-9a-f]{7}$")
_ALWAYS_SKIPPED = frozenset({"lo"})


@dataclass(frozen=True)
class Interface:
    """One interface's IPv6 sysctls, and whether `ip -6 route` shows a default route via it with `proto ra`."""

    name: str
    accept_ra: int
    forwarding: int
    ra_default_route: bool = False


@dataclass(frozen=True)
class Facts:
    all_forwarding: int
    interfaces: tuple[Interface, ...]


@dataclass(frozen=True)
class Plan:
    """Sysctls to write, in this order, as (key, value) in sysctl's notation; `changes` says each in a line.

    `refused`: changes are needed but the operator forbids them; `message` then names the interfaces and the
    commands to run by hand. Otherwise `message` sums up the plan."""

    steps: tuple[tuple[str, str], ...]
    message: str
    refused: bool = False
    at_risk: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()


def sysctl_key(interface: str, name: str) -> str:
    """`net.ipv6.conf.IF.NAME`; a dot in the interface's name (a VLAN, eth0.100) is written `/`, as sysctl wants."""
    return f"net.ipv6.conf.{interface.replace('.', '/')}.{name}"


def proc_path(key: str) -> str:
    """The path under /proc/sys of a key in sysctl's notation: dots and slashes trade places."""
    return key.translate(str.maketrans("./", "/."))


def at_risk(facts: Facts, skip: Iterable[str] = ()) -> tuple[str, ...]:
    """The interfaces that would stop taking RAs once the host forwards, sorted by name."""
    skipped = _ALWAYS_SKIPPED | set(skip)
    return tuple(
        sorted(
            interface.name
            for interface in facts.interfaces
            if interface.accept_ra == 1
            and (interface.ra_default_route or not (interface.name in skipped or _DOCKER_VETH.match(interface.name)))
        )
    )


def plan(facts: Facts, *, fix: bool, skip: Iterable[str] = ()) -> Plan:
    """The steps that turn IPv6 forwarding on: `accept_ra=2` on each interface at risk, then forwarding.

    With `fix` false nothing may change: a plan with steps is refused, and its message says what to run."""
    risky = at_risk(facts, skip)
    by_name = {interface.name: interface for interface in facts.interfaces}
    steps: list[tuple[str, str]] = [(sysctl_key(name, "accept_ra"), "2") for name in risky]
    changes = [
        f"{sysctl_key(name, 'accept_ra')}=2 (was 1): {name} keeps taking router advertisements"
        + (", and its default route from them," if by_name[name].ra_default_route else "")
        + " while the host forwards"
        for name in risky
    ]
    if facts.all_forwarding != 1:
        steps.append((ALL_FORWARDING, "1"))
        changes.append(f"{ALL_FORWARDING}=1 (was {facts.all_forwarding}): the host forwards IPv6 to its containers")
    if not steps:
        return Plan((), "IPv6 forwarding is on, and every interface that takes router advertisements keeps them")
    if not fix:
        return Plan(tuple(steps), _refusal(risky, by_name, steps), refused=True, at_risk=risky)
    return Plan(tuple(steps), "\n".join(changes), at_risk=risky, changes=tuple(changes))


def _refusal(risky: tuple[str, ...], by_name: dict[str, Interface], steps: list[tuple[str, str]]) -> str:
    if risky:
        named = ", ".join(
            f"{name} (default route from router advertisements)" if by_name[name].ra_default_route else name
            for name in risky
        )
        why = (
            f"IPv6 forwarding needs changes the deployer may not make ([deployer] ipv6_forwarding = 'check'): with forwarding on, {named} "
            "would ignore router advertisements while accept_ra is 1, and lose the default route they give."
        )
    else:
        why = "IPv6 forwarding is off, and the deployer may not turn it on ([deployer] ipv6_forwarding = 'check')."
    commands = "\n".join(f"  sysctl -w {key}={value}" for key, value in steps)
    return (
        f"{why} Run, in this order:\n{commands}\n"
        "and put the same settings in a file under /etc/sysctl.d/ so that they hold after a reboot."
    )
