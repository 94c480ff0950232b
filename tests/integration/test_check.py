"""`deployer check` on the real host, as root: a receiver's user that does not exist and a registry that does not
answer are one line each and exit 1; with the machine's dockerd, its registry on 127.0.0.1:5000 and root as the
receiver's user, nothing is wrong and it exits 0. It only reads: no container, rule or account is made."""

from __future__ import annotations

import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from support.configs import app_toml
from support.fake_github import free_port
from support.integration import REGISTRY, REPO, run

pytestmark = pytest.mark.integration

MISSING_USER = "dpl-check-nobody"


def write_config(root: Path, *, user: str, registry: str) -> Path:
    """A config whose receiver runs as `user` and whose one app pulls from `registry`; its hooks folder holds one
    executable hook, its state folder is root's own."""
    (root / "hooks").mkdir()
    (root / "hooks" / "pre-deploy").write_text("#!/bin/sh\nexit 0\n")
    (root / "hooks" / "pre-deploy").chmod(0o755)
    (root / "state").mkdir(mode=0o750)
    path = root / "deployer.toml"
    path.write_text(
        f'[deployer]\nstate_dir = "{root / "state"}"\nhooks_dir = "{root / "hooks"}"\n'
        f'[server]\nuser = "{user}"\n' + app_toml("web", 8000, image=f"{registry}/deployer-test")
    )
    return path


def check(path: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "deployer", "check", "-c", str(path)], timeout=60, cwd=REPO)


def problems(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("PROBLEM ")]


def test_a_missing_receiver_user_and_a_closed_registry_are_one_line_each_and_a_ready_host_exits_0(host, tmp_path):
    with pytest.raises(KeyError):
        pwd.getpwnam(MISSING_USER)  # the test needs a user this machine does not have
    closed = f"127.0.0.1:{free_port()}"
    (tmp_path / "broken").mkdir()
    broken = check(write_config(tmp_path / "broken", user=MISSING_USER, registry=closed))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    found = problems(broken)
    assert len(found) == 2, broken.stdout
    assert found[0].startswith(f"PROBLEM server.user: no user '{MISSING_USER}' on this host"), found
    assert found[1].startswith(
        f"PROBLEM apps.web.image: the registry {closed} does not answer /v2/ (pulled by web): "
    ), found
    assert broken.stdout.splitlines()[-1].startswith("2 problems with ")

    (tmp_path / "ready").mkdir()
    ready = check(write_config(tmp_path / "ready", user="root", registry=REGISTRY))
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert problems(ready) == []
    summary = ready.stdout.splitlines()[-1]
    assert summary.startswith("ok: ") and f"registry {REGISTRY}" in summary and "Docker" in summary, summary
