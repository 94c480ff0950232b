"""`deployer redeploy` runs on an operator's machine: it needs no config file, only the server's URL and a key.

The server here is the real receiver (the app factory, a real queue in tmp) on a loopback port;
the client is the real command line in a subprocess whose $DEPLOYER_CONFIG names no file.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from deployer.journal import Journal
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app
from support.configs import app_toml, make_config
from support.receiver import ALICE_KEY, ALICE_SECRET

REPO = Path(__file__).resolve().parents[2]
NO_CONFIG = {**os.environ, "DEPLOYER_CONFIG": "/nonexistent"}


def deployer(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deployer", *argv], cwd=cwd, env=NO_CONFIG, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def server(tmp_path):
    """The receiver on a free port from 27000-27999, in a thread of this process; it listens (and so answers to
    the Host) 127.0.0.1:PORT, as `deployer serve` would."""
    for port in random.sample(range(27000, 28000), 50):
        config = make_config(
            tmp_path / "server",
            app_toml("web", 8000),
            server=f'listen = "127.0.0.1:{port}"\n' + ALICE_KEY,
            environ={"ALICE_SECRET": ALICE_SECRET},
        )
        queue = Queue.for_state_dir(config.settings.state_dir)
        app = create_app({"DEPLOYER_CONFIG": config, "QUEUE": queue, "JOURNAL": Journal([])})
        try:
            httpd = make_server("127.0.0.1", port, app, threaded=True)
            break
        except OSError:
            continue
    else:
        pytest.fail("no free port in 27000-27999")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", queue
    httpd.shutdown()
    thread.join(10)


def test_redeploy_help_needs_no_config(tmp_path):
    shown = deployer("redeploy", "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "example:\n  deployer redeploy demo v1.2.0" in shown.stdout


def test_redeploy_sends_a_signed_request_without_a_config_file(tmp_path, server):
    url, queue = server
    secret_file = tmp_path / "alice"
    secret_file.write_text(ALICE_SECRET + "\n")
    sent = deployer(
        "redeploy",
        "web",
        "v2",
        "--url",
        url,
        "--key-id",
        "alice",
        "--secret-file",
        str(secret_file),
        "--reason",
        "hotfix",
        cwd=tmp_path,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("web: queued job-") and "(v2)" in sent.stdout
    job_id = sent.stdout.split()[2]
    job = queue.jobs.get(job_id)
    assert (job.app, job.tag, job.kind, job.actor, job.source["reason"]) == (
        "web",
        "v2",
        "redeploy",
        "key:alice",
        "hotfix",
    )
    assert ALICE_SECRET not in sent.stdout + sent.stderr


def test_commands_that_act_on_this_host_still_need_the_config(tmp_path):
    refused = deployer("status", cwd=tmp_path)
    assert refused.returncode == 2
    assert "deployer: /nonexistent: config file not found" in refused.stderr
