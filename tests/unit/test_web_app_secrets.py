"""Per-app GitHub secrets through Flask's test client: a secret signs for its own app only.

The body names the app (repository.full_name); the receiver reads that claim only to pick the secret
it must be signed with, so a webhook on one repository cannot deploy another repository's app.
"""

import json
import tomllib

import pytest

from deployer import config as config_module
from deployer import signatures
from deployer.journal import Journal
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app
from support.configs import app_toml, config_text

GLOBAL_SECRET = "global-webhook-secret-1d9e"
A_SECRET = "app-a-webhook-secret-77c3"
B_SECRET = "app-b-webhook-secret-e05b"
B_HOOK = "5551234"


@pytest.fixture
def loaded(tmp_path):
    alpha = app_toml("alpha", 8000, repository="acme/alpha", github_secret_env="GH_A")
    beta = app_toml("beta", 8100, repository="acme/beta", github_secret_env="GH_B", github_hook_id=int(B_HOOK))
    gamma = app_toml("gamma", 8200, repository="acme/gamma")
    text = config_text(tmp_path, alpha, beta, gamma, server='github_secret_env = "GH_GLOBAL"')
    path = tmp_path / "deployer.toml"
    path.write_text(text)
    return config_module.parse_receiver(
        tomllib.loads(text), path=path, environ={"GH_GLOBAL": GLOBAL_SECRET, "GH_A": A_SECRET, "GH_B": B_SECRET}
    )


@pytest.fixture
def queue(loaded):
    return Queue.for_state_dir(loaded.settings.state_dir)


@pytest.fixture
def client(loaded, queue, events):
    journal = Journal([events.append], secrets=loaded.secrets())
    return create_app({"DEPLOYER_CONFIG": loaded, "QUEUE": queue, "JOURNAL": journal, "TESTING": True}).test_client()


def release(repository: str, tag: str = "v1") -> bytes:
    return json.dumps(
        {
            "action": "published",
            "repository": {"full_name": repository},
            "sender": {"login": "octocat"},
            "release": {
                "id": 1,
                "tag_name": tag,
                "draft": False,
                "prerelease": False,
                "published_at": "2026-12-01T10:00:00Z",
            },
        }
    ).encode()


def deliver(client, body: bytes, secret: str, hook_id: str = B_HOOK, delivery: str = "d-1"):
    return client.post(
        "/hooks/github",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "release",
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-ID": hook_id,
            "X-Hub-Signature-256": signatures.github_signature(secret, body),
        },
    )


def queued(queue) -> list[tuple[str, str]]:
    return sorted((job.app, job.tag) for job in queue.jobs.jobs())


def test_a_delivery_for_app_b_signed_with_app_a_secret_is_refused_and_nothing_is_queued(client, queue, events):
    response = deliver(client, release("acme/beta"), A_SECRET)
    assert response.status_code == 401
    assert response.get_json() == {"error": "X-Hub-Signature-256 does not match the body"}
    assert queued(queue) == []
    # Refused before it authenticated: counted in an aggregated row, not one of its own.
    assert [e for e in events if e["event"] == "delivery"] == []
    client.application.extensions["deployer"].rejections.flush()
    [row] = [e for e in events if e["event"] == "rejected_requests"]
    assert (row["status"], row["reason"], row["count"]) == (401, "X-Hub-Signature-256 does not match the body", 1)


def test_the_global_secret_does_not_sign_for_an_app_with_its_own(client, queue):
    assert deliver(client, release("acme/beta"), GLOBAL_SECRET).status_code == 401
    assert deliver(client, release("acme/alpha"), GLOBAL_SECRET).status_code == 401
    assert queued(queue) == []


def test_a_delivery_signed_with_its_own_app_secret_is_queued(client, queue):
    response = deliver(client, release("acme/beta"), B_SECRET)
    assert (response.status_code, response.get_json()["app"]) == (202, "beta")
    assert deliver(client, release("acme/alpha", "v2"), A_SECRET, delivery="d-2").status_code == 202
    assert queued(queue) == [("alpha", "v2"), ("beta", "v1")]


def test_an_app_without_its_own_secret_still_takes_the_global_one_and_only_that(client, queue):
    assert deliver(client, release("acme/gamma"), A_SECRET).status_code == 401
    assert deliver(client, release("acme/gamma"), GLOBAL_SECRET, delivery="d-2").status_code == 202
    assert queued(queue) == [("gamma", "v1")]


def test_a_pinned_hook_id_refuses_another_webhook_even_with_the_right_secret(client, queue):
    response = deliver(client, release("acme/beta"), B_SECRET, hook_id="999")
    assert response.status_code == 401
    assert "github_hook_id" in response.get_json()["error"] and B_HOOK not in response.get_json()["error"]
    assert queued(queue) == []


def test_a_repository_no_app_names_is_checked_against_the_global_secret(client, queue):
    assert deliver(client, release("acme/unknown"), A_SECRET).status_code == 401
    assert deliver(client, release("acme/unknown"), GLOBAL_SECRET, delivery="d-2").status_code == 404
    assert queued(queue) == []


def test_a_body_that_is_not_json_is_refused_by_its_signature_first(client, queue):
    body = b"not json"
    response = client.post(
        "/hooks/github",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "release",
            "X-GitHub-Delivery": "d-1",
            "X-Hub-Signature-256": signatures.github_signature(A_SECRET, body),
        },
    )
    assert response.status_code == 401
    assert queued(queue) == []


def test_no_secret_reaches_the_journal(client, events):
    deliver(client, release("acme/beta"), A_SECRET)
    deliver(client, release("acme/beta"), B_SECRET)
    recorded = repr(events)
    assert all(secret not in recorded for secret in (GLOBAL_SECRET, A_SECRET, B_SECRET))


def test_the_app_factory_loads_only_the_receiver_config(tmp_path, monkeypatch):
    """gunicorn's `create_app()`: a registry password file and an env file it cannot read do not stop it."""
    alpha = app_toml("alpha", 8000, repository="acme/alpha", env_files=["root-only/alpha.env"])
    registry = '[registries."registry.example:5000"]\nusername = "u"\npassword_file = "root-only/registry"'
    text = config_text(tmp_path, alpha, server='github_secret_env = "GH_GLOBAL"', tables=registry)
    (tmp_path / "deployer.toml").write_text(text)
    monkeypatch.setenv("DEPLOYER_CONFIG", str(tmp_path / "deployer.toml"))
    monkeypatch.setenv("GH_GLOBAL", GLOBAL_SECRET)
    client = create_app({"TESTING": True}).test_client()
    assert deliver(client, release("acme/alpha"), GLOBAL_SECRET).status_code == 202
