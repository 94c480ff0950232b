"""The receiver's own config, the per-app GitHub secrets, and the environment gunicorn gets.

The receiver runs unprivileged: it must start when the worker's secrets are root's alone, and hold none of them.
"""

from pathlib import Path

import pytest

from deployer import config
from deployer.config import AssetConfig, PortMapping, ReceiverApp
from deployer.config.receiver_files import receiver_files
from deployer.errors import ConfigError
from support.configs import app_toml

WORKER_SECRETS = """\
[registries."registry.example:5000"]
username = "deploy"
password_file = "root-only/registry.password"

[registries."other.example"]
username = "deploy"
password_env = "REGISTRY_PASSWORD"
"""

APPS = """\
[apps.web]
image = "registry.example:5000/web"
repository = "acme/web"
tag_pattern = '^v[0-9]+$'
prereleases = true
env_files = ["root-only/web.env"]
github_secret_file = "web-github"
github_hook_id = 4242

[apps.web.asset]
name = "image.tar"
token_file = "root-only/asset.token"

[[apps.web.ports]]
external = 8000
container = 80
blue = 8001
green = 8002

[apps.api]
image = "registry.example:5000/api"
repository = "acme/api"

[apps.api.asset]
name = "api.tar"
token_env = "ASSET_TOKEN"

[[apps.api.ports]]
external = 9000
container = 80
blue = 9001
green = 9002

[apps.edge]
host_bound = true
[[apps.edge.ports]]
external = 80
"""

SERVER = """\
[server]
github_secret_env = "GH_SECRET"
audit_token_file = "audit.token"

[server.operators.alice]
secret_env = "ALICE_SECRET"
"""

ENVIRON = {
    "GH_SECRET": "global-github-secret",
    "ALICE_SECRET": "alice-secret-0123456789",
    "REGISTRY_PASSWORD": "registry-password-from-env",
    "ASSET_TOKEN": "asset-token-from-env",
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "SSH_AUTH_SOCK": "/tmp/agent",
    "DOCKER_HOST": "unix:///run/docker.sock",
    "PYTHONPATH": "/opt/deployer",
}


def write(folder: Path, text: str) -> Path:
    (folder / "web-github").write_text("web-own-github-secret\n")
    (folder / "audit.token").write_text("audit-token-0123456789abcdef\n")
    path = folder / "deployer.toml"
    path.write_text(text)
    return path


def test_the_receiver_starts_without_the_worker_files_and_holds_none_of_the_worker_secrets(tmp_path):
    """root-only/ does not exist at all: the registry password, the asset token and the env file are missing."""
    path = write(tmp_path, WORKER_SECRETS + APPS + SERVER)
    with pytest.raises(ConfigError, match="root-only/registry.password"):
        config.load(path, environ=ENVIRON)  # the worker's loader does need them

    receiver = config.load_receiver(path, environ=ENVIRON)
    assert dict(receiver.apps) == {
        "web": ReceiverApp(
            name="web",
            repository="acme/web",
            tag_pattern="^v[0-9]+$",
            prereleases=True,
            asset=AssetConfig(name="image.tar", token=None),
            github_secret="web-own-github-secret",
            github_hook_id=4242,
            ports=(PortMapping(8000, 80, "tcp", 8001, 8002),),
        ),
        "api": ReceiverApp(
            name="api",
            repository="acme/api",
            asset=AssetConfig(name="api.tar", token=None),
            ports=(PortMapping(9000, 80, "tcp", 9001, 9002),),
        ),
        "edge": ReceiverApp(name="edge", host_bound=True, ports=(PortMapping(80, 80, "tcp", 0, 0),)),
    }
    assert sorted(receiver.secrets()) == [
        "alice-secret-0123456789",
        "audit-token-0123456789abcdef",
        "global-github-secret",
        "web-own-github-secret",
    ]
    assert receiver.secret_env_names == frozenset({"GH_SECRET", "ALICE_SECRET"})
    held = repr(receiver) + repr(vars(receiver))
    for worker_secret in ("registry-password-from-env", "asset-token-from-env"):
        assert worker_secret not in held
    assert not hasattr(receiver, "registries")


def test_unreadable_worker_files_do_not_stop_the_receiver(tmp_path):
    """chmod 000 stops only an unprivileged reader; as root, a missing file stands in for it (test above)."""
    root_only = tmp_path / "root-only"
    root_only.mkdir()
    for name in ("registry.password", "web.env", "asset.token"):
        (root_only / name).write_text("A=worker-only\n")
        (root_only / name).chmod(0)
    root_only.chmod(0)
    try:
        receiver = config.load_receiver(write(tmp_path, WORKER_SECRETS + APPS + SERVER), environ=ENVIRON)
    finally:
        root_only.chmod(0o700)
    assert "worker-only" not in repr(receiver) + repr(receiver.secrets())


def test_the_receiver_still_checks_what_it_reads(tmp_path):
    path = write(tmp_path, APPS.replace("tag_pattern = '^v[0-9]+$'", "tag_pattern = '(unclosed'") + SERVER)
    with pytest.raises(ConfigError, match=r"app 'web', key 'tag_pattern': not a valid regular expression"):
        config.load_receiver(path, environ=ENVIRON)
    path = write(tmp_path, APPS.replace('image = "registry.example:5000/api"', 'imgae = "x"') + SERVER)
    with pytest.raises(ConfigError, match=r"app 'api', key 'imgae': unknown key"):
        config.load_receiver(path, environ=ENVIRON)


# --- per-app GitHub secrets ----------------------------------------------------------------------------


def test_each_app_is_signed_for_by_its_own_secret_or_else_by_the_global_one(tmp_path):
    path = write(tmp_path, APPS.replace("root-only/", "") + SERVER)
    for name in ("web.env", "asset.token"):
        (tmp_path / name).write_text("X=1\n")
    for loaded in (config.load(path, environ=ENVIRON), config.load_receiver(path, environ=ENVIRON)):
        assert loaded.github_secret_for("acme/web") == "web-own-github-secret"
        assert loaded.github_secret_for("ACME/Web") == "web-own-github-secret"
        assert loaded.github_secret_for("acme/api") == "global-github-secret"
        assert loaded.github_secret_for("acme/unknown") == "global-github-secret"
        assert loaded.github_secret_for(None) == "global-github-secret"
        assert (loaded.github_hook_id_for("acme/web"), loaded.github_hook_id_for("acme/api")) == (4242, None)
        assert "web-own-github-secret" in loaded.secrets()
        assert "web-own-github-secret" not in repr(loaded)


def test_an_app_secret_from_the_environment(tmp_path):
    path = write(
        tmp_path,
        APPS.replace("root-only/", "").replace('github_secret_file = "web-github"', 'github_secret_env = "WEB_GH"')
        + SERVER,
    )
    receiver = config.load_receiver(path, environ={**ENVIRON, "WEB_GH": "web-from-env"})
    assert receiver.github_secret_for("acme/web") == "web-from-env"
    assert "WEB_GH" in receiver.secret_env_names


def minimal(extra: str) -> str:
    return app_toml("web", 8000, repository="acme/web", extra=extra)


@pytest.mark.parametrize(
    "extra, where, message",
    [
        (
            'github_secret = "inline"',
            "key 'apps.web.github_secret'",
            "secrets are not written in the config: use github_secret_file or github_secret_env",
        ),
        (
            'github_secret_file = "web-github"\ngithub_secret_env = "X"',
            "key 'apps.web'",
            "set only one of github_secret_file and github_secret_env",
        ),
        (
            'github_secret_env = "UNSET_VAR"',
            "key 'apps.web.github_secret_env'",
            "environment variable UNSET_VAR is not set",
        ),
        ('github_secret_file = "missing"', "key 'apps.web.github_secret_file'", "cannot read secret file"),
        ("github_hook_id = true", "app 'web', key 'github_hook_id'", "must be the GitHub webhook's id, a whole number"),
        ("github_hook_id = 0", "app 'web', key 'github_hook_id'", "must be the GitHub webhook's id, a whole number"),
        (
            'github_hook_id = "4242"',
            "app 'web', key 'github_hook_id'",
            "must be the GitHub webhook's id, a whole number",
        ),
    ],
)
@pytest.mark.parametrize("loader", [config.load, config.load_receiver], ids=["load", "load_receiver"])
def test_bad_app_github_keys_are_refused_naming_the_key(tmp_path, extra, where, message, loader):
    path = write(tmp_path, minimal(extra))
    with pytest.raises(ConfigError) as caught:
        loader(path, environ={})
    assert str(caught.value).startswith(f"{path}, {where}: {message}")
    assert "inline" not in str(caught.value)


@pytest.mark.parametrize(
    "extra, key",
    [('github_secret_file = "web-github"', "github_secret_file"), ("github_hook_id = 7", "github_hook_id")],
)
def test_an_app_secret_or_hook_needs_a_repository(tmp_path, extra, key):
    path = write(tmp_path, minimal(extra).replace('repository = "acme/web"\n', ""))
    with pytest.raises(ConfigError) as caught:
        config.load_receiver(path, environ={})
    assert str(caught.value) == (
        f"{path}, app 'web', key '{key}': needs repository: only deliveries from the app's own repository use it"
    )


# --- gunicorn's environment ------------------------------------------------------------------------------


def test_gunicorn_gets_the_receiver_secrets_and_never_the_worker_secrets(tmp_path):
    path = write(tmp_path, APPS.replace("root-only/", "") + WORKER_SECRETS.replace("root-only/", "") + SERVER)
    for name in ("web.env", "asset.token", "registry.password"):
        (tmp_path / name).write_text("X=1\n")
    loaded = config.load(path, environ=ENVIRON)
    assert {"REGISTRY_PASSWORD", "ASSET_TOKEN"} <= loaded.secret_env_names  # the worker does read them

    assert config.receiver_environment(loaded, ENVIRON) == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": "/opt/deployer",
        "GH_SECRET": "global-github-secret",
        "ALICE_SECRET": "alice-secret-0123456789",
        "DEPLOYER_CONFIG": str(path),
    }


def test_gunicorn_gets_an_app_secret_from_the_environment_too(tmp_path):
    path = write(tmp_path, minimal('github_secret_env = "WEB_GH"'))
    loaded = config.load(path, environ={"WEB_GH": "web-from-env", "OTHER": "x"})
    assert config.receiver_environment(loaded, {"WEB_GH": "web-from-env", "OTHER": "x"}) == {
        "WEB_GH": "web-from-env",
        "DEPLOYER_CONFIG": str(path),
    }


def test_the_files_the_receiver_opens_are_listed_for_check_and_the_worker_files_are_not(tmp_path):
    path = write(tmp_path, WORKER_SECRETS + APPS + SERVER)
    (tmp_path / "root-only").mkdir()
    for name in ("registry.password", "web.env", "asset.token"):
        (tmp_path / "root-only" / name).write_text("VALUE=root-only\n")
    (tmp_path / "page.html").write_text("<p>back soon</p>")
    text = path.read_text().replace("[apps.api]\n", '[apps.api]\nmaintenance_page = "page.html"\n')
    path.write_text(text)
    found = [(item.key, item.path) for item in receiver_files(config.load(path, environ=ENVIRON))]
    assert found == [
        ("config", path),
        ("server.audit_token_file", tmp_path / "audit.token"),
        ("apps.web.github_secret_file", tmp_path / "web-github"),
        ("apps.api.maintenance_page", tmp_path / "page.html"),
    ]
