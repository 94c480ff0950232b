"""A registry of the test's own (Debian's docker-registry on another port than the shared :5000), stopped and
started by its pid; and the audit entries of a served deployer, read from its state folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from deployer.audit import AuditLog, Query
from support.integration import IMAGE, run


def push(image: str, tag: str) -> None:
    """The test image's `tag` (built by the `images` fixture) pushed as `image:tag`."""
    assert run(["docker", "tag", f"{IMAGE}:{tag}", f"{image}:{tag}"]).returncode == 0
    pushed = run(["docker", "push", f"{image}:{tag}"])
    assert pushed.returncode == 0, pushed.stderr


@contextlib.contextmanager
def own_registry(folder: Path, port: int) -> Iterator[dict]:
    """Debian's docker-registry on 127.0.0.1:<port> with its own storage; `handle["stop"]()` / `["start"]()`."""
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    state: dict = {"process": None}

    def start() -> None:
        state["process"] = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "registry.log", "a"),
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError("the test's registry did not start")

    def stop() -> None:
        process = state["process"]
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)  # by its own pid: never by name
            process.wait(timeout=10)
        state["process"] = None

    start()
    try:
        yield {"start": start, "stop": stop}
    finally:
        stop()


def audit_events(served, *names: str) -> list[dict]:
    entries = AuditLog.for_state_dir(served.deployer.root / "state").query(
        Query(event=names, limit=None, oldest_first=True)
    )
    return [entry.fields for entry in entries]
