"""Turning IPv6 forwarding on: which interfaces get accept_ra=2 first, the refusal with ipv6_forwarding = "check", and the
host function that applies the plan in order (deployer/plan/ipv6_forwarding.py, deployer/host/ipv6_forwarding.py)."""

from __future__ import annotations

import pytest

from deployer.errors import ForwardingError, PreflightFailed
from deployer.host.ipv6_forwarding import ensure_ipv6_forwarding
from deployer.plan.ipv6_forwarding import Facts, Interface, plan, proc_path, sysctl_key

FORWARD = ("net.ipv6.conf.all.forwarding", "1")


def ra(name: str, accept_ra: int = 1, forwarding: int = 0, route: bool = False) -> Interface:
    return Interface(name, accept_ra, forwarding, route)


@pytest.mark.parametrize(
    "all_forwarding, interfaces, skip, steps",
    [
        # A SLAAC host: its uplink keeps its RAs before forwarding comes on.
        (0, [ra("eth0", route=True)], (), [("net.ipv6.conf.eth0.accept_ra", "2"), FORWARD]),
        # accept_ra=1 without a route yet: RAs may still come (a router restarting), so it is at risk too.
        (0, [ra("eth0")], (), [("net.ipv6.conf.eth0.accept_ra", "2"), FORWARD]),
        # accept_ra 0 takes no RAs, 2 already keeps them: only forwarding.
        (0, [ra("eth0", accept_ra=0), ra("eth1", accept_ra=2, route=True)], (), [FORWARD]),
        # lo, Docker's veths and the deployer's bridge never take RAs.
        (0, [ra("lo"), ra("veth285dd77"), ra("deployer0")], ("deployer0",), [FORWARD]),
        # A name that only looks like Docker's is not skipped.
        (0, [ra("veth-uplink")], (), [("net.ipv6.conf.veth-uplink.accept_ra", "2"), FORWARD]),
        # A skipped interface that holds a default route from RAs is kept all the same.
        (0, [ra("deployer0", route=True)], ("deployer0",), [("net.ipv6.conf.deployer0.accept_ra", "2"), FORWARD]),
        # Already forwarding, nothing at risk: nothing to do.
        (1, [ra("eth0", accept_ra=2, forwarding=1, route=True), ra("lo", forwarding=1)], (), []),
        # Already forwarding, but an uplink still at 1 (it ignores RAs now): it is fixed, forwarding is not rewritten.
        (1, [ra("eth0", forwarding=1)], (), [("net.ipv6.conf.eth0.accept_ra", "2")]),
        # Several at once, in name order, forwarding last; a VLAN's dot is written as sysctl wants it.
        (
            0,
            [ra("eth1"), ra("eth0.100", route=True), ra("eth0")],
            (),
            [
                ("net.ipv6.conf.eth0.accept_ra", "2"),
                ("net.ipv6.conf.eth0/100.accept_ra", "2"),
                ("net.ipv6.conf.eth1.accept_ra", "2"),
                FORWARD,
            ],
        ),
    ],
)
def test_the_plan_keeps_every_interface_that_may_take_router_advertisements(all_forwarding, interfaces, skip, steps):
    result = plan(Facts(all_forwarding, tuple(interfaces)), fix=True, skip=skip)
    assert list(result.steps) == steps
    assert not result.refused
    assert len(result.changes) == len(steps)


def test_forwarding_is_never_turned_on_before_an_interface_keeps_its_router_advertisements():
    facts = Facts(0, tuple(ra(f"eth{i}", route=i % 2 == 0) for i in range(6)))
    keys = [key for key, _ in plan(facts, fix=True).steps]
    assert keys[-1] == "net.ipv6.conf.all.forwarding"
    assert len(keys) == 7


def test_nothing_to_do_says_so():
    result = plan(Facts(1, (ra("eth0", accept_ra=2, forwarding=1, route=True),)), fix=False)
    assert (result.steps, result.refused, result.changes) == ((), False, ())
    assert result.message == ("IPv6 forwarding is on, and every interface that takes router advertisements keeps them")


def test_each_change_is_said_in_a_line():
    result = plan(Facts(0, (ra("eth0", route=True), ra("eth1"))), fix=True)
    assert result.changes == (
        "net.ipv6.conf.eth0.accept_ra=2 (was 1): eth0 keeps taking router advertisements, and its default route "
        "from them, while the host forwards",
        "net.ipv6.conf.eth1.accept_ra=2 (was 1): eth1 keeps taking router advertisements while the host forwards",
        "net.ipv6.conf.all.forwarding=1 (was 0): the host forwards IPv6 to its containers",
    )
    assert result.at_risk == ("eth0", "eth1")


def test_fix_false_refuses_naming_the_interfaces_and_the_commands_in_order():
    result = plan(Facts(0, (ra("eth0", route=True), ra("eth1"), ra("lo"))), fix=False)
    assert result.refused
    assert result.at_risk == ("eth0", "eth1")
    assert result.message == (
        "IPv6 forwarding needs changes the deployer may not make ([deployer] ipv6_forwarding = 'check'): with forwarding on, eth0 (default "
        "route from router advertisements), eth1 would ignore router advertisements while accept_ra is 1, and lose "
        "the default route they give. Run, in this order:\n"
        "  sysctl -w net.ipv6.conf.eth0.accept_ra=2\n"
        "  sysctl -w net.ipv6.conf.eth1.accept_ra=2\n"
        "  sysctl -w net.ipv6.conf.all.forwarding=1\n"
        "and put the same settings in a file under /etc/sysctl.d/ so that they hold after a reboot."
    )


def test_fix_false_with_no_interface_at_risk_asks_for_forwarding_alone():
    result = plan(Facts(0, (ra("eth0", accept_ra=0),)), fix=False)
    assert result.refused
    assert result.message == (
        "IPv6 forwarding is off, and the deployer may not turn it on ([deployer] ipv6_forwarding = 'check'). Run, in this order:\n"
        "  sysctl -w net.ipv6.conf.all.forwarding=1\n"
        "and put the same settings in a file under /etc/sysctl.d/ so that they hold after a reboot."
    )


@pytest.mark.parametrize(
    "interface, key, path",
    [
        ("eth0", "net.ipv6.conf.eth0.accept_ra", "net/ipv6/conf/eth0/accept_ra"),
        ("eth0.100", "net.ipv6.conf.eth0/100.accept_ra", "net/ipv6/conf/eth0.100/accept_ra"),
    ],
)
def test_sysctl_keys_and_their_paths(interface, key, path):
    assert sysctl_key(interface, "accept_ra") == key
    assert proc_path(key) == path


# --- the host function, over a hand-written stand-in for the adapter -----------------------------------------


class Sysctls:
    """Holds the values in a dict, as /proc/sys would; `broken` keys fail to write."""

    def __init__(self, facts: Facts, broken: frozenset[str] = frozenset()) -> None:
        self._facts = facts
        self.broken = broken
        self.written: list[tuple[str, str]] = []

    def facts(self) -> Facts:
        return self._facts

    def set(self, key: str, value: str) -> None:
        if key in self.broken:
            raise ForwardingError(f"cannot set {key}={value}: Permission denied")
        self.written.append((key, value))


def test_ensure_writes_the_plan_in_order_and_says_what_it_changed():
    sysctls = Sysctls(Facts(0, (ra("eth0", route=True), ra("deployer0"), ra("lo"))))
    lines = ensure_ipv6_forwarding(sysctls, fix=True, skip=["deployer0"])
    assert sysctls.written == [("net.ipv6.conf.eth0.accept_ra", "2"), FORWARD]
    assert lines == [
        "net.ipv6.conf.eth0.accept_ra=2 (was 1): eth0 keeps taking router advertisements, and its default route "
        "from them, while the host forwards",
        "net.ipv6.conf.all.forwarding=1 (was 0): the host forwards IPv6 to its containers",
    ]


def test_ensure_with_nothing_to_do_writes_nothing():
    sysctls = Sysctls(Facts(1, (ra("eth0", accept_ra=2, forwarding=1),)))
    assert ensure_ipv6_forwarding(sysctls, fix=False) == []
    assert sysctls.written == []


def test_ensure_refuses_without_writing_when_fix_is_false():
    sysctls = Sysctls(Facts(0, (ra("eth0", route=True),)))
    with pytest.raises(PreflightFailed) as caught:
        ensure_ipv6_forwarding(sysctls, fix=False)
    assert sysctls.written == []
    assert "sysctl -w net.ipv6.conf.eth0.accept_ra=2\n  sysctl -w net.ipv6.conf.all.forwarding=1" in str(caught.value)
    assert caught.value.context == {"interfaces": ["eth0"]}


def test_a_failed_write_stops_before_forwarding_and_says_what_was_changed():
    sysctls = Sysctls(Facts(0, (ra("eth0"), ra("eth1"))), broken=frozenset({"net.ipv6.conf.eth1.accept_ra"}))
    with pytest.raises(ForwardingError) as caught:
        ensure_ipv6_forwarding(sysctls, fix=True)
    assert sysctls.written == [("net.ipv6.conf.eth0.accept_ra", "2")]
    assert str(caught.value) == (
        "cannot set net.ipv6.conf.eth1.accept_ra=2: Permission denied (net.ipv6.conf.all.forwarding left as it was)"
    )
    assert caught.value.context["changed"] == [
        "net.ipv6.conf.eth0.accept_ra=2 (was 1): eth0 keeps taking router advertisements while the host forwards"
    ]
