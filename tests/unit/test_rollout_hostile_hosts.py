"""The controller trusts no host's answer: it checks each before acting on it, and a host step that raises
anything at all fails that host, so the stop and the revert still run.

The rollout's order is driven through the fake hosts of test_rollout_controller.py; what the real client accepts
is checked against small HTTP servers on 127.0.0.1 (test_signed_client.py's).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_rollout_controller import FakeHosts, clock, queue, run, states  # noqa: F401 - fixtures
from test_signed_client import serve, send  # noqa: F401 - fixture

from deployer.config.fleet import FleetConfig, FleetHost
from deployer.errors import RolloutFailed, UnexpectedAnswer
from deployer.fleet.client import FleetClient


def test_an_answer_of_the_wrong_shape_fails_that_host_and_the_done_hosts_are_reverted(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    original = hosts.job

    def job(host: str, job_id: str) -> Any:
        return [] if host == "h2" else original(host, job_id)  # `[]` has no .get: an AttributeError in the step

    hosts.job = job  # type: ignore[method-assign]
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert states(queue) == {"h1": "reverted", "h2": "failed", "h3": "pending"}
    assert hosts.tags["h1"] == "v1"
    assert "host h2: its answer could not be handled (AttributeError: " in str(failed.value)
    assert "reverted h1 to v1" in str(failed.value)


def test_a_deploy_step_that_raises_anything_fails_the_host_without_killing_the_rollout(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    original = hosts.deploy

    def deploy(host: str, *args: Any, **kwargs: Any) -> str:
        if host == "h2":
            raise KeyError("job")
        return original(host, *args, **kwargs)

    hosts.deploy = deploy  # type: ignore[method-assign]
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert states(queue) == {"h1": "reverted", "h2": "failed", "h3": "pending"}
    assert "host h2: its answer could not be handled (KeyError: 'job')" in str(failed.value)


def test_a_preflight_answer_that_raises_stops_the_rollout_before_any_deploy(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    hosts.status = lambda host, app: "v1"  # type: ignore[method-assign, assignment, return-value]
    with pytest.raises(RolloutFailed, match="nothing was changed on any host"):
        run(queue, hosts, clock)
    assert hosts.deploys() == []


# --- what the client accepts from a host ------------------------------------------------------------------


def client_of(url: str) -> FleetClient:
    return FleetClient(FleetConfig(apps=("web",), hosts=(FleetHost("h1", url, "fleet", "secret"),)), timeout=2.0)


@pytest.mark.parametrize("job_id", ["../../audit?since=999d", "job-00000000000000AA", "job-1", 7, None, ["job"]])
def test_a_job_id_from_a_host_that_is_not_a_job_id_is_refused_and_never_sent(serve, job_id):
    host = serve(send(202, json.dumps({"job": job_id}).encode()))
    with pytest.raises(UnexpectedAnswer, match="the job id of its POST /deploy is not valid"):
        client_of(host.url).deploy("h1", "web", "v2", rollout="job-00000000000000aa", reason="test")
    with pytest.raises(UnexpectedAnswer, match="the job id to follow is not valid"):
        client_of(host.url).job("h1", str(job_id))
    assert host.paths == ["/deploy"]


@pytest.mark.parametrize(("answer", "what"), [
    ({"tag": "\x1b[31mv2"}, "the live tag"),
    ({"tag": "v2; rm -rf /"}, "the live tag"),
    ({"tag": 2}, "the live tag"),
    ({"tag": "v2", "last_job": "job-00000000000000aa"}, "the last job"),
    ({"tag": "v2", "last_job": {"id": "../../audit", "tag": "v2"}}, "the last job's id"),
    ({"tag": "v2", "last_job": {"id": "job-00000000000000aa", "tag": "v2", "rollout": 3}}, "the last job's rollout"),
    ({"tag": "v2", "health": ["ok"]}, "the health"),
])
def test_a_status_whose_values_are_not_of_their_form_is_refused(serve, answer, what):
    host = serve(send(200, json.dumps(answer).encode()))
    with pytest.raises(UnexpectedAnswer, match=f"{what} is not valid"):
        client_of(host.url).status("h1", "web")


def test_a_hosts_texts_come_back_escaped(serve):
    host = serve(send(200, json.dumps({"id": "job-00000000000000aa", "status": "failed\x1b[2J",
                                       "reason": "ok\nforged line", "tag": "v2"}).encode()))
    job = client_of(host.url).job("h1", "job-00000000000000aa")
    assert (job["status"], job["reason"]) == ("failed\\x1b[2J", "ok\\nforged line")
