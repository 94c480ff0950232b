"""Which hook runs, and exactly what environment it gets."""

import os

import pytest

from deployer.adapters.processes import run_hook
from deployer.plan.hooks import MAX_FACT_CHARS, HookContext, hook_environment, hook_path


def make(folder, name, mode):
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(path, mode)
    return path


def test_hook_path_finds_only_executable_files(tmp_path):
    make(tmp_path, "pre-deploy", 0o755)
    make(tmp_path, "post-flip", 0o644)
    make(tmp_path, "post-healthy", 0o700)
    (tmp_path / "post-deploy").mkdir()
    (tmp_path / "on-failure").symlink_to(tmp_path / "pre-deploy")

    assert hook_path(tmp_path, "pre-deploy") == tmp_path / "pre-deploy"
    assert hook_path(tmp_path, "post-healthy") == tmp_path / "post-healthy"
    assert hook_path(tmp_path, "on-failure") == tmp_path / "on-failure"
    assert hook_path(tmp_path, "post-flip") is None  # not executable
    assert hook_path(tmp_path, "post-deploy") is None  # a folder
    assert hook_path(tmp_path / "absent", "pre-deploy") is None


@pytest.mark.parametrize("name", ["pre-flip", "pre-deploy.sh", "../pre-deploy", ""])
def test_hook_path_rejects_unknown_hook_names(tmp_path, name):
    make(tmp_path, "pre-deploy.sh", 0o755)
    with pytest.raises(ValueError) as caught:
        hook_path(tmp_path, name)
    assert str(caught.value) == f"unknown hook {name!r}"


FULL = HookContext(
    app="demo",
    tag="v2",
    actor="cli:alice",
    job="job-42",
    digest="sha256:" + "ab" * 32,
    old_set="blue",
    new_set="green",
    old_tag="v1",
    new_ports={"8080/tcp": 1002, "9090/udp": 1002},
    old_ports={"8080/tcp": 1001, "9090/udp": 1001},
    bind="127.0.0.1",
    health_path="/healthz",
)


def test_hook_environment_has_the_facts_and_keeps_ordinary_variables():
    inherited = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEPLOYER_NOTIFY_URL": "https://hooks.example/notify",
    }
    assert hook_environment("post-flip", FULL, inherited) == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEPLOYER_NOTIFY_URL": "https://hooks.example/notify",
        "DEPLOYER_HOOK": "post-flip",
        "DEPLOYER_APP": "demo",
        "DEPLOYER_TAG": "v2",
        "DEPLOYER_ACTOR": "cli:alice",
        "DEPLOYER_JOB": "job-42",
        "DEPLOYER_DIGEST": "sha256:" + "ab" * 32,
        "DEPLOYER_OLD_SET": "blue",
        "DEPLOYER_NEW_SET": "green",
        "DEPLOYER_OLD_TAG": "v1",
        "DEPLOYER_BIND": "127.0.0.1",
        "DEPLOYER_HEALTH_PATH": "/healthz",
        "DEPLOYER_NEW_PORT_8080_TCP": "1002",
        "DEPLOYER_NEW_PORT_9090_UDP": "1002",
        "DEPLOYER_NEW_PORT": "1002",
        "DEPLOYER_OLD_PORT_8080_TCP": "1001",
        "DEPLOYER_OLD_PORT_9090_UDP": "1001",
        "DEPLOYER_OLD_PORT": "1001",
    }


def test_first_deploy_has_only_the_facts_it_knows():
    context = HookContext(
        app="demo",
        tag="v1",
        actor="github:acme/demo",
        new_set="blue",
        new_ports={"8080/tcp": 1001},
        error="health check did not pass",
    )
    assert hook_environment("on-failure", context, {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "DEPLOYER_HOOK": "on-failure",
        "DEPLOYER_APP": "demo",
        "DEPLOYER_TAG": "v1",
        "DEPLOYER_ACTOR": "github:acme/demo",
        "DEPLOYER_NEW_SET": "blue",
        "DEPLOYER_BIND": "127.0.0.1",
        "DEPLOYER_ERROR": "health check did not pass",
        "DEPLOYER_NEW_PORT_8080_TCP": "1001",
        "DEPLOYER_NEW_PORT": "1001",
    }


def test_secrets_are_dropped_and_facts_override_inherited_values():
    inherited = {
        "PATH": "/bin",
        "REGISTRY_PASSWORD": "s3cret",
        "WEBHOOK_KEY": "k3y",
        "DEPLOYER_SECRET": "x",
        "DEPLOYER_SECRET_GITHUB": "y",
        "DEPLOYER_TOKEN_API": "z",
        "DEPLOYER_NOTIFY_URL": "https://hooks.example/notify",
        "DEPLOYER_APP": "forged",
        "DEPLOYER_TAG": "forged",
        "DEPLOYER_HOOK": "forged",
    }
    env = hook_environment(
        "pre-deploy",
        HookContext(app="demo", tag="v2", actor="cli:bob"),
        inherited,
        frozenset({"REGISTRY_PASSWORD", "WEBHOOK_KEY"}),
    )
    assert env == {
        "PATH": "/bin",
        "DEPLOYER_NOTIFY_URL": "https://hooks.example/notify",
        "DEPLOYER_HOOK": "pre-deploy",
        "DEPLOYER_APP": "demo",
        "DEPLOYER_TAG": "v2",
        "DEPLOYER_ACTOR": "cli:bob",
        "DEPLOYER_BIND": "127.0.0.1",
    }


def test_inherited_environment_is_not_modified():
    inherited = {"PATH": "/bin", "DEPLOYER_TOKEN": "t"}
    hook_environment("post-deploy", FULL, inherited)
    assert inherited == {"PATH": "/bin", "DEPLOYER_TOKEN": "t"}


def test_inherited_values_of_unknown_facts_do_not_pass_as_facts():
    # e.g. the deployer run from another deploy's hook inherits that deploy's facts
    inherited = {
        "PATH": "/bin",
        "DEPLOYER_OLD_TAG": "v7",
        "DEPLOYER_OLD_SET": "green",
        "DEPLOYER_ERROR": "stale",
        "DEPLOYER_OLD_PORT": "1002",
        "DEPLOYER_OLD_PORT_8080_TCP": "1002",
        "DEPLOYER_JOB": "job-1",
    }
    context = HookContext(app="demo", tag="v1", actor="cli:alice", new_set="blue", new_ports={"8080/tcp": 1001})
    env = hook_environment("post-deploy", context, inherited)
    assert sorted(k for k in env if k.startswith("DEPLOYER_")) == [
        "DEPLOYER_ACTOR",
        "DEPLOYER_APP",
        "DEPLOYER_BIND",
        "DEPLOYER_HOOK",
        "DEPLOYER_NEW_PORT",
        "DEPLOYER_NEW_PORT_8080_TCP",
        "DEPLOYER_NEW_SET",
        "DEPLOYER_TAG",
    ]


def test_a_nul_in_a_fact_or_an_inherited_value_is_dropped():
    # A container's log line with a NUL reaches DEPLOYER_ERROR; exec refuses any value holding one.
    context = HookContext(app="demo", tag="v1", actor="cli:alice", error="boot failed: \x00bad\x00 byte")
    env = hook_environment("on-failure", context, {"PATH": "/bin", "NOTE": "a\x00b", "BAD\x00NAME": "x", "A=B": "y"})
    assert env["DEPLOYER_ERROR"] == "boot failed: bad byte"
    assert env["NOTE"] == "ab"
    assert "BAD\x00NAME" not in env and "A=B" not in env
    assert not any("\x00" in key or "\x00" in value for key, value in env.items())


def test_a_long_fact_is_cut_to_a_bound():
    context = HookContext(app="demo", tag="v1", actor="cli:alice", error="x" * 100_000)
    error = hook_environment("on-failure", context, {})["DEPLOYER_ERROR"]
    assert len(error) == MAX_FACT_CHARS and error.endswith("...")
    short = HookContext(app="demo", tag="v1", actor="cli:alice", error="x" * MAX_FACT_CHARS)
    assert hook_environment("on-failure", short, {})["DEPLOYER_ERROR"] == "x" * MAX_FACT_CHARS


def test_the_hook_runner_reports_an_environment_exec_refuses_as_a_failed_hook(tmp_path):
    hook = make(tmp_path, "on-failure", 0o755)
    outcome = run_hook(hook, {"PATH": "/bin", "DEPLOYER_ERROR": "a\x00b"}, timeout=5)
    assert outcome.exit_code == 126
    assert outcome.output == f"cannot run {hook}: embedded null byte"
