"""The [fleet] table: what loads, and a clear refusal, naming the key, of each input a rollout could not run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer import config
from deployer.config.fleet import FleetConfig, FleetHost
from deployer.errors import ConfigError

APP = {"image": "registry.example/web", "ports": [{"external": 80, "container": 8080, "blue": 8001, "green": 8002}]}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.secret"
    path.write_text("s3cret-of-the-fleet-key-0123456789\n")
    return path


def hosts(secret: Path, count: int = 3) -> list[dict]:
    return [
        {
            "name": f"h{i}",
            "url": f"http://10.0.0.{i}:8000",
            "key_id": "fleet",
            "secret_file": str(secret),
            "insecure_http": True,
        }
        for i in range(1, count + 1)
    ]


def load(fleet: dict, tmp_path: Path, *, apps: dict | None = None) -> config.Config:
    data = {"fleet": fleet, "apps": apps if apps is not None else {}}
    return config.parse(data, path=tmp_path / "deployer.toml", environ={})


def refusal(fleet: dict, tmp_path: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load(fleet, tmp_path, **kwargs)
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_a_controller_loads_with_no_app_of_its_own(tmp_path, secret):
    loaded = load(
        {
            "apps": ["web"],
            "hosts": hosts(secret),
            "max_parallel": "50%",
            "canary": "h2",
            "bake": 5,
            "host_timeout": 120,
            "deadline": 3600,
        },
        tmp_path,
    )
    assert loaded.apps == {}
    assert loaded.fleet == FleetConfig(
        apps=("web",),
        max_parallel="50%",
        canary="h2",
        bake=5,
        host_timeout=120,
        deadline=3600,
        hosts=tuple(
            FleetHost(
                f"h{i}", f"http://10.0.0.{i}:8000", "fleet", "s3cret-of-the-fleet-key-0123456789", insecure_http=True
            )
            for i in (1, 2, 3)
        ),
    )
    assert "s3cret-of-the-fleet-key-0123456789" in loaded.secrets()  # masked in every log and audit entry
    assert "s3cret" not in repr(loaded.fleet)


def test_the_defaults_one_host_at_a_time_no_canary_no_bake(tmp_path, secret):
    fleet = load({"apps": ["web"], "hosts": hosts(secret)}, tmp_path).fleet
    assert (fleet.max_parallel, fleet.canary, fleet.bake, fleet.host_timeout) == (1, None, 0.0, 600.0)
    assert fleet.deadline == 6 * 3600  # a rollout resumed after any number of restarts gives up after 6 h


@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"max_parallel": 0}, "fleet.max_parallel", "must be a count of hosts from 1 to 3"),
        ({"max_parallel": 4}, "fleet.max_parallel", "must be a count of hosts from 1 to 3"),
        ({"max_parallel": "0%"}, "fleet.max_parallel", "or a percentage"),
        ({"max_parallel": "150%"}, "fleet.max_parallel", "or a percentage"),
        ({"max_parallel": True}, "fleet.max_parallel", "must be a count"),
        ({"canary": "h9"}, "fleet.canary", "names no host of [[fleet.hosts]] (h1, h2, h3)"),
        ({"canary": 3}, "fleet.canary", "a count of hosts from 1 to 2"),
        ({"canary": 0}, "fleet.canary", "a count of hosts from 1 to 2"),
        ({"bake": -1}, "fleet.bake", "must not be negative"),
        ({"host_timeout": 0}, "fleet.host_timeout", "must be greater than 0"),
        ({"deadline": 0}, "fleet.deadline", "must be greater than 0"),
        ({"apps": []}, "fleet.apps", "must list the apps"),
        ({"apps": ["web", "web"]}, "fleet.apps", "each once"),
        ({"hosts": []}, "fleet.hosts", "at least one [[fleet.hosts]]"),
        ({"serial": 1}, "fleet.serial", "unknown key"),
    ],
)
def test_each_bad_value_is_refused_naming_its_key(tmp_path, secret, change, key, message):
    text = refusal({"apps": ["web"], "hosts": hosts(secret), **change}, tmp_path)
    assert f"key {key!r}" in text and message in text, text


@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"name": "h1"}, "fleet.hosts[1]", "host 'h1' is listed twice: 'h1' has that name"),
        ({"url": "http://10.0.0.1:8000/"}, "fleet.hosts[1]", "is listed twice: 'h1' has that url"),
        ({"url": "ftp://10.0.0.2"}, "fleet.hosts[1].url", "must be the base URL"),
        ({"url": "http://user@10.0.0.2:8000"}, "fleet.hosts[1].url", "must be the base URL"),
        ({"name": "H 2"}, "fleet.hosts[1].name", "lowercase letters"),
        ({"key_id": "a b"}, "fleet.hosts[1].key_id", "an operator key id"),
        ({"secret_file": "/nonexistent/fleet.secret"}, "fleet.hosts[1].secret_file", "cannot read secret file"),
        ({"secret": "inline"}, "fleet.hosts[1].secret", "unknown key"),
    ],
)
def test_each_bad_host_is_refused_naming_its_key(tmp_path, secret, change, key, message):
    entries = hosts(secret)
    entries[1] = {**entries[1], **change}
    text = refusal({"apps": ["web"], "hosts": entries}, tmp_path)
    assert f"key {key!r}" in text and message in text, text


def test_an_empty_secret_file_is_refused(tmp_path, secret):
    secret.write_text("\n")
    assert "secret is empty" in refusal({"apps": ["web"], "hosts": hosts(secret)}, tmp_path)


def test_a_fleet_app_that_is_also_a_local_app_is_refused(tmp_path, secret):
    text = refusal({"apps": ["web"], "hosts": hosts(secret)}, tmp_path, apps={"web": APP})
    assert "key 'fleet.apps'" in text and "runs no copy of its own" in text


def test_a_config_without_fleet_still_needs_an_app(tmp_path):
    with pytest.raises(ConfigError, match="at least one app"):
        config.parse({"apps": {}}, path=tmp_path / "deployer.toml", environ={})
