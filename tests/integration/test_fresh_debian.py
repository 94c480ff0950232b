"""The README's install path on a stock Debian 12, from a plain clone: the real scripts/install-deps.

A `debootstrap --variant=minbase bookworm` tree (cached in /var/cache/deployer-ci/) gets a clean
`git clone` of this checkout's HEAD at /opt/deployer and, of this machine, only what reaching the
package mirrors needs (see support/debian_rootfs.py). Inside it (chroot, as root, a login-like environment) the
full `scripts/install-deps` runs, not only its `--python` part: it takes about a minute there, so
the apt packages (docker.io and the rest; policy-rc.d keeps their services from starting),
python3 and python3-venv, and .venv are all proven, on Debian's own python3 (3.11.2). Then
`.venv/bin/deployer --help` must answer and every unit test must pass with .venv's pytest.

It drives no dockerd and no netfilter, so it needs none of the other integration fixtures; it
needs root (chroot, mount), the package mirrors and the package index. Where CI=true, a missing
prerequisite fails it instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from support import debian_rootfs
from support.debian_rootfs import Rootfs, RootfsError
from support.integration import REPO, missing

pytestmark = pytest.mark.integration

CLONE = "/opt/deployer"


@pytest.fixture
def fresh_debian():
    if os.geteuid() != 0:
        missing("the fresh-Debian test needs root (debootstrap, chroot, mount)")
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        missing("the fresh-Debian test clones the checkout: it needs git and a git checkout")
    reason = debian_rootfs.ensure_debootstrap()
    if reason:
        missing(reason)
    debian_rootfs.remove_leftovers()
    log: list[str] = []
    try:
        rootfs = Rootfs.create(log)
    except RootfsError as exc:
        missing(f"no stock {debian_rootfs.SUITE} tree: {exc}")
    try:
        yield rootfs, log
    finally:
        rootfs.remove()
    print("\n".join(log))


def step(rootfs: Rootfs, log: list[str], name: str, script: str, timeout: float = 600):
    started = time.monotonic()
    result = rootfs.run(script, timeout=timeout)
    log.append(f"{name}: exit {result.returncode} in {time.monotonic() - started:.1f} s")
    return result


def test_install_deps_and_the_unit_tests_pass_on_stock_debian_from_a_plain_clone(fresh_debian):
    rootfs, log = fresh_debian
    commit = rootfs.clone(REPO, CLONE)
    log.append(f"cloned {commit[:12]} to {CLONE}")
    with rootfs.mounted():
        stock = step(rootfs, log, "stock", "command -v python3 sudo pip pip3 deployer; test ! -e /opt/shared")
        assert stock.returncode == 0 and stock.stdout == "", f"not a stock minbase tree: {stock.stdout}"

        install = step(rootfs, log, "install-deps", f"cd {CLONE} && scripts/install-deps", timeout=900)
        assert install.returncode == 0, install.stdout[-4000:]

        again = step(rootfs, log, "install-deps again", f"cd {CLONE} && scripts/install-deps")
        assert again.returncode == 0, again.stdout[-4000:]
        assert "installing" not in again.stdout, again.stdout[-2000:]

        python = step(rootfs, log, "python", "python3 --version; python3 -m pip --version || echo no pip")
        assert python.stdout.splitlines()[0] == "Python 3.11.2", python.stdout
        assert python.stdout.splitlines()[-1] == "no pip", "pip came into the system Python"

        system = step(
            rootfs, log, "system-wide", "cd / && ! command -v deployer && ! python3 -c 'import deployer' 2>/dev/null"
        )
        assert system.returncode == 0, f"the deployer was installed system-wide: {system.stdout}"

        cli = step(rootfs, log, "deployer --help", f"{CLONE}/.venv/bin/deployer --help")
        assert cli.returncode == 0 and cli.stdout.startswith("usage: deployer"), cli.stdout[-2000:]

        units = step(
            rootfs,
            log,
            "unit tests",
            f"cd {CLONE} && scripts/test --unit -q -p no:cacheprovider",
            timeout=600,
        )
        summary = units.stdout.strip().splitlines()[-1] if units.stdout.strip() else ""
        log.append(f"unit tests: {summary}")
        assert units.returncode == 0, units.stdout[-6000:]
        assert re.fullmatch(r"=*\s*\d+ passed(, \d+ warnings?)? in [\d.]+s( \([^)]*\))?\s*=*", summary), (
            f"not every unit test passed: {summary}"
        )
