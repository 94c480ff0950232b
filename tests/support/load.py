"""Load clients and long-running helper processes for integration tests, stopped and read back reliably.

`Load` runs tests/support/traffic.py clients (on the host or in an OutsideClient) and returns their records;
`start_clients` starts the zero-downtime tests' six clients (outside, loopback and the host's address; HTTP and UDP);
`Background` runs a process with its output in a file (a pipe nobody reads would fill and block it), waits for
a line in it, and stops it (SIGTERM, then SIGKILL) however the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from support.integration import host_address

TRAFFIC = str(Path(__file__).resolve().parent / "traffic.py")


class Background:
    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        popen: Callable[..., subprocess.Popen] = subprocess.Popen,
        **kwargs: Any,
    ) -> None:
        self.log = log
        self._file = open(log, "w")
        self.process = popen(
            list(argv), stdout=self._file, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"{self.process.args} exited ({self.process.returncode}):\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} did not show within {timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._file.close()
        return self.process.returncode

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Load:
    """Traffic clients writing one JSON line per request; `records(name)` after `stop()`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clients: dict[str, subprocess.Popen] = {}

    def start(
        self,
        name: str,
        mode: str,
        target: str,
        *,
        popen: Callable[..., subprocess.Popen] = subprocess.Popen,
        pause: float = 0.02,
        timeout: float = 10,
    ) -> None:
        self.clients[name] = popen(
            [
                sys.executable,
                TRAFFIC,
                mode,
                target,
                "--out",
                str(self.folder / f"{name}.jsonl"),
                "--pause",
                str(pause),
                "--timeout",
                str(timeout),
            ]
        )

    def stop(self) -> None:
        for client in self.clients.values():
            if client.poll() is None:
                client.send_signal(signal.SIGTERM)
        for client in self.clients.values():
            try:
                client.wait(timeout=15)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()

    def records(self, name: str) -> list[dict[str, Any]]:
        path = self.folder / f"{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def statuses(records: list[dict[str, Any]]) -> str:
    """The run of outcomes in time order, squeezed: "200 503 200" (an error shows as "ERR")."""
    runs: list[str] = []
    for record in sorted(records, key=lambda r: r["t"]):
        outcome = "ERR" if "error" in record else str(record["status"])
        if not runs or runs[-1] != outcome:
            runs.append(outcome)
    return " ".join(runs)


def start_clients(outside, out_dir: Path, tcp_port: int, udp_port: int) -> list[tuple[str, subprocess.Popen]]:
    here = host_address()
    plans = [
        ("outside-new", outside.host_ip, "http-new", tcp_port, True),
        ("outside-keepalive", outside.host_ip, "http-keepalive", tcp_port, True),
        ("outside-udp", outside.host_ip, "udp", udp_port, True),
        ("loopback-new", "127.0.0.1", "http-new", tcp_port, False),
        ("host-keepalive", here, "http-keepalive", tcp_port, False),
        ("loopback-udp", "127.0.0.1", "udp", udp_port, False),
    ]
    clients = []
    for name, target, mode, port, in_namespace in plans:
        argv = [
            sys.executable,
            TRAFFIC,
            mode,
            f"{target}:{port}",
            "--out",
            str(out_dir / f"{name}.jsonl"),
            "--pause",
            "0.01",
            "--timeout",
            "1" if mode == "udp" else "5",
            "--duration",
            "300",
        ]
        process = outside.popen(argv) if in_namespace else subprocess.Popen(argv)
        clients.append((name, process))
    return clients


def stop_clients(clients: list[tuple[str, subprocess.Popen]]) -> None:
    for _, process in clients:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for _, process in clients:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def read_records(path: Path) -> list[dict]:
    """The records a traffic client wrote, one JSON line each."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
