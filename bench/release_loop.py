"""The release loop: from an image's push to the new release taking traffic.

    .venv/bin/python bench/release_loop.py                       # 10 releases; bench/results/release_loop.json
    .venv/bin/python bench/release_loop.py --releases 2 --json   # the smoke

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
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import analysis  # noqa: E402
from bench.lab import IMAGE, Lab, say  # noqa: E402
from bench.plan import app_toml, deployer_toml  # noqa: E402
from deployer import signatures  # noqa: E402
from deployer.queue.model import FINISHED  # noqa: E402
from deployer.queue.queue import Queue  # noqa: E402

PAYLOAD = REPO / "tests" / "fixtures" / "github" / "release-published.payload.json"
APP = "loop"
REPOSITORY = "Codertocat/Hello-World"  # the payload's repository
HOOK_ID = "109948940"
RESULTS = REPO / "bench" / "results" / "release_loop.json"


def leads(count: int, shortest: float = 3.0, longest: float = 12.0) -> list[float]:
    """`count` lead times from `shortest` to `longest`, evenly spread."""
    if count == 1:
        return [shortest]
    return [round(shortest + (longest - shortest) * i / (count - 1), 2) for i in range(count)]


def config_text(lab: Lab, secret_file: Path, image: str) -> str:
    assert lab.ports is not None
    app = app_toml(APP, image, lab.ports.release, drain_seconds=0.5, stop_timeout=3).replace(
        f"[apps.{APP}]\n", f'[apps.{APP}]\nrepository = "{REPOSITORY}"\nimage_wait = "5m"\n', 1
    )
    hooks = lab.scratch / "release-hooks"
    hooks.mkdir(exist_ok=True)
    return "\n".join(
        [
            deployer_toml(lab.names, lab.scratch / "release-state", hooks, [app]),
            "[server]",
            f'listen = "127.0.0.1:{lab.ports.release_receiver}"',
            "workers = 2",
            f"github_secret_file = {json.dumps(str(secret_file))}",
            f"user = {json.dumps(pwd.getpwuid(os.geteuid()).pw_name)}",
            "",
        ]
    )


def delivery(tag: str, published_at: datetime, secret: str) -> tuple[bytes, dict[str, str]]:
    """GitHub's real `published` payload for `tag`, signed."""
    data = json.loads(PAYLOAD.read_text())
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


def measure(releases: int) -> dict[str, Any]:
    tags = [f"v{n}" for n in range(1, releases + 2)]  # v1 goes live first; each later one is a measured release
    figures: list[dict[str, Any]] = []
    with Lab() as lab:
        assert lab.ports is not None
        lab.build_images(tags)
        image = f"127.0.0.1:{lab.ports.release_registry}/deployer-release-loop"
        secret = secrets.token_hex(16)
        secret_file = lab.scratch / "github-secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        config = lab.scratch / "release-loop.toml"
        config.write_text(config_text(lab, secret_file, image))
        url, external = f"http://127.0.0.1:{lab.ports.release_receiver}", lab.ports.release.tcp
        published = datetime.now(UTC) - timedelta(hours=1)
        try:
            with own_registry(lab, lab.ports.release_registry), open(lab.scratch / "serve.log", "w") as log:
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
                for index, tag in enumerate(tags):
                    lead = 0.0 if index == 0 else leads(releases)[index - 1]
                    if index == 0:
                        push(image, tag)
                    body, headers = delivery(tag, published + timedelta(minutes=index), secret)
                    answer = requests.post(f"{url}/hooks/github", data=body, headers=headers, timeout=10)
                    if answer.status_code != 202:
                        raise RuntimeError(f"release {tag} answered {answer.status_code}: {answer.text[:300]}")
                    job_id = answer.json()["job"]
                    if index:
                        time.sleep(lead)
                        push(image, tag)
                    pushed = time.monotonic()
                    took = wait_until(lambda tag=tag: answers(external) == tag, 120, f"{tag} on :{external}", 0.02)
                    since_push = time.monotonic() - pushed if index else took
                    wait_until(lambda job_id=job_id: queue.jobs.get(job_id).status in FINISHED, 60, f"{tag} finished")
                    job = queue.jobs.get(job_id)
                    if job.status != "succeeded":
                        raise RuntimeError(f"release {tag}: {job.status}: {job.reason}")
                    if index:
                        figures.append({"tag": tag, "lead_s": lead, "push_to_traffic_s": round(since_push, 3)})
                        say(f"  {tag}: pushed {lead:g} s after its delivery; live {since_push:.2f} s after the push")
                lab.stop(serve, grace=30)
        finally:
            for tag in tags:
                subprocess.run(["docker", "rmi", "-f", f"{image}:{tag}"], capture_output=True)
    seconds = [f["push_to_traffic_s"] for f in figures]
    return {
        "settings": {"releases": releases, "leads_s": leads(releases), "image_wait_looks": "1, 2, 4, then every 5 s"},
        "releases": figures,
        "summary": {"push_to_traffic_s": analysis.summary(seconds, 3)},
    }


def table(result: dict[str, Any]) -> str:
    summary = result["summary"]["push_to_traffic_s"]
    rows = [
        "| releases | push to traffic, p50 | p95 | max |",
        "| -------: | -------------------: | --: | --: |",
        f"| {summary['n']} | {summary['median']} s | {summary['p95']} s | {summary['max']} s |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=int, default=10, help="releases to measure (default 10)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where to save the result (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.releases < 1:
        parser.error("--releases must be at least 1")
    result = measure(args.releases)
    result["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
