"""Load sharing across hosts, on real parts: three hosts (namespaces with a dockerd, a deployer and keepalived each)
on one bridge, and a client with 64 source addresses (tests/support/cluster_bed.py).

The oracle is the hash model of deployer/plan/cluster.py: for each source it names the bucket, and so the host
that must answer. A reply names the host that sent it (each host runs the demo app with its name as version).
Figures (takeover times) are printed; run with -s to see them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployer.plan.cluster import bucket_of
from support import netns
from support.cluster_bed import BUCKETS, SEED, ClusterBed, failed_requests, missing_tool
from support.integration import missing

TRIES = int(os.environ.get("CLUSTER_TRIES", "10"))
FIGURES = Path(os.environ.get("CLUSTER_FIGURES", "/tmp/deployer-cluster-figures.json"))


@pytest.fixture(scope="module")
def bed(host: None):
    if (tool := missing_tool()) is not None:
        missing(f"{tool} is not installed (run scripts/install-deps)")
    with ClusterBed() as built:
        built.start()
        yield built


def save_figures(name: str, values: object) -> None:
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = values
    FIGURES.write_text(json.dumps(figures, indent=2))


def test_the_hash_model_predicts_the_kernels_buckets(host: None):
    """xt_cluster itself, one rule per bucket, one datagram per source: the model names the same bucket."""
    with netns.OutsideClient() as client:
        sources = [str(a) for a in list(client.subnet.hosts())[9:73]]
        for source in sources:
            client.run(["ip", "addr", "add", f"{source}/24", "dev", client._peer_if], check=True)
        # The host end of the pair is in the root namespace: count in a chain of this test's own.
        chain = f"DPC{os.getpid() % 100000:05d}"
        lines = ["*mangle", f":{chain} - [0:0]", f"-I PREROUTING 1 -i {client.host_if} -p udp --dport 9 -j {chain}"]
        for b in range(BUCKETS):
            lines.append(f"-A {chain} -m cluster --cluster-total-nodes {BUCKETS} --cluster-local-node {b + 1} "
                         f"--cluster-hash-seed {SEED} -j MARK --set-mark {b + 1}")
            lines.append(f"-A {chain} -m mark --mark {b + 1} -j DROP")
        subprocess.run(["iptables-restore", "--noflush"], input="\n".join([*lines, "COMMIT", ""]), text=True,
                       check=True)
        try:
            found = {}
            for source in sources:
                subprocess.run(["iptables", "-t", "mangle", "-Z", chain], check=True)
                client.run([sys.executable, "-c", "import socket; s = socket.socket(2, 2); "
                            f"s.bind(('{source}', 0)); s.sendto(b'x', ('{client.host_ip}', 9))"], check=True)
                listing = subprocess.run(["iptables", "-t", "mangle", "-L", chain, "-v", "-n", "-x"], check=True,
                                         capture_output=True, text=True).stdout
                marks = [line for line in listing.splitlines() if "MARK set" in line]
                found[source] = [i for i, line in enumerate(marks) if line.split()[0] != "0"]
        finally:
            subprocess.run(["iptables", "-t", "mangle", "-D", "PREROUTING", "-i", client.host_if, "-p", "udp",
                            "--dport", "9", "-j", chain])
            subprocess.run(["iptables", "-t", "mangle", "-F", chain])
            subprocess.run(["iptables", "-t", "mangle", "-X", chain])
    assert found == {source: [bucket_of(source, BUCKETS, SEED)] for source in sources}


def test_every_source_is_answered_by_exactly_the_host_the_oracle_names(bed: ClusterBed):
    replies = bed.client_once()
    wrong = {s: r for s, r in replies.items() if r != {"http": bed.owner_of(s), "udp": [bed.owner_of(s)]}}
    assert not wrong, f"answered by other hosts than the oracle's, twice, or not at all: {wrong}"
    assert {bucket_of(s, BUCKETS, SEED) for s in bed.sources} == set(range(BUCKETS))
    # No host took in a TCP flow of another host's source, even for a moment: the SYN reached all three.
    for host in bed.hosts:
        assert {bed.owner_of(s) for s in bed.marked_sources(host)} <= {host.name}
    status = json.loads(bed.host("h2").deployer("cluster", "status", "--json").stdout)
    assert (status["healthy"], status["intent"], status["owned"]) == (True, "join", [1, 4])
    assert [(b["bucket"], b["home"], b["state"]) for b in status["buckets"]] == [
        (0, "h1", "BACKUP"), (1, "h2", "MASTER"), (2, "h3", "BACKUP"), (3, "h1", "BACKUP"), (4, "h2", "MASTER"),
        (5, "h3", "BACKUP")]


# --- failures: the others take the buckets ----------------------------------------------------------


@pytest.mark.parametrize("how", ["link", "keepalived", "instance"])
def test_a_failed_hosts_buckets_are_served_by_the_others_within_2_s(bed: ClusterBed, how: str):
    takeovers = [bed.takeover(bed.hosts[attempt % len(bed.hosts)], how) for attempt in range(TRIES)]
    print(f"\ntakeover after {how} ({TRIES} tries), seconds: {takeovers}; median "
          f"{statistics.median(takeovers):.3f}, max {max(takeovers):.3f}")
    save_figures(f"takeover_{how}", takeovers)
    assert max(takeovers) < 2.0, takeovers


# --- planned changes: nothing fails -----------------------------------------------------------------


def deploy_under_load(bed: ClusterBed, host: str, tag: str) -> None:
    """One deploy on one host while the client loads the shared address: nothing fails, every host answers."""
    load = bed.client_load(60)
    time.sleep(1)
    bed.host(host).deployer("deploy", "web", tag)
    time.sleep(1)
    records = load.finish()
    assert failed_requests(records) == {"new": [], "keepalive": []}
    assert [r for r in records["udp"] if len(r[3]) > 1] == []
    served = {r[3] for r in records["new"]} | {r[3] for r in records["keepalive"]}
    assert served == {"h1", "h2", "h3"}


def test_a_zero_downtime_deploy_on_one_host_under_cluster_load_fails_nothing(bed: ClusterBed):
    deploy_under_load(bed, "h1", "v2")
    bed.host("h1").deployer("deploy", "web", "v1")


def test_leave_wait_under_load_fails_nothing_and_join_brings_the_buckets_home(bed: ClusterBed):
    h2 = bed.host("h2")
    theirs = [s for s in bed.sources if bed.owner_of(s) == "h2"]
    load = bed.client_load(120)
    time.sleep(1.0)  # every keep-alive connection is open before the leave
    leaving = subprocess.Popen(
        ["ip", "netns", "exec", h2.namespace, sys.executable, "-m", "deployer", "-c", str(h2.config), "cluster",
         "leave", "--wait", "--timeout", "60"], cwd=bed.root, env=h2.environ(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    bed.wait_for(lambda: not h2.owned(), 10, "h2 to let its buckets go")
    gone_at = load.at()
    time.sleep(2.0)
    assert leaving.poll() is None, "leave --wait returned while its keep-alive connections were open"
    records = load.finish()  # the client closes its connections: the leave can finish
    out, _ = leaving.communicate(timeout=30)
    assert leaving.returncode == 0, out
    assert failed_requests(records) == {"new": [], "keepalive": []}
    assert [r for r in records["udp"] if len(r[3]) > 1] == []
    after = [r for r in records["keepalive"] if r[2] in theirs and r[0] > gone_at]
    assert after and {r[3] for r in after} == {"h2"}, "established connections left the old owner"
    late_new = {r[3] for r in records["new"] if r[2] in theirs and r[0] > gone_at}
    assert late_new and "h2" not in late_new, "new connections still reach the host that left"

    load = bed.client_load(120)
    time.sleep(1.0)
    h2.deployer("cluster", "join", "--wait", "--timeout", "30")
    bed.wait_for(bed.all_buckets_home, 30, "h2's buckets home again")
    time.sleep(1.0)
    joined_at = load.at()
    time.sleep(2.0)
    records = load.finish()
    assert failed_requests(records) == {"new": [], "keepalive": []}
    assert [r for r in records["udp"] if len(r[3]) > 1] == []
    back = {r[3] for r in records["new"] if r[2] in theirs and r[0] > joined_at}
    assert back == {"h2"}


# --- the nftables backend ------------------------------------------------------------------------------


def test_on_the_nftables_backend_each_source_is_answered_by_its_owner_and_a_deploy_fails_nothing(host: None):
    """The same hosts with `backend = "nftables"`: the buckets stay in mangle (iptables'), the app's DNAT is in
    the nftables table of each host, reached for the shared address as for any local one."""
    if (tool := missing_tool()) is not None:
        missing(f"{tool} is not installed (run scripts/install-deps)")
    with ClusterBed(backend="nftables") as bed:
        bed.start()
        replies = bed.client_once()
        wrong = {s: r for s, r in replies.items() if r != {"http": bed.owner_of(s), "udp": [bed.owner_of(s)]}}
        assert not wrong, f"answered by other hosts than the oracle's, twice, or not at all: {wrong}"
        h1 = bed.host("h1")
        table = h1.sh("nft", "list", "table", "ip", "deployer").stdout
        assert "dnat ip to tcp dport map @tcp-ports" in table and 'comment "web blue' in table
        assert "-A DEPLOYER-web" not in h1.sh("iptables-save", "-t", "nat").stdout
        deploy_under_load(bed, "h1", "v2")
