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
import threading
import time
from pathlib import Path

import pytest

from deployer.config.cluster import default_multicast_mac
from deployer.plan.cluster import bucket_of, bucket_of6
from support import netns
from support.cluster_bed import BUCKETS, SEED, ClusterBed, failed_requests, missing_tool
from support.console_pages import bucket_rows, console_page
from support.integration import missing

TRIES = int(os.environ.get("CLUSTER_TRIES", "3"))  # each host once; the figures of docs/ were taken with 10
FIGURES = Path(os.environ.get("CLUSTER_FIGURES", "/tmp/deployer-cluster-figures.json"))


@pytest.fixture(scope="module")
def bed(host: None):
    if (tool := missing_tool()) is not None:
        missing(f"{tool} is not installed (run scripts/install-deps)")
    with ClusterBed() as built:
        built.start()
        yield built


@pytest.fixture(scope="module")
def nft_unicast_bed(host: None):
    """A second bed, for what the first one's hosts cannot show: `backend = "nftables"`, `unicast = true` and
    dual-stack hosts with a shared IPv6 address. One bed for all three saves building three dockerds again: the app's
    DNAT backend, the VRRP filter and the IPv6 address's table are independent (the IPv4 buckets and the filter are
    iptables' on either backend, the IPv6 buckets nftables'), and each test checks its own part."""
    if (tool := missing_tool()) is not None:
        missing(f"{tool} is not installed (run scripts/install-deps)")
    with ClusterBed(backend="nftables", unicast=True, ipv6=True) as built:
        built.start()
        yield built


def save_figures(name: str, values: object) -> None:
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = values
    FIGURES.write_text(json.dumps(figures, indent=2))


def test_the_hash_model_predicts_the_kernels_buckets(host: None):
    """xt_cluster itself, one rule per bucket and source, one datagram per source: the model names the same bucket.
    Each source has rules of its own (`-s`), so one datagram from each, sent by one process, and one read of the
    counters tell every source's bucket apart."""
    with netns.OutsideClient() as client:
        sources = [str(a) for a in list(client.subnet.hosts())[9:73]]
        for source in sources:
            client.run(["ip", "addr", "add", f"{source}/24", "dev", client._peer_if], check=True)
        # The host end of the pair is in the root namespace: count in a chain of this test's own.
        chain = f"DPC{os.getpid() % 100000:05d}"
        lines = ["*mangle", f":{chain} - [0:0]", f"-I PREROUTING 1 -i {client.host_if} -p udp --dport 9 -j {chain}"]
        for source in sources:
            for b in range(BUCKETS):
                lines.append(
                    f"-A {chain} -s {source}/32 -m cluster --cluster-total-nodes {BUCKETS} --cluster-local-node "
                    f"{b + 1} --cluster-hash-seed {SEED} -j MARK --set-mark {b + 1}"
                )
                lines.append(f"-A {chain} -s {source}/32 -m mark --mark {b + 1} -j DROP")
        subprocess.run(
            ["iptables-restore", "--noflush"], input="\n".join([*lines, "COMMIT", ""]), text=True, check=True
        )
        try:
            client.run(
                [
                    sys.executable,
                    "-c",
                    "import socket, sys\n"
                    "for source in sys.argv[1].split(','):\n"
                    "    s = socket.socket(2, 2); s.bind((source, 0))\n"
                    f"    s.sendto(b'x', ('{client.host_ip}', 9)); s.close()\n",
                    ",".join(sources),
                ],
                check=True,
            )
            listing = subprocess.run(
                ["iptables", "-t", "mangle", "-L", chain, "-v", "-n", "-x"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            found: dict[str, list[int]] = {source: [] for source in sources}
            for line in listing.splitlines():
                if "MARK set" in line and line.split()[0] != "0":
                    found[line.split()[7]].append(int(line.rsplit("MARK set", 1)[1].split()[0], 16) - 1)
        finally:
            subprocess.run(
                [
                    "iptables",
                    "-t",
                    "mangle",
                    "-D",
                    "PREROUTING",
                    "-i",
                    client.host_if,
                    "-p",
                    "udp",
                    "--dport",
                    "9",
                    "-j",
                    chain,
                ]
            )
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
        (0, "h1", "BACKUP"),
        (1, "h2", "MASTER"),
        (2, "h3", "BACKUP"),
        (3, "h1", "BACKUP"),
        (4, "h2", "MASTER"),
        (5, "h3", "BACKUP"),
    ]
    # h2's console shows the owners its agent recorded: its own buckets, and the oracle's host for the others.
    rows = bucket_rows(console_page(bed.host("h2").config, "/console/cluster"))
    assert {b: row.split(" ")[1] for b, row in rows.items()} == {b: bed.home_of(b) for b in range(BUCKETS)}, rows
    assert sorted(b for b, row in rows.items() if "(this host) MASTER" in row) == [1, 4], rows


# --- failures: the others take the buckets ----------------------------------------------------------


@pytest.mark.parametrize("how", ["link", "keepalived", "instance"])
def test_a_failed_hosts_buckets_are_served_by_the_others_within_2_s(bed: ClusterBed, how: str):
    takeovers = [bed.takeover(bed.hosts[attempt % len(bed.hosts)], how) for attempt in range(TRIES)]
    print(
        f"\ntakeover after {how} ({TRIES} tries), seconds: {takeovers}; median "
        f"{statistics.median(takeovers):.3f}, max {max(takeovers):.3f}"
    )
    save_figures(f"takeover_{how}", takeovers)
    assert max(takeovers) < 2.0, takeovers


# --- the agent supervised: killed, it is back within seconds ----------------------------------------


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited and not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class AgentUnit:
    """What deploy/systemd/deployer-cluster.service does for one host's agent: started again whenever it ends
    (Restart=always), a second after (RestartSec=1). The keepalived a killed agent leaves is not killed here, as
    KillMode=mixed would: the new agent stops it itself."""

    def __init__(self, bed: ClusterBed, host, restart_sec: float = 1.0) -> None:
        self.bed, self.host, self.restart_sec = bed, host, restart_sec
        self.stop = threading.Event()
        self.restarts: list[float] = []
        self.thread = threading.Thread(target=self._run, name=f"unit-{host.name}", daemon=True)

    def __enter__(self) -> AgentUnit:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self.stop.is_set():
            agent = self.host.agent
            if agent is None or agent.poll() is not None:
                if self.stop.wait(self.restart_sec):
                    return
                self.bed.start_agent(self.host)
                self.restarts.append(time.monotonic())
            self.stop.wait(0.1)


def test_a_killed_agent_is_back_within_seconds_and_its_rules_follow_keepalived_again(bed: ClusterBed):
    """SIGKILL to h1's agent while its keepalived runs: started again as its unit would, the new agent stops the
    keepalived left running once its chain owns nothing, starts its own and takes its home buckets back. A takeover
    during that window is served: h2's sources are answered again, none twice. h2's link is cut, not its keepalived
    killed: h2's agent starts a killed keepalived again within about 2 s and takes its buckets back, which may be
    before h1's new agent is up to take its share of them, so the takeover's wait would race h1's restart."""
    victim, other = bed.host("h1"), bed.host("h2")
    left = bed.keepalived_pid(victim)
    assert left is not None
    with AgentUnit(bed, victim) as unit:
        assert victim.agent is not None
        victim.agent.kill()
        victim.agent.wait()
        killed_at = time.monotonic()
        assert running(left)  # keepalived runs on without its agent: the rules no longer follow it
        takeover = bed.takeover(other, "link")  # heals h2 and waits for every bucket to be home again
        back = bed.wait_for(
            lambda: (
                bed.keepalived_pid(victim) not in (None, left)
                and victim.owned()
                and victim.status()["keepalived_pid"] == bed.keepalived_pid(victim)
            ),
            30,
            "h1's agent back, with a keepalived of its own and its home buckets",
        )
        assert unit.restarts and unit.restarts[0] - killed_at < 3.0, unit.restarts
        print(
            f"\nagent killed: started again after {unit.restarts[0] - killed_at:.2f} s; h2's takeover in that "
            f"window served after {takeover:.3f} s; h1 followed keepalived again {back:.2f} s later"
        )
        assert not running(left)  # the keepalived the dead agent left is gone: one keepalived per host
    bed.wait_for(bed.all_buckets_home, 30, "every bucket at its home host")
    replies = bed.client_once()
    wrong = {s: r for s, r in replies.items() if r != {"http": bed.owner_of(s), "udp": [bed.owner_of(s)]}}
    assert wrong == {}


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


def handover_losses(records: dict) -> dict[str, list]:
    """What a planned move must not lose: failed requests, datagrams nobody answered, datagrams answered twice."""
    return {
        **failed_requests(records),
        "unanswered": [r for r in records["udp"] if not r[3]],
        "twice": [r for r in records["udp"] if len(r[3]) > 1],
    }


NOTHING_LOST = {"new": [], "keepalive": [], "unanswered": [], "twice": []}


def test_leave_wait_and_join_under_load_hand_every_bucket_over_without_losing_a_request_or_a_datagram(
    bed: ClusterBed,
):
    """A planned move: the old owner keeps a bucket until the new master takes relays of it, then relays its new
    flows (TEE) until the new master takes it in. So, from 64 sources, no request fails and every datagram is
    answered exactly once, through the leave and through the join."""
    h2 = bed.host("h2")
    theirs = [s for s in bed.sources if bed.owner_of(s) == "h2"]
    load = bed.client_load(120)
    time.sleep(1.0)  # every keep-alive connection is open before the leave
    leaving = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            h2.namespace,
            sys.executable,
            "-m",
            "deployer",
            "-c",
            str(h2.config),
            "cluster",
            "leave",
            "--wait",
            "--timeout",
            "60",
        ],
        cwd=bed.root,
        env=h2.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    bed.wait_for(lambda: not h2.owned(), 10, "h2 to let its buckets go")
    gone_at = load.at()
    time.sleep(2.0)
    assert leaving.poll() is None, "leave --wait returned while its keep-alive connections were open"
    records = load.finish()  # the client closes its connections: the leave can finish
    out, _ = leaving.communicate(timeout=30)
    assert leaving.returncode == 0, out
    assert handover_losses(records) == NOTHING_LOST
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
    assert handover_losses(records) == NOTHING_LOST
    back = {r[3] for r in records["new"] if r[2] in theirs and r[0] > joined_at}
    assert back == {"h2"}
    replies = bed.client_once()
    wrong = {s: r for s, r in replies.items() if r != {"http": bed.owner_of(s), "udp": [bed.owner_of(s)]}}
    assert not wrong, f"after the join, answered by other hosts than the oracle's: {wrong}"


# --- the nftables backend ------------------------------------------------------------------------------


def test_on_the_nftables_backend_each_source_is_answered_by_its_owner_and_a_deploy_fails_nothing(
    nft_unicast_bed: ClusterBed,
):
    """The same hosts with `backend = "nftables"`: the buckets stay in mangle (iptables'), the app's DNAT is in
    the nftables table of each host, reached for the shared address as for any local one."""
    bed = nft_unicast_bed
    replies = bed.client_once()
    wrong = {s: r for s, r in replies.items() if r != {"http": bed.owner_of(s), "udp": [bed.owner_of(s)]}}
    assert not wrong, f"answered by other hosts than the oracle's, twice, or not at all: {wrong}"
    h1 = bed.host("h1")
    table = h1.sh("nft", "list", "table", "ip", "deployer").stdout
    assert "dnat ip to tcp dport map @tcp-ports" in table and 'comment "web blue' in table
    assert "-A DEPLOYER-web" not in h1.sh("iptables-save", "-t", "nat").stdout
    deploy_under_load(bed, "h1", "v2")


def test_ipv6_sources_are_answered_by_exactly_the_host_the_oracle_names(nft_unicast_bed: ClusterBed):
    """The shared IPv6 address: the client learnt the multicast MAC from the hosts' neighbour advertisements (each
    host rewrites its own), so every host receives every packet, and each of 64 sources of one /64 is answered by
    the host whose bucket nftables' jhash of the whole address names, over HTTP and UDP, once. The cluster match
    would have put all 64 in one bucket."""
    bed = nft_unicast_bed
    assert {bucket_of6(s, BUCKETS, SEED) for s in bed.sources6} == set(range(BUCKETS))
    replies = bed.client_once(ipv6=True)
    wrong = {s: r for s, r in replies.items() if r != {"http": bed.owner_of(s), "udp": [bed.owner_of(s)]}}
    assert not wrong, f"answered by other hosts than the oracle's, twice, or not at all: {wrong}"
    neighbour = subprocess.run(
        ["ip", "-n", bed.client, "-6", "neigh", "show", bed.address6], capture_output=True, text=True, check=True
    ).stdout
    assert f"lladdr {default_multicast_mac(bed.address)} " in neighbour, neighbour
    status = json.loads(bed.host("h2").deployer("cluster", "status", "--json").stdout)
    assert status["addresses"] == [bed.address, bed.address6]


# --- VRRP from a stranger on the segment ------------------------------------------------------------

# A forged VRRPv3 advert (RFC 5798): priority 255 for each router id, with the instance's own placeholder
# address, sent from a raw socket as keepalived's peers would send it (TTL 255), to the VRRP group and to each host.
FORGER = r"""
import socket, struct, sys, time

source, seconds = sys.argv[1], float(sys.argv[2])
router_ids = [int(r) for r in sys.argv[3].split(",")]
targets = sys.argv[4].split(",")


def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def advert(router_id, destination):
    head = struct.pack("!BBBBH", 0x31, router_id, 255, 1, 20)  # version 3, advert; priority 255; 1 address; 20 cs
    addresses = socket.inet_aton(f"127.255.{router_id}.1")
    pseudo = socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack("!BBH", 0, 112, 8 + 4)
    return head + struct.pack("!H", checksum(pseudo + head + b"\0\0" + addresses)) + addresses


sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
sock.bind((source, 0))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
sent, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    for router_id in router_ids:
        for destination in targets:
            sock.sendto(advert(router_id, destination), (destination, 0))
            sent += 1
    time.sleep(0.05)
print(sent, flush=True)
"""
VRRP_GROUP = "224.0.0.18"
FORGE_SECONDS = 3.0  # 15 advert intervals: a backup's master-down timer is about 3 of them


def forge(bed: ClusterBed, stranger: str, source: str) -> subprocess.Popen:
    """The stranger advertises priority 255 for every bucket's router id, for FORGE_SECONDS."""
    router_ids = ",".join(str(50 + b) for b in range(BUCKETS))  # [cluster] router_id_base defaults to 50
    targets = ",".join([VRRP_GROUP, *(h.address for h in bed.hosts)])
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            stranger,
            sys.executable,
            "-c",
            FORGER,
            source,
            str(FORGE_SECONDS),
            router_ids,
            targets,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def owners(bed: ClusterBed) -> dict[str, list[int]]:
    return {h.name: sorted(h.owned()) for h in bed.hosts}


def watch_owners(bed: ClusterBed, forger: subprocess.Popen) -> list[dict[str, list[int]]]:
    """Every distinct picture of who owns which bucket while the forger runs, and one advert interval after."""
    seen = [owners(bed)]
    while forger.poll() is None:
        if (now := owners(bed)) != seen[-1]:
            seen.append(now)
        time.sleep(0.02)
    time.sleep(0.3)
    if (now := owners(bed)) != seen[-1]:
        seen.append(now)
    out, err = forger.communicate(timeout=10)
    assert forger.returncode == 0 and int(out) > 0, err
    return seen


def test_without_unicast_a_strangers_forged_advert_takes_the_buckets_away(bed: ClusterBed):
    """The threat docs/cluster.md names: plain VRRP takes any advert from the segment at its word."""
    home = owners(bed)
    address = str(list(bed.subnet.hosts())[50])  # .51: no host, source or shared address of the bed
    seen = watch_owners(bed, forge(bed, bed.stranger("x", address), address))
    assert any(sum(len(o) for o in picture.values()) < BUCKETS for picture in seen), (
        f"the forged adverts moved nothing, so the test below would prove nothing: {seen}"
    )
    bed.wait_for(bed.all_buckets_home, 30, "every bucket home again once the forged adverts stopped")
    assert owners(bed) == home


def test_with_unicast_a_strangers_forged_advert_changes_no_owner(nft_unicast_bed: ClusterBed):
    """`unicast = true`: keepalived sends to and takes from the other hosts only, and the filter drops VRRP from
    anyone else on the interface. A stranger on the segment (a fourth namespace) forging priority 255 for every
    bucket, to the VRRP group and to each host, moves no bucket."""
    bed = nft_unicast_bed
    home = owners(bed)
    assert sum(len(o) for o in home.values()) == BUCKETS
    h1 = bed.host("h1")
    assert "unicast_peer" in (h1.state / "cluster" / "keepalived.conf").read_text()
    address = str(list(bed.subnet.hosts())[50])
    seen = watch_owners(bed, forge(bed, bed.stranger("x", address), address))
    assert seen == [home], f"the forged adverts moved buckets: {seen}"
    for member in bed.hosts:
        status = member.status()
        assert {b for b, state in status["states"].items() if state == "MASTER"} == {
            str(b) for b in home[member.name]
        }, status
        dropped = member.sh("iptables", "-w", "-L", "DEPLOYER-VRRP", "-v", "-n", "-x").stdout
        drop = next(line for line in dropped.splitlines() if "DROP" in line)
        assert int(drop.split()[0]) > 0, f"{member.name} never saw a forged advert:\n{dropped}"
    replies = bed.client_once()
    wrong = {s: r for s, r in replies.items() if r != {"http": bed.owner_of(s), "udp": [bed.owner_of(s)]}}
    assert not wrong, f"answered by other hosts than the oracle's after the forged adverts: {wrong}"
