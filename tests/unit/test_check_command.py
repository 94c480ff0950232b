"""`deployer check` end to end on a config in a folder of its own: each problem of a production host is exactly one
line and exit 1, a clean setup exits 0, an invalid config exits 2. Docker, the registry, the netfilter backend,
keepalived and the account database are fakes; the files, folders and modes are real."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from deployer.cli import check as check_cli
from deployer.cli.main import main
from deployer.config import Config
from deployer.errors import ClusterError, DockerUnavailable
from deployer.host.checks import HostChecks, HostProbes
from support.configs import app_toml

GITHUB_SECRET = "0123456789abcdef0123456789abcdef"
OPERATOR_SECRET = "fedcba9876543210fedcba9876543210"
RECEIVER_UID = RECEIVER_GID = 54321
CLUSTER = """
[cluster]
interface = "eth0"
subnet = "198.18.10.0/24"
address = "198.18.10.100"
buckets = 2
hash_seed = 1
host = "h1"
[[cluster.hosts]]
name = "h1"
address = "198.18.10.1"
"""


@dataclass
class FakeAccounts:
    users: dict[str, tuple[int, int]] = field(default_factory=lambda: {"deployer": (RECEIVER_UID, RECEIVER_GID)})
    groups: dict[str, int] = field(default_factory=lambda: {"deployer": RECEIVER_GID})

    def user(self, name: str) -> tuple[int, int] | None:
        return self.users.get(name)

    def group(self, name: str) -> int | None:
        return self.groups.get(name)


@dataclass
class Probed:
    """The fake probes: what each answers, and the order they were asked in."""

    asked: list[str] = field(default_factory=list)
    docker_down: bool = False
    registry_down: bool = False
    keepalived_missing: bool = False

    def docker(self) -> None:
        self.asked.append("docker")
        if self.docker_down:
            raise DockerUnavailable("the Docker daemon at unix:///var/run/docker.sock does not answer: refused")

    def registry(self, registry: str) -> Callable[[], str | None]:
        def probe() -> str | None:
            self.asked.append(f"registry {registry}")
            return f"registry {registry}: ConnectionRefusedError: refused" if self.registry_down else None

        return probe

    def netfilter(self) -> str:
        self.asked.append("netfilter")
        return "*nat\nCOMMIT\n"

    def keepalived(self) -> str:
        self.asked.append("keepalived")
        if self.keepalived_missing:
            raise ClusterError("keepalived is not installed (Debian: apt-get install keepalived)")
        return "Keepalived v2.2.7 (01/16,2022)"


@dataclass
class Setup:
    """A production-like config: a receiver user, its GitHub and operator secrets, a hooks folder, a state folder."""

    root: Path
    probed: Probed = field(default_factory=Probed)
    accounts: FakeAccounts = field(default_factory=FakeAccounts)
    deployer_uid: int = field(default_factory=os.geteuid)
    cluster: bool = False

    @property
    def config(self) -> Path:
        return self.root / "deployer.toml"

    def write(self) -> None:
        (self.root / "github-secret").write_text(GITHUB_SECRET + "\n")
        (self.root / "ops-secret").write_text(OPERATOR_SECRET + "\n")
        for name in ("github-secret", "ops-secret"):
            (self.root / name).chmod(0o644)
        (self.root / "hooks").mkdir()
        self.hook("pre-deploy", 0o755)
        (self.root / "state").mkdir(mode=0o750)
        (self.root / "state").chmod(0o750)
        self.write_config()

    def write_config(self, hooks: bool = True) -> None:
        self.config.write_text(
            '[deployer]\nstate_dir = "state"\n'
            + ('hooks_dir = "hooks"\n' if hooks else "")
            + '[server]\nuser = "deployer"\ngroup = "deployer"\ngithub_secret_file = "github-secret"\n'
            '[server.operators.ops]\nsecret_file = "ops-secret"\n'
            + (CLUSTER if self.cluster else "")
            + app_toml("web", 8000, extra="cluster = true" if self.cluster else "")
        )
        self.config.chmod(0o644)

    def hook(self, name: str, mode: int) -> None:
        (self.root / "hooks" / name).write_text("#!/bin/sh\nexit 0\n")
        (self.root / "hooks" / name).chmod(mode)

    def build(self, config: Config) -> HostChecks:
        probes = HostProbes(
            docker=self.probed.docker,
            netfilter=self.probed.netfilter,
            registries={
                registry: self.probed.registry(registry)
                for registry in sorted({app.registry for app in config.apps.values() if app.registry})
            },
            keepalived=self.probed.keepalived if config.cluster is not None else None,
        )
        return HostChecks(config, probes, accounts=self.accounts, deployer_uid=self.deployer_uid, deadline=5)

    def check(self, *args: str) -> int:
        return main(["check", "-c", str(self.config), *args])


@pytest.fixture
def setup(monkeypatch) -> Iterator[Setup]:
    # Under /tmp, not pytest's 0700 folder: the receiver's user must be able to reach its secrets' folder.
    root = Path(tempfile.mkdtemp(prefix="deployer-check-", dir="/tmp"))
    root.chmod(0o755)
    made = Setup(root)
    made.write()
    monkeypatch.setattr(check_cli, "build_host_checks", made.build)
    try:
        yield made
    finally:
        shutil.rmtree(root)


def problem_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("PROBLEM ")]


def test_a_clean_setup_exits_0_after_every_probe(setup, capsys):
    assert setup.check() == 0
    out = capsys.readouterr().out
    assert problem_lines(out) == []
    assert out.splitlines()[-1].startswith(f"ok: {setup.config} and this host are ready (")
    assert "receiver deployer:deployer reading 3 files" in out
    assert sorted(setup.probed.asked) == ["docker", "netfilter", "registry registry.example:5000"]


def no_user(setup: Setup) -> None:
    setup.accounts.users.clear()


def secret_unreadable(setup: Setup) -> None:
    (setup.root / "ops-secret").chmod(0o600)


def hooks_folder_missing(setup: Setup) -> None:
    shutil.rmtree(setup.root / "hooks")


def hook_not_executable(setup: Setup) -> None:
    (setup.root / "hooks" / "pre-deploy").chmod(0o644)


def hook_with_a_suffix(setup: Setup) -> None:
    setup.hook("post-healthy.sh", 0o755)


def state_of_another_user(setup: Setup) -> None:
    setup.deployer_uid = os.geteuid() + 1  # the deployer runs as another user than the state folder's owner
    shutil.rmtree(setup.root / "hooks")  # which would be that other user's too: no hooks, the default folder
    setup.write_config(hooks=False)


def docker_down(setup: Setup) -> None:
    setup.probed.docker_down = True


def registry_down(setup: Setup) -> None:
    setup.probed.registry_down = True


def keepalived_missing(setup: Setup) -> None:
    setup.cluster = True
    setup.write_config()
    setup.probed.keepalived_missing = True


@pytest.mark.parametrize(
    "break_it, line",
    [
        (no_user, "PROBLEM server.user: no user 'deployer' on this host, so the receiver cannot start; create it: "),
        (
            secret_unreadable,
            "PROBLEM server.operators.ops.secret_file: the receiver's user 'deployer' cannot read {root}/ops-secret ",
        ),
        (hooks_folder_missing, "PROBLEM deployer.hooks_dir: names no folder: {root}/hooks; create it"),
        (
            hook_not_executable,
            "PROBLEM {root}/hooks/pre-deploy: is not executable: a deploy would skip it (chmod +x it)",
        ),
        (
            hook_with_a_suffix,
            "PROBLEM {root}/hooks/post-healthy.sh: is never run: a hook is named exactly 'post-healthy', without a "
            "suffix",
        ),
        (state_of_another_user, "PROBLEM deployer.state_dir: {root}/state belongs to uid "),
        (
            docker_down,
            "PROBLEM deployer.docker_host: the Docker daemon at unix:///var/run/docker.sock does not answer: "
            "refused; start it (systemctl start docker)",
        ),
        (
            registry_down,
            "PROBLEM apps.web.image: the registry registry.example:5000 does not answer /v2/ (pulled by web): "
            "ConnectionRefusedError: refused; start it",
        ),
        (
            keepalived_missing,
            "PROBLEM cluster: keepalived is not installed (Debian: apt-get install keepalived); [cluster] needs it",
        ),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_each_problem_is_one_line_and_exit_1(setup, capsys, break_it, line):
    break_it(setup)
    assert setup.check() == 1
    out = capsys.readouterr().out
    lines = problem_lines(out)
    assert len(lines) == 1, out
    assert lines[0].startswith(line.format(root=setup.root)), lines[0]
    assert out.splitlines()[-1].startswith(f"1 problem with {setup.config} and this host (checked ")


def test_an_unreadable_secret_names_what_stops_the_receiver(setup, capsys):
    secret_unreadable(setup)
    setup.check()
    (line,) = problem_lines(capsys.readouterr().out)
    assert f"cannot read {setup.root}/ops-secret (uid {os.geteuid()}" in line
    assert line.endswith(f"chown root:deployer {setup.root}/ops-secret; chmod 0640 {setup.root}/ops-secret")


def test_an_invalid_config_exits_2_with_its_one_line(setup, capsys):
    setup.config.write_text("[deployer\n")
    assert setup.check() == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"deployer: {setup.config}: not valid TOML")
    assert setup.probed.asked == []


def test_an_unknown_key_is_an_invalid_config_too(setup, capsys):
    setup.config.write_text(setup.config.read_text().replace("[server]\n", "[server]\nusr = 1\n"))
    assert setup.check("--json") == 2
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2


def test_json_lists_each_problem_with_its_key_path_and_message(setup, capsys):
    secret_unreadable(setup)
    docker_down(setup)
    assert setup.check("--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and document["config"] == str(setup.config)
    assert [(problem["key"], problem["path"]) for problem in document["problems"]] == [
        ("server.operators.ops.secret_file", f"{setup.root}/ops-secret"),
        ("deployer.docker_host", None),
    ]
    assert all(problem["message"] for problem in document["problems"])
    assert "effective" not in document


def test_json_of_a_clean_setup_is_ok(setup, capsys):
    assert setup.check("--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True and document["problems"] == []
    assert "Docker" in document["checked"]


def test_print_shows_the_effective_config_with_every_secret_masked(setup, capsys):
    assert setup.check("--print") == 0
    out = capsys.readouterr().out
    assert GITHUB_SECRET not in out and OPERATOR_SECRET not in out
    effective = json.loads(out[: out.rindex("}") + 1])
    assert effective["server"]["github_secret"] == "********"
    assert effective["server"]["operators"]["ops"]["secret"] == "********"
    assert effective["settings"]["state_dir"] == f"{setup.root}/state"  # a default resolved: a path, absolute
    assert effective["apps"]["web"]["drain_seconds"] == 10.0


def test_print_with_json_puts_the_effective_config_in_the_document(setup, capsys):
    assert setup.check("--print", "--json") == 0
    out = capsys.readouterr().out
    assert GITHUB_SECRET not in out
    assert json.loads(out)["effective"]["server"]["github_secret"] == "********"


def test_a_probe_that_hangs_or_raises_is_a_problem_line_not_a_traceback(setup, capsys, monkeypatch):
    released = threading.Event()

    def hangs() -> None:
        released.wait(10)

    def raises() -> None:
        raise ValueError("an answer it did not expect")

    def build(config: Config) -> HostChecks:
        checks = setup.build(config)
        checks.probes = replace(checks.probes, docker=hangs, netfilter=raises)
        checks.deadline = 0.2
        return checks

    monkeypatch.setattr(check_cli, "build_host_checks", build)
    try:
        assert setup.check() == 1
    finally:
        released.set()
    assert problem_lines(capsys.readouterr().out) == [
        "PROBLEM deployer.docker_host: Docker at unix:///var/run/docker.sock does not answer: no answer within "
        "0.2 s; start it (systemctl start docker), or correct docker_host",
        "PROBLEM deployer.backend: the iptables backend cannot read the nat rules: ValueError: an answer it did not "
        "expect; run check as root, and install the backend's tools (iptables; libnftables1 for nftables)",
    ]


def test_a_secret_behind_a_link_is_read_through_the_folders_the_link_leads_to(setup, capsys):
    private = setup.root / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    (setup.root / "ops-secret").rename(private / "ops-secret")
    (setup.root / "ops-secret").symlink_to(private / "ops-secret")
    assert setup.check() == 1
    (line,) = problem_lines(capsys.readouterr().out)
    assert line.startswith(
        f"PROBLEM server.operators.ops.secret_file: the receiver's user 'deployer' cannot search {private} (uid "
    )
    assert line.endswith(f"so it cannot read {setup.root}/ops-secret; chgrp deployer {private}; chmod g+x {private}")


def test_a_state_folder_that_is_a_link_is_one_line_and_what_it_leads_to_is_not_walked(setup, capsys):
    elsewhere = setup.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "open").write_text("")
    (elsewhere / "open").chmod(0o666)
    (setup.root / "state").rmdir()
    (setup.root / "state").symlink_to(elsewhere)
    assert setup.check() == 1
    assert problem_lines(capsys.readouterr().out) == [
        f"PROBLEM deployer.state_dir: {setup.root}/state is not a folder (a link?): the deployer refuses to use it; "
        "make it a folder of its own"
    ]
