"""Fixtures for integration tests: the real dockerd, registry, iptables and conntrack.

Each test gets its own chain prefix (DT + 5 hex digits), state folder and container names, so
nothing it does can touch the host's own deployer or another test. Everything a test made is
removed afterwards, on failure too; a session starts by removing what a killed run left.
Where CI=true, a missing prerequisite fails the tests instead of skipping them. What the fixtures
build (the test deployer, the images, the cleanup) is in tests/support/integration.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.adapters.docker_host import DockerHost
from support import netns
from support.fake_github import free_port
from support.integration import (
    NETWORK,
    REPO,
    Deployer,
    Images,
    missing,
    other_sessions,
    owned_deployer,
    remove_leftovers,
    run,
)
from support.owners import claim, release
from support.served import PortTaken, Served

# --- session: the host is ready, and clean of earlier runs -----------------------------------------


@pytest.fixture(scope="session")
def host() -> Iterator[None]:
    if os.geteuid() != 0:
        missing("integration tests need root (dockerd, iptables, conntrack)")
    for tool in ("iptables-restore", "conntrack", "ip", "docker", "dockerd", "gcc"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (run scripts/install-deps)")
    for script in ("ensure-dockerd", "ensure-registry"):
        result = run([str(REPO / "scripts" / script)])
        if result.returncode != 0:
            missing(f"scripts/{script} failed: {result.stderr.strip()[-500:]}")
    session = f"session-{os.getpid()}"
    claim(session)
    remove_leftovers()
    try:
        yield
    finally:
        remove_leftovers()
        release(session)
        if not other_sessions():
            DockerHost("unix:///var/run/docker.sock").remove_network(NETWORK)


@pytest.fixture(scope="session")
def images(host: None) -> Iterator[Images]:
    built = Images()
    built.ensure("v1", "v2")
    yield built
    built.remove_local()


# --- one deployer per test -------------------------------------------------------------------------


@pytest.fixture
def deployer(host: None, images: Images, tmp_path: Path) -> Iterator[Deployer]:
    with owned_deployer(tmp_path) as instance:
        yield instance


@pytest.fixture
def outside(host: None) -> Iterator[netns.OutsideClient]:
    with netns.OutsideClient() as client:
        yield client


# --- `deployer serve` on the test's deployer ----------------------------------------------------------


@pytest.fixture
def serve(deployer: Deployer) -> Iterator[Callable[..., Served]]:
    """Configure the test's deployer with a [server] section and start `deployer serve` on it; `on`: another
    deployer of the test's, from a fixture set up before this one, so its server is killed before it is removed."""
    started: list[Served] = []

    def make(
        *apps: str,
        server: str = "",
        settings: str = "",
        serve_args: tuple[str, ...] = (),
        on: Deployer | None = None,
    ) -> Served:
        target = on or deployer
        folder = target.root / "secrets"
        folder.mkdir(exist_ok=True)
        github_secret, operator_secret = secrets.token_hex(20), secrets.token_hex(24)
        (folder / "github").write_text(github_secret + "\n")
        (folder / "ops").write_text(operator_secret + "\n")
        for attempt in range(3):
            port = free_port()
            target.configure(
                *apps,
                settings=(
                    # user = "root": the receiver reads this config and its secrets under root's 0700 tmp_path,
                    # and CI has no `deployer` user; test_server.py runs one receiver unprivileged on purpose.
                    f'{settings}\n[server]\nlisten = "127.0.0.1:{port}"\nworkers = 2\nmax_body_bytes = 65536\n'
                    'user = "root"\n'
                    f'github_secret_file = "{folder / "github"}"\njob_timeout = 300\n{server}\n'
                    f'[server.operators.ops]\nsecret_file = "{folder / "ops"}"\n'
                ),
            )
            served = Served(target, port, github_secret, operator_secret, folder / "ops", serve_args=serve_args)
            started.append(served)
            try:
                served.start()
                return served
            except PortTaken:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    try:
        yield make
    finally:
        for served in started:
            served.kill()
