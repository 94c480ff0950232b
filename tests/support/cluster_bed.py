"""Several cluster hosts on one machine, from real parts: namespaces, a dockerd, a deployer and keepalived each.

    client ─┐
    h1 ─────┤  bridge (in a namespace of its own, multicast snooping off)
    h2 ─────┤
    h3 ─────┘

- Each host is a network namespace with its OWN dockerd (started with `nsenter --net`, since `ip netns exec`
  remounts /sys and dockerd then fails), its own deployer (config, state folder, DOCKER_HOST on its socket) and the
  deployer's cluster agent, which runs keepalived inside the namespace.
- The bridge sits in its own namespace, so the root namespace's FORWARD policy and br_netfilter never see the
  frames.
- The client has `sources` addresses of the segment's /24, all on one interface.
- The app is the demo server (scripts/build-app-image), pulled by each host's daemon from the machine's registry
  (bridged onto 127.0.0.1:5000 of each namespace through a unix socket) and deployed by each host's deployer with
  APP_VERSION set to the host's name: every reply names its host.

Everything is removed on exit, on failure too: agents, keepalived, dockerds and socat by their pids, the namespaces (and what still
runs in them), the daemons' folders. Names start with netns.DEFAULT_PREFIX, so a killed run's namespaces go with
the next session's cleanup.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer import config
from deployer.plan.cluster import bucket_of, bucket_of6, ranking
from support import netns
from support.beds import Bed

REPO = Path(__file__).resolve().parents[2]
CLIENT_SCRIPT = Path(__file__).with_name("cluster_client.py")
IMAGE = "127.0.0.1:5000/deployer-test"
TCP_PORT, UDP_PORT = 80, 53
BUCKETS, SEED = 6, 0x5EED
INTERFACE = "eth1"
# The demo app passes its gate in a fraction of a second; a release that never passes (the fleet's `bad`, a host
# with HEALTH_STATUS=500) fails after this, not after a production-sized wait.
HEALTH_DEADLINE = 4


TOOLS = ("keepalived", "arptables", "socat", "nsenter", "dockerd")


def missing_tool() -> str | None:
    """The first tool the bed needs that is not installed, or None."""
    return next((tool for tool in TOOLS if shutil.which(tool) is None), None)


def failed_requests(records: dict) -> dict[str, list]:
    """The HTTP requests of a load that got no answer, new connections and keep-alive ones apart."""
    return {kind: [r for r in records[kind] if str(r[3]).startswith("error")] for kind in ("new", "keepalive")}


def run(argv: list[str], *, check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-800:]}")
    return result


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    seg_link: str  # its veth end in the bridge's namespace: down = the host's link cut
    folder: Path
    agent: subprocess.Popen | None = None
    dockerd_pid: int | None = None
    address6: str = ""  # with the bed's ipv6: its own IPv6 address on the segment

    @property
    def socket(self) -> str:
        return f"unix://{self.folder / 'docker.sock'}"

    @property
    def config(self) -> Path:
        return self.folder / "deployer.toml"

    @property
    def state(self) -> Path:
        return self.folder / "state"

    def environ(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "DOCKER_HOST": self.socket}

    def deployer(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        return run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "deployer", "-c", str(self.config), *args],
            timeout=timeout,
            check=check,
            cwd=REPO,
            env=self.environ(),
        )

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.namespace, *argv], check=check)

    def status(self) -> dict[str, Any]:
        return json.loads((self.state / "cluster" / "status.json").read_text())

    def owned(self) -> list[int]:
        try:
            return self.status()["owned"]
        except (FileNotFoundError, ValueError):
            return []


@dataclass
class ClusterBed(Bed):
    hosts_count: int = 3
    sources_count: int = 64
    backend: str = "iptables"  # the hosts' [deployer] backend
    unicast: bool = False  # the hosts' [cluster] unicast: VRRP to the peers only, and from them only
    ipv6: bool = False  # dual-stack hosts ([deployer] ipv6 = true) with a shared IPv6 address; sources of both
    token: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: list[Host] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dpc-")))
    subnet: Any = None
    address: str = ""
    sources: list[str] = field(default_factory=list)
    subnet6: Any = None  # with ipv6: the segment's IPv6 /64, a unique local one of the bed's own
    address6: str = ""
    sources6: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{netns.DEFAULT_PREFIX}c{self.token}"

    @property
    def segment(self) -> str:
        return f"{self.prefix}-s"

    @property
    def client(self) -> str:
        return f"{self.prefix}-c"

    # --- building ---------------------------------------------------------------------------------

    def _namespace(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        with open(netns._LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.subnet = netns._free_subnet()
            self._namespace(self.segment)  # claimed under the lock: the subnet is taken from now on
            run(["ip", "-n", self.segment, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
            run(["ip", "-n", self.segment, "addr", "add", f"{list(self.subnet.hosts())[253]}/24", "dev", "br0"])
        run(["ip", "-n", self.segment, "link", "set", "br0", "up"])
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-arptables"):
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
                run(["ip", "netns", "exec", self.segment, "sysctl", "-qw", f"net.bridge.{key}=0"], check=False)
        addresses = list(self.subnet.hosts())
        self.address = str(addresses[9])  # .10
        self.sources = [str(a) for a in addresses[99 : 99 + self.sources_count]]  # .100 ...
        self._namespace(self.client)
        self._attach(self.client, f"{self.prefix}-cs", "c0")
        for source in self.sources:
            run(["ip", "-n", self.client, "addr", "add", f"{source}/24", "dev", "c0"])
        if self.ipv6:
            self.subnet6 = ipaddress.IPv6Network(f"fd5c:{self.token}::/64")
            self.address6 = str(self.subnet6[0x10])
            self.sources6 = [str(self.subnet6[0x100 + i]) for i in range(self.sources_count)]
            for source in self.sources6:  # nodad: usable at once
                run(["ip", "-n", self.client, "addr", "add", f"{source}/64", "dev", "c0", "nodad"])
        for i in range(self.hosts_count):
            name = f"h{i + 1}"
            namespace = f"{self.prefix}-{name}"
            self._namespace(namespace)
            link = f"{self.prefix}-{name}"
            self._attach(namespace, link, INTERFACE)
            folder = self.root / name
            folder.mkdir(parents=True)
            host = Host(name, namespace, str(addresses[i]), link, folder)
            run(["ip", "-n", namespace, "addr", "add", f"{host.address}/24", "dev", INTERFACE])
            if self.ipv6:
                host.address6 = str(self.subnet6[i + 1])
                run(["ip", "-n", namespace, "addr", "add", f"{host.address6}/64", "dev", INTERFACE, "nodad"])
            self.hosts.append(host)
        for host in self.hosts:
            self._start_dockerd(host)
        self._registry_bridge()
        for host in self.hosts:
            self._wait_dockerd(host)
            self._configure(host)
        # Each host's first deploy, side by side: each has its own dockerd, state folder and namespace.
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            for deploy in [pool.submit(host.deployer, "deploy", "web", "v1") for host in self.hosts]:
                deploy.result()

    def stranger(self, name: str, address: str) -> str:
        """A namespace on the segment, at `address`, that is no host of the cluster; its name. Removed with the bed."""
        namespace = f"{self.prefix}-{name}"
        self._namespace(namespace)
        self._attach(namespace, namespace, INTERFACE)
        run(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", INTERFACE])
        return namespace

    def _attach(self, namespace: str, seg_end: str, inside: str) -> None:
        run(
            [
                "ip",
                "link",
                "add",
                seg_end,
                "netns",
                self.segment,
                "type",
                "veth",
                "peer",
                "name",
                inside,
                "netns",
                namespace,
            ]
        )
        run(["ip", "-n", self.segment, "link", "set", seg_end, "master", "br0", "up"])
        run(["ip", "-n", namespace, "link", "set", inside, "up"])

    def _start_dockerd(self, host: Host) -> None:
        folder = host.folder
        log = (folder / "dockerd.log").open("w")
        subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{host.namespace}",
                "dockerd",
                "--data-root",
                str(folder / "data"),
                "--exec-root",
                str(folder / "exec"),
                "--pidfile",
                str(folder / "dockerd.pid"),
                "-H",
                host.socket,
                "--bridge",
                "none",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def _wait_dockerd(self, host: Host, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if run(["docker", "-H", host.socket, "info"], check=False, timeout=10).returncode == 0:
                host.dockerd_pid = int((host.folder / "dockerd.pid").read_text())
                return
            time.sleep(0.3)
        raise RuntimeError(
            f"dockerd of {host.name} did not answer in {timeout} s: {(host.folder / 'dockerd.log').read_text()[-1500:]}"
        )

    def _registry_bridge(self) -> None:
        """The machine's registry (127.0.0.1:5000 of the root namespace) on 127.0.0.1:5000 of each host: one
        socat listens on a unix socket in the root namespace, one per host forwards to it (a unix socket is
        reached from any network namespace)."""
        for version in ("v1", "v2"):
            run([str(REPO / "scripts" / "build-app-image"), version, IMAGE])
        sock = self.root / "registry.sock"
        self.procs.append(
            subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{sock},fork", "TCP:127.0.0.1:5000"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        for host in self.hosts:
            self.procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        host.namespace,
                        "socat",
                        "TCP-LISTEN:5000,bind=127.0.0.1,reuseaddr,fork",
                        f"UNIX-CONNECT:{sock}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

    def _configure(self, host: Host) -> None:
        hosts = "".join(
            f'[[cluster.hosts]]\nname = "{h.name}"\naddress = "{h.address}"\n'
            + (f'address6 = "{h.address6}"\n' if self.ipv6 else "")
            + "\n"
            for h in self.hosts
        )
        ipv6 = f'address6 = "{self.address6}"\nsubnet6 = "{self.subnet6}"\n' if self.ipv6 else ""
        (host.folder / "hooks").mkdir(exist_ok=True)  # a configured hooks folder must exist
        host.config.write_text(f"""\
[deployer]
state_dir = "{host.state}"
hooks_dir = "{host.folder / "hooks"}"
chain_prefix = "DEPLOYER"
backend = "{self.backend}"
network = "dplc"
bridge = "dplc0"
docker_host = "{host.socket}"
ipv6 = {"true" if self.ipv6 else "false"}

[apps.web]
image = "{IMAGE}"
cluster = true
drain_seconds = 1
stop_timeout = 5
env = {{ APP_VERSION = "{host.name}", DRAIN_TIMEOUT = "3" }}

[[apps.web.ports]]
external = {TCP_PORT}
container = 8080
blue = 8001
green = 8002

[[apps.web.ports]]
external = {UDP_PORT}
container = 9090
protocol = "udp"
blue = 8001
green = 8002

[apps.web.health]
type = "http"
path = "/healthz"
interval = 0.2
timeout = 1
successes = 2
deadline = {HEALTH_DEADLINE}

[cluster]
address = "{self.address}"
interface = "{INTERFACE}"
subnet = "{self.subnet}"
buckets = {BUCKETS}
hash_seed = {SEED}
host = "{host.name}"
advert_interval = 0.2
check_interval = 0.1
unicast = {"true" if self.unicast else "false"}
{ipv6}
{hosts}""")

    # --- the agents -------------------------------------------------------------------------------

    def start_agent(self, host: Host) -> None:
        log = (host.folder / "agent.log").open("a")
        host.agent = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.namespace,
                sys.executable,
                "-m",
                "deployer",
                "-c",
                str(host.config),
                "cluster",
                "run",
            ],
            cwd=REPO,
            env=host.environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def stop_agent(self, host: Host, timeout: float = 10) -> None:
        if host.agent is not None and host.agent.poll() is None:
            host.agent.send_signal(signal.SIGTERM)
            try:
                host.agent.wait(timeout)
            except subprocess.TimeoutExpired:
                host.agent.kill()
                host.agent.wait()
        host.agent = None
        self.kill_keepalived(host, signal.SIGTERM)

    def keepalived_pid(self, host: Host) -> int | None:
        try:
            return int((host.state / "cluster" / "keepalived.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def kill_keepalived(self, host: Host, sig: int = signal.SIGKILL) -> None:
        """keepalived by its pidfile: its parent, which takes its VRRP child with it."""
        pids = [self.keepalived_pid(host)]
        with contextlib.suppress(FileNotFoundError, ValueError):
            pids.append(int((host.state / "cluster" / "vrrp.pid").read_text()))
        for pid in filter(None, pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def start(self, hosts: list[Host] | None = None) -> None:
        for host in hosts or self.hosts:
            self.start_agent(host)
        self.wait_for(lambda: self.all_buckets_home(), 30, "every bucket at its home host")

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.05) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if predicate():
                return time.monotonic() - started
            time.sleep(interval)
        raise AssertionError(
            f"not within {timeout} s: {what}; owned: { {h.name: h.owned() for h in self.hosts} }; logs:\n{self.logs()}"
        )

    def home_of(self, bucket: int) -> str:
        return ranking_names(self, bucket)[0]

    def all_buckets_home(self) -> bool:
        owned = {h.name: set(h.owned()) for h in self.hosts}
        return (
            all(bucket in owned[self.home_of(bucket)] for bucket in range(BUCKETS))
            and sum(len(o) for o in owned.values()) == BUCKETS
        )

    def owner_of(self, source: str, alive: list[str] | None = None) -> str:
        """The oracle: which host answers `source` while the hosts `alive` are up (default: all). An IPv6 source's
        bucket is nftables' jhash of the whole address, an IPv4 one's the cluster match's."""
        bucket = (bucket_of6 if ":" in source else bucket_of)(source, BUCKETS, SEED)
        names = ranking_names(self, bucket)
        return next(n for n in names if alive is None or n in alive)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    # --- the client -------------------------------------------------------------------------------

    def client_once(self, *, ipv6: bool = False) -> dict[str, dict]:
        """From each source (IPv6 ones to the shared IPv6 address with `ipv6`), one HTTP request and one datagram."""
        result = run(
            [
                "ip",
                "netns",
                "exec",
                self.client,
                sys.executable,
                str(CLIENT_SCRIPT),
                "once",
                self.address6 if ipv6 else self.address,
                str(TCP_PORT),
                str(UDP_PORT),
                ",".join(self.sources6 if ipv6 else self.sources),
            ],
            timeout=120,
        )
        return json.loads(result.stdout)

    def client_load(self, seconds: float) -> ClientLoad:
        stopfile = self.root / f"stop-{secrets.token_hex(3)}"
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.client,
                sys.executable,
                str(CLIENT_SCRIPT),
                "load",
                self.address,
                str(TCP_PORT),
                str(UDP_PORT),
                ",".join(self.sources),
                str(seconds),
                str(stopfile),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "started" in first, proc.stderr.read() if proc.stderr else first
        # CLOCK_MONOTONIC is the machine's, in every namespace: the load's times and ours compare directly.
        return ClientLoad(proc, stopfile, json.loads(first)["started"])

    # --- failures ---------------------------------------------------------------------------------

    def takeover(self, victim: Host, how: str) -> float:
        """Break `victim` (its link cut, its keepalived killed or its app instance killed) under UDP load; return
        the seconds from the fault until the last of its sources had a datagram answered by another host. Asserts that every
        source is served again and no datagram is answered twice; heals the victim and waits for the buckets to
        come home."""
        others = {h.name for h in self.hosts} - {victim.name}
        theirs = [s for s in self.sources if self.owner_of(s) == victim.name]
        load = self.client_load(30)
        time.sleep(0.5)
        self._break(victim, how)
        # The clock starts once the fault is in place: `docker kill` is a CLI round trip to the host's daemon
        # (over a second, the first time), which is the test's own latency, not the cluster's.
        broke_at = load.at()
        self.wait_for(
            lambda: not victim.owned() and sum(len(h.owned()) for h in self.hosts) == BUCKETS,
            10,
            f"{victim.name}'s buckets with the others after its {how} failed",
        )
        time.sleep(2.5)
        records = load.finish()
        answered = {s: udp_answered(records["udp"], s, broke_at, others) for s in theirs}
        assert all(t is not None for t in answered.values()), f"sources never served again: {answered}"
        twice = [r for r in records["udp"] if len(r[3]) > 1]
        assert not twice, f"datagrams answered twice: {twice[:5]}"
        self._heal(victim, how)
        self.wait_for(self.all_buckets_home, 30, f"{victim.name}'s buckets home again after its {how} came back")
        return round(max(t for t in answered.values() if t is not None) - broke_at, 3)

    def _break(self, victim: Host, how: str) -> None:
        if how == "link":
            run(["ip", "-n", self.segment, "link", "set", victim.seg_link, "down"])
        elif how == "keepalived":
            self.kill_keepalived(victim, signal.SIGKILL)
        elif how == "instance":
            victim.sh("docker", "-H", victim.socket, "kill", active_container(victim))
        else:
            raise ValueError(how)

    def _heal(self, victim: Host, how: str) -> None:
        if how == "link":
            run(["ip", "-n", self.segment, "link", "set", victim.seg_link, "up"])
        elif how == "instance":
            victim.sh("docker", "-H", victim.socket, "start", active_container(victim))
            victim.deployer("reconcile", "web")
        # keepalived: the agent starts it again by itself.

    # --- the rules --------------------------------------------------------------------------------

    def marked_sources(self, host: Host) -> set[str]:
        """The sources of the TCP flows to the shared address this host took in (its connmark)."""
        lines = host.sh("conntrack", "-L", "-p", "tcp", "--orig-dst", self.address, check=False).stdout
        found = set()
        for line in lines.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if int(fields.get("mark", "0")) & 0x4000000:
                found.add(line.split("src=", 1)[1].split()[0])
        return found

    def logs(self) -> str:
        parts = []
        for host in self.hosts:
            for name in ("agent.log", "state/cluster/keepalived.log"):
                path = host.folder / name
                if path.exists():
                    parts.append(f"--- {host.name} {name}\n{path.read_text()[-2000:]}")
        return "\n".join(parts)

    # --- removing ---------------------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts:  # all told first, then each waited for: they stop side by side
            if host.agent is not None and host.agent.poll() is None:
                host.agent.send_signal(signal.SIGTERM)
        for host in self.hosts:
            with contextlib.suppress(Exception):
                self.stop_agent(host, timeout=5)
        self._stop_dockerds()
        netns.stop_processes(self.procs, timeout=2)
        for namespace in reversed(self.namespaces):
            netns._delete_namespace(namespace)
        self.namespaces.clear()
        _unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop_dockerds(self) -> None:
        """SIGTERM to every host's dockerd at once, so they stop their containers side by side; SIGKILL to any still
        running 20 s later."""
        pids = []
        for host in self.hosts:
            pid = host.dockerd_pid
            if pid is None:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    pid = int((host.folder / "dockerd.pid").read_text())
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        for pid in filter(_alive, pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class ClientLoad:
    proc: subprocess.Popen
    stopfile: Path
    started: float  # time.monotonic() of the load's start, in this process

    def at(self) -> float:
        """Now, on the load's clock."""
        return time.monotonic() - self.started

    def finish(self) -> dict[str, list]:
        self.stopfile.touch()
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out)


def active_container(host: Host) -> str:
    return json.loads((host.state / "apps" / "web.json").read_text())["active"]["container_id"]


def udp_answered(records: list, source: str, since: float, hosts: set[str]) -> float | None:
    """When `source` first had a datagram sent at or after `since` answered by one of `hosts`."""
    times = [
        answer[0]
        for sent_at, src, _, answers in records
        if src == source and sent_at >= since
        for answer in answers
        if answer[1] in hosts
    ]
    return min(times) if times else None


def ranking_names(bed: ClusterBed, bucket: int) -> list[str]:
    return ranking(config.load(bed.hosts[0].config, environ={}).cluster, bucket)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


def _unmount_under(root: Path) -> None:
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


__all__ = ["BUCKETS", "SEED", "ClientLoad", "ClusterBed", "Host", "bucket_of", "ranking"]
