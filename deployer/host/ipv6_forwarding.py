"""Turns the host's IPv6 forwarding on, in the order that keeps every default route learnt from router
advertisements (deployer/plan/ipv6_forwarding.py decides; adapters/ipv6_sysctls.py reads and writes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from deployer.errors import DeployerError, ForwardingError, PreflightFailed
from deployer.plan import ipv6_forwarding


class Ipv6SysctlsPort(Protocol):
    """The IPv6 sysctls and the RA-learnt default routes (adapters/ipv6_sysctls.py)."""

    def facts(self) -> ipv6_forwarding.Facts: ...
    def set(self, key: str, value: str) -> None: ...


def ensure_ipv6_forwarding(sysctls: Ipv6SysctlsPort, *, fix: bool, skip: Iterable[str] = ()) -> list[str]:
    """Make sure the host forwards IPv6 (`net.ipv6.conf.all.forwarding=1`) without losing a default route.

    Reads the facts, then sets `accept_ra=2` on every interface that may take router advertisements (not `lo`,
    not Docker's veths, not the interfaces in `skip`, such as the deployer's bridge, unless one holds a default
    route from RAs), and only then turns forwarding on. Safe to call at every start: with nothing to change it
    changes nothing and returns [].

    Returns one human line per sysctl it wrote, in order, for the audit log and status.
    Raises PreflightFailed, having changed nothing, when changes are needed and `fix` is false: its message names
    the interfaces and the `sysctl -w` commands to run, in order. Raises ForwardingError when IPv6 is off in the
    kernel or a sysctl cannot be read or written; a write that fails stops before forwarding is turned on, and the
    error's context lists what was already changed.
    """
    plan = ipv6_forwarding.plan(sysctls.facts(), fix=fix, skip=skip)
    if plan.refused:
        raise PreflightFailed(plan.message, [], interfaces=list(plan.at_risk) or None)
    done: list[str] = []
    for (key, value), line in zip(plan.steps, plan.changes, strict=True):
        try:
            sysctls.set(key, value)
        except DeployerError as exc:
            raise ForwardingError(
                f"{exc} ({ipv6_forwarding.ALL_FORWARDING} left as it was)", changed=done or None
            ) from exc
        done.append(line)
    return done
