"""The deployer's nftables table through libnftables in process: it loads, a flip moves traffic, a flip
rendered from a wrong read is refused whole and changes nothing.

Runs in the host's namespace under a table of its own, beside whatever Docker has written, and removes it.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import Iterator

import pytest

from conftest import IN_CI
from deployer.adapters.nftables import Nftables
from deployer.errors import RulesError
from deployer.plan import nft
from deployer.plan.rules import Forward


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"integration prerequisite missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def table() -> Iterator[tuple[Nftables, str]]:
    if os.geteuid() != 0:
        _missing("nftables needs root")
    nftables = Nftables()
    try:
        nftables.run("list tables")
    except RulesError as exc:
        _missing(str(exc))
    name = f"dt{uuid.uuid4().hex[:6]}"
    try:
        yield nftables, name
    finally:
        if name in nftables.run("list tables"):
            nftables.run(nft.render_teardown(name))


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


def test_a_flip_moves_new_connections_and_a_wrong_read_is_refused_whole(table):
    nftables, name = table
    address = _host_address()
    blue, blue_port = _serve(address, b"blue")
    green, green_port = _serve(address, b"green")
    external = 47000 + int(name[2:], 16) % 1000  # nothing of the suite's listens up there
    try:
        on_blue = [Forward("tcp", external, address, blue_port, "t")]
        on_green = [Forward("tcp", external, address, green_port, "t")]
        nftables.run(nft.render_table(name, "dt-none0", 9, on_blue))
        assert _ask(address, external) == b"blue"  # the output hook: a client on the host, a local address

        nftables.run(nft.render_flip(name, on_blue, on_green))
        assert _ask(address, external) == b"green"

        wrong = [Forward("tcp", external + 1, address, blue_port, "t")]  # a port that is not in the map
        with pytest.raises(RulesError, match="nft refused the transaction"):
            nftables.run(nft.render_flip(name, wrong, on_blue))
        assert _ask(address, external) == b"green"
        assert f"{external} : {address} . {green_port}" in nftables.run(f"list map ip {name} tcp-ports")
    finally:
        blue.close()
        green.close()
