"""TLS between hosts: plain http to another host only with explicit consent, named at each rollout; a CA file per
host and for `deployer redeploy`; a URL without a scheme is a clear usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer import config
from deployer.cli.main import main
from deployer.config.fleet import is_loopback_url
from deployer.errors import ConfigError


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "fleet-h1.secret"
    path.write_text("s3cret-of-the-h1-key-0123456789\n")
    return path


def load(tmp_path: Path, **entry: object) -> config.Config:
    host = {"name": "h1", "key_id": "fleet", "secret_file": str(tmp_path / "fleet-h1.secret"), **entry}
    return config.parse({"fleet": {"apps": ["web"], "hosts": [host]}}, path=tmp_path / "deployer.toml", environ={})


def refusal(tmp_path: Path, **entry: object) -> str:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, **entry)
    assert refused.value.exit_code == 2
    return str(refused.value)


def test_plain_http_to_another_host_is_refused_naming_the_key_and_the_file(tmp_path, secret):
    text = refusal(tmp_path, url="http://10.0.0.1:8000")
    assert text.startswith(f"{tmp_path / 'deployer.toml'}, key 'fleet.hosts[0].url': is plain http to another host")
    assert "set insecure_http = true in [[fleet.hosts]] 'h1' to accept it" in text


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://127.3.2.1:8000", "http://localhost:8000", "http://[::1]:8000"]
)
def test_plain_http_to_this_host_itself_needs_no_consent(tmp_path, secret, url):
    loaded = load(tmp_path, url=url).fleet
    assert loaded is not None and loaded.insecure_hosts == ()


def test_plain_http_with_consent_loads_and_is_named_as_insecure(tmp_path, secret):
    loaded = load(tmp_path, url="http://10.0.0.1:8000", insecure_http=True).fleet
    assert loaded is not None and loaded.insecure_hosts == ("h1",)


def test_an_https_host_takes_a_ca_file_relative_to_the_config(tmp_path, secret):
    (tmp_path / "fleet-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    loaded = load(tmp_path, url="https://h1.deploy.example:8443", ca_file="fleet-ca.pem").fleet
    assert loaded is not None
    assert (loaded.hosts[0].ca_file, loaded.insecure_hosts) == (tmp_path / "fleet-ca.pem", ())


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        (
            {"url": "https://h1.deploy.example:8443", "ca_file": "/nonexistent/ca.pem"},
            "fleet.hosts[0].ca_file",
            "names no file: /nonexistent/ca.pem",
        ),
        ({"url": "https://h1.deploy.example:8443", "ca_file": ""}, "fleet.hosts[0].ca_file", "must be a path"),
        (
            {"url": "http://127.0.0.1:8000", "ca_file": "/etc/hosts"},
            "fleet.hosts[0].ca_file",
            "only for an https:// url",
        ),
        (
            {"url": "https://h1.deploy.example:8443", "insecure_http": True},
            "fleet.hosts[0].insecure_http",
            "only for a plain http:// url",
        ),
        ({"url": "http://10.0.0.1:8000", "insecure_http": "yes"}, "fleet.hosts[0].insecure_http", "must be of type"),
        ({"url": "10.0.0.1:8000"}, "fleet.hosts[0].url", "must be the base URL"),
    ],
)
def test_each_bad_tls_setting_is_refused_naming_its_key(tmp_path, secret, entry, key, message):
    text = refusal(tmp_path, **entry)
    assert f"key {key!r}" in text and message in text, text


def test_the_rollout_command_warns_of_each_plain_http_host(tmp_path, secret, capsys):
    path = tmp_path / "deployer.toml"
    path.write_text(
        f'[deployer]\nstate_dir = "{tmp_path / "state"}"\n[fleet]\napps = ["web"]\n'
        f'[[fleet.hosts]]\nname = "h1"\nurl = "http://10.0.0.1:8000"\ninsecure_http = true\n'
        f'key_id = "fleet"\nsecret_file = "{secret}"\n'
    )
    assert main(["-c", str(path), "rollout", "web", "v2"]) == 0
    err = capsys.readouterr().err
    assert "deployer: warning: plain http to h1 (insecure_http = true in [[fleet.hosts]])" in err


# --- deployer redeploy --------------------------------------------------------------------------------------


def redeploy(secret: Path, *flags: str) -> list[str]:
    return ["redeploy", "web", "v2", "--key-id", "alice", "--secret-file", str(secret), *flags]


@pytest.mark.parametrize("url", ["10.0.0.1:8000", "deploy.example", "ftp://deploy.example"])
def test_a_redeploy_url_without_a_scheme_is_a_clear_usage_error(secret, capsys, url):
    assert main(redeploy(secret, "--url", url)) == 2
    err = capsys.readouterr().err
    assert "key '--url': must be a server's base URL, http(s)://host[:port][/prefix]" in err
    assert "InvalidSchema" not in err and "Traceback" not in err


def test_a_redeploy_over_plain_http_to_another_host_is_refused_without_the_flag(secret, capsys):
    assert main(redeploy(secret, "--url", "http://10.0.0.1:8000")) == 2
    err = capsys.readouterr().err
    assert "key '--url': is plain http to another host" in err and "or pass --insecure-http to accept it" in err


def test_a_redeploy_ca_file_that_names_no_file_is_refused(secret, capsys):
    assert main(redeploy(secret, "--url", "https://deploy.example:8443", "--ca-file", "/nonexistent/ca.pem")) == 2
    assert "key '--ca-file': names no file: /nonexistent/ca.pem" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.255.0.9", True),
        ("http://localhost:8000/deploy", True),
        ("http://LOCALHOST", True),
        ("http://[::1]:8000", True),
        ("http://10.0.0.1:8000", False),
        ("http://[::ffff:10.0.0.1]:8000", False),
        ("http://localhost.example:8000", False),
        ("http://128.0.0.1", False),
        ("http://user@127.0.0.1", False),
        ("127.0.0.1:8000", False),
    ],
)
def test_which_urls_name_this_host_itself(url, loopback):
    assert is_loopback_url(url) is loopback
