"""The keepalived a killed cluster agent left running: found by its pidfile and command line, and stopped; a pid
reused by any other process is left alone."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from deployer.adapters.keepalived import Keepalived


def _lookalike(argv0: str, config_path):
    """A process whose command line reads like keepalived's on `config_path` (tail -f keeps it running)."""
    process = subprocess.Popen(
        [argv0, "-f", str(config_path)],
        executable=shutil.which("tail"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while (
        process.poll() is None and not Path(f"/proc/{process.pid}/cmdline").read_bytes() and time.monotonic() < deadline
    ):
        time.sleep(0.01)  # Popen may return before the new program's command line shows
    return process


def test_the_keepalived_a_dead_agent_left_is_stopped_by_its_pidfile(tmp_path):
    keepalived = Keepalived(tmp_path)
    keepalived.config_path.write_text("")
    left = _lookalike("keepalived", keepalived.config_path)
    try:
        keepalived.pidfile.write_text(f"{left.pid}\n")
        assert keepalived.stop_leftover() == left.pid
        assert left.wait(5) is not None
    finally:
        left.kill()
        left.wait()


@pytest.mark.parametrize("argv0", ["tail", "keepalived"])
def test_a_pidfile_naming_another_process_stops_nothing(tmp_path, argv0):
    keepalived = Keepalived(tmp_path)
    keepalived.config_path.write_text("")
    (tmp_path / "someone-elses.conf").write_text("")
    other = _lookalike(argv0, tmp_path / "someone-elses.conf" if argv0 == "keepalived" else keepalived.config_path)
    try:
        keepalived.pidfile.write_text(f"{other.pid}\n")
        assert keepalived.stop_leftover() is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_without_a_pidfile_there_is_no_leftover(tmp_path):
    assert Keepalived(tmp_path).stop_leftover() is None
