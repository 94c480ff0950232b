"""The controller's client of its hosts checks every answer before the rollout acts on it: a job id of the form
the deployer makes, Docker tags, objects where objects belong, texts escaped. Each host is a small HTTP server on
127.0.0.1 that answers what the test says."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from deployer.adapters.api_client import SignedClient
from deployer.config.fleet import FleetConfig, FleetHost
from deployer.errors import UnexpectedAnswer
from deployer.fleet.client import FleetClient
from support.http_answers import Server, answering_servers, send


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    with answering_servers() as start:
        yield start


def client_of(url: str) -> FleetClient:
    return FleetClient(
        FleetConfig(apps=("web",), hosts=(FleetHost("h1", url, "fleet", "secret"),)), connect=SignedClient, timeout=2.0
    )


@pytest.mark.parametrize("job_id", ["../../audit?since=999d", "job-00000000000000AA", "job-1", 7, None, ["job"]])
def test_a_job_id_from_a_host_that_is_not_a_job_id_is_refused_and_never_sent(serve, job_id):
    host = serve(send(202, json.dumps({"job": job_id}).encode()))
    with pytest.raises(UnexpectedAnswer, match="the job id of its POST /deploy is not valid"):
        client_of(host.url).deploy("h1", "web", "v2", rollout="job-00000000000000aa", reason="test")
    with pytest.raises(UnexpectedAnswer, match="the job id to follow is not valid"):
        client_of(host.url).job("h1", str(job_id))
    assert host.paths == ["/deploy"]


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        ({"tag": "\x1b[31mv2"}, "the live tag"),
        ({"tag": "v2; rm -rf /"}, "the live tag"),
        ({"tag": 2}, "the live tag"),
        ({"tag": "v2", "last_job": "job-00000000000000aa"}, "the last job"),
        ({"tag": "v2", "last_job": {"id": "../../audit", "tag": "v2"}}, "the last job's id"),
        (
            {"tag": "v2", "last_job": {"id": "job-00000000000000aa", "tag": "v2", "rollout": 3}},
            "the last job's rollout",
        ),
        ({"tag": "v2", "health": ["ok"]}, "the health"),
    ],
)
def test_a_status_whose_values_are_not_of_their_form_is_refused(serve, answer, what):
    host = serve(send(200, json.dumps(answer).encode()))
    with pytest.raises(UnexpectedAnswer, match=f"{what} is not valid"):
        client_of(host.url).status("h1", "web")


def test_a_hosts_texts_come_back_escaped(serve):
    host = serve(
        send(
            200,
            json.dumps(
                {"id": "job-00000000000000aa", "status": "failed\x1b[2J", "reason": "ok\nforged line", "tag": "v2"}
            ).encode(),
        )
    )
    job = client_of(host.url).job("h1", "job-00000000000000aa")
    assert (job["status"], job["reason"]) == ("failed\\x1b[2J", "ok\\nforged line")
