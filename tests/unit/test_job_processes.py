"""A hook dies with its job: real processes (a job that runs a sleeping hook), no root needed.

A hook writes its pid, sleeps, then writes a marker. The job running it is killed while it sleeps;
the hook must be gone at once (by its pid) and the marker must never appear.
"""

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from deployer.adapters.processes import child_pids, start_job
from deployer.journal import Journal
from deployer.queue.queue import Queue
from deployer.worker.loop import Worker
from support.configs import app_toml, make_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SLEEP = 1.5


def wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """No such process, or only its exit status is left (a zombie nobody has reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.fixture
def job_with_hook(tmp_path):
    """A job process that is running its pre-deploy hook; yields (job process, hook pid, marker, sleep pid)."""
    pid_file, marker = tmp_path / "hook.pid", tmp_path / "marker"
    hook = tmp_path / "pre-deploy"
    hook.write_text(f'#!/bin/sh\necho $$ > "{pid_file}"\nsleep {SLEEP}\ntouch "{marker}"\n')
    hook.chmod(0o755)
    job = (
        "from pathlib import Path\nfrom deployer.adapters.processes import run_hook\n"
        f"run_hook(Path({str(hook)!r}), {{'PATH': '/usr/bin:/bin'}}, 60)\n"
    )
    process = start_job([sys.executable, "-c", job], {**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    hook_pid = int(pid_file.read_text())
    assert child_pids(process.pid) == [hook_pid]
    wait_for(lambda: child_pids(hook_pid))
    [sleep_pid] = child_pids(hook_pid)
    yield process, hook_pid, marker, sleep_pid
    for pid in (sleep_pid, hook_pid, process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def no_marker_after_the_sleep(marker: Path) -> bool:
    time.sleep(SLEEP + 0.5)
    return not marker.exists()


def test_a_job_killed_by_its_timeout_takes_its_running_hook_with_it(tmp_path, job_with_hook):
    process, hook_pid, marker, sleep_pid = job_with_hook
    config = make_config(tmp_path, app_toml("web", 8000), server="job_timeout = 10")
    now = [1_000_000.0]
    queue = Queue.for_state_dir(config.settings.state_dir, clock=lambda: now[0])
    queue.jobs.submit_release(app="web", tag="v1", actor="a", hook_id="1", delivery="d", source={})
    events = []
    worker = Worker(
        config,
        queue,
        Journal([events.append]),
        launch=lambda job: process,
        reconcile=lambda app: [],
        clock=lambda: now[0],
    )
    worker.start()
    worker.poll()  # launches: the job is the one already running its hook
    now[0] += 11
    worker.poll()  # over the timeout: killed
    worker.lock.release()
    assert queue.jobs.jobs()[0].reason.startswith("timed out after 10 s")
    wait_for(lambda: gone(hook_pid) and gone(sleep_pid), timeout=1.0)  # the hook's whole group
    assert no_marker_after_the_sleep(marker)


def test_a_job_that_dies_any_other_way_takes_its_running_hook_with_it(job_with_hook):
    process, hook_pid, marker, _ = job_with_hook
    os.kill(process.pid, signal.SIGKILL)  # as when the job dies with its worker (its own parent-death signal)
    wait_for(lambda: process.poll() is not None)
    wait_for(lambda: gone(hook_pid), timeout=1.0)
    assert no_marker_after_the_sleep(marker)
