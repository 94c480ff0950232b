"""Fixtures several unit modules share: the receiver's config, queue, journal events, app and client; the worker's
config; the engine's fake host with v1 live. Plain helpers (fakes, builders) live in tests/support/."""

from __future__ import annotations

import pytest

from deployer.journal import Journal
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app
from support.configs import app_toml, make_config
from support.engine_fakes import Host
from support.receiver import ALICE_KEY, ALICE_SECRET, CAP, GITHUB_SECRET, NAMES, Clock

# --- the receiver -----------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path):
    web = app_toml("web", 8000, repository="Codertocat/Hello-World", tag_pattern="^[v0-9][A-Za-z0-9._-]*$")
    return make_config(
        tmp_path,
        web,
        server=f'{NAMES}max_body_bytes = {CAP}\ngithub_secret_env = "GH_SECRET"\n{ALICE_KEY}',
        environ={"GH_SECRET": GITHUB_SECRET, "ALICE_SECRET": ALICE_SECRET},
    )


@pytest.fixture
def events():
    return []


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(settings, clock):
    return Queue.for_state_dir(settings.settings.state_dir, clock=clock)


@pytest.fixture
def app(settings, queue, events, clock):
    journal = Journal([events.append], secrets=settings.secrets())
    return create_app(
        {"DEPLOYER_CONFIG": settings, "QUEUE": queue, "JOURNAL": journal, "CLOCK": clock, "TESTING": True}
    )


@pytest.fixture
def client(app):
    return app.test_client()


# --- the worker -------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path, app_toml("web", 8000), app_toml("api", 9000), server="job_timeout = 100")


# --- the engine -------------------------------------------------------------------------------------


@pytest.fixture
def host(tmp_path):
    """A host with v1 deployed on blue, through the engine itself; its effects are the first test's."""
    host = Host(tmp_path)
    host.engine().deploy("web", "v1", actor="cli:ann")
    return host
