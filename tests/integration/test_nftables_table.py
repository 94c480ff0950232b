"""The nftables backend's table through libnftables in process, with its base chains: a first write loads it, a
flip moves new connections, and a flip planned from a picture gone stale is refused whole, changes nothing, and
the next one reads the table and goes through.

Runs in the host's namespace under a table of its own, beside whatever Docker has written, and removes it.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.adapters.iptables import Netfilter
from deployer.adapters.nftables import Nftables
from deployer.errors import RulesError
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.plan import rules
from deployer.plan.rules import ChainNames, Forward, SavedTable
from support.integration import missing


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
