"""Switching a live host from one netfilter backend to the other, under load: not one request fails.

The config's `[deployer] backend` changes and `deployer reconcile` runs: it writes the app's rules in the new
backend first, then removes them from the old one (docs/backends.md). Clients run outside (PREROUTING) and on
the host (OUTPUT, through 127.0.0.1 and the host's address), over HTTP and UDP, through the switch and a deploy
after it.
"""

from __future__ import annotations

import time

import pytest

from support.integration import demo_app
from support.load import read_records, start_clients, stop_clients

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("before, after", [("iptables", "nftables"), ("nftables", "iptables")])
def test_a_switch_of_backends_under_load_fails_no_request(deployer, outside, images, tmp_path, before, after):
    images.ensure("v1", "v2")
    app = demo_app("sw", external=18140, blue=18141, green=18142, udp=(18143, 18144, 18145), drain=1.0, stop_timeout=4)
    deployer.configure(app, settings=f'backend = "{before}"')
    deployer.engine().deploy("sw", "v1", actor="test")

    def rules_in() -> dict[str, int]:
        return {"nftables": len(deployer.nft_chain("sw")), "iptables": len(deployer.chain("sw"))}

    assert rules_in() == {before: 2, after: 0}
    out_dir = tmp_path / "traffic"
    out_dir.mkdir()
    clients = start_clients(outside, out_dir, 18140, 18143)
    try:
        time.sleep(1.5)
        deployer.configure(app, settings=f'backend = "{after}"')
        repairs = deployer.engine().reconcile("sw", actor="test")
        time.sleep(1.5)
        assert rules_in() == {before: 0, after: 2}
        deployer.engine().deploy("sw", "v2", actor="test")  # and the new backend flips as the old one did
        time.sleep(1.5)
    finally:
        stop_clients(clients)

    assert f"{deployer.prefix}-sw removed from the previous backend" in repairs
    assert "the previous backend's base chains removed" in repairs
    for name, _ in clients:
        records = read_records(out_dir / f"{name}.jsonl")
        assert len(records) > 100, f"{name}: too little traffic to judge ({len(records)} requests)"
        if name.endswith("udp"):
            unanswered = [r for r in records if not r["answered"]]
            assert len(unanswered) <= 1, f"{name}: {len(unanswered)} unanswered datagrams: {unanswered[:3]}"
        else:
            failed = [r for r in records if not r["ok"]]
            assert not failed, f"{name}: {len(failed)} failed requests, first: {failed[:3]}"
        assert {r["version"] for r in records if r.get("version")} == {"v1", "v2"}, name
    assert rules_in() == {before: 0, after: 2}
    # `deployer rules` prints the transaction of the backend the config names.
    printed = deployer.cli("rules", "sw").stdout
    table = deployer.prefix.lower()
    assert (f"add element ip {table} tcp-ports" in printed) == (after == "nftables"), printed
    assert (f":{deployer.prefix}-sw - [0:0]" in printed) == (after == "iptables"), printed
