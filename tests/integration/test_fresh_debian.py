"""The README's install path on a stock Debian 12, from a plain clone: the real scripts/install-deps.

A `debootstrap --variant=minbase bookworm` tree (cached in /var/cache/deployer-ci/) gets a clean
`git clone` of this checkout's HEAD at /opt/deployer and, of this machine, only what reaching the
package mirrors needs (see support/debian_rootfs.py). Inside it (chroot, as root, a login-like environment) the
full `scripts/install-deps` runs, not only its `--python` part: it takes about a minute there, so
the apt packages (docker.io and the rest; policy-rc.d keeps their services from starting),
python3 and python3-venv, and .venv are all proven, on Debian's own python3 (3.11.2). Then
`.venv/bin/deployer --help` must answer, every unit test module must import (collect) with .venv's pytest, and
the unit tests of what Debian provides (SQLite, libnftables, hashlib, tomllib, fresh interpreters) must pass.

The second test follows docs/production.md in the same tree (see its docstring).

They drive no dockerd and no netfilter of this machine, so they need none of the other integration fixtures;
they need root (chroot, mount, unshare), the package mirrors and the package index. Where CI=true, a missing
prerequisite fails them instead of skipping them. The tree is built once for the module: the second test
reuses the first one's clone and packages (and installs what the page says when it runs alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from support import debian_rootfs, production_page
from support.debian_rootfs import Rootfs, RootfsError
from support.integration import REPO, missing

pytestmark = pytest.mark.integration

CLONE = "/opt/deployer"
COLLECT = "tests/unit --collect-only -q -p no:cacheprovider"
ON_DEBIAN = "-q -p no:cacheprovider -n 2 " + " ".join(
    f"tests/unit/test_{name}.py"
    for name in (
        "layers",
        "top_level_imports",
        "config_validation",
        "queue",
        "queue_rows",
        "audit",
        "state_store",
        "atomic_writes",
        "signatures",
        "nft_backend",
        "report_outbox",
        "web",
        "web_metrics",
    )
)


@pytest.fixture(scope="module")
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

        # Every test module imports on Debian's python3 and its libraries; the tests of what Debian provides run:
        # SQLite (the queue, the audit log, the state), libnftables, hashlib, tomllib, the layers in fresh
        # interpreters, the receiver. The host's own run covers the rest of the suite's logic.
        collected = step(rootfs, log, "unit tests collected", f"cd {CLONE} && .venv/bin/python -m pytest {COLLECT}")
        assert collected.returncode == 0, collected.stdout[-6000:]
        count = re.search(r"(\d+) tests collected", collected.stdout)
        assert count and int(count.group(1)) > 1000, collected.stdout[-3000:]
        units = step(rootfs, log, "unit tests", f"cd {CLONE} && .venv/bin/python -m pytest {ON_DEBIAN}", timeout=600)
        summary = units.stdout.strip().splitlines()[-1] if units.stdout.strip() else ""
        log.append(f"unit tests: {count.group(0)}; {summary}")
        assert units.returncode == 0, units.stdout[-6000:]
        assert re.fullmatch(r"=*\s*\d+ passed(, \d+ warnings?)? in [\d.]+s( \([^)]*\))?\s*=*", summary), (
            f"not every unit test passed: {summary}"
        )


# Run in the tree by the production test, in a network namespace of its own: `deployer serve` exactly as the
# installed unit's ExecStart says, then a ping signed as GitHub signs it, then the receiver's processes' uids.
SERVE_AND_PING = r"""
import json, os, pwd, shlex, signal, subprocess, sys, time, uuid
from pathlib import Path

import requests

from deployer import signatures

UNIT = Path("/etc/systemd/system/deployer-serve.service")
URL = "http://127.0.0.1:8000"
[exec_start] = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
argv = shlex.split(exec_start.removeprefix("ExecStart="))
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["PPid"]) == pid:
                found.append((int(entry.name), fields))
    return found


def descendants(pid):
    found = []
    for child, fields in children(pid):
        found.append((child, fields))
        found.extend(descendants(child))
    return found


result = {"argv": argv}
log = open("/root/serve.log", "w")
serve = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
try:
    deadline = time.monotonic() + 90
    while True:
        if serve.poll() is not None:
            raise SystemExit(f"serve exited with {serve.returncode}")
        try:
            result["healthz"] = requests.get(f"{URL}/healthz", timeout=2).status_code
            break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("serve did not answer on 127.0.0.1:8000 in 90 s")
        time.sleep(0.3)
    secret = Path("/etc/deployer/github-secret").read_text().strip()
    ping = json.loads(Path("/opt/deployer/tests/fixtures/github/ping-payload.json").read_bytes())
    del ping["repository"]  # an organization's hook: answered whichever repositories the example config names
    ping["hook"]["type"] = "Organization"
    body = json.dumps(ping).encode()
    answer = requests.post(
        f"{URL}/hooks/github",
        data=body,
        headers={
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/test",
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signatures.github_signature(secret, body),
        },
        timeout=10,
    )
    result["ping"] = [answer.status_code, answer.text[:500]]
    result["serve_uid"] = int(Path(f"/proc/{serve.pid}/status").read_text().split("Uid:")[1].split()[0])
    result["receiver"] = [
        {"pid": pid, "name": fields["Name"].strip(), "uids": fields["Uid"].split(), "gids": fields["Gid"].split()}
        for pid, fields in descendants(serve.pid)
        if "gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    ]
    result["deployer"] = [pwd.getpwnam("deployer").pw_uid, pwd.getpwnam("deployer").pw_gid]
finally:
    serve.send_signal(signal.SIGTERM)
    try:
        result["stopped"] = serve.wait(60)
    except subprocess.TimeoutExpired:
        serve.kill()
        result["stopped"] = "killed after 60 s"
    log.close()
    result["log"] = Path("/root/serve.log").read_text(errors="replace")[-4000:]
    print(json.dumps(result))
"""


@contextlib.contextmanager
def this_machines_docker(rootfs: Rootfs) -> Iterator[None]:
    """The machine's dockerd socket at the tree's /run/docker.sock while the page's steps run: a production host has
    Docker answering when `deployer check` runs, and the tree has no daemon of its own. Unmounted before serve
    starts, so serve's worker never reaches this machine's engine."""
    target = rootfs.path / "run" / "docker.sock"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch()
    subprocess.run(["mount", "--bind", "/run/docker.sock", str(target)], check=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=False, timeout=60)
        target.unlink(missing_ok=True)


# The page's app pulls from registry.example.com; in the tree, from this machine's registry, so that `deployer check`
# finds the app's registry answering as it would on a real host.
PAGE_REGISTRY, LOCAL_REGISTRY = "registry.example.com/web", "127.0.0.1:5000/deployer-demo"


def test_a_host_set_up_as_the_production_page_says_serves_a_signed_ping_as_deployer(host, fresh_debian):
    """docs/production.md, step by step, in the stock tree: its sh blocks as the page has them (read from the
    page by support/production_page.py), but the `git clone` (this checkout is cloned to /opt/deployer) and
    `systemctl enable` (no systemd runs in a chroot). So: the packages and the venv made by the system Python,
    `deployer setup`, the app's keys, `deployer -c /etc/deployer/deployer.toml check` exiting 0. Then
    `systemd-analyze verify` on every unit setup installed (it runs without a systemd manager, as in the unit
    test of the shipped units), and `deployer serve` started as root exactly as deployer-serve.service's
    ExecStart says: it must answer a ping signed with the generated GitHub secret (200, "pong"), and every
    gunicorn process must run as the user `deployer` that setup created, while serve stays root.

    Docker and the registry: while the page's steps run, this machine's dockerd answers on the tree's
    /run/docker.sock, and the app's image is in this machine's registry (127.0.0.1:5000) instead of the page's
    registry.example.com, so that `deployer check` sees what it would see on a production host.

    What runs in the chroot: no dockerd (its package is installed, policy-rc.d keeps it stopped), so serve's
    worker finds Docker down, records its reconcile as failed and keeps running (Worker.start), while the
    receiver answers: a ping needs no Docker. serve runs in a network namespace of its own (unshare --net),
    so the netfilter rules its reconcile may write and its port 8000 are that namespace's, never this
    machine's. It is stopped by its pid (SIGTERM, as systemd stops it); what is left in the tree is killed
    when the tree is unmounted. About 30 s after the first test, about 2 minutes alone (the page's packages).
    """
    rootfs, log = fresh_debian
    if not (rootfs.path / CLONE.lstrip("/") / ".git").exists():
        log.append(f"cloned {rootfs.clone(REPO, CLONE)[:12]} to {CLONE}")
    with rootfs.mounted():
        with this_machines_docker(rootfs):
            for number, script in enumerate(production_page.steps_in_a_tree(), 1):
                # No terminal answers debconf here: apt must not wait for one. set -e: a block fails at its first
                # failing line, as it would stop a reader pasting it.
                script = script.replace(PAGE_REGISTRY, LOCAL_REGISTRY)
                unattended = f"export DEBIAN_FRONTEND=noninteractive\nset -e\n{script}"
                done = step(rootfs, log, f"production page, step {number}", unattended, timeout=900)
                assert done.returncode == 0, (
                    f"docs/production.md step {number} failed:\n{script}\n{done.stdout[-4000:]}"
                )

        units = sorted(path.name for path in (rootfs.path / "etc/systemd/system").glob("deployer*.service"))
        assert units == ["deployer-serve.service", "deployer-watch.service"], units
        verify = step(
            rootfs,
            log,
            "systemd-analyze verify",
            "systemd-analyze verify --man=no --generators=no " + " ".join(f"/etc/systemd/system/{u}" for u in units),
        )
        assert verify.returncode == 0 and "deployer" not in verify.stdout, verify.stdout[-3000:]

        (rootfs.path / "root" / "serve_and_ping.py").write_text(SERVE_AND_PING)
        served = step(
            rootfs,
            log,
            "serve as its unit says, and a signed ping",
            f"unshare --net {CLONE}/.venv/bin/python /root/serve_and_ping.py",
            timeout=240,
        )
        assert served.returncode == 0, served.stdout[-6000:]
        result = json.loads(served.stdout.strip().splitlines()[-1])
        assert result["argv"] == [f"{CLONE}/.venv/bin/deployer", "-c", "/etc/deployer/deployer.toml", "serve"]
        status, text = result["ping"]
        assert status == 200 and "pong" in text, result
        assert result["serve_uid"] == 0, result
        uid, gid = result["deployer"]
        assert uid != 0 and result["receiver"], result
        for process in result["receiver"]:
            assert set(process["uids"]) == {str(uid)} and set(process["gids"]) == {str(gid)}, result
        assert result["stopped"] == 0, result["log"]
