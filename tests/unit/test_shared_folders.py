"""Root never follows what the receiver's group can plant in the queue and audit folders.

Each test plants an entry (a symbolic link, a hard link, a FIFO) where root would open or chmod a
file, points it at a root-only file, runs the code root runs at start, and checks the target kept
its mode, owner and content, and that the entry was refused with an error that names it.
"""

import os
import stat
from pathlib import Path

import pytest

from deployer import audit
from deployer.audit import AuditLog, Query
from deployer.errors import StateError
from deployer.folders import share_folder
from deployer.queue.queue import Queue
from deployer.wiring import prepare_shared
from deployer.worker.loop import WorkerLock
from support.configs import app_toml, make_config

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true", reason="plants links for root to refuse: run as root"
)

GROUP = "nogroup"


@pytest.fixture
def secret(tmp_path):
    """A root-only file outside the state folder: what a planted link points at."""
    path = tmp_path / "root-only"
    path.write_text("root's own\n")
    os.chmod(path, 0o600)
    return path


def fingerprint(path: Path):
    info = os.lstat(path)
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, path.read_bytes()


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def plant_link(folder: Path, name: str, target: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / name
    link.symlink_to(target)
    return link


def test_share_folder_refuses_a_link_named_like_the_database(state, secret):
    share_folder(state, "queue", "jobs.db", GROUP)
    before = fingerprint(secret)
    plant_link(state / "queue", "jobs.db.x", secret)
    with pytest.raises(StateError, match=r"jobs\.db\.x is a symbolic link; refusing to follow it"):
        share_folder(state, "queue", "jobs.db", GROUP)
    assert fingerprint(secret) == before
    assert (state / "queue" / "jobs.db.x").is_symlink()  # reported, not silently removed


def test_share_folder_still_shares_the_safe_files_beside_a_refused_one(state, secret):
    plant_link(state / "queue", "jobs.db-wal", secret)
    with pytest.raises(StateError, match="jobs.db-wal"):
        share_folder(state, "queue", "jobs.db", GROUP)
    db = os.stat(state / "queue" / "jobs.db")
    assert stat.S_IMODE(db.st_mode) == 0o660 and db.st_gid != 0


def test_share_folder_refuses_a_hard_link_to_a_root_file(state, secret):
    share_folder(state, "audit", "audit.db", GROUP)
    before = fingerprint(secret)
    os.link(secret, state / "audit" / "audit.db.old")
    with pytest.raises(StateError, match=r"audit\.db\.old has 2 hard links"):
        share_folder(state, "audit", "audit.db", GROUP)
    assert fingerprint(secret) == before


def test_share_folder_refuses_a_fifo_without_waiting_on_it(state):
    share_folder(state, "queue", "jobs.db", GROUP)
    os.mkfifo(state / "queue" / "jobs.db.pipe")
    with pytest.raises(StateError, match=r"jobs\.db\.pipe is not a plain file"):
        share_folder(state, "queue", "jobs.db", GROUP)


def test_the_worker_lock_is_not_in_the_shared_queue_folder(state, secret):
    before = fingerprint(secret)
    plant_link(state / "queue", "worker.lock", secret)
    lock = WorkerLock(state)
    lock.acquire()
    lock.release()
    assert fingerprint(secret) == before
    assert stat.S_IMODE(os.stat(state / "locks").st_mode) == 0o700


def test_the_worker_lock_refuses_a_link_in_its_own_place(state, secret):
    before = fingerprint(secret)
    plant_link(state / "locks", "worker.lock", secret)
    with pytest.raises(StateError, match="is a symbolic link"):
        WorkerLock(state).acquire()
    assert fingerprint(secret) == before


@pytest.mark.parametrize("name", ["jobs.db", "jobs.db-wal", "jobs.db-shm", "jobs.db-journal"])
def test_opening_the_queue_refuses_a_planted_database_file(state, secret, name):
    share_folder(state, "queue", "jobs.db", GROUP)
    (state / "queue" / "jobs.db").unlink()  # a fresh queue, as on a first start
    if name != "jobs.db":
        (state / "queue" / "jobs.db").touch()
    before = fingerprint(secret)
    plant_link(state / "queue", name, secret)
    with pytest.raises(StateError, match=f"{name} is a symbolic link"):
        Queue.for_state_dir(state).heartbeat.worker_status()
    assert fingerprint(secret) == before


@pytest.mark.parametrize("name", ["audit.db-wal", "audit.db-shm", "audit.db-journal", "audit.db.init-lock"])
def test_opening_the_audit_log_refuses_a_planted_file(state, secret, name):
    before = fingerprint(secret)
    plant_link(state / "audit", name, secret)
    with pytest.raises(StateError, match=f"{name} is a symbolic link"):
        AuditLog.for_state_dir(state).open()
    assert fingerprint(secret) == before


def test_the_init_lock_creates_nothing_through_a_dangling_link(state, tmp_path):
    target = tmp_path / "would-be-created"
    plant_link(state / "audit", "audit.db.init-lock", target)
    with pytest.raises(StateError, match="audit.db.init-lock is a symbolic link"):
        AuditLog.for_state_dir(state).open()
    assert not target.exists()


def test_a_refused_start_is_recorded_in_the_audit_log(tmp_path, state, secret):
    config = make_config(tmp_path, app_toml("web", 8000), server=f'user = "nobody"\ngroup = "{GROUP}"')
    audit.prepare_folder(state, GROUP)
    plant_link(state / "queue", "jobs.db.x", secret)
    with pytest.raises(StateError, match="jobs.db.x"):
        prepare_shared(config)
    [entry] = AuditLog.for_state_dir(state).query(Query(event=("security.refused",)))
    assert entry.get("outcome") == "failed"
    assert "jobs.db.x is a symbolic link" in entry.get("reason")
