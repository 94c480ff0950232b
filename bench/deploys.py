"""Part 2: a series of deploys under steady load, for the deployer and for each baseline.

Six load clients run for the whole series: from the outside namespace (through PREROUTING) and
from the host on 127.0.0.1 (through OUTPUT), each as a new connection per request, on one
keep-alive connection, and as a UDP request/response stream on one socket. Every request is
recorded and lined up with the journal's steps afterwards.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import analysis
from bench.drivers import driver_for, scratch_path
from bench.lab import IMAGE, TRAFFIC, Lab, say
from bench.plan import SCENARIOS, Plan, app_toml
from deployer.errors import DeployerError

# name, where it runs, traffic.py mode, protocol
CLIENTS = [
    ("outside-new", "outside", "http-new", "tcp"),
    ("outside-keepalive", "outside", "http-keepalive", "tcp"),
    ("outside-udp", "outside", "udp", "udp"),
    ("host-new", "host", "http-new", "tcp"),
    ("host-keepalive", "host", "http-keepalive", "tcp"),
    ("host-udp", "host", "udp", "udp"),
]
WARMUP_S = 1.0
COOLDOWN_S = 1.0
# A datagram without a reply by then counts as unanswered; the client then sends the next one.
UDP_TIMEOUT_S = 0.5


def run_deploys(lab: Lab, plan: Plan, outside: Any, tags: list[str]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in SCENARIOS:
        try:
            scenarios[name] = lab.again_after_docker_restart(
                name,
                lambda name=name: run_scenario(lab, plan, outside, name, tags),
                lambda name=name: (lab.remove_containers(name), lab.remove_app_chains([name])),
            )
            s = scenarios[name]
            say(
                f"  {name}: {s['deploys']} deploys, {s['failed_requests']} failed of {s['requests']} requests, "
                f"{s['udp_unanswered']} unanswered and {s['udp_stale_answers']} stale of {s['udp_sent']} datagrams"
            )
        except Exception as exc:  # one broken scenario must not hide the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}"
            say(f"  {name} failed: {errors[name]}")
    return {
        "settings": {
            "deploys": plan.deploys,
            "drain_seconds": plan.drain_seconds,
            "load_pause_s": plan.load_pause,
            "settle_seconds": plan.settle_seconds,
            "clients": [c[0] for c in CLIENTS],
            "around_switch_s": [analysis.AROUND_BEFORE_S, analysis.AROUND_AFTER_S],
            "sticky_grace_s": analysis.STICKY_GRACE_S,
        },
        "scenarios": scenarios,
        "errors": errors,
    }


def run_scenario(lab: Lab, plan: Plan, outside: Any, name: str, tags: list[str]) -> dict[str, Any]:
    assert lab.ports is not None
    ports = lab.ports.scenario(name)
    text = app_toml(name, IMAGE, ports, drain_seconds=plan.drain_seconds, stop_timeout=5)
    driver = driver_for(lab, name, text, outside_address=outside.host_ip)
    out_dir = scratch_path(lab, name, "traffic")
    try:
        driver.deploy(tags[0])
        targets = {"outside": outside.host_ip, "host": "127.0.0.1"}
        clients = []
        for client, where, mode, protocol in CLIENTS:
            port = ports.tcp if protocol == "tcp" else ports.udp
            argv = [
                sys.executable,
                str(TRAFFIC),
                mode,
                f"{targets[where]}:{port}",
                "--out",
                str(out_dir / f"{client}.jsonl"),
                "--pause",
                str(plan.load_pause),
                "--timeout",
                str(UDP_TIMEOUT_S) if protocol == "udp" else "5",
                "--duration",
                "1800",
            ]
            clients.append(lab.popen(argv, inside=outside if where == "outside" else None))
        load_start = time.time()
        try:
            time.sleep(WARMUP_S)
            for tag in tags[1:]:
                driver.deploy(tag)
                time.sleep(plan.settle_seconds)
            time.sleep(COOLDOWN_S)
        finally:
            for process in clients:
                lab.stop(process, grace=8)
        records = {client: _load(out_dir / f"{client}.jsonl") for client, *_ in CLIENTS}
        result = analysis.scenario_summary(
            driver.events, records, tags=tags, load_start=load_start, switch_steps=driver.switch_steps
        )
        result["load_seconds"] = round(time.time() - load_start, 1)
        return result
    finally:
        # With the Docker daemon gone this cannot finish; the retry or the run's cleanup does it later.
        with contextlib.suppress(DeployerError):
            lab.remove_containers(name)
            lab.remove_app_chains([name])


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the last line of a client stopped mid-write
    return records
