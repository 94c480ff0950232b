"""Ten consecutive deploys under continuous load: nothing dropped, nothing stuck on the old instance.

Clients run as separate processes, outside (a network namespace: PREROUTING) and on the host
(127.0.0.1 and the host's own address: OUTPUT), some with a new connection per request, some
on keep-alive, plus a UDP request/response stream on one socket each. Every request is logged
with wall-clock times and compared with the moments the deployer committed each flip.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from support.integration import demo_app
from support.load import read_records, start_clients, stop_clients

pytestmark = pytest.mark.integration

DEPLOYS = 10
# Every request in flight at a flip ends well within it (the traffic clients send small ones); the keep-alive
# clients hold their connections to the old instance until its stop, so each deploy waits all of it.
DRAIN = 0.5


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ten_deploys_under_load_drop_nothing(deployer, outside, images, tmp_path, backend):
    tags = [f"v{n}" for n in range(1, DEPLOYS + 2)]
    images.ensure(*tags)
    deployer.configure(
        demo_app(
            "zd",
            external=18100,
            blue=18101,
            green=18102,
            udp=(18103, 18104, 18105),
            drain=DRAIN,
            stop_timeout=6,
            env={"DRAIN_TIMEOUT": "4"},
        ),
        settings=f'backend = "{backend}"',
    )
    engine = deployer.engine()
    engine.deploy("zd", tags[0], actor="test")

    out_dir = tmp_path / "traffic"
    out_dir.mkdir()
    clients = start_clients(outside, out_dir, 18100, 18103)
    try:
        time.sleep(1.0)
        for tag in tags[1:]:
            engine.deploy("zd", tag, actor="test")
        time.sleep(1.0)
    finally:
        stop_clients(clients)

    # When each flip was committed, its conntrack cleanup done, and its old instance stopped.
    def ends(step: str) -> list[float]:
        return [e["wall"] for e in deployer.events if e["event"] == "step" and e["step"] == step]

    flips, cleanups, stops = ends("flip")[1:], ends("conntrack")[1:], ends("stop")
    assert len(flips) == len(cleanups) == len(stops) == DEPLOYS
    # While a flip's transaction runs, a new connection may land on either side.
    in_flight = [
        (e["wall"] - e["duration_ms"] / 1000 - 0.01, e["wall"])
        for e in deployer.events
        if e["event"] == "step" and e["step"] == "flip"
    ][1:]

    def live_tag(moment: float) -> int:
        """Index into tags of the release the rules pointed at, at a moment after a committed flip."""
        return sum(1 for flip in flips if flip <= moment)

    report = {}
    for name, _ in clients:
        records = read_records(out_dir / f"{name}.jsonl")
        assert len(records) > 100, f"{name}: too little traffic to judge ({len(records)} requests)"
        if name.endswith("udp"):
            unanswered = [r for r in records if not r["answered"]]
            late_old = [
                r
                for r in records
                if r["answered"]
                and live_tag(r["t"]) > 0
                and r["t"] > cleanups[live_tag(r["t"]) - 1]
                and r["version"] != tags[live_tag(r["t"])]
            ]
            report[name] = {"requests": len(records), "unanswered": len(unanswered)}
            assert not late_old, f"{name}: datagrams reached an old instance after the cleanup: {late_old[:3]}"
            per_flip = Counter(live_tag(r["t"]) for r in unanswered)  # 0: before the first flip
            assert all(count <= 1 for count in per_flip.values()), (
                f"{name}: more than one unanswered datagram around a flip: {dict(per_flip)}"
            )
            continue

        failed = [r for r in records if not r["ok"]]
        assert not failed, f"{name}: {len(failed)} failed requests, first: {failed[:3]}"
        # A connection opened after a committed flip is served by that flip's release.
        wrong = [
            r
            for r in records
            if r["version"] != tags[live_tag(r["conn_t"])]
            and not any(start < r["conn_t"] <= end for start, end in in_flight)
        ]
        assert not wrong, f"{name}: connections opened after a flip were served by an old release: {wrong[:3]}"
        # Connections opened before a flip finish on the old instance, no later than its stop.
        for index, tag in enumerate(tags[:-1]):
            if index == 0:
                continue
            old = [r for r in records if r["version"] == tag]
            if old:
                assert max(r["t_end"] for r in old) <= stops[index] + 0.5, (
                    f"{name}: {tag} still served after its instance stopped"
                )
        if name == "outside-new":
            clients_seen = {r["client"].split(":")[0] for r in records}
            assert clients_seen == {outside.client_ip}, f"outside source addresses changed: {clients_seen}"
        report[name] = {"requests": len(records), "failed": 0, "connections": len({r["conn"] for r in records})}
    print(json.dumps(report, indent=2))
    assert [c.labels["deployer.tag"] for c in deployer.containers("zd")] == [tags[-1]]
    # The rules are the chosen backend's alone: the other holds nothing of the app.
    in_nft, in_iptables = deployer.nft_chain("zd"), deployer.chain("zd")
    assert (len(in_nft), len(in_iptables)) == ((2, 0) if backend == "nftables" else (0, 2))
