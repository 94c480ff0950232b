"""A writer process for the audit concurrency test: `python audit_writer.py STATE_DIR WRITER COUNT GO_FILE`.

It waits until GO_FILE exists, so every writer starts appending at the same moment, then
appends COUNT entries one transaction each, the way a web worker or a CLI does.
"""

from __future__ import annotations

import os
import sys
import time

from deployer.audit import AuditLog


def main(state_dir: str, writer: str, count: int, go_file: str) -> None:
    log = AuditLog.for_state_dir(state_dir)
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            sys.exit("the go signal never came")
        time.sleep(0.005)
    for n in range(count):
        log.append({"event": "test.write", "actor": f"writer:{writer}", "job": writer, "n": n, "pid": os.getpid()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
