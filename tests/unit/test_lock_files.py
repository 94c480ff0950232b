"""Lock files root waits on: root's own folder and files, never a link or another user's file, and a bounded wait.

flock works on a read-only descriptor, so whoever can open a lock file can hold it: these show that no other user
can open one, that what another user could have planted is refused, and that a held lock ends in an error.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from deployer import audit
from deployer.audit import log as audit_store
from deployer.config import parse
from deployer.errors import AuditError, ConfigError, LockError, UnsafePath
from deployer.folders import flock_within
from deployer.host.locks import AppLock, HostLock, locks_folder
from deployer.worker.loop import WorkerLock

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root")


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_state_folder_is_0750_its_locks_0700_and_each_lock_file_0600(tmp_path):
    state = tmp_path / "state"
    with HostLock(state / "locks" / "netfilter.lock"), AppLock(state, "web"):
        pass
    WorkerLock(state).acquire()
    assert (mode(state), mode(state / "locks")) == (0o750, 0o700)
    assert {p.name: mode(p) for p in (state / "locks").iterdir()} == {
        "netfilter.lock": 0o600,
        "web.lock": 0o600,
        "worker.lock": 0o600,
    }


def test_folders_and_lock_files_left_too_open_are_narrowed_when_root_opens_them(tmp_path):
    state = tmp_path / "state"
    (state / "locks").mkdir(parents=True)
    state.chmod(0o755)
    (state / "locks").chmod(0o777)
    (state / "locks" / "netfilter.lock").touch()
    (state / "locks" / "netfilter.lock").chmod(0o644)
    with HostLock(state / "locks" / "netfilter.lock"):
        pass
    assert (mode(state), mode(state / "locks"), mode(state / "locks" / "netfilter.lock")) == (0o750, 0o700, 0o600)


def test_the_state_folder_keeps_the_group_read_the_receiver_needs_and_loses_the_rest(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o775)
    locks_folder(state)
    assert mode(state) == 0o750


def test_a_link_planted_in_place_of_a_lock_file_is_refused_and_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / "state" / "locks").mkdir(parents=True)
    (tmp_path / "state" / "locks" / "netfilter.lock").symlink_to(target)
    with pytest.raises(UnsafePath, match=r"netfilter.lock is a symbolic link; refusing to follow it \(remove it\)"):
        with HostLock(tmp_path / "state" / "locks" / "netfilter.lock"):
            pytest.fail("a lock was taken through a link")
    assert target.read_text() == "keep me" and mode(target) == 0o644


def test_a_link_in_place_of_the_locks_folder_is_refused(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state" / "locks").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="is not a folder"):
        with AppLock(tmp_path / "state", "web"):
            pytest.fail("a lock was taken in a linked folder")


@as_root
def test_a_lock_file_another_user_owns_is_refused(tmp_path):
    path = tmp_path / "state" / "locks" / "netfilter.lock"
    path.parent.mkdir(parents=True)
    path.touch()
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafePath) as caught:
        with HostLock(path):
            pytest.fail("root took a lock another user owns")
    assert str(caught.value) == (
        f"the lock file {path} belongs to uid {NOBODY}, not to uid 0 that runs the deployer; "
        "whoever owns it can hold the lock for ever, so it is refused (remove it)"
    )
    assert os.stat(path).st_uid == NOBODY  # refused, not taken over


@as_root
@pytest.mark.parametrize("owned_by_nobody", ["state", "state/locks"])
def test_a_state_or_locks_folder_another_user_owns_is_refused(tmp_path, owned_by_nobody):
    (tmp_path / "state" / "locks").mkdir(parents=True)
    os.chown(tmp_path / owned_by_nobody, NOBODY, NOBODY)
    with pytest.raises(
        UnsafePath,
        match=rf"{tmp_path / owned_by_nobody} belongs to uid {NOBODY}, not to uid 0 "
        rf"that runs the deployer; refusing to use it",
    ):
        with AppLock(tmp_path / "state", "web"):
            pytest.fail("root used a folder another user owns")


@pytest.fixture
def reachable():
    """A folder under /tmp that any user can enter, unlike tmp_path (whose parents are root's 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="deployer-locks-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@as_root
def test_another_user_cannot_open_the_netfilter_lock_to_hold_it(reachable):
    path = reachable / "state" / "locks" / "netfilter.lock"
    with HostLock(path):
        pass
    child = os.fork()
    if child == 0:  # as nobody: to hold the lock, opening the file is all it takes
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.stat(reachable)  # the door to the state folder is open to nobody ...
            code = 2
            os.open(path, os.O_RDONLY)  # ... the lock file is not
            code = 0
        except PermissionError:
            pass
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 2


def test_a_held_host_lock_ends_the_wait_with_an_error_naming_the_lock_and_its_holder(tmp_path):
    path = tmp_path / "state" / "locks" / "netfilter.lock"
    with HostLock(path):
        started = time.monotonic()
        with pytest.raises(LockError) as caught:
            with HostLock(path, wait=0.2):
                pytest.fail("the lock was granted twice")
        waited = time.monotonic() - started
    assert 0.2 <= waited < 2
    assert re.fullmatch(
        rf"the netfilter lock \({re.escape(str(path))}\) is still held \(pid {os.getpid()}, for \d+s\) "
        r"after 0.2s; try again later, or stop its holder",
        str(caught.value),
    ), str(caught.value)
    assert (caught.value.exit_code, caught.value.context) == (75, {"lock": "netfilter"})
    with HostLock(path, wait=0.2):  # released with the first holder
        pass


def test_a_holder_that_wrote_nothing_is_unknown(tmp_path):
    path = tmp_path / "state" / "locks" / "forward-return.lock"
    with HostLock(path):
        pass
    fd = os.open(path, os.O_RDONLY)  # a read-only descriptor is enough to hold a flock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockError, match=r"the forward-return lock .* is still held \(holder unknown\) after 0.1s"):
            with HostLock(path, wait=0.1):
                pytest.fail("the lock was granted twice")
    finally:
        os.close(fd)


def test_flock_within_takes_a_free_lock_at_once_and_gives_up_on_a_held_one_after_its_bound(tmp_path):
    path = tmp_path / "some.lock"
    path.touch()
    holder, waiter = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)
    try:
        assert flock_within(holder, 0)
        started = time.monotonic()
        assert not flock_within(waiter, 0.15)
        assert 0.15 <= time.monotonic() - started < 1
        os.close(holder)
        holder = -1
        assert flock_within(waiter, 0)
    finally:
        for fd in (holder, waiter):
            if fd >= 0:
                os.close(fd)


def test_the_audit_logs_init_lock_held_by_another_ends_the_wait_with_an_error(tmp_path, monkeypatch):
    """The receiver's group can open the init lock too: root's first open of a new log waits a bounded time."""
    monkeypatch.setattr(audit_store, "INIT_LOCK_WAIT", 0.1)
    log = audit.AuditLog.for_state_dir(tmp_path / "state")
    lock = log.path.with_name(log.path.name + ".init-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(
            AuditError,
            match=r"the audit log's init lock \(.*audit.db.init-lock\) is still held "
            r"after 0.1s",
        ):
            log.append({"event": "test", "actor": "t"})
    finally:
        os.close(fd)


def config_with(tmp_path, **deployer):
    return parse(
        {
            "deployer": {"state_dir": str(tmp_path), **deployer},
            "apps": {"web": {"image": "r/web", "ports": [{"external": 1, "container": 2, "blue": 3, "green": 4}]}},
        },
        path=tmp_path / "d.toml",
        environ={},
    )


def test_host_lock_wait_defaults_to_30_seconds_and_can_be_set(tmp_path):
    assert config_with(tmp_path).settings.host_lock_wait == 30
    assert config_with(tmp_path, host_lock_wait=5).settings.host_lock_wait == 5


@pytest.mark.parametrize("value", [0, -1, "thirty"])
def test_host_lock_wait_must_be_a_positive_number(tmp_path, value):
    with pytest.raises(ConfigError, match="deployer.host_lock_wait"):
        config_with(tmp_path, host_lock_wait=value)
