"""Per-app deploy locks across real processes: refusal, waiting, and release when the holder dies."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from deployer.errors import LockError
from deployer.host.locks import AppLock

HOLDER = """
import sys
from deployer.host.locks import AppLock
with AppLock(sys.argv[1], sys.argv[2], holder={"tag": "v9", "actor": "cli:alice"}):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
sys.stdin.readline()
"""


class Holder:
    """Another process that holds an app's lock until told to release it."""

    def __init__(self, state_dir, app):
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(state_dir), app],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout.readline() == "locked\n"

    @property
    def pid(self):
        return self.process.pid

    def release(self):
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.fixture
def holders():
    started = []

    def start(state_dir, app):
        holder = Holder(state_dir, app)
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.close()


def test_a_second_deploy_of_the_same_app_is_refused_at_once_naming_the_holder(tmp_path, holders):
    holder = holders(tmp_path, "demo")
    started = time.monotonic()
    with pytest.raises(LockError) as caught:
        with AppLock(tmp_path, "demo"):
            pytest.fail("the lock was granted twice")
    assert time.monotonic() - started < 0.5
    assert re.fullmatch(
        rf"another deploy of app 'demo' is running \(pid {holder.pid}, tag v9, for \d+s\); "
        r"try again later",
        str(caught.value),
    ), str(caught.value)
    assert caught.value.exit_code == 75
    assert caught.value.context == {"app": "demo"}


def test_another_app_is_not_blocked(tmp_path, holders):
    holders(tmp_path, "demo")
    with AppLock(tmp_path, "api") as lock:
        assert lock.path == tmp_path / "locks" / "api.lock"


def test_waiting_succeeds_once_the_holder_releases(tmp_path, holders):
    holder = holders(tmp_path, "demo")
    timer = threading.Timer(0.3, holder.release)
    timer.start()
    started = time.monotonic()
    try:
        with AppLock(tmp_path, "demo", wait=5, poll=0.02):
            waited = time.monotonic() - started
    finally:
        timer.cancel()
    assert 0.25 <= waited < 3
    assert holder.process.stdout.readline() == "released\n"


def test_waiting_gives_up_after_the_wait(tmp_path, holders):
    holders(tmp_path, "demo")
    started = time.monotonic()
    with pytest.raises(LockError):
        with AppLock(tmp_path, "demo", wait=0.3, poll=0.05):
            pytest.fail("the lock was granted twice")
    assert 0.3 <= time.monotonic() - started < 2


def test_a_killed_holder_releases_the_lock(tmp_path, holders):
    holder = holders(tmp_path, "demo")
    os.kill(holder.pid, signal.SIGKILL)
    holder.process.wait(5)
    with AppLock(tmp_path, "demo"):
        pass


def test_the_lock_file_names_the_holder_while_held_and_is_emptied_after(tmp_path):
    lock = AppLock(tmp_path, "demo", holder={"tag": "v2"})
    with lock:
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid()
        assert info["tag"] == "v2"
        assert abs(info["since"] - time.time()) < 5
    assert lock.path.read_text() == ""
    with AppLock(tmp_path, "demo"):  # released: can be taken again
        pass
