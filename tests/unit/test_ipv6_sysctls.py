"""The IPv6 sysctls adapter over a /proc/sys tree of its own and an `ip` that prints captured output
(deployer/adapters/ipv6_sysctls.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.adapters.ipv6_sysctls import Ipv6Sysctls, parse_routes, ra_route_devices
from deployer.errors import ForwardingError
from deployer.plan.ipv6_forwarding import Facts, Interface

# `ip -j -6 route show default` on a Debian 12 machine: a static default route, and none learnt from an RA.
STATIC = '[{"dst":"default","gateway":"fd00::1","dev":"eth0","metric":1024,"flags":[],"pref":"medium"}]\n'
# The same in a network namespace whose default route came from radvd's advertisements (proto ra, its lifetime left).
FROM_RA = (
    '[{"dst":"default","gateway":"fe80::105e:abff:fe5e:c681","dev":"r6h","protocol":"ra","metric":1024,"flags":[],'
    '"expires":1,"metrics":[{"hoplimit":64}],"pref":"medium"}]\n'
)
# A route with two next hops, as `ip -j` prints one (each hop its own dev).
MULTIPATH = (
    '[{"dst":"default","protocol":"ra","metric":1024,"flags":[],"pref":"medium","nexthops":['
    '{"gateway":"fe80::1","dev":"eth0","weight":1,"flags":[]},'
    '{"gateway":"fe80::2","dev":"eth1","weight":1,"flags":[]}]}]'
)


@pytest.mark.parametrize(
    "out, devices",
    [
        (STATIC, set()),
        (FROM_RA, {"r6h"}),
        (MULTIPATH, {"eth0", "eth1"}),
        ("", set()),
    ],
)
def test_the_devices_of_default_routes_learnt_from_router_advertisements(out, devices):
    assert ra_route_devices(parse_routes(out)) == devices


def test_output_that_is_not_json_is_an_error():
    with pytest.raises(ForwardingError, match="printed no JSON"):
        parse_routes("default via fd00::1 dev eth0 metric 1024 pref medium\n")


def proc_tree(root: Path, values: dict[str, tuple[int, int]]) -> Path:
    for name, (accept_ra, forwarding) in values.items():
        folder = root / "net/ipv6/conf" / name
        folder.mkdir(parents=True)
        (folder / "accept_ra").write_text(f"{accept_ra}\n")
        (folder / "forwarding").write_text(f"{forwarding}\n")
    return root


def fake_ip(tmp_path: Path, out: str) -> list[str]:
    """An `ip` that prints `out` for exactly the arguments the adapter should pass, and fails for any other."""
    (tmp_path / "routes.json").write_text(out)
    script = tmp_path / "ip"
    script.write_text(
        '#!/bin/sh\n[ "$*" = "-j -6 route show default" ] || { echo "unexpected: $*" >&2; exit 1; }\n'
        f"cat {tmp_path / 'routes.json'}\n"
    )
    script.chmod(0o755)
    return [str(script)]


def test_facts_come_from_proc_sys_and_the_routes(tmp_path):
    root = proc_tree(
        tmp_path / "proc",
        {"all": (1, 0), "default": (1, 0), "lo": (1, 0), "r6h": (1, 0), "eth0.100": (0, 0), "docker0": (0, 0)},
    )
    # An interface that went away while it was read: no files left in its folder.
    (root / "net/ipv6/conf/veth285dd77").mkdir()
    sysctls = Ipv6Sysctls(proc_sys=root, ip=fake_ip(tmp_path, FROM_RA))
    assert sysctls.facts() == Facts(
        0,
        (
            Interface("docker0", 0, 0, False),
            Interface("eth0.100", 0, 0, False),
            Interface("lo", 1, 0, False),
            Interface("r6h", 1, 0, True),
        ),
    )


def test_a_host_without_ipv6_is_said_so(tmp_path):
    (tmp_path / "proc/net").mkdir(parents=True)
    with pytest.raises(ForwardingError, match="this host has no IPv6"):
        Ipv6Sysctls(proc_sys=tmp_path / "proc", ip=fake_ip(tmp_path, STATIC)).facts()


def test_a_failing_ip_is_an_error(tmp_path):
    script = tmp_path / "ip"
    script.write_text('#!/bin/sh\necho "Cannot open netlink socket" >&2\nexit 2\n')
    script.chmod(0o755)
    root = proc_tree(tmp_path / "proc", {"all": (1, 0)})
    with pytest.raises(ForwardingError, match="ip -6 route show default failed: Cannot open netlink socket"):
        Ipv6Sysctls(proc_sys=root, ip=[str(script)]).facts()


def test_set_writes_through_proc_sys_in_sysctl_notation(tmp_path):
    root = proc_tree(tmp_path / "proc", {"all": (1, 0), "eth0.100": (1, 0)})
    sysctls = Ipv6Sysctls(proc_sys=root, ip=fake_ip(tmp_path, STATIC))
    sysctls.set("net.ipv6.conf.eth0/100.accept_ra", "2")
    sysctls.set("net.ipv6.conf.all.forwarding", "1")
    assert (root / "net/ipv6/conf/eth0.100/accept_ra").read_text() == "2"
    assert (root / "net/ipv6/conf/all/forwarding").read_text() == "1"


def test_set_leaves_a_value_that_is_already_there(tmp_path):
    root = proc_tree(tmp_path / "proc", {"all": (1, 1)})
    path = root / "net/ipv6/conf/all/forwarding"
    Ipv6Sysctls(proc_sys=root).set("net.ipv6.conf.all.forwarding", "1")
    assert path.read_text() == "1\n"  # a write would have left "1" without its newline


@pytest.mark.parametrize(
    "key",
    [
        "net.ipv4.ip_forward",
        "kernel.panic",
        "net.ipv6.conf.eth0.disable_ipv6",
        "net.ipv6.conf.//.//.forwarding",  # net/ipv6/conf/../../forwarding
        "net.ipv6.conf..accept_ra",
    ],
)
def test_set_writes_only_ipv6_interface_sysctls(tmp_path, key):
    with pytest.raises(ForwardingError, match="not an IPv6 interface sysctl"):
        Ipv6Sysctls(proc_sys=tmp_path).set(key, "1")


def test_a_write_that_fails_is_an_error(tmp_path):
    root = proc_tree(tmp_path / "proc", {"all": (1, 0)})
    with pytest.raises(ForwardingError, match=r"cannot set net.ipv6.conf.eth9.accept_ra=2: No such file"):
        Ipv6Sysctls(proc_sys=root).set("net.ipv6.conf.eth9.accept_ra", "2")


def test_whether_the_kernel_has_ipv6_is_read_from_disable_ipv6(tmp_path):
    """IPv6 is on by default; a host whose kernel has none (ipv6.disable=1: no tree) or has it turned off for every
    interface (disable_ipv6=1) serves IPv4 clients alone."""
    assert Ipv6Sysctls(proc_sys=tmp_path).kernel_has_ipv6() is False
    conf = tmp_path / "net/ipv6/conf/all"
    conf.mkdir(parents=True)
    (conf / "disable_ipv6").write_text("1\n")
    assert Ipv6Sysctls(proc_sys=tmp_path).kernel_has_ipv6() is False
    (conf / "disable_ipv6").write_text("0\n")
    assert Ipv6Sysctls(proc_sys=tmp_path).kernel_has_ipv6() is True
