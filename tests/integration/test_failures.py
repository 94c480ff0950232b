"""A deploy that fails leaves traffic, rules, containers and the record as they were.

Every test first deploys v1 (blue), then makes the v2 deploy fail in one way, and checks that
v1 still answers from the host and from outside, that the nat rules the deployer owns are byte
for byte what they were, that the new container is gone and that the state file still says v1.
"""

from __future__ import annotations

import socket
import time

import pytest

from deployer.adapters.docker_host import DockerHost
from deployer.errors import BootError, ConfigError, HealthCheckFailed, PullError
from support.integration import IMAGE, demo_app, http_get, outside_get, owned_nat

pytestmark = pytest.mark.integration


def state_bytes(deployer, app: str) -> bytes | None:
    path = deployer.root / "state" / "apps" / f"{app}.json"
    return path.read_bytes() if path.exists() else None


def container_names(deployer, app: str) -> list[str]:
    return sorted(c.name for c in deployer.containers(app))


def reason_line(stderr: str) -> str:
    """The CLI's error: exactly one line starting with 'deployer: ', and no traceback."""
    assert "Traceback" not in stderr, stderr
    reasons = [line for line in stderr.splitlines() if line.startswith("deployer: ")]
    assert len(reasons) == 1, stderr
    assert stderr.rstrip("\n").splitlines()[-1] == reasons[0], stderr
    return reasons[0]


class Snapshot:
    """What a failed deploy must leave exactly as it found it."""

    def __init__(self, deployer, app: str, port: int, outside) -> None:
        self.deployer, self.app, self.port, self.outside = deployer, app, port, outside
        self.nat = owned_nat(deployer)
        self.chain = deployer.chain(app)
        self.state = state_bytes(deployer, app)
        self.containers = container_names(deployer, app)
        self.ids = sorted(c.id for c in deployer.containers(app))

    def assert_unchanged(self, version: str = "v1") -> None:
        d = self.deployer
        assert d.chain(self.app) == self.chain
        assert owned_nat(d) == self.nat
        assert state_bytes(d, self.app) == self.state
        assert container_names(d, self.app) == self.containers
        assert sorted(c.id for c in d.containers(self.app)) == self.ids
        assert http_get("127.0.0.1", self.port).split()[0] == version
        if self.outside is not None:
            assert outside_get(self.outside, self.port).split()[0] == version


def deploy_v1(deployer, app: str, *, external: int, blue: int, green: int, **extra):
    deployer.configure(demo_app(app, external=external, blue=blue, green=green, drain=0.5, stop_timeout=3, **extra))
    result = deployer.engine().deploy(app, "v1", actor="test")
    assert (result.tag, result.port_set) == ("v1", "blue")
    assert http_get("127.0.0.1", external).split()[0] == "v1"
    return result


def test_failing_health_gate_keeps_v1_serving(deployer, outside):
    deploy_v1(deployer, "web", external=21000, blue=21001, green=21002)
    before = Snapshot(deployer, "web", 21000, outside)
    assert before.containers == [f"{deployer.prefix.lower()}-web-blue"]
    state = deployer.engine().store.load("web")
    assert (state.active.tag, state.active.port_set) == ("v1", "blue")

    # The same app, but the next instance answers /healthz with 500.
    deployer.configure(
        demo_app(
            "web",
            external=21000,
            blue=21001,
            green=21002,
            drain=0.5,
            stop_timeout=3,
            env={"HEALTH_STATUS": "500"},
            health={"deadline": 2},
        )
    )
    deployer.events.clear()
    with pytest.raises(HealthCheckFailed) as failed:
        deployer.engine().deploy("web", "v2", actor="test")
    assert "status 500" in str(failed.value)
    before.assert_unchanged()
    steps = deployer.steps("web")
    assert ("health", "failed") in steps and ("remove-new", "ok") in steps
    assert not any(step == "flip" for step, _ in steps)
    state = deployer.engine().store.load("web")
    assert (state.active.tag, state.active.port_set, state.previous) == ("v1", "blue", None)

    cli = deployer.cli("deploy", "web", "v2")
    assert cli.returncode == 1, cli.stderr
    assert reason_line(cli.stderr).startswith("deployer: health check did not pass")
    before.assert_unchanged()


def test_unpullable_tag_fails_before_anything_starts(deployer, outside):
    deploy_v1(deployer, "web", external=21010, blue=21011, green=21012)
    before = Snapshot(deployer, "web", 21010, outside)
    deployer.events.clear()

    with pytest.raises(PullError) as failed:
        deployer.engine().deploy("web", "v404", actor="test")
    assert f"{IMAGE}:v404" in str(failed.value)
    steps = deployer.steps("web")
    assert ("pull", "failed") in steps
    assert not any(step == "start" for step, _ in steps)
    before.assert_unchanged()

    cli = deployer.cli("deploy", "web", "v404")
    assert cli.returncode == 1, cli.stderr
    assert f"{IMAGE}:v404" in reason_line(cli.stderr)
    before.assert_unchanged()


def test_container_that_exits_at_once_fails_fast(deployer, outside):
    """Fails fast, and says why: the exit code and the last log line, with either restart policy.

    How far the container got when the engine first looks at it is a race, so each policy is
    tried a few times: the message must be right every time.
    """
    deploy_v1(deployer, "web", external=21020, blue=21021, green=21022)
    before = Snapshot(deployer, "web", 21020, outside)
    serving = DockerHost("unix:///var/run/docker.sock").client.containers.get(before.ids[0])
    assert serving.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"  # the app's default
    deadline = 30
    without_exit_code = []
    for restart in ("unless-stopped", "no", "unless-stopped", "no", "unless-stopped", "no"):
        deployer.configure(
            demo_app(
                "web",
                external=21020,
                blue=21021,
                green=21022,
                drain=0.5,
                stop_timeout=3,
                env={"CRASH": "1"},
                health={"deadline": deadline},
                extra=f'restart = "{restart}"',
            )
        )
        started = time.monotonic()
        with pytest.raises(BootError) as failed:
            deployer.engine().deploy("web", "v2", actor="test")
        elapsed = time.monotonic() - started
        assert elapsed < deadline / 3, f"took {elapsed:.1f}s: the gate waited for a dead container"
        message = str(failed.value)
        assert "fatal: CRASH requested" in message
        if "exit code 3" not in message:
            without_exit_code.append(f"restart={restart}: {message}")
        before.assert_unchanged()
    assert without_exit_code == []


def test_set_port_taken_by_another_process_fails_and_leaves_no_container(deployer, outside):
    """Docker creates the container, then cannot publish its port: the created container must go too."""
    deploy_v1(deployer, "web", external=21025, blue=21026, green=21027)
    before = Snapshot(deployer, "web", 21025, outside)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 21027))  # the green set port, where v2 would be published
        squatter.listen(1)
        with pytest.raises(BootError) as failed:
            deployer.engine().deploy("web", "v2", actor="test")
        assert "21027" in str(failed.value) or "allocated" in str(failed.value) or "in use" in str(failed.value)
        before.assert_unchanged()
    finally:
        squatter.close()


HOSTILE_TAGS = ["v1;rm -rf /", "$(id)", "../x", "a" * 200, "v1 v2", "v1\nv2", "`id`"]


@pytest.mark.parametrize(
    "tag", HOSTILE_TAGS, ids=["semicolon", "subshell", "dotdot", "long", "space", "newline", "backtick"]
)
def test_hostile_tags_are_refused_before_anything_happens(deployer, tag):
    deployer.configure(demo_app("web", external=21030, blue=21031, green=21032, drain=0.5, stop_timeout=3))
    cli = deployer.cli("deploy", "web", tag)
    assert cli.returncode == 2, cli.stderr
    assert "is not a valid Docker tag" in reason_line(cli.stderr)
    assert deployer.containers() == []
    assert owned_nat(deployer) == []
    assert state_bytes(deployer, "web") is None


INVALID_APPS = {
    # case: (line added to the app's table, or (old, new) replaced in its TOML; the key the error names)
    "negative-stop-timeout": (("stop_timeout = 10", "stop_timeout = -1"), "stop_timeout"),
    "unknown-key": ('imagee = "x"', "imagee"),
    "bad-restart": ('restart = "sometimes"', "restart"),
    "bad-bind": ('bind = "localhost"', "bind"),
    "port-out-of-range": (("external = 21040", "external = 70000"), "ports[0].external"),
    "health-path": (('path = "/healthz"', 'path = "healthz"'), "health.path"),
    "health-never-passes": (("deadline = 15", "deadline = 0.1"), "health.deadline"),
}


@pytest.mark.parametrize("case", sorted(INVALID_APPS))
def test_invalid_config_is_one_line_naming_file_app_and_key(deployer, case):
    change, key = INVALID_APPS[case]
    if isinstance(change, tuple):
        toml = demo_app("web", external=21040, blue=21041, green=21042).replace(*change)
    else:
        toml = demo_app("web", external=21040, blue=21041, green=21042, extra=change)
    with pytest.raises(ConfigError):
        deployer.configure(toml)  # writes the file, then refuses to load it
    cli = deployer.cli("deploy", "web", "v1")
    assert cli.returncode == 2, cli.stderr
    assert "Traceback" not in cli.stderr
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("deployer: ")
    assert str(deployer.config_path) in lines[0]
    assert "app 'web'" in lines[0]
    assert f"key '{key}'" in lines[0]
    assert deployer.containers() == [] and owned_nat(deployer) == []
    assert not (deployer.root / "state").exists()


def test_dead_docker_socket_fails_cleanly(deployer):
    deployer.configure(
        demo_app("web", external=21050, blue=21051, green=21052, drain=0.5, stop_timeout=3),
        settings='docker_host = "unix:///tmp/no-such-docker.sock"',
    )
    started = time.monotonic()
    cli = deployer.cli("deploy", "web", "v1", timeout=60)
    assert cli.returncode == 69, cli.stderr  # EX_UNAVAILABLE: the daemon does not answer
    assert time.monotonic() - started < 30
    reason = reason_line(cli.stderr)
    assert "does not answer" in reason and "/tmp/no-such-docker.sock" in reason
    assert deployer.containers() == []
    assert owned_nat(deployer) == []
    assert state_bytes(deployer, "web") is None
