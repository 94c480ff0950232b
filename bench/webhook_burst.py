"""Webhook burst: how fast the receiver acknowledges signed GitHub deliveries, and that none is lost.

    .venv/bin/python bench/webhook_burst.py                # 500 deliveries, 8 at a time
    .venv/bin/python bench/webhook_burst.py --count 20 --json   # the smoke the tests run

It starts the receiver exactly as `deployer serve` does (gunicorn, `[server] workers`, the app
factory) on a loopback port from 22900-22999, with a throwaway config and state folder, and no
deploy worker (the jobs only queue). Each delivery is GitHub's real `published` payload with its
own tag and delivery id, signed as GitHub signs. A threaded client sends them as fast as the
server takes them, and times each from connect to the last byte of the answer. Afterwards, every
202 must name a job that the queue holds for that delivery and tag. Target: p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import pwd
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployer import config as config_module  # noqa: E402
from deployer import signatures  # noqa: E402
from deployer.queue.queue import Queue  # noqa: E402
from deployer.wiring import spawn_process  # noqa: E402
from deployer.worker.supervisor import start_gunicorn  # noqa: E402

PAYLOAD = REPO / "tests" / "fixtures" / "github" / "release-published.payload.json"
TARGET_P99_MS = 100.0
PORTS = range(22900, 23000)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free loopback port in 22900-22999")


def write_config(root: Path, port: int, workers: int, secret: str) -> Path:
    (root / "github-secret").write_text(secret + "\n")
    (root / "github-secret").chmod(0o600)
    path = root / "deployer.toml"
    path.write_text(f"""
[deployer]
state_dir = "{root / "state"}"

[server]
listen = "127.0.0.1:{port}"
workers = {workers}
github_secret_file = "github-secret"
user = "{pwd.getpwuid(os.geteuid()).pw_name}"

[apps.burst]
image = "127.0.0.1:5000/burst"
repository = "Codertocat/Hello-World"

[[apps.burst.ports]]
external = 22500
container = 8080
blue = 22501
green = 22502
""")
    return path


def deliveries(count: int, secret: str) -> list[dict]:
    template = json.loads(PAYLOAD.read_text())
    made = []
    for n in range(count):
        template["release"]["tag_name"] = f"v1.0.{n}"
        template["release"]["id"] = 17372790 + n
        body = json.dumps(template).encode()
        delivery = str(uuid.uuid4())
        made.append(
            {
                "tag": f"v1.0.{n}",
                "delivery": delivery,
                "body": body,
                "headers": {
                    "Content-Type": "application/json",
                    "User-Agent": "GitHub-Hookshot/bench",
                    "X-GitHub-Event": "release",
                    "X-GitHub-Delivery": delivery,
                    "X-GitHub-Hook-ID": "109948940",
                    "X-Hub-Signature-256": signatures.github_signature(secret, body),
                },
            }
        )
    return made


def send(port: int, item: dict) -> dict:
    started = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/hooks/github", body=item["body"], headers=item["headers"])
        response = connection.getresponse()
        body = response.read()
        connection.close()
        elapsed = time.perf_counter() - started
        return {"status": response.status, "ms": elapsed * 1000, "answer": json.loads(body or b"{}")}
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return {"status": None, "ms": (time.perf_counter() - started) * 1000, "error": f"{type(exc).__name__}: {exc}"}


def burst(port: int, items: list[dict], concurrency: int) -> list[dict]:
    results: list[dict | None] = [None] * len(items)
    cursor = iter(range(len(items)))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            results[index] = send(port, items[index])

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def wait_ready(port: int, process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the receiver did not answer within 30 s")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500, help="deliveries to send (default 500)")
    parser.add_argument("--concurrency", type=int, default=8, help="deliveries in flight at once (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, as [server] workers (default 2)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    parser.add_argument("--out", type=Path, help="also write the summary to this file")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="webhook-burst-"))
    secret = uuid.uuid4().hex
    process = None
    try:
        port = free_port()
        config = config_module.load(write_config(root, port, args.workers, secret), environ={})
        items = deliveries(args.count, secret)
        log = open(root / "gunicorn.log", "w")
        process = start_gunicorn(config, spawn_process, log)
        try:
            wait_ready(port, process)
        except SystemExit:
            log.flush()
            print((root / "gunicorn.log").read_text()[-3000:], file=sys.stderr)
            raise
        started = time.perf_counter()
        results = burst(port, items, args.concurrency)
        wall = time.perf_counter() - started

        queue = Queue.for_state_dir(config.settings.state_dir)
        accepted = [(item, r) for item, r in zip(items, results) if r["status"] == 202]
        missing = []
        for item, result in accepted:
            job = queue.jobs.get(result["answer"].get("job", ""))
            recorded = queue.deliveries.delivery("109948940", item["delivery"])
            if job is None or job.tag != item["tag"] or not recorded or recorded["job_id"] != job.id:
                missing.append(item["delivery"])
        latencies = [r["ms"] for r in results if r["status"] is not None]
        summary = {
            "deliveries": args.count,
            "concurrency": args.concurrency,
            "gunicorn_workers": args.workers,
            "accepted_202": len(accepted),
            "other_status": sorted({str(r["status"]) for r in results if r["status"] != 202}),
            "errors": [r["error"] for r in results if "error" in r][:5],
            "accepted_without_job": len(missing),
            "jobs_in_queue": len(queue.jobs.jobs()),
            "p50_ms": round(percentile(latencies, 0.50), 2) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
            "max_ms": round(max(latencies), 2) if latencies else None,
            "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
            "wall_s": round(wall, 3),
            "per_second": round(args.count / wall, 1) if wall else None,
            "target_p99_ms": TARGET_P99_MS,
            "host": f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        }
        summary["ok"] = summary["accepted_202"] == args.count and not missing and summary["jobs_in_queue"] == args.count
        summary["target_met"] = summary["ok"] and (summary["p99_ms"] or 1e9) < TARGET_P99_MS
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except Exception:  # noqa: BLE001 - the bench must not leave gunicorn behind
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)

    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(
            f"{summary['accepted_202']}/{args.count} deliveries accepted (202), "
            f"{summary['accepted_without_job']} without their job, {summary['jobs_in_queue']} jobs queued"
        )
        print(
            f"ack latency: p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms "
            f"({args.concurrency} in flight, {args.workers} gunicorn workers, {summary['per_second']}/s)"
        )
        print(f"target p99 < {TARGET_P99_MS:g} ms: {'met' if summary['target_met'] else 'NOT met'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
