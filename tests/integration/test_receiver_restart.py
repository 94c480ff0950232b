"""No delivery is lost to a receiver restart: serve holds the listening socket, so a gunicorn master SIGKILLed in
the middle of signed deliveries costs none of them.

Connections made while serve starts the next gunicorn wait in the socket's backlog; the dead master's workers
answer what they had accepted before they exit. Each delivery is GitHub's real `published` payload for its own
tag, one that no image has, so the worker's job fails fast at its pull or is superseded by a newer one: the
receiver is what is under test.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from support.served import HOOK_ID, gunicorn_master, release_payload, web_app

pytestmark = pytest.mark.integration

DELIVERIES = 200
IN_FLIGHT = 8
KILL_AFTER = 50  # answered deliveries before the master is SIGKILLed
TIMEOUT = 30.0  # per delivery, from connect to the answer's end: generous, and no retry


@dataclass
class Outcome:
    tag: str
    delivery: str
    status: int | None = None
    job: str | None = None
    error: str | None = None
    seconds: float = 0.0


def test_a_sigkilled_gunicorn_master_loses_no_delivery(serve):
    served = serve(web_app(22200))
    first_master = gunicorn_master(served.process.pid)
    assert first_master is not None
    outcomes = [Outcome(tag=f"v0.404.{n}", delivery=f"restart-{n}") for n in range(DELIVERIES)]
    bodies = [release_payload(outcome.tag) for outcome in outcomes]
    answered, lock, killed = [0], threading.Lock(), threading.Event()

    def send(n: int) -> None:
        outcome = outcomes[n]
        started = time.monotonic()
        try:
            response = served.deliver(bodies[n], delivery=outcome.delivery, timeout=TIMEOUT)
            outcome.status = response.status_code
            outcome.job = response.json().get("job") if response.status_code == 202 else None
        except (requests.RequestException, ValueError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.seconds = time.monotonic() - started
        with lock:
            answered[0] += 1
            kill_now = answered[0] == KILL_AFTER
        if kill_now:
            os.kill(first_master, signal.SIGKILL)  # the master only, by its pid; its workers are left behind
            killed.set()

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        list(pool.map(send, range(DELIVERIES)))

    assert killed.is_set()
    failed = [(o.delivery, o.error) for o in outcomes if o.error is not None]
    assert failed == [], f"{len(failed)} deliveries got no answer: {failed[:5]}"
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {202: DELIVERIES}, statuses
    assert max(o.seconds for o in outcomes) > 0.5  # some waited in the backlog while gunicorn started again

    queue = served.queue()
    for outcome in outcomes:
        job = queue.jobs.get(outcome.job or "")
        recorded = queue.deliveries.delivery(HOOK_ID, outcome.delivery)
        assert job is not None and job.tag == outcome.tag, outcome
        assert recorded and recorded["job_id"] == job.id, outcome
    assert len({o.job for o in outcomes}) == DELIVERIES

    again = gunicorn_master(served.process.pid)
    assert again not in (None, first_master)  # serve started another master on the same socket
    assert "gunicorn exited with status -9; starting it again in 1 s" in served.log_text()
    assert served.process.poll() is None
