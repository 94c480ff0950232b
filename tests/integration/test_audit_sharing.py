"""The unprivileged receiver writes the audit log: its folder is shared with the server's group, like the queue's.

Runs as root: a forked child drops to nobody:nogroup the way the receiver does (see test_server.py's
privilege test) and appends while a root process (the worker, the CLI) appends too.
"""

from __future__ import annotations

import grp
import multiprocessing
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from deployer import audit
from deployer.audit import AuditLog, Query
from deployer.errors import AuditError


def _receiver(state_dir: str, conn) -> None:
    """In a forked child: drop to nobody:nogroup, then append as the receiver does, when told to."""
    os.setgroups([])
    os.setgid(grp.getgrnam("nogroup").gr_gid)
    os.setuid(pwd.getpwnam("nobody").pw_uid)
    os.umask(0o007)
    try:
        AuditLog(Path(state_dir) / "audit.db").append({"event": "delivery"})  # the old place, in the state folder
        conn.send("the old place was writable")
        return
    except AuditError:
        pass
    log = AuditLog.for_state_dir(state_dir)
    while (message := conn.recv()) != "stop":
        try:
            seq = log.append({"event": "delivery", "actor": "github:octocat", "verdict": "rejected", "reason": message})
            conn.send(("appended", seq, os.getuid(), os.getgid()))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            conn.send(("failed", repr(exc)))


@pytest.fixture
def shared():
    if os.geteuid() != 0:
        pytest.skip("needs root, to drop to nobody")
    folder = Path(tempfile.mkdtemp(prefix="deployer-audit-", dir="/tmp"))  # reachable by nobody, unlike tmp_path
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_receiver_as_nobody_appends_beside_root_and_the_chain_verifies(shared):
    nogroup = grp.getgrnam("nogroup").gr_gid
    state = shared / "state"
    path = audit.prepare_folder(state, "nogroup")  # as serve and worker do before the receiver starts

    parent_end, child_end = multiprocessing.get_context("fork").Pipe()
    receiver = multiprocessing.get_context("fork").Process(target=_receiver, args=(str(state), child_end))
    receiver.start()
    try:
        root_log = AuditLog.for_state_dir(state)
        parent_end.send("first")  # nobody opens the log first: it makes the -wal and -shm
        assert parent_end.recv() == ("appended", 1, 65534, nogroup)
        assert root_log.append({"event": "job.started", "actor": "worker"}) == 2  # root writes nobody's WAL
        parent_end.send("second")  # and nobody writes after root
        assert parent_end.recv() == ("appended", 3, 65534, nogroup)
        files = {p.name: (stat.S_IMODE(p.stat().st_mode), p.stat().st_gid) for p in path.parent.iterdir()}
        parent_end.send("stop")
        receiver.join(10)
        assert receiver.exitcode == 0
    finally:
        if receiver.is_alive():
            receiver.kill()
            receiver.join(10)

    assert {"audit.db", "audit.db-wal", "audit.db-shm"} <= set(files)
    assert all(mode == (0o660, nogroup) for mode in files.values()), files
    assert (stat.S_IMODE(path.parent.stat().st_mode), path.parent.stat().st_gid) == (0o2770, nogroup)
    verdict = root_log.verify()
    assert (verdict.ok, verdict.checked, verdict.head_seq) == (True, 3, 3)
    entries = root_log.query(Query(oldest_first=True))
    assert [(e.get("actor"), e.get("reason")) for e in entries] == [
        ("github:octocat", "first"),
        ("worker", None),
        ("github:octocat", "second"),
    ]
