"""Many processes append to one audit log at once: nothing is lost and the chain stays whole."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path

from deployer.audit import AuditLog, Query

REPO = Path(__file__).resolve().parents[2]
WRITER = REPO / "tests" / "support" / "audit_writer.py"
PROCESSES = 8
EACH = 1000


def test_eight_processes_append_8000_entries_to_one_valid_chain(tmp_path):
    state = tmp_path / "state"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    writers = [
        subprocess.Popen(
            [sys.executable, str(WRITER), str(state), f"w{i}", str(EACH), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    try:
        time.sleep(0.5)  # let every interpreter start, so they all race for the first write
        go.touch()
        results = [w.communicate(timeout=300) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in writers] == [0] * PROCESSES, [err for _, err in results]

    log = AuditLog.for_state_dir(state)
    verdict = log.verify()
    assert (verdict.ok, verdict.checked, verdict.head_seq, verdict.problem) == (True, 8000, 8000, None)
    entries = log.query(Query(limit=None, oldest_first=True))
    assert [e.seq for e in entries] == list(range(1, 8001))
    by_writer = collections.defaultdict(list)
    for entry in entries:
        by_writer[entry.get("job")].append(entry.get("n"))
    # Every entry of every writer is there once, in the order that writer appended them.
    assert by_writer == {f"w{i}": list(range(EACH)) for i in range(PROCESSES)}
    # The writers really interleaved: the race was real, not eight runs one after another.
    switches = sum(1 for a, b in zip(entries, entries[1:]) if a.get("job") != b.get("job"))
    assert switches > PROCESSES
