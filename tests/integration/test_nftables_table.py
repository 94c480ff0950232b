"""The nftables backend's table through libnftables in process, with its base chains: a first write loads it, a
flip moves new connections, and a flip planned from a picture gone stale is refused whole, changes nothing, and
the next one reads the table and goes through.

Runs in the host's namespace under a table of its own, beside whatever Docker has written, and removes it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from deployer.adapters.iptables import Netfilter
from deployer.adapters.nftables import Nftables
from deployer.errors import RulesError
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.plan import canary, nft, rules
from deployer.plan.rules import ChainNames, Forward, SavedTable
from support import netns
from support.integration import missing, run


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[NftablesBackend]:
    if os.geteuid() != 0:
        missing("nftables needs root")
    try:
        Nftables().run("list tables")
    except RulesError as exc:
        missing(str(exc))
    prefix = f"DT{uuid.uuid4().hex[:6].upper()}"
    made = NftablesBackend(
        Nftables(),
        Netfilter(),
        table=prefix.lower(),
        prefix=prefix,
        reader=Nftables(handles=True),
        generation=tmp_path / "nftables.generation",
        ports=lambda app: PORTS.get(app, []),
    )
    try:
        yield made
    finally:
        if prefix.lower() in made.reader.run("list tables"):
            made.runner.run(f"delete table ip {prefix.lower()}")


EXTERNAL = 47000 + os.getpid() % 1000  # nothing of the suite's listens up there
PORTS = {"t": [("tcp", EXTERNAL)], "u": [("tcp", EXTERNAL + 1000)]}


def _host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.18.0.1", 9))  # no packet leaves: this only picks the outgoing address
        return probe.getsockname()[0]


def _serve(address: str, answer: bytes) -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind((address, 0))
    server.listen()

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(answer)

    threading.Thread(target=loop, daemon=True).start()
    return server, server.getsockname()[1]


def _ask(address: str, port: int) -> bytes:
    with socket.create_connection((address, port), timeout=3) as conn:
        return conn.recv(16)


def test_a_flip_moves_new_connections_and_one_planned_from_a_stale_picture_is_refused_whole(backend):
    names = ChainNames(backend.prefix)
    address = _host_address()
    blue, blue_port = _serve(address, b"blue")
    green, green_port = _serve(address, b"green")
    chain = names.app("t")
    on_blue = [Forward("tcp", EXTERNAL, address, blue_port, "t blue v1").rule(chain)]
    on_green = [Forward("tcp", EXTERNAL, address, green_port, "t green v2").rule(chain)]
    try:
        backend.restore(rules.render_restore(SavedTable(), names, "dt-none0", {"t": on_blue}))
        assert _ask(address, EXTERNAL) == b"blue"  # the output hook: a client on the host, a local address

        backend.restore(rules.render_takeover(names, "t", on_green, backend.list_chain(chain) or []))
        assert _ask(address, EXTERNAL) == b"green"
        assert backend.list_chain(chain) == on_green

        # Removed by hand, so what the backend keeps says it is there; the flip's delete of it is refused
        # whole, and the element it would have added is not there either.
        backend.runner.run(f"delete element ip {backend.table} tcp-ports {{ {EXTERNAL} }}")
        with pytest.raises(RulesError, match="nft refused the transaction"):
            backend.restore(rules.render_takeover(names, "t", on_blue, backend.list_chain(chain) or []))
        assert str(EXTERNAL) not in backend.reader.run(f"list map ip {backend.table} tcp-ports")

        # The refusal made the backend read again: the next flip is planned from the table as it is.
        assert backend.list_chain(chain) is None
        backend.restore(rules.render_chain(names, "t", on_blue))
        assert _ask(address, EXTERNAL) == b"blue"
    finally:
        blue.close()
        green.close()


def test_a_table_of_the_layout_before_the_maps_moves_app_by_app_and_every_port_keeps_answering(backend):
    names = ChainNames(backend.prefix)
    table, top = backend.table, backend.prefix
    address = _host_address()
    blue, blue_port = _serve(address, b"blue")
    green, green_port = _serve(address, b"green")
    ports = {"t": EXTERNAL, "u": EXTERNAL + 1000}
    old = [
        f"add table ip {table}",
        f"add chain ip {table} OUTPUT {{ type nat hook output priority -105; policy accept; }}",
        f"add chain ip {table} {top}",
        f"add rule ip {table} OUTPUT fib daddr type local jump {top}",
    ]
    for app, port in ports.items():
        old += [
            f"add chain ip {table} {top}-{app}",
            f"add rule ip {table} {top} jump {top}-{app}",
            f'add rule ip {table} {top}-{app} tcp dport {port} dnat to {address}:{blue_port} comment "{app} blue v1"',
        ]
    try:
        backend.runner.run("\n".join([*old, ""]))
        assert (_ask(address, ports["t"]), _ask(address, ports["u"])) == (b"blue", b"blue")
        for app in ("t", "u"):
            moved = [Forward("tcp", ports[app], address, green_port, f"{app} green v2").rule(names.app(app))]
            backend.restore(rules.render_chain(names, app, moved))
            assert _ask(address, ports["t"]) == b"green"
            assert _ask(address, ports["u"]) == (b"green" if app == "u" else b"blue")  # u: its old chain still
        listing = backend.reader.run(f"list table ip {table}")
        assert f"chain {top}-t" not in listing and f"chain {top}-u" not in listing
        assert backend.listing().dispatching(top, exact=True)
    finally:
        blue.close()
        green.close()


# --- both families, in a namespace of their own -----------------------------------------------------------------


@pytest.fixture
def namespace() -> Iterator[str]:
    """A throwaway network namespace: there the tables take the deployer's own names, and any rule is safe."""
    if os.geteuid() != 0:
        missing("network namespaces need root")
    name = f"{netns.DEFAULT_PREFIX}n{uuid.uuid4().hex[:6]}"  # a killed run's is removed by the prefix
    added = run(["ip", "netns", "add", name])
    if added.returncode != 0:
        missing(f"ip netns add: {added.stderr.strip()}")
    try:
        yield name
    finally:
        run(["ip", "netns", "del", name])


def _inside(namespace: str, work: Callable[[], T]) -> T:
    """`work` in a thread that has entered the namespace (setns moves the calling thread alone), so the
    libnftables contexts it makes talk to that namespace's netfilter."""
    outcome: dict[str, Any] = {}

    def enter_and_work() -> None:
        try:
            descriptor = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(descriptor, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace}")
            finally:
                os.close(descriptor)
            outcome["value"] = work()
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=enter_and_work)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


CLONE_NEWNET = 0x40000000
T = TypeVar("T")

# As ip6tables-save prints the deployer's rules (an app chain's rules each with a comment naming the app: the
# nftables backend writes no other), and the same for IPv4; with a host-bound app's socket match, which the kernel
# takes in a table ip6 as in a table ip.
V6 = """*nat
:DEPLOYER - [0:0]
:DEPLOYER-HOSTBOUND - [0:0]
:DEPLOYER-POSTROUTING - [0:0]
:DEPLOYER-web - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND
-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER
-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DEPLOYER
-A DEPLOYER -j DEPLOYER-web
-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 1080 -m socket --nowildcard -m comment --comment "nginx: a socket listens" -j RETURN
-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 1080 -m comment --comment "nginx: nothing listens" -j REDIRECT --to-ports 8999
-A DEPLOYER-POSTROUTING -s ::1/128 -o br-x -m comment --comment "deployer: loopback clients" -j MASQUERADE
-A DEPLOYER-web -p tcp -m tcp --dport 1000 -m statistic --mode random --probability 0.20000000019 -m comment --comment "web blue v2 canary" -j DNAT --to-destination [fd42:d0c::3]:8080
-A DEPLOYER-web -p udp -m udp --dport 1000 -m comment --comment "web green v1" -j DNAT --to-destination [fd42:d0c::2]:8080
-A DEPLOYER-web -p tcp -m tcp --dport 1001 -m comment --comment "web green v1" -j DNAT --to-destination [fd42:d0c::2]:8080
COMMIT
"""  # noqa: E501 - lines as ip6tables-save prints them
V4 = (
    V6.replace("! -d ::1/128 ", "")
    .replace("::1/128", "127.0.0.0/8")
    .replace("[fd42:d0c::3]", "172.18.0.3")
    .replace("[fd42:d0c::2]", "172.18.0.2")
)
STICKY = (
    "-A DEPLOYER-web -p tcp -m tcp --dport 1001 -m cluster --cluster-local-nodemask 0x00000001 "
    '--cluster-total-nodes 32 --cluster-hash-seed 0x00000001 -m comment --comment "web blue v2 canary" '
    "-j DNAT --to-destination [fd42:d0c::3]:8080"
)


def _v4(text: str) -> str:
    return text.replace("[fd42:d0c::3]", "172.18.0.3").replace("[fd42:d0c::2]", "172.18.0.2")


def _pair(tmp_path: Path) -> tuple[NftablesBackend, NftablesBackend]:
    ports = {"web": [("tcp", 1000), ("udp", 1000), ("tcp", 1001)]}
    v4, v6 = (
        NftablesBackend(
            Nftables(),
            Netfilter(),  # these texts have no filter part: iptables is not called
            table="deployer",
            prefix="DEPLOYER",
            reader=Nftables(handles=True),
            generation=tmp_path / f"nftables-{family}.generation",
            ports=lambda app: ports.get(app, []),
            family=family,
        )
        for family in ("ip", "ip6")
    )
    return v4, v6


def test_both_families_tables_are_written_in_one_transaction_and_read_back_as_ip6tables_prints_them(
    namespace, tmp_path
):
    names = ChainNames("DEPLOYER")

    def work() -> None:
        v4, v6 = _pair(tmp_path)
        v4.restore_pair(V4, v6, V6)
        wanted = rules.parse_nat(V6).chains
        read = rules.parse_nat(v6.save_table("nat")).chains
        assert {chain: read[chain] for chain in wanted} == wanted
        assert {chain: rules.parse_nat(v4.save_table("nat")).chains[chain] for chain in wanted} == (
            rules.parse_nat(V4).chains
        )

        # A sticky canary of both families in one flip: the ip6 table's hash reads back as the cluster match.
        before6, before4 = v6.list_chain(names.app("web")) or [], v4.list_chain(names.app("web")) or []
        v4.restore_pair(
            rules.render_takeover(names, "web", [_v4(STICKY)], before4),
            v6,
            rules.render_takeover(names, "web", [STICKY], before6),
        )
        assert "jhash @nh,64,32 mod 32 seed 0x1 < 1" in v6.reader.run("list chain ip6 deployer DEPLOYER-SPLITS")
        fresh4, fresh6 = _pair(tmp_path)
        assert fresh6.list_chain(names.app("web")) == v6.list_chain(names.app("web")) == [STICKY, *before6]
        assert fresh4.list_chain(names.app("web")) == [_v4(line) for line in fresh6.list_chain(names.app("web")) or []]

        # An element removed by hand from the ip6 table: the next flip of both, planned from the pictures, is
        # refused whole, so the ip table keeps its elements too.
        v6.runner.run("delete element ip6 deployer tcp-ports { 1001 }")
        kept = [backend.reader.run(f"list table {family} deployer") for backend, family in ((v4, "ip"), (v6, "ip6"))]
        blue = [line.replace("green v1", "blue v2").replace("::2]", "::3]") for line in before6[1:]]
        with pytest.raises(RulesError, match="nft refused the transaction"):
            v4.restore_pair(
                rules.render_chain(names, "web", [_v4(line) for line in blue]),
                v6,
                rules.render_chain(names, "web", blue),
            )
        assert [
            backend.reader.run(f"list table {family} deployer") for backend, family in ((v4, "ip"), (v6, "ip6"))
        ] == kept
        assert (v4.picture, v6.picture) == (None, None)
        for backend in (v4, v6, fresh4, fresh6):
            backend.runner.close()
            backend.reader.close()

    _inside(namespace, work)


SEED = 0x5EED0001
# 64 client addresses: 32 pairs, each pair alike in its first 32 bits and nothing else.
CLIENTS = [
    str(ipaddress.IPv6Address(f"fd{i:02x}:{i * 2039 % 65536:x}{suffix}"))
    for i in range(32)
    for suffix in ("::1", ":7:8::9")
]
RECORDER = f"""table ip6 placed {{
	set xtcluster {{ type ipv6_addr . mark; }}
	set table32 {{ type ipv6_addr . mark; }}
	set table128 {{ type ipv6_addr . mark; }}
	chain out {{
		type filter hook output priority 0; policy accept;
		udp dport 9 add @xtcluster {{ ip6 saddr . meta mark }}
		udp dport 9 meta mark set jhash {nft.IP6.cluster_key} mod 32 seed {SEED:#x}
		udp dport 9 add @table32 {{ ip6 saddr . meta mark }}
		udp dport 9 meta mark set jhash ip6 saddr mod 32 seed {SEED:#x}
		udp dport 9 add @table128 {{ ip6 saddr . meta mark }}
	}}
}}
"""


def test_ipv6_clients_land_on_the_nodes_the_canary_model_says_for_xt_cluster_and_the_ip6_tables_hash(namespace):
    """xt_cluster (ip6tables' cluster match, marking each packet with its node) and the ip6 table's sticky hash
    place each of 64 IPv6 source addresses where canary.cluster_node says; a jhash of the whole address
    would not."""
    batch = "link set lo up\n" + "".join(f"address add {address}/128 dev lo nodad\n" for address in CLIENTS)
    added = run(["ip", "-n", namespace, "-batch", "-"], input=batch)
    assert added.returncode == 0, added.stderr
    marks = "".join(
        f"-A OUTPUT -p udp -m udp --dport 9 -m cluster --cluster-local-node {node + 1} --cluster-total-nodes 32 "
        f"--cluster-hash-seed {SEED:#x} -j MARK --set-mark {node}\n"
        for node in range(32)
    )
    restored = run(["ip", "netns", "exec", namespace, "ip6tables-restore"], input=f"*mangle\n{marks}COMMIT\n")
    assert restored.returncode == 0, restored.stderr

    def work() -> dict[str, dict[str, int]]:
        nftables = Nftables()
        try:
            nftables.run(RECORDER)
            for address in CLIENTS:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
                    client.bind((address, 0))
                    client.sendto(b"x", (CLIENTS[0], 9))
            return {
                name: {
                    address: int(mark, 16)
                    for address, mark in re.findall(
                        r"([0-9a-f:]+) \. (0x[0-9a-f]+)", nftables.run(f"list set ip6 placed {name}")
                    )
                }
                for name in ("xtcluster", "table32", "table128")
            }
        finally:
            nftables.close()

    placed = _inside(namespace, work)
    model = {address: canary.cluster_node(address, 32, SEED) for address in CLIENTS}
    assert placed["xtcluster"] == model
    assert placed["table32"] == model
    assert len(set(model.values())) > 16  # the addresses spread over the nodes: the check can tell them apart
    assert placed["table128"] != model  # all 16 bytes hashed: not what xt_cluster does
