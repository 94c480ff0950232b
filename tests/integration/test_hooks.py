"""Lifecycle hooks on a real deploy: which ones gate it, what they are told, and how they are stopped."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from deployer import config as config_module
from deployer.errors import ConfigError, HealthCheckFailed, HookFailed, PullError
from support.integration import REPO, demo_app, http_get, outside_get, owned_nat

pytestmark = pytest.mark.integration

EXTERNAL, BLUE, GREEN = 21100, 21101, 21102


def web(port: int = EXTERNAL, **overrides) -> str:
    return demo_app("web", external=port, blue=port + 1, green=port + 2, drain=0.5, stop_timeout=3, **overrides)


def configure(deployer, *apps: str, hook_timeout: float | None = None, settings: str = ""):
    """deployer.configure(), with another hook timeout than the harness's default of 20 s."""
    if hook_timeout is not None:
        settings = f"hook_timeout = {hook_timeout:g}\n{settings}"
    return deployer.configure(*apps, settings=settings)


def state_bytes(deployer, app: str = "web") -> bytes | None:
    path = deployer.root / "state" / "apps" / f"{app}.json"
    return path.read_bytes() if path.exists() else None


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.isidentifier():
            env[name] = value
    return env


def record_env(deployer, name: str, then: str = "exit 0") -> Path:
    """Install hook `name` that writes its environment to <root>/env/<name>, then runs `then`."""
    out = deployer.root / "env" / name
    out.parent.mkdir(exist_ok=True)
    deployer.hook(name, f'env > "{out}"\n{then}\n')
    return out


def names(deployer) -> list[str]:
    return sorted(c.name for c in deployer.containers("web"))


def snapshot(deployer):
    return owned_nat(deployer), state_bytes(deployer), sorted(c.id for c in deployer.containers("web"))


def test_failing_pre_deploy_hook_stops_before_anything_changes(deployer, outside):
    configure(deployer, web())
    deployer.engine().deploy("web", "v1", actor="test")
    before = snapshot(deployer)
    deployer.hook("pre-deploy", "echo 'not during business hours' >&2\nexit 7\n")
    deployer.events.clear()

    with pytest.raises(HookFailed) as failed:
        deployer.engine().deploy("web", "v2", actor="test")
    assert "pre-deploy" in str(failed.value) and "7" in str(failed.value)
    assert "not during business hours" in str(failed.value)
    steps = [step for step, _ in deployer.steps("web")]
    assert ("hook pre-deploy", "failed") in deployer.steps("web")
    assert not {"pull", "start", "health", "flip"} & set(steps), steps
    assert snapshot(deployer) == before
    assert http_get("127.0.0.1", EXTERNAL).split()[0] == "v1"
    assert outside_get(outside, EXTERNAL).split()[0] == "v1"


def test_failing_pre_deploy_hook_on_a_first_deploy_leaves_the_nat_table_alone(deployer):
    configure(deployer, web(21105))
    deployer.hook("pre-deploy", "exit 1\n")
    with pytest.raises(HookFailed):
        deployer.engine().deploy("web", "v1", actor="test")
    assert deployer.containers() == []
    assert owned_nat(deployer) == []


def test_failing_post_healthy_hook_stops_before_the_flip(deployer, outside):
    configure(deployer, web())
    deployer.engine().deploy("web", "v1", actor="test")
    before = snapshot(deployer)
    marker = deployer.root / "new-instance-answered"
    # The new instance is up and healthy when the hook runs: it answers on its set port.
    deployer.hook(
        "post-healthy",
        f"""python3 - > "{marker}" <<'EOF'
import os, urllib.request
port = os.environ["DEPLOYER_NEW_PORT"]
print(urllib.request.urlopen("http://127.0.0.1:" + port + "/", timeout=5).read().decode())
EOF
exit 1
""",
    )
    on_failure = record_env(deployer, "on-failure")
    deployer.events.clear()

    with pytest.raises(HookFailed) as failed:
        deployer.engine().deploy("web", "v2", actor="test")
    assert "post-healthy" in str(failed.value)
    assert marker.read_text().split()[0] == "v2"
    steps = deployer.steps("web")
    order = [step for step, _ in steps]
    assert ("health", "ok") in steps and ("hook post-healthy", "failed") in steps
    assert "flip" not in order
    assert order.index("remove-new") < order.index("hook on-failure")
    assert snapshot(deployer) == before
    assert names(deployer) == [f"{deployer.prefix.lower()}-web-blue"]
    assert http_get("127.0.0.1", EXTERNAL).split()[0] == "v1"
    assert outside_get(outside, EXTERNAL).split()[0] == "v1"
    assert "post-healthy" in read_env(on_failure)["DEPLOYER_ERROR"]


def test_hooks_are_told_about_the_deploy(deployer, monkeypatch):
    monkeypatch.setenv("DEPLOYER_SECRET_KEY", "do-not-leak")
    monkeypatch.setenv("DEPLOYER_TOKEN_X", "do-not-leak-either")
    configure(deployer, web())
    deployer.engine().deploy("web", "v1", actor="test")
    files = {name: record_env(deployer, name) for name in ("pre-deploy", "post-healthy", "post-flip", "post-deploy")}

    result = deployer.engine().deploy("web", "v2", actor="alice")
    assert (result.tag, result.port_set) == ("v2", "green")
    for name, path in files.items():
        env = read_env(path)
        assert env["DEPLOYER_HOOK"] == name
        assert env["DEPLOYER_APP"] == "web"
        assert env["DEPLOYER_TAG"] == "v2"
        assert env["DEPLOYER_ACTOR"] == "alice"
        assert env["DEPLOYER_NEW_SET"] == "green"
        assert env["DEPLOYER_OLD_SET"] == "blue"
        assert env["DEPLOYER_OLD_TAG"] == "v1"
        assert env["DEPLOYER_NEW_PORT"] == str(GREEN)
        assert env["DEPLOYER_NEW_PORT_8080_TCP"] == str(GREEN)
        assert env["DEPLOYER_OLD_PORT"] == str(BLUE)
        assert env["DEPLOYER_BIND"] == "127.0.0.1"
        assert "DEPLOYER_ERROR" not in env
        assert "do-not-leak" not in path.read_text()
    assert read_env(files["post-healthy"])["DEPLOYER_DIGEST"] == result.digest
    assert "DEPLOYER_DIGEST" not in read_env(files["pre-deploy"])  # not pulled yet

    # Through the CLI the actor is the local user; and back to blue.
    for path in files.values():
        path.unlink()
    cli = deployer.cli("deploy", "web", "v1")
    assert cli.returncode == 0, cli.stderr
    env = read_env(files["post-healthy"])
    assert env["DEPLOYER_ACTOR"] == config_module.local_actor()
    assert (env["DEPLOYER_TAG"], env["DEPLOYER_NEW_SET"], env["DEPLOYER_OLD_SET"]) == ("v1", "blue", "green")
    assert env["DEPLOYER_NEW_PORT"] == str(BLUE)


def test_on_failure_runs_after_a_failed_deploy_and_keeps_the_first_error(deployer):
    configure(deployer, web())
    deployer.engine().deploy("web", "v1", actor="test")
    on_failure = record_env(deployer, "on-failure", then="exit 9")

    with pytest.raises(PullError) as failed:  # the on-failure hook's own failure does not replace it
        deployer.engine().deploy("web", "v404", actor="test")
    env = read_env(on_failure)
    assert env["DEPLOYER_HOOK"] == "on-failure"
    assert env["DEPLOYER_TAG"] == "v404"
    assert env["DEPLOYER_ERROR"] == str(failed.value)
    assert "v404" in env["DEPLOYER_ERROR"]
    assert http_get("127.0.0.1", EXTERNAL).split()[0] == "v1"

    # A failing health gate too, through the CLI.
    on_failure.unlink()
    configure(deployer, web(env={"HEALTH_STATUS": "503"}, health={"deadline": 1.5}))
    cli = deployer.cli("deploy", "web", "v2")
    assert cli.returncode == 1, cli.stderr
    assert "health check did not pass" in read_env(on_failure)["DEPLOYER_ERROR"]


def test_failing_post_deploy_hook_does_not_fail_the_deploy(deployer):
    configure(deployer, web())
    deployer.hook("post-deploy", "echo 'chat is down' >&2\nexit 1\n")
    deployer.hook("post-flip", "exit 1\n")
    on_failure = record_env(deployer, "on-failure")

    result = deployer.engine().deploy("web", "v1", actor="test")
    assert result.tag == "v1"
    assert ("hook post-deploy", "failed") in deployer.steps("web")
    assert ("hook post-flip", "failed") in deployer.steps("web")
    assert [e["event"] for e in deployer.events if e["event"].startswith("deploy.")][-1] == "deploy.finished"
    assert http_get("127.0.0.1", EXTERNAL).split()[0] == "v1"
    cli = deployer.cli("deploy", "web", "v2")
    assert cli.returncode == 0, cli.stderr
    assert http_get("127.0.0.1", EXTERNAL).split()[0] == "v2"
    assert not on_failure.exists()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] == "Z"  # a zombie is dead, waiting to be reaped
    except FileNotFoundError:
        return True


def test_hook_that_outlives_hook_timeout_is_killed_and_fails_the_deploy(deployer):
    configure(deployer, web(), hook_timeout=1)
    deployer.engine().deploy("web", "v1", actor="test")
    before = snapshot(deployer)
    pid_file = deployer.root / "sleeper.pid"
    deployer.hook("post-healthy", f'sleep 60 &\necho $! > "{pid_file}"\nwait\n')
    sleeper = None
    try:
        started = time.monotonic()
        with pytest.raises(HookFailed) as failed:
            deployer.engine().deploy("web", "v2", actor="test")
        assert time.monotonic() - started < 15
        assert "post-healthy" in str(failed.value) and "timed out after 1s" in str(failed.value)
        sleeper = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while not _gone(sleeper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(sleeper), "the hook's child process outlived the timeout"
        assert snapshot(deployer) == before
        assert http_get("127.0.0.1", EXTERNAL).split()[0] == "v1"
    finally:
        if sleeper is not None and not _gone(sleeper):
            os.kill(sleeper, 9)


def test_shipped_smoke_test_hook_gates_a_real_deploy(deployer, monkeypatch):
    monkeypatch.delenv("DEPLOYER_NOTIFY_URL", raising=False)
    monkeypatch.delenv("DEPLOYER_SMOKE_PATHS", raising=False)
    configure(deployer, web())
    hooks_dir = deployer.root / "hooks"
    for shipped in (REPO / "hooks").iterdir():
        shutil.copy2(shipped, hooks_dir / shipped.name)
    assert os.access(hooks_dir / "post-healthy", os.X_OK)

    deployer.engine().deploy("web", "v1", actor="test")
    result = deployer.engine().deploy("web", "v2", actor="test")
    assert result.tag == "v2"
    smoke = [e for e in deployer.events if e["event"] == "step" and e["step"] == "hook post-healthy"]
    assert [e["outcome"] for e in smoke] == ["ok", "ok"]
    assert "smoke test: GET / -> 200 b'v2 " in smoke[-1]["output"]
    assert http_get("127.0.0.1", EXTERNAL).split()[0] == "v2"

    # The same hook refuses an instance that answers an error on a smoke path, before the flip.
    monkeypatch.setenv("DEPLOYER_SMOKE_PATHS", "/ /no-such-page")
    with pytest.raises(HookFailed) as failed:
        deployer.engine().deploy("web", "v1", actor="test")
    assert "/no-such-page" in str(failed.value) and "404" in str(failed.value)
    assert http_get("127.0.0.1", EXTERNAL).split()[0] == "v2"
    assert names(deployer) == [f"{deployer.prefix.lower()}-web-green"]


def test_hook_that_is_not_executable_is_refused_at_load(deployer):
    configure(deployer, web())
    path = deployer.hook("pre-deploy", "exit 1\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="pre-deploy is not executable"):
        deployer.engine()


def test_health_failure_runs_on_failure_but_not_post_hooks(deployer):
    configure(deployer, web())
    deployer.engine().deploy("web", "v1", actor="test")
    ran = {name: record_env(deployer, name) for name in ("post-healthy", "post-flip", "post-deploy", "on-failure")}
    configure(deployer, web(env={"HEALTH_STATUS": "500"}, health={"deadline": 1.5}))
    with pytest.raises(HealthCheckFailed):
        deployer.engine().deploy("web", "v2", actor="test")
    assert [name for name, path in ran.items() if path.exists()] == ["on-failure"]
