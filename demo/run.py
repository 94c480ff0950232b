"""The demo: deploy v1, then v2 under live traffic, and print what the traffic saw.

Clients run from the host (127.0.0.1 and the host's own address, through nat OUTPUT) and from a
network namespace that plays an outside machine (through nat PREROUTING): new-connection and
keep-alive HTTP, and a UDP request/response stream; on a dual-stack host (the default), IPv6 clients
from outside and from the host as well. Run it through `scripts/demo`, which
installs and starts what it needs first.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support.netns import OutsideClient  # noqa: E402

CONFIG = REPO / "deployer.toml"
TRAFFIC = REPO / "tests" / "support" / "traffic.py"
PORT = 1000
OUTSIDE6 = "fd42:de70:a::/64"  # the outside namespace's IPv6 link, when the demo is dual-stack


def deployer(*args: str) -> None:
    print(f"\n$ deployer {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "deployer", "-c", str(CONFIG), *args], cwd=REPO, check=True)


def serves_ipv6() -> bool:
    """Whether the deployer serves IPv6 clients here: the active instance has an IPv6 address (IPv6 is on by
    default; a host without it, or a network an earlier version made IPv4-only, serves IPv4 alone)."""
    status = subprocess.run(
        [sys.executable, "-m", "deployer", "-c", str(CONFIG), "status", "demo", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return any(c.get("address6") for c in json.loads(status.stdout)[0]["containers"] if c["status"] == "running")


def host_address() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        interface, address = line.split()[1], line.split()[3].split("/")[0]
        if not interface.startswith(("docker", "br-", "veth", "dpt-", "deployer")):
            return address
    return "127.0.0.1"


def summarize(name: str, path: Path, flip: float) -> tuple[str, int]:
    """One line for a client, and how many of its HTTP requests failed."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if name.endswith("udp"):
        answered = [r for r in records if r["answered"]]
        before = Counter(r["version"] for r in answered if r["t"] < flip)
        after = Counter(r["version"] for r in answered if r["t"] >= flip)
        return (
            f"{name:<22} {len(records):>6} requests {len(records) - len(answered):>4} unanswered   "
            f"before flip: {dict(before)}  after: {dict(after)}"
        ), 0
    failed = [r for r in records if not r["ok"]]
    before = Counter(r.get("version") for r in records if r["ok"] and r["conn_t"] < flip)
    after = Counter(r.get("version") for r in records if r["ok"] and r["conn_t"] >= flip)
    return (
        f"{name:<22} {len(records):>6} requests {len(failed):>4} failed       "
        f"before flip: {dict(before)}  after: {dict(after)}"
    ), len(failed)


def main() -> int:
    deployer("deploy", "demo", "v1")
    out = Path("/tmp/deployer-demo")
    out.mkdir(exist_ok=True)
    dual = serves_ipv6()
    with OutsideClient(prefix="dpd-", ipv6=OUTSIDE6 if dual else None) as outside:
        plans = [
            ("outside new-conn", ["http-new", f"{outside.host_ip}:{PORT}"], True),
            ("outside keep-alive", ["http-keepalive", f"{outside.host_ip}:{PORT}"], True),
            ("outside udp", ["udp", f"{outside.host_ip}:{PORT}"], True),
            ("127.0.0.1 new-conn", ["http-new", f"127.0.0.1:{PORT}"], False),
            ("host-ip keep-alive", ["http-keepalive", f"{host_address()}:{PORT}"], False),
            ("127.0.0.1 udp", ["udp", f"127.0.0.1:{PORT}"], False),
        ]
        if dual:  # IPv6 clients too, from outside and from the host (on its address there: ::1 is not DNATed)
            plans += [
                ("outside6 new-conn", ["http-new", f"[{outside.host_ip6}]:{PORT}"], True),
                ("outside6 udp", ["udp", f"[{outside.host_ip6}]:{PORT}"], True),
                ("host6 new-conn", ["http-new", f"[{outside.host_ip6}]:{PORT}"], False),
            ]
        clients = []
        for name, argv, inside in plans:
            path = out / (name.replace(" ", "_") + ".jsonl")
            command = [
                sys.executable,
                str(TRAFFIC),
                *argv,
                "--out",
                str(path),
                "--pause",
                "0.01",
                "--timeout",
                "1" if argv[0] == "udp" else "5",
            ]
            clients.append((name, path, outside.popen(command) if inside else subprocess.Popen(command)))
        try:
            time.sleep(2)
            print("\nlive traffic is running; deploying v2 under it", flush=True)
            flip = time.time()
            deployer("deploy", "demo", "v2")
            time.sleep(2)
        finally:
            for _, _, process in clients:
                process.send_signal(signal.SIGTERM)
            for _, _, process in clients:
                process.wait(timeout=10)
        # The flip time is read back from the record the deploy wrote.
        state = json.loads((REPO / "state" / "apps" / "demo.json").read_text())
        flip = _parse_time(state["active"]["since"]) or flip
        print("\nwhat the traffic saw (versions by when each connection or datagram started):")
        results = [summarize(name, path, flip) for name, path, _ in clients]
        print("\n".join(line for line, _ in results))
        print(
            "New connections go to v2 from the flip on. A UDP stream moves when the deployer deletes its\n"
            "conntrack entry, a few milliseconds after the flip; keep-alive connections finish on v1 until\n"
            "the drain ends and v1 stops."
        )
    deployer("status", "demo")
    failures = sum(failed for _, failed in results)
    print(
        f"\n{'zero downtime: no failed request' if failures == 0 else f'{failures} FAILED REQUESTS'}; "
        f"the demo keeps running on port {PORT}: curl http://127.0.0.1:{PORT}/ ; remove it with: "
        f"scripts/demo clean"
    )
    return 0 if failures == 0 else 1


def _parse_time(text: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
