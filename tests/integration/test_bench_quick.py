"""The bench's quick mode end to end, as CI runs it: it must produce its figures and leave nothing behind.

Behaviour only: the figures' sizes are the bench's business, and times on a shared machine are
not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from deployer.adapters.iptables import Netfilter
from deployer.plan import rules
from support.integration import REPO

pytestmark = pytest.mark.integration

SCENARIOS = {"ours", "seed", "stop-start", "naive"}


def test_quick_bench_writes_its_results_and_removes_what_it_made(host, tmp_path):
    results = tmp_path / "results"
    run = subprocess.run(
        [str(REPO / "bench" / "run"), "--quick", "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert run.returncode == 0, f"bench failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    info = json.loads((results / "run.json").read_text())
    assert info["quick"] is True and info["errors"] == {}
    assert {"command", "machine", "targets", "duration_s", "prefix", "load_average"} <= set(info)
    assert {"nproc", "memory_gib", "kernel", "cpu"} <= set(info["machine"])

    datapath = json.loads((results / "datapath.json").read_text())
    for client in ("host", "outside"):
        paths = datapath["summary"][client]
        expected = {"direct", "dnat", "nft", "split", "haproxy", "nginx", "docker"}
        assert set(paths) == expected | ({"dnat-addr", "nft-addr"} if client == "host" else set())
        assert all(p["rps"] and p["p50_ms"] and p["p99_ms"] for p in paths.values()), paths
        assert paths["direct"]["rps_ratio"] == 1.0
    # The pinned rounds: wrk on one core, the container on another, their ratios to their own direct.
    pinned = datapath["pinned"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert (pinned["load_cpu"], pinned["rounds"]) == (min(os.sched_getaffinity(0)), 1)
        assert pinned["backend_cpu"] != pinned["load_cpu"]
        for client in ("host", "outside"):
            paths = pinned["summary"][client]
            assert set(paths) == {"direct", "dnat"} and paths["direct"]["rps_ratio"] == 1.0
            assert paths["dnat"]["rps"] and paths["dnat"]["rps_ratio"], paths
        assert {r["set"] for r in datapath["rounds"]} == {"iptables", "pinned", "nftables", "split"}
    else:
        assert pinned["skipped"].startswith("one core only")

    deploys = json.loads((results / "deploys.json").read_text())
    assert set(deploys["scenarios"]) == SCENARIOS and deploys["errors"] == {}
    for name, scenario in deploys["scenarios"].items():
        assert scenario["deploys"] == 2, name
        assert scenario["requests"] > 100 and scenario["udp_sent"] > 100, name
        assert {
            "failed_requests",
            "udp_unanswered",
            "udp_stale_answers",
            "worst_latency_around_switch_ms",
            "flip",
            "steps_ms",
            "deploy_ms",
            "timeline",
        } <= set(scenario), name
    ours = deploys["scenarios"]["ours"]
    assert ours["failed_requests"] == 0 and ours["udp_stale_answers"] == 0
    assert ours["flip"]["committed_ms"]["n"] == 2 and ours["flip"]["healthy_to_committed_ms"]["n"] == 2
    assert {"pull", "start", "health", "flip", "conntrack", "drain", "stop"} <= set(ours["steps_ms"])
    # Each baseline shows its own failure.
    assert deploys["scenarios"]["stop-start"]["failed_requests"] > 0
    assert deploys["scenarios"]["naive"]["udp_stale_answers"] > 0

    scale = json.loads((results / "scale.json").read_text())
    assert [p["other_apps"] for p in scale["summary"]["points"]] == [1, 10, 100, 1000]
    assert all(p["committed_ms"]["n"] == 2 for p in scale["summary"]["points"])
    assert all(p["backend_committed_ms"]["n"] > 0 for p in scale["nftables"]["summary"]["points"])

    for plot in ("datapath.png", "deploys.png", "scale.png"):
        assert (results / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    report = (results / "BENCHMARKS.md").read_text()
    assert "](datapath.png)" in report and "## 2. Deploys under load" in report
    assert "Pinned rounds: " in report
    assert ("req/s vs direct, pinned" in report) == (len(os.sched_getaffinity(0)) >= 2)

    prefix = info["prefix"]
    nat = rules.parse_nat(Netfilter().save_nat())
    assert not [chain for chain in nat.chains if chain.startswith(prefix)]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert prefix.lower() not in tables  # the nftables backend's table, and the scale part's
    leftover = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=deployer.owner={prefix.lower()}"], capture_output=True, text=True
    ).stdout.split()
    assert not leftover
    assert prefix.lower() not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    networks = subprocess.run(
        ["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True
    ).stdout.split()
    assert prefix.lower() not in networks
    assert not Path(f"/tmp/deployer-bench-{prefix}").exists()
