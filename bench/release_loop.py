"""The release loop: from an image's push to the new release taking traffic, and what reporting costs a deploy.

    .venv/bin/python bench/release_loop.py                                  # bench/results/release_loop.json
    .venv/bin/python bench/release_loop.py --releases 2 --deploys 2 --json  # the smoke

Most teams build and push the image in a workflow that runs on `release: published`, so GitHub's
delivery reaches `deployer serve` before the image is in the registry. This bench does exactly
that, through the real receiver and worker: each release is delivered (signed as GitHub signs,
with its own `published_at`), the job finds no manifest and waits (plan/image_wait.py: a manifest
HEAD after 1, 2, 4, then every 5 s), and the image is pushed after a lead time. The figure is
the time from the end of `docker push` to the first answer of the new release on the app's
external port: what a team sees between its workflow's last step and its users getting the
release.

The leads are spread evenly from 3 to 12 s, so the pushes fall at every point of the wait's
backoff rather than always right after a look; the figure's maximum is the backoff's worst gap.

The second figure is the outbox's cost: two apps of the same serve deploy the same tags, one with
a GitHub token (its deploys reported to a stand-in of GitHub's deployments API on loopback, which
answers at once), one without, their order alternating; each deploy is timed from the job's start
to its end. Reporting runs in its own process after the audit entries, so the ratio should be 1;
the time from a job's end to GitHub's `success` shows how far behind GitHub hears of it.

Everything runs in a bench lab (bench/lab.py): a chain prefix and a port block of its own, a
registry of its own (Debian's docker-registry on the block's port, stopped by its pid), and all of
it removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import analysis  # noqa: E402
from bench.lab import IMAGE, Lab, say  # noqa: E402
from bench.plan import HEALTH, deployer_toml  # noqa: E402
from deployer import signatures  # noqa: E402
from deployer.queue.model import FINISHED  # noqa: E402
from deployer.queue.queue import Queue  # noqa: E402

PAYLOAD = REPO / "tests" / "fixtures" / "github" / "release-published.payload.json"
HOOK_ID = "109948940"
RESULTS = REPO / "bench" / "results" / "release_loop.json"


def leads(count: int, shortest: float = 3.0, longest: float = 12.0) -> list[float]:
    """`count` lead times from `shortest` to `longest`, evenly spread."""
    if count == 1:
        return [shortest]
    return [round(shortest + (longest - shortest) * i / (count - 1), 2) for i in range(count)]


# Two apps of one serve, on the block's six release ports (TCP only): `loop` reports nowhere and carries the
# push-to-traffic figure; `reported` has a GitHub token, and its deploys set the outbox's cost beside `loop`'s.
APPS = {"loop": "Codertocat/Hello-World", "reported": "Codertocat/Reported"}


def app_text(name: str, image: str, external: int, blue: int, green: int, repository: str, extra: str = "") -> str:
    lines = [
        f"[apps.{name}]",
        f"image = {json.dumps(image)}",
        'bind = "127.0.0.1"',
        f"repository = {json.dumps(repository)}",
        'image_wait = "5m"',
        "drain_seconds = 0.5",
        "stop_timeout = 3",
        'env = { DRAIN_TIMEOUT = "1" }',
        extra,
        f"[[apps.{name}.ports]]",
        f"external = {external}",
        "container = 8080",
        f"blue = {blue}",
        f"green = {green}",
        f"[apps.{name}.health]",
        *(f"{k} = {json.dumps(v)}" for k, v in HEALTH.items()),
    ]
    return "\n".join(line for line in lines if line) + "\n"


def config_text(lab: Lab, secret_file: Path, token_file: Path, image: str) -> str:
    assert lab.ports is not None
    ports = lab.ports.release
    apps = [
        app_text("loop", image, ports.tcp, ports.tcp_blue, ports.tcp_green, APPS["loop"]),
        app_text(
            "reported",
            image,
            ports.udp,
            ports.udp_blue,
            ports.udp_green,
            APPS["reported"],
            f"github_token_file = {json.dumps(str(token_file))}",
        ),
    ]
    hooks = lab.scratch / "release-hooks"
    hooks.mkdir(exist_ok=True)
    return "\n".join(
        [
            deployer_toml(lab.names, lab.scratch / "release-state", hooks, apps),
            "[server]",
            f'listen = "127.0.0.1:{lab.ports.release_receiver}"',
            "workers = 2",
            f"github_secret_file = {json.dumps(str(secret_file))}",
            f'github_api = "http://127.0.0.1:{lab.ports.release_github}"',
            f"user = {json.dumps(pwd.getpwuid(os.geteuid()).pw_name)}",
            "",
        ]
    )


class GithubStandIn:
    """GitHub's deployments API as the report loop uses it, on loopback: 201 with an id for each deployment and
    status, and the time each status arrived, to time how long after its deploy GitHub hears of it."""

    def __init__(self, port: int) -> None:
        self.statuses: list[tuple[float, str, str]] = []  # (wall-clock time, deployment id, state)
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server interface
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                parts = self.path.split("/")
                if parts[-1] == "statuses":
                    stand_in.statuses.append((time.time(), parts[-2], body.get("state", "")))
                answer = json.dumps({"id": len(stand_in.statuses) + 1000 * (parts[-1] == "deployments")}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def successes(self) -> int:
        return sum(1 for _, _, state in self.statuses if state == "success")

    def success_at(self, index: int) -> float:
        """When the index-th `success` arrived (wall clock)."""
        return [at for at, _, state in self.statuses if state == "success"][index]

    def __enter__(self) -> GithubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def delivery(tag: str, published_at: datetime, secret: str, repository: str) -> tuple[bytes, dict[str, str]]:
    """GitHub's real `published` payload for `tag` of `repository`, signed."""
    data = json.loads(PAYLOAD.read_text())
    data["repository"]["full_name"] = repository
    data["release"].update(
        tag_name=tag, id=17372790 + sum(map(ord, tag)), published_at=published_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    body = json.dumps(data).encode()
    return body, {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/bench",
        "X-GitHub-Event": "release",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-GitHub-Hook-ID": HOOK_ID,
        "X-Hub-Signature-256": signatures.github_signature(secret, body),
    }


@contextlib.contextmanager
def own_registry(lab: Lab, port: int):
    """Debian's docker-registry on 127.0.0.1:<port>, with its storage in the lab's scratch folder."""
    folder = lab.scratch / "release-registry"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(folder / "registry.log", "w") as log:
        process = lab.popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200, 20, "registry")
        yield
    finally:
        lab.stop(process)


def wait_until(condition, timeout: float, what: str, every: float = 0.1) -> float:
    """Seconds until `condition()` held; a RuntimeError after `timeout`."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(requests.RequestException, OSError):
            if condition():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"no {what} within {timeout:g} s")
        time.sleep(every)


def healthy(serve: subprocess.Popen, url: str) -> bool:
    if serve.poll() is not None:
        raise RuntimeError(f"serve exited with status {serve.returncode}")
    return requests.get(f"{url}/healthz", timeout=1).status_code == 200


def answers(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/", timeout=1).text.split()[0]


def push(image: str, tag: str) -> None:
    subprocess.run(["docker", "tag", f"{IMAGE}:{tag}", f"{image}:{tag}"], check=True, capture_output=True)
    subprocess.run(["docker", "push", f"{image}:{tag}"], check=True, capture_output=True, timeout=120)


def wait_job(queue: Queue, job_id: str, what: str) -> Any:
    wait_until(lambda: queue.jobs.get(job_id).status in FINISHED, 60, f"{what} finished")
    job = queue.jobs.get(job_id)
    if job.status != "succeeded":
        raise RuntimeError(f"{what}: {job.status}: {job.reason}")
    return job


def measure(releases: int, deploys: int) -> dict[str, Any]:
    """The push-to-traffic figure over `releases` releases of `loop`, then `deploys` deploys of each app side by
    side (their order alternating), timed from the job's start to its end, and GitHub's `success` after each."""
    tags = [f"v{n}" for n in range(1, releases + deploys + 3)]
    pushes, costs = [], {"loop": [], "reported": []}
    lags: list[float] = []
    with Lab() as lab:
        assert lab.ports is not None
        lab.build_images(tags)
        image = f"127.0.0.1:{lab.ports.release_registry}/deployer-release-loop"
        secret = secrets.token_hex(16)
        files = {"github-secret": secret, "github-token": f"ghs_{secrets.token_hex(16)}"}
        for name, value in files.items():
            (lab.scratch / name).write_text(value + "\n")
            (lab.scratch / name).chmod(0o600)
        config = lab.scratch / "release-loop.toml"
        config.write_text(config_text(lab, lab.scratch / "github-secret", lab.scratch / "github-token", image))
        url, external = f"http://127.0.0.1:{lab.ports.release_receiver}", lab.ports.release.tcp
        published = datetime.now(UTC) - timedelta(hours=1)

        def deliver(app: str, tag: str) -> str:
            body, headers = delivery(tag, published + timedelta(minutes=tags.index(tag)), secret, APPS[app])
            answer = requests.post(f"{url}/hooks/github", data=body, headers=headers, timeout=10)
            if answer.status_code != 202:
                raise RuntimeError(f"{app} {tag} answered {answer.status_code}: {answer.text[:300]}")
            return answer.json()["job"]

        try:
            with (
                own_registry(lab, lab.ports.release_registry),
                GithubStandIn(lab.ports.release_github) as github,
                open(lab.scratch / "serve.log", "w") as log,
            ):
                serve = lab.popen(
                    [sys.executable, "-m", "deployer", "-c", str(config), "serve"],
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
                try:
                    wait_until(lambda: healthy(serve, url), 60, "serve")
                except RuntimeError:
                    say((lab.scratch / "serve.log").read_text(errors="replace")[-3000:])
                    raise
                queue = Queue.for_state_dir(lab.scratch / "release-state")
                # 1. From the push to traffic: each release delivered before its image, pushed `lead` s later.
                push(image, tags[0])
                wait_job(queue, deliver("loop", tags[0]), f"loop {tags[0]}")
                for tag, lead in zip(tags[1 : releases + 1], leads(releases), strict=True):
                    job_id = deliver("loop", tag)
                    time.sleep(lead)
                    push(image, tag)
                    pushed = time.monotonic()
                    wait_until(lambda tag=tag: answers(external) == tag, 120, f"{tag} on :{external}", 0.02)
                    since_push = time.monotonic() - pushed
                    wait_job(queue, job_id, f"loop {tag}")
                    pushes.append({"tag": tag, "lead_s": lead, "push_to_traffic_s": round(since_push, 3)})
                    say(f"  {tag}: pushed {lead:g} s after its delivery; live {since_push:.2f} s after the push")
                # 2. The outbox's cost: the same deploys with and without GitHub reporting, side by side.
                for tag in tags[releases + 1 :]:
                    push(image, tag)
                wait_job(queue, deliver("reported", tags[releases + 1]), f"reported {tags[releases + 1]}")
                for index, tag in enumerate(tags[releases + 2 :]):
                    for app in ("loop", "reported") if index % 2 == 0 else ("reported", "loop"):
                        job = wait_job(queue, deliver(app, tag), f"{app} {tag}")
                        costs[app].append(round(job.finished_at - job.started_at, 3))
                        if app == "reported":
                            done = len(costs["reported"]) + 1  # and the untimed first deploy
                            wait_until(lambda done=done: github.successes() >= done, 30, "GitHub's success")
                            lags.append(round(github.success_at(done - 1) - job.finished_at, 3))
                    say(f"  {tag}: loop {costs['loop'][-1]:.2f} s, reported {costs['reported'][-1]:.2f} s")
                lab.stop(serve, grace=30)
        finally:
            for tag in tags:
                subprocess.run(["docker", "rmi", "-f", f"{image}:{tag}"], capture_output=True)
    quiet, reported = analysis.summary(costs["loop"], 3), analysis.summary(costs["reported"], 3)
    return {
        "settings": {
            "releases": releases,
            "leads_s": leads(releases),
            "image_wait_looks": "1, 2, 4, then every 5 s",
            "deploys_per_app": deploys,
        },
        "releases": pushes,
        "deploys_s": costs,
        "github_success_after_job_end_s": lags,
        "summary": {
            "push_to_traffic_s": analysis.summary([p["push_to_traffic_s"] for p in pushes], 3),
            "deploy_s": {"without_reporting": quiet, "with_reporting": reported},
            "reporting_over_none": round(reported["median"] / quiet["median"], 3) if quiet["median"] else None,
            "github_success_after_job_end_s": analysis.summary(lags, 3),
        },
    }


def table(result: dict[str, Any]) -> str:
    summary = result["summary"]
    pushes, deploys = summary["push_to_traffic_s"], summary["deploy_s"]
    quiet, reported, lag = (
        deploys["without_reporting"],
        deploys["with_reporting"],
        summary["github_success_after_job_end_s"],
    )
    return "\n".join(
        [
            "| releases | push to traffic, p50 | p95 | max |",
            "| -------: | -------------------: | --: | --: |",
            f"| {pushes['n']} | {pushes['median']} s | {pushes['p95']} s | {pushes['max']} s |",
            "",
            "| deploys of each app | without reporting, p50 | with GitHub reporting, p50 | ratio | GitHub's success after the job's end, p50 / max |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {quiet['n']} | {quiet['median']} s | {reported['median']} s | x{summary['reporting_over_none']} "
            f"| {lag['median']} s / {lag['max']} s |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=int, default=10, help="releases timed from push to traffic (default 10)")
    parser.add_argument("--deploys", type=int, default=10, help="deploys of each app, with and without reporting")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where to save the result (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.releases < 1 or args.deploys < 1:
        parser.error("--releases and --deploys must be at least 1")
    result = measure(args.releases, args.deploys)
    result["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
