"""Config keys of maintenance, the watchdog, the status port and host-bound apps: what loads, and each refusal."""

from pathlib import Path

import pytest

from deployer import config
from deployer.config import PortMapping, WatchdogConfig
from deployer.errors import ConfigError
from support.configs import app_toml


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "deployer.toml"
    path.write_text(text)
    return config.load(path, environ={})


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.exit_code == 2
    return str(caught.value).removeprefix(f"{tmp_path / 'deployer.toml'}, ")


def test_defaults(tmp_path):
    loaded = load(tmp_path, app_toml("web", 8000))
    web = loaded.app("web")
    assert loaded.settings.maintenance_port == 8999
    assert (web.maintenance_page, web.status_port, web.host_bound) == (None, None, False)
    assert web.watchdog == WatchdogConfig(enabled=True, interval=1.0, failures=3, recoveries=3)


def test_every_key_as_written(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "web.html").write_text("<h1>{{app}}</h1>")
    loaded = load(
        tmp_path,
        "[deployer]\nmaintenance_port = 8100\n"
        + app_toml(
            "web",
            8000,
            extra=(
                'maintenance_page = "pages/web.html"\nstatus_port = 8005\n'
                "[apps.web.watchdog]\nenabled = false\ninterval = 0.5\nfailures = 2\nrecoveries = 4\n"
            ),
        ),
    )
    web = loaded.app("web")
    assert loaded.settings.maintenance_port == 8100
    assert web.maintenance_page == tmp_path / "pages" / "web.html"
    assert web.status_port == 8005
    assert web.watchdog == WatchdogConfig(enabled=False, interval=0.5, failures=2, recoveries=4)


def test_a_host_bound_app_needs_only_its_ports(tmp_path):
    loaded = load(
        tmp_path,
        app_toml("web", 8000) + "[apps.nginx]\nhost_bound = true\n"
        '[[apps.nginx.ports]]\nexternal = 80\n[[apps.nginx.ports]]\nexternal = 443\nprotocol = "tcp"\n',
    )
    nginx = loaded.app("nginx")
    assert nginx.host_bound
    assert nginx.ports == (PortMapping(80, 80, "tcp", 0, 0), PortMapping(443, 443, "tcp", 0, 0))


@pytest.mark.parametrize(
    "settings,extra,message",
    [
        ("maintenance_port = 0", "", "key 'deployer.maintenance_port': must be a port number from 1 to 65535"),
        ('maintenance_port = "8999"', "", "key 'deployer.maintenance_port': must be a port number from 1 to 65535"),
        (
            "maintenance_port = 8001",
            "",
            "key 'deployer.maintenance_port': port 8001/tcp is already used as the blue port of app 'web'",
        ),
        (
            "maintenance_port = 8005",
            "status_port = 8005",
            "key 'deployer.maintenance_port': port 8005/tcp is already used as the status port of app 'web'",
        ),
        ("", "status_port = 70000", "app 'web', key 'status_port': must be a port number from 1 to 65535"),
        (
            "",
            "status_port = 8000",
            "app 'web', key 'status_port': host port 8000/tcp is already used as the external port of app 'web'",
        ),
        (
            "",
            'maintenance_page = "missing.html"',
            "app 'web', key 'maintenance_page': cannot read {root}/missing.html: No such file or directory",
        ),
        ("", 'maintenance_page = "."', "app 'web', key 'maintenance_page': cannot read {root}: Is a directory"),
        ("", "maintenance_page = 3", "app 'web', key 'maintenance_page': must be a path"),
        ("", 'host_bound = "yes"', "app 'web', key 'host_bound': must be of type boolean"),
        (
            "",
            "[apps.web.watchdog]\nfailures = 0",
            "app 'web', key 'watchdog.failures': must be a whole number of at least 1",
        ),
        (
            "",
            "[apps.web.watchdog]\nrecoveries = 1.5",
            "app 'web', key 'watchdog.recoveries': must be a whole number of at least 1",
        ),
        ("", "[apps.web.watchdog]\ninterval = 0", "app 'web', key 'watchdog.interval': must be greater than 0"),
        ("", "[apps.web.watchdog]\nenabled = 1", "app 'web', key 'watchdog.enabled': must be of type boolean"),
        (
            "",
            "[apps.web.watchdog]\nthreshold = 3",
            "app 'web', key 'watchdog.threshold': unknown key (allowed: enabled, failures, interval, recoveries)",
        ),
        ("", "watchdog = 3", "app 'web', key 'watchdog': must be a table"),
    ],
)
def test_refusals_name_the_key(tmp_path, settings, extra, message):
    text = (f"[deployer]\n{settings}\n" if settings else "") + app_toml("web", 8000, extra=extra)
    assert refusal(tmp_path, text) == message.format(root=tmp_path)


def test_a_page_over_a_mebibyte_is_refused(tmp_path):
    (tmp_path / "big.html").write_bytes(b"x" * (1024 * 1024 + 1))
    assert refusal(tmp_path, app_toml("web", 8000, extra='maintenance_page = "big.html"')) == (
        "app 'web', key 'maintenance_page': is larger than 1 MiB; a maintenance page should load fast"
    )


HOST = "[apps.nginx]\nhost_bound = true\n{extra}\n"


@pytest.mark.parametrize(
    "extra,message",
    [
        ("", "app 'nginx', key 'ports': at least one [[apps.NAME.ports]] entry is required"),
        (
            'image = "nginx"\n[[apps.nginx.ports]]\nexternal = 80',
            "app 'nginx', key 'image': unknown key (allowed: host_bound, maintenance_page, ports)",
        ),
        (
            "status_port = 81\n[[apps.nginx.ports]]\nexternal = 80",
            "app 'nginx', key 'status_port': unknown key (allowed: host_bound, maintenance_page, ports)",
        ),
        (
            "[[apps.nginx.ports]]\nexternal = 80\nblue = 81",
            "app 'nginx', key 'ports[0].blue': unknown key (allowed: external, protocol)",
        ),
        (
            '[[apps.nginx.ports]]\nexternal = 53\nprotocol = "udp"',
            "app 'nginx', key 'ports[0].protocol': must be 'tcp': a host-bound app's ports get the maintenance page, "
            "which is HTTP",
        ),
        (
            "[[apps.nginx.ports]]\nexternal = 0",
            "app 'nginx', key 'ports[0].external': must be a port number from 1 to 65535",
        ),
        (
            "[[apps.nginx.ports]]\nexternal = 80\n[[apps.nginx.ports]]\nexternal = 80",
            "app 'nginx', key 'ports': a port is listed twice",
        ),
        (
            "[[apps.nginx.ports]]\nexternal = 8000",
            "app 'nginx', key 'ports': host port 8000/tcp is already used as the external port of app 'web'",
        ),
        (
            "[[apps.nginx.ports]]\nexternal = 8002",
            "app 'nginx', key 'ports': host port 8002/tcp is already used as the green port of app 'web'",
        ),
    ],
)
def test_host_bound_refusals(tmp_path, extra, message):
    assert refusal(tmp_path, app_toml("web", 8000) + HOST.format(extra=extra)) == message
