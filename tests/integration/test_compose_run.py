"""compose.yaml run for real, with Debian's docker-compose (1.29): the image built, both services up, a deploy under load.

The base image is made from the stock Debian 12 tree the fresh-Debian test uses (`docker import` of its cached
tarball: no image is pulled), and the deployer's image is built offline from a wheelhouse made here by this host's
pip, as docs/production.md ("Compose") tells a host without index access. The build context is a copy of the files
the image takes, so the checkout gets no wheels. The config, the secrets and the state live in temporary folders
mounted where compose.yaml's variables say; the chain prefix is the test's own, so its cleanup removes the rules and
containers the worker made. Everything compose made (containers, the image, the base) goes at the end, on failure too.

`privileged: true` asks the kernel for every capability; where this process's own bounding set lacks one (a
machine that is itself a container), runc cannot start such a container. There, and only there, an override
gives the worker CAP_NET_ADMIN instead, and route_localnet on the deployer's bridge (which a container without
`privileged` cannot write) is set beforehand from the host; the worker then finds it set and writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deployer.adapters.docker_host import DockerHost
from deployer.adapters.iptables import Netfilter
from support import debian_rootfs
from support.fake_github import free_port
from support.integration import BRIDGE, NETWORK, REPO, Deployer, missing, run
from support.load import Load
from support.served import Served, claimed_ping, release_payload, served_version, web_app

pytestmark = pytest.mark.integration

RECEIVER_UID = 990  # compose.yaml's `user`, the Dockerfile's `deployer`
EXTERNAL = 22470
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "compose.yaml", "pyproject.toml", "README.md")


@dataclass
class ComposeBed:
    """One compose project of the test's own name, run with the variables that point it at the temporary folders."""

    project: str
    context: Path
    env: dict[str, str]
    served: Served
    override: bool = False  # only where `privileged` cannot start (the module's docstring)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        files = ["-f", str(self.context / "compose.yaml")]
        if self.override:
            files += ["-f", str(self.context / "override.yaml")]
        return run(
            ["docker-compose", "--project-directory", str(self.context), "-p", self.project, *files, *args],
            env=self.env,
            timeout=timeout,
        )

    def container_pid(self, service: str) -> int:
        container = self.compose("ps", "-q", service).stdout.strip()
        assert container, f"no {service} container: {self.compose('ps').stdout}"
        return int(run(["docker", "inspect", "-f", "{{.State.Pid}}", container]).stdout.strip())

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60").stdout


def build_context(target: Path) -> subprocess.Popen:
    """The files the image takes, and this host's pip making a wheelhouse of the deployer and its dependencies in it;
    started, not waited for, so the base's import runs meanwhile."""
    target.mkdir()
    for name in CONTEXT_FILES:
        shutil.copy(REPO / name, target / name)
    shutil.copytree(REPO / "deployer", target / "deployer", ignore=shutil.ignore_patterns("__pycache__"))
    return subprocess.Popen(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(target / "wheelhouse"), str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def host_folders(root: Path, deployer: Deployer, receiver_port: int) -> tuple[Path, Path, str, str]:
    """/etc/deployer and /var/lib/deployer as docs/production.md lays them out, for the receiver's gid; `names`: the
    Host header signed requests carry is the published port's, not the one gunicorn listens on in its container."""
    etc, var = root / "etc", root / "var"
    github_secret, operator_secret = secrets.token_hex(20), secrets.token_hex(24)
    config = (
        "[deployer]\n"
        'state_dir = "/var/lib/deployer/state"\n'
        f'chain_prefix = "{deployer.prefix}"\nnetwork = "{NETWORK}"\nbridge = "{BRIDGE}"\nipv6 = false\n'
        f'[server]\nnames = ["127.0.0.1:{receiver_port}"]\ngithub_secret_file = "/etc/deployer/github-secret"\n'
        '[server.operators.ops]\nsecret_file = "/etc/deployer/operators/ops"\n' + web_app(EXTERNAL)
    )
    (etc / "operators").mkdir(parents=True)
    for path, text in (
        (etc / "deployer.toml", config),
        (etc / "github-secret", github_secret + "\n"),
        (etc / "operators" / "ops", operator_secret + "\n"),
    ):
        path.write_text(text)
        path.chmod(0o640)
        os.chown(path, 0, RECEIVER_UID)
    for folder, mode in ((etc, 0o755), (etc / "operators", 0o750)):
        folder.chmod(mode)
        os.chown(folder, 0, RECEIVER_UID)
    (var / "state").mkdir(parents=True, mode=0o750)
    var.chmod(0o755)
    os.chown(var / "state", 0, RECEIVER_UID)
    for shared in ("queue", "audit"):
        (var / "state" / shared).mkdir()
        os.chown(var / "state" / shared, 0, RECEIVER_UID)
        (var / "state" / shared).chmod(0o2770)
    return etc, var, github_secret, operator_secret


# Only where `privileged` cannot start (see the module's docstring).
UNPRIVILEGED_WORKER = """services:
  worker:
    privileged: false
    cap_add: [NET_ADMIN, NET_RAW]
"""


def full_capability_set() -> bool:
    """Whether this process's bounding set holds every capability the kernel knows, as `privileged` asks for."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return int(status_fields(os.getpid())["CapBnd"], 16) == (1 << (last + 1)) - 1


@contextlib.contextmanager
def timed(times: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        times[name] = round(time.monotonic() - started, 1)


@pytest.fixture
def compose_bed(deployer: Deployer, images, tmp_path: Path) -> Iterator[ComposeBed]:
    if shutil.which("docker-compose") is None:
        missing("docker-compose is not installed (run scripts/install-deps)")
    reason = debian_rootfs.ensure_debootstrap()
    if reason:
        missing(reason)
    times: dict[str, float] = {}
    log: list[str] = []
    with timed(times, "tarball"):
        try:
            tarball = debian_rootfs.cached_tarball(log)
        except debian_rootfs.RootfsError as exc:
            missing(f"no stock {debian_rootfs.SUITE} tree: {exc}")
    project = f"deployer-{deployer.prefix.lower()}"
    base, image = f"{project}-base:bookworm", f"{project}:test"
    port = free_port()
    etc, var, github_secret, operator_secret = host_folders(tmp_path, deployer, port)
    served = Served(deployer, port, github_secret, operator_secret, etc / "operators" / "ops")
    env = {
        **os.environ,
        "DEPLOYER_ETC": str(etc),
        "DEPLOYER_VAR": str(var),
        "DEPLOYER_IMAGE": image,
        "DEPLOYER_BASE": base,
        "DEPLOYER_OFFLINE": "true",
        "DEPLOYER_RECEIVER_PORT": str(port),
    }
    bed = ComposeBed(project, tmp_path / "context", env, served, override=not full_capability_set())
    try:
        with timed(times, "wheelhouse and import"):
            wheels = build_context(bed.context)
            try:
                imported = run(["docker", "import", str(tarball), base], timeout=300)
            finally:
                _, errors = wheels.communicate(timeout=300)
            assert wheels.returncode == 0, errors[-3000:]
            assert imported.returncode == 0, imported.stderr
        if bed.override:
            (bed.context / "override.yaml").write_text(UNPRIVILEGED_WORKER)
            DockerHost("unix:///var/run/docker.sock").ensure_network(NETWORK, BRIDGE)
            Netfilter().enable_route_localnet(BRIDGE)
            log.append("no full capability set here: the worker runs with CAP_NET_ADMIN, not privileged")
        with timed(times, "build"):
            built = bed.compose("build", timeout=600)
            assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
        with timed(times, "up"):
            up = bed.compose("up", "-d")
            assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{served.url}/healthz", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"the receiver did not answer in 60 s:\n{bed.logs()}"
                time.sleep(0.3)
        yield bed
    finally:
        with timed(times, "down"):
            down = bed.compose("down", "--rmi", "all", "--timeout", "20")
            run(["docker", "rmi", "-f", image, base])
        shutil.rmtree(bed.context, ignore_errors=True)
        print(f"compose bed: {json.dumps(times)}; {'; '.join(log)}")
        assert down.returncode == 0, (down.stdout + down.stderr)[-3000:]


def status_fields(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def process_tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += process_tree(int(child))
    return found


def test_compose_builds_runs_unprivileged_and_deploys_with_zero_downtime(compose_bed: ComposeBed, tmp_path: Path):
    bed, served = compose_bed, compose_bed.served
    ping = served.deliver(claimed_ping(), event="ping")
    assert ping.status_code == 200, ping.text

    # gunicorn, master and workers: the unprivileged uid and gid, no capability, and no way to gain one.
    tree = process_tree(bed.container_pid("receiver"))
    assert len(tree) >= 3, f"gunicorn's master and two workers: {tree}"
    for pid in tree:
        fields = status_fields(pid)
        assert fields["Uid"].split() == [str(RECEIVER_UID)] * 4, (pid, fields["Uid"])
        assert fields["Gid"].split() == [str(RECEIVER_UID)] * 4, (pid, fields["Gid"])
        assert int(fields["CapEff"], 16) == int(fields["CapPrm"], 16) == int(fields["CapBnd"], 16) == 0, fields
        assert fields["NoNewPrivs"] == "1", fields

    first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
    assert first.status_code == 202, first.text
    assert served.wait(first.json()["job"])["status"] == "succeeded", bed.logs()
    assert served_version(EXTERNAL) == "v1"

    with Load(tmp_path / "load") as load:
        load.start("new", "http-new", f"127.0.0.1:{EXTERNAL}", timeout=5)
        load.start("keepalive", "http-keepalive", f"127.0.0.1:{EXTERNAL}", timeout=5)
        time.sleep(0.5)
        release = served.deliver(release_payload("v2"))
        assert release.status_code == 202, release.text
        assert served.wait(release.json()["job"])["status"] == "succeeded", bed.logs()
        time.sleep(0.5)
    for name in ("new", "keepalive"):
        records = load.records(name)
        failed = [r for r in records if not r["ok"]]
        assert len(records) > 50 and not failed, f"{name}: {len(failed)} of {len(records)} failed: {failed[:3]}"
        assert {r["version"] for r in records} == {"v1", "v2"}, f"{name}: {sorted({r['version'] for r in records})}"
    assert served_version(EXTERNAL) == "v2"
    assert [c.labels["deployer.tag"] for c in served.deployer.containers("web")] == ["v2"]
