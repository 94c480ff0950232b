"""scripts/lib/detach.sh: a daemon started by the scripts keeps no descriptor of its caller but its log.

A daemon that inherited the descriptor of a flock(1) lock held it for as long as it ran, so every later run that
waited on that lock waited for good.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_detached_daemon_inherits_no_descriptor_of_its_caller(tmp_path):
    log = tmp_path / "daemon.log"
    held = tmp_path / "held"
    script = f". {REPO}/scripts/lib/detach.sh\nexec 7>{held} 9>{held}.lock\nstart_detached {log} sleep 30\necho $!\n"
    started = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10, check=True)
    pid = int(started.stdout.split()[-1])
    try:
        deadline = time.monotonic() + 20  # a loaded machine (a full suite beside it) may take seconds to exec
        while Path(f"/proc/{pid}/comm").read_text().strip() != "sleep":  # the subshell has exec'd it
            assert time.monotonic() < deadline
            time.sleep(0.02)
        fds = {int(name): os.readlink(f"/proc/{pid}/fd/{name}") for name in os.listdir(f"/proc/{pid}/fd")}
        assert sorted(fds) == [0, 1, 2], fds  # where a stray descriptor points says whose it is
        assert (fds[0], fds[1], fds[2]) == ("/dev/null", str(log), str(log))
    finally:
        os.kill(pid, signal.SIGTERM)
