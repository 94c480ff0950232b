"""What the Docker SDK is asked to run for one instance: exact keyword arguments."""

from pathlib import Path

import pytest

from deployer.config import AppConfig, HealthCheck, PortMapping, Settings
from deployer.plan import containers
from deployer.plan.containers import Release

SETTINGS = Settings(state_dir=Path("/var/lib/deployer"), hooks_dir=Path("/etc/deployer/hooks"))
DEMO = AppConfig(
    name="demo",
    image="127.0.0.1:5000/demo",
    ports=(
        PortMapping(external=1000, container=8080, protocol="tcp", blue=1001, green=1002),
        PortMapping(external=1000, container=9090, protocol="udp", blue=1001, green=1002),
    ),
    health=HealthCheck(type="http", port=8080, path="/healthz"),
    env={"DRAIN_TIMEOUT": "5"},
)
RELEASE = Release(tag="v2", image="127.0.0.1:5000/demo", digest="sha256:" + "ab" * 32)


def test_run_arguments_for_the_green_set():
    assert containers.run_arguments(SETTINGS, DEMO, "green", RELEASE) == {
        "name": "deployer-demo-green",
        "detach": True,
        "labels": {
            "deployer.owner": "deployer",
            "deployer.app": "demo",
            "deployer.set": "green",
            "deployer.tag": "v2",
            "deployer.digest": "sha256:" + "ab" * 32,
            "deployer.image": "127.0.0.1:5000/demo",
        },
        "environment": {"DRAIN_TIMEOUT": "5"},
        "ports": {"8080/tcp": ("127.0.0.1", 1002), "9090/udp": ("127.0.0.1", 1002)},
        "network": "deployer",
        "restart_policy": {"Name": "unless-stopped"},
    }


def test_run_arguments_with_everything_set():
    app = AppConfig(
        name="api",
        image="registry.example:5000/api",
        ports=(PortMapping(external=3000, container=3000, protocol="tcp", blue=3001, green=3002),),
        health=HealthCheck(type="tcp", port=3000),
        bind="10.0.0.5",
        restart="on-failure:3",
        env={},
        volumes=("api-data:/var/lib/api", "/etc/api:/etc/api:ro"),
        labels={"team": "payments", "com.example.tier": "backend"},
        command=("serve", "--port", "3000"),
    )
    settings = Settings(state_dir=Path("/s"), hooks_dir=Path("/h"), chain_prefix="DPL2", network="apps")
    release = Release(tag="2024.06.1", image="registry.example:5000/api")
    assert containers.run_arguments(settings, app, "blue", release) == {
        "name": "dpl2-api-blue",
        "detach": True,
        "labels": {
            "team": "payments",
            "com.example.tier": "backend",
            "deployer.owner": "dpl2",
            "deployer.app": "api",
            "deployer.set": "blue",
            "deployer.tag": "2024.06.1",
            "deployer.digest": "",
            "deployer.image": "registry.example:5000/api",
        },
        "environment": {},
        "ports": {"3000/tcp": ("10.0.0.5", 3001)},
        "network": "apps",
        "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 3},
        "volumes": ["api-data:/var/lib/api", "/etc/api:/etc/api:ro"],
        "command": ["serve", "--port", "3000"],
    }


def test_reserved_labels_win_over_app_labels():
    app = AppConfig(
        name="demo",
        image=DEMO.image,
        ports=DEMO.ports,
        health=DEMO.health,
        labels={"deployer.set": "forged", "team": "x"},
    )
    labels = containers.run_arguments(SETTINGS, app, "blue", RELEASE)["labels"]
    assert labels["deployer.set"] == "blue"
    assert labels["team"] == "x"


@pytest.mark.parametrize(
    ("restart", "policy"),
    [
        ("no", {"Name": "no"}),
        ("always", {"Name": "always"}),
        ("unless-stopped", {"Name": "unless-stopped"}),
        ("on-failure", {"Name": "on-failure"}),
        ("on-failure:3", {"Name": "on-failure", "MaximumRetryCount": 3}),
    ],
)
def test_restart_policy(restart, policy):
    assert containers.restart_policy(restart) == policy


def test_container_name_and_selector():
    assert containers.container_name(SETTINGS, "demo", "blue") == "deployer-demo-blue"
    assert containers.selector(SETTINGS) == {"label": ["deployer.owner=deployer"]}
    assert containers.selector(SETTINGS, "demo") == {"label": ["deployer.owner=deployer", "deployer.app=demo"]}


def test_other_set():
    assert containers.other_set("blue") == "green"
    assert containers.other_set("green") == "blue"
    assert containers.other_set(None) == "blue"


def test_release_references():
    assert RELEASE.reference == "127.0.0.1:5000/demo:v2"
    assert RELEASE.pinned_reference == "127.0.0.1:5000/demo@sha256:" + "ab" * 32
    unpinned = Release(tag="v2", image="127.0.0.1:5000/demo")
    assert unpinned.pinned_reference == unpinned.reference == "127.0.0.1:5000/demo:v2"
