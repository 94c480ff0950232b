"""A GitHub release whose image is not in the registry yet waits for it, up to `image_wait`; a deploy by hand never
waits. The decision is a table; the job's effects go through a fake engine and a fake registry answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.adapters.registry_manifest import manifest_url
from deployer.config import parse
from deployer.errors import ConfigError
from deployer.journal import Journal
from deployer.plan.image_wait import ImageDecision, ImageStep, ManifestAnswer, decide_image, look_after
from deployer.queue.model import Job
from deployer.worker.child import JobSteps
from deployer.worker.faults import fault_lines
from deployer.worker.run import JobTools, execute
from support.worker_fakes import FakeEngine, claimed

REF = "127.0.0.1:5000/web:v2"
SINCE = "2026-12-07T12:00:00Z"
MISSING, PRESENT, REFUSED, OTHER = (
    ManifestAnswer.MISSING,
    ManifestAnswer.PRESENT,
    ManifestAnswer.REFUSED,
    ManifestAnswer.OTHER,
)
WAITING = "the image 127.0.0.1:5000/web:v2 is not in the registry yet (waiting up to 30m since 2026-12-07T12:00:00Z)"
GAVE_UP = "the image 127.0.0.1:5000/web:v2 did not appear in 30m (waited since 2026-12-07T12:00:00Z)"


@pytest.mark.parametrize(
    "from_release, answer, waited, attempt, expected",
    [
        (True, PRESENT, 5, 1, ImageDecision(ImageStep.PULL)),
        (True, MISSING, 0, 1, ImageDecision(ImageStep.WAIT, 1.0, WAITING)),
        (True, MISSING, 10, 3, ImageDecision(ImageStep.WAIT, 4.0, WAITING)),
        (True, MISSING, 60, 9, ImageDecision(ImageStep.WAIT, 5.0, WAITING)),  # the backoff stops at 5 s
        (True, MISSING, 1795, 9, ImageDecision(ImageStep.WAIT, 5.0, WAITING)),  # never past the end of image_wait
        (True, MISSING, 1800, 9, ImageDecision(ImageStep.FAIL, reason=GAVE_UP)),
        (True, REFUSED, 0, 1, ImageDecision(ImageStep.PULL)),  # the pull fails on the credentials, at once
        (True, OTHER, 0, 1, ImageDecision(ImageStep.PULL)),  # a registry down: the registry fault's own wait
        (False, MISSING, 0, 1, ImageDecision(ImageStep.PULL)),  # by hand: the pull fails at once
        (False, PRESENT, 0, 1, ImageDecision(ImageStep.PULL)),
        (False, REFUSED, 0, 1, ImageDecision(ImageStep.PULL)),
        (False, MISSING, 1800, 9, ImageDecision(ImageStep.PULL)),
    ],
)
def test_whether_a_missing_image_is_waited_for(from_release, answer, waited, attempt, expected):
    decision = decide_image(
        from_release=from_release,
        answer=answer,
        reference=REF,
        waited=waited,
        image_wait=1800,
        attempt=attempt,
        since=SINCE,
    )
    assert decision == expected


def test_the_looks_back_off_from_1_s_doubling_to_15_s():
    assert [look_after(n, 1000) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


@pytest.mark.parametrize(
    "image, tag, url",
    [
        ("127.0.0.1:5000/web", "v2", "http://127.0.0.1:5000/v2/web/manifests/v2"),
        ("localhost:5000/team/web", "v2", "http://localhost:5000/v2/team/web/manifests/v2"),
        ("ghcr.io/acme/web", "1.0", "https://ghcr.io/v2/acme/web/manifests/1.0"),
        ("nginx", "1.27", "https://registry-1.docker.io/v2/library/nginx/manifests/1.27"),
        ("acme/web", "v2", "https://registry-1.docker.io/v2/acme/web/manifests/v2"),
    ],
)
def test_the_manifest_url_follows_dockers_scheme_and_names(image, tag, url):
    assert manifest_url(parsed({}, {"image": image}).app("web"), tag) == url


# --- the job -----------------------------------------------------------------------------------------


class Registry:
    """Answers the manifest HEAD from a script, and notes each look."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.looks = []

    def __call__(self, app, tag):
        self.looks.append((app.name, tag))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def run_release(config, queue, clock, events, registry, job_id):
    journal = Journal([events.append, JobSteps(queue, job_id)])
    engine = FakeEngine(journal)
    status = execute(
        queue.jobs.get(job_id),
        config=config,
        queue=queue,
        journal=journal,
        tools=JobTools(engine=lambda _: engine, manifest=registry),
        now=clock,
    )
    return status, engine


GITHUB = {"delivery": "d", "hook_id": "1", "action": "published"}


def test_a_release_whose_image_is_missing_goes_back_to_the_queue_and_says_so(config, queue, clock):
    events, registry = [], Registry(MISSING)
    job = claimed(queue, source=GITHUB)
    status, engine = run_release(config, queue, clock, events, registry, job.id)
    stored = queue.jobs.get(job.id)
    assert (status, stored.status, stored.waiting_on, engine.deploys) == ("queued", "queued", "image", [])
    assert stored.reason.startswith("waiting on image: the image ") and "web:v2 is not in the registry yet" in (
        stored.reason
    )
    assert stored.not_before - clock.now == pytest.approx(1.0)
    waiting = [e for e in events if e["event"] == "job.waiting"]
    assert [(e["fault"], e["attempt"], e["retry_in"]) for e in waiting] == [("image", 1, 1.0)]
    assert not [e for e in events if e["event"] in ("job.failed", "job.finished")]


def test_the_release_deploys_once_the_image_is_there(config, queue, clock):
    events, registry = [], Registry(MISSING)
    job = claimed(queue, source=GITHUB)
    run_release(config, queue, clock, events, registry, job.id)
    clock.now += 2
    registry.answers = [PRESENT]
    again = queue.jobs.claim().job
    status, engine = run_release(config, queue, clock, events, registry, again.id)
    assert (status, [d[1] for d in engine.deploys], len(registry.looks)) == ("succeeded", ["v2"], 2)
    assert [e["event"] for e in events if e["event"].startswith("job.")] == [
        "job.started",
        "job.waiting",
        "job.started",
        "job.finished",
    ]


def test_a_release_whose_image_never_appears_fails_after_image_wait_with_what_it_waited_for(config, queue, clock):
    events = []
    job = claimed(queue, source=GITHUB)
    clock.now = job.created_at + config.settings.image_wait
    status, engine = run_release(config, queue, clock, events, Registry(MISSING), job.id)
    reason = queue.jobs.get(job.id).reason
    assert (status, engine.deploys) == ("failed", [])
    assert (
        reason.startswith("the image ") and reason.endswith(")") and " did not appear in 30m (waited since " in reason
    )
    assert [(e["fault"], e["reason"]) for e in events if e["event"] == "job.failed"] == [("image", reason)]


def test_a_deploy_by_hand_does_not_look_and_pulls_at_once(config, queue, clock):
    registry = Registry(MISSING)
    job = claimed(queue)  # no delivery in its source: not from a GitHub release
    status, engine = run_release(config, queue, clock, [], registry, job.id)
    assert (status, registry.looks, [d[1] for d in engine.deploys]) == ("succeeded", [], ["v2"])


# --- the key ---------------------------------------------------------------------------------------


def parsed(deployer, app):
    web = {"image": "127.0.0.1:5000/web", "ports": [{"external": 8000, "container": 8080, "blue": 8001, "green": 8002}]}
    data = {"deployer": {"state_dir": "/tmp/state", **deployer}, "apps": {"web": {**web, **app}}}
    return parse(data, path=Path("/etc/deployer/deployer.toml"), environ={})


@pytest.mark.parametrize(
    "deployer, app, expected",
    [
        ({}, {}, (1800.0, None)),
        ({"image_wait": "10m"}, {}, (600.0, None)),
        ({"image_wait": "10m"}, {"image_wait": "3s"}, (600.0, 3.0)),
        ({}, {"image_wait": 0}, (1800.0, 0.0)),
    ],
)
def test_image_wait_has_a_default_and_an_app_may_set_its_own(deployer, app, expected):
    config = parsed(deployer, app)
    assert (config.settings.image_wait, config.app("web").image_wait) == expected


@pytest.mark.parametrize(
    "deployer, app, key", [({"image_wait": "soon"}, {}, "deployer.image_wait"), ({}, {"image_wait": -1}, "image_wait")]
)
def test_an_image_wait_that_is_not_a_duration_names_the_key(deployer, app, key):
    with pytest.raises(ConfigError, match=key):
        parsed(deployer, app)


def test_status_shows_a_release_that_waits_for_its_image():
    waiting = Job(
        id="job-00000000000000ab",
        app="web",
        tag="v2",
        kind="release",
        actor="a",
        status="queued",
        attempts=2,
        waiting_on="image",
    )
    assert fault_lines({"heartbeat_at": 1_000.0, "faults": {}}, [waiting], 1_002.0) == [
        "fault image: a release waits for its image to appear in the registry; "
        "waiting: job-00000000000000ab (web v2, 2 tries)"
    ]
