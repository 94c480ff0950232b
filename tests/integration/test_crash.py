"""The deployer killed (SIGKILL) at each risky moment of a deploy: traffic keeps flowing, and
`reconcile` brings rules, containers and the record back into agreement.

The deploy runs as a CLI process; the test reads its step log and kills it when the step of
interest begins or ends. Clients keep running through the kill and the reconcile.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from support.integration import demo_app, http_get
from support.load import TRAFFIC

pytestmark = pytest.mark.integration


def kill_at(process: subprocess.Popen, marker: str, delay: float = 0.0, timeout: float = 60) -> list[str]:
    """Read the deploy's log until a line contains `marker`, wait `delay`, then SIGKILL it."""
    lines = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if marker in line:
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            return lines
    process.kill()
    raise AssertionError(f"the deploy never logged {marker!r}:\n" + "\n".join(lines))


@pytest.mark.parametrize(
    "marker,delay",
    [
        ("start ok", 0.0),  # right after the new container started
        ("health ...", 0.5),  # during the health check (the new release boots slowly)
        ("flip ok", 0.0),  # right after the flip
        ("drain ...", 0.3),  # during the drain, keep-alive clients still on the old instance
    ],
    ids=["after-start", "during-health", "after-flip", "during-drain"],
)
def test_killed_deploy_keeps_traffic_and_reconciles(deployer, outside, tmp_path, marker, delay):
    def config(boot_delay: str) -> None:
        deployer.configure(
            demo_app(
                "crash",
                external=18200,
                blue=18201,
                green=18202,
                drain=3.0,
                stop_timeout=5,
                env={"BOOT_DELAY": boot_delay, "DRAIN_TIMEOUT": "3"},
                health={"successes": 3, "interval": 0.3},
            )
        )

    config("0")
    assert deployer.cli("deploy", "crash", "v1").returncode == 0
    config("2")  # v2 boots slowly, so the health check lasts long enough to be interrupted

    out = tmp_path / "traffic"
    out.mkdir()
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                TRAFFIC,
                "http-keepalive",
                "127.0.0.1:18200",
                "--out",
                str(out / "keepalive.jsonl"),
                "--pause",
                "0.01",
            ]
        ),
        subprocess.Popen(
            [sys.executable, TRAFFIC, "http-new", "127.0.0.1:18200", "--out", str(out / "new.jsonl"), "--pause", "0.01"]
        ),
        outside.popen(
            [
                sys.executable,
                TRAFFIC,
                "http-new",
                f"{outside.host_ip}:18200",
                "--out",
                str(out / "outside.jsonl"),
                "--pause",
                "0.01",
            ]
        ),
    ]
    try:
        time.sleep(0.5)
        log = kill_at(deployer.popen("deploy", "crash", "v2"), marker, delay)
        time.sleep(1.0)  # traffic goes on with the deployer dead
        reconciled = deployer.cli("reconcile", "crash")
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        time.sleep(1.0)
    finally:
        for client in clients:
            client.send_signal(signal.SIGTERM)
        for client in clients:
            client.wait(timeout=10)

    for name in ("keepalive", "new", "outside"):
        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        failed = [r for r in records if not r["ok"]]
        assert records and not failed, (
            f"{name}: {len(failed)} of {len(records)} failed: {failed[:3]}\n"
            + "\n".join(log)
            + "\nreconcile:\n"
            + reconciled.stdout
            + reconciled.stderr
        )

    # Consistent: one instance runs, the rules point at it, and the record says so.
    status = json.loads(deployer.cli("status", "crash", "--json").stdout)[0]
    assert status["rules_match"], status
    containers = deployer.containers("crash")
    assert [c.id for c in containers] == [status["active"]["container_id"]]
    served = http_get("127.0.0.1", 18200).split()[0]
    assert served == status["active"]["tag"]
    # Before the flip the old release keeps the traffic; after it, the new one does.
    expected = "v1" if marker in ("start ok", "health ...") else "v2"
    assert served == expected
    # A second reconcile finds nothing to repair, and the next deploy works.
    again = deployer.cli("reconcile", "crash")
    assert "nothing to repair" in again.stdout
    config("0")
    assert deployer.cli("deploy", "crash", "v1").returncode == 0
