"""The [server] section and the per-app [apps.NAME.asset] table: what loads, and each refusal."""

from pathlib import Path

import pytest

from deployer import config
from deployer.config import AssetConfig, OperatorKey, ServerConfig
from deployer.errors import ConfigError
from support.configs import app_toml

APP = app_toml("web", 8000, repository="acme/web")


def write(folder: Path, text: str) -> Path:
    path = folder / "deployer.toml"
    path.write_text(text)
    return path


def refusal(path: Path, environ: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ=environ or {})
    return str(caught.value)


def test_no_server_section_gives_the_defaults(tmp_path):
    loaded = config.load(write(tmp_path, APP), environ={})
    assert loaded.server == ServerConfig()
    assert (loaded.server.listen, loaded.server.workers, loaded.server.github_secret) == ("127.0.0.1:8000", 2, None)
    assert loaded.app("web").asset is None


def test_a_full_server_section_loads(tmp_path):
    (tmp_path / "github").write_text("gh-secret-value\n")
    (tmp_path / "alice").write_text("alice-secret-0123456789\n")
    path = write(
        tmp_path,
        APP
        + """
[server]
listen = "0.0.0.0:9000"
names = ["Deploy.Example.com", "10.0.0.1:9000"]
workers = 4
max_body_bytes = 65536
github_secret_file = "github"
job_timeout = 600
github_api = "http://127.0.0.1:22950/"
user = "deployer"
group = "deployer"

[server.operators.alice]
secret_file = "alice"

[server.operators."bob.ops"]
secret_env = "BOB_KEY"
""",
    )
    loaded = config.load(path, environ={"BOB_KEY": "bob-secret-abcdefghijkl"})
    assert loaded.server == ServerConfig(
        listen="0.0.0.0:9000",
        names=("deploy.example.com", "10.0.0.1:9000"),
        workers=4,
        max_body_bytes=65536,
        github_secret="gh-secret-value",
        operators={
            "alice": OperatorKey("alice", "alice-secret-0123456789"),
            "bob.ops": OperatorKey("bob.ops", "bob-secret-abcdefghijkl"),
        },
        job_timeout=600,
        github_api="http://127.0.0.1:22950",
        user="deployer",
        group="deployer",
    )
    assert (loaded.server.host, loaded.server.port) == ("0.0.0.0", 9000)
    assert sorted(loaded.secrets()) == ["alice-secret-0123456789", "bob-secret-abcdefghijkl", "gh-secret-value"]
    assert "BOB_KEY" in loaded.secret_env_names
    assert "secret-" not in repr(loaded.server)


def test_the_github_secret_from_the_environment(tmp_path):
    path = write(tmp_path, APP + '[server]\ngithub_secret_env = "GH_HOOK"\n')
    assert config.load(path, environ={"GH_HOOK": "xyz"}).server.github_secret == "xyz"
    assert refusal(path) == f"{path}, key 'server.github_secret_env': environment variable GH_HOOK is not set"


def test_the_audit_token_is_read_like_a_secret_and_masked(tmp_path):
    (tmp_path / "audit-token").write_text("audit-token-0123456789abcdef\n")
    loaded = config.load(write(tmp_path, APP + '[server]\naudit_token_file = "audit-token"\n'), environ={})
    assert loaded.server.audit_token == "audit-token-0123456789abcdef"
    assert loaded.secrets() == ["audit-token-0123456789abcdef"]
    assert "audit-token-0" not in repr(loaded.server)
    from_env = config.load(
        write(tmp_path, APP + '[server]\naudit_token_env = "AUDIT_TOKEN"\n'), environ={"AUDIT_TOKEN": "t" * 32}
    )
    assert (from_env.server.audit_token, "AUDIT_TOKEN" in from_env.secret_env_names) == ("t" * 32, True)
    assert config.load(write(tmp_path, APP), environ={}).server.audit_token is None


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[server]\ngithub_secret = "inline"\n',
            "key 'server.github_secret': secrets are not written in the config: use github_secret_file or github_secret_env",
        ),
        (
            '[server]\nlisten = "localhost:8000"\n',
            "key 'server.listen': must be ADDRESS:PORT with an IP address, e.g. 127.0.0.1:8000",
        ),
        (
            '[server]\nlisten = "127.0.0.1:70000"\n',
            "key 'server.listen': must be ADDRESS:PORT with an IP address, e.g. 127.0.0.1:8000",
        ),
        (
            "[server]\nworkers = 1\n",
            "key 'server.workers': must be a whole number of at least 2, so one slow request never holds up the others",
        ),
        (
            "[server]\nmax_body_bytes = 10\n",
            "key 'server.max_body_bytes': must be a whole number of bytes, at least 1024",
        ),
        ("[server]\njob_timeout = 0\n", "key 'server.job_timeout': must be greater than 0"),
        (
            '[server]\ngithub_api = "ftp://x"\n',
            "key 'server.github_api': must be an http(s) URL such as https://api.github.com",
        ),
        ('[server]\nuser = "Root Admin"\n', "key 'server.user': must be a user or group name"),
        (
            '[server]\npublic_url = "https://deploy.example/?x=1"\n',
            "key 'server.public_url': must be an http(s) URL such as https://deploy.example.com",
        ),
        (
            "[server]\nport = 1\n",
            "key 'server.port': unknown key (allowed: audit_token, audit_token_env, audit_token_file, "
            "github_api, github_secret, github_secret_env, github_secret_file, github_token, github_token_env, "
            "github_token_file, group, job_timeout, listen, max_body_bytes, metrics_allow, metrics_token, "
            "metrics_token_env, metrics_token_file, names, operators, public_url, report_timeout, user, workers)",
        ),
        (
            '[server]\naudit_token = "inline-token-inline"\n',
            "key 'server.audit_token': secrets are not written in the config: use audit_token_file or audit_token_env",
        ),
        (
            '[server]\naudit_token_env = "SHORT"\n',
            "key 'server.audit_token': the token is shorter than 16 characters; make one with: openssl rand -hex 32",
        ),
        (
            '[server.operators."bad id!"]\nsecret_env = "X"\n',
            "key 'server.operators.bad id!': key ids are 1 to 64 letters, digits, '.', '_' or '-'",
        ),
        (
            '[server.operators.alice]\nsecret = "inline-secret-inline"\n',
            "key 'server.operators.alice.secret': secrets are not written in the config: use secret_file or secret_env",
        ),
        ("[server.operators.alice]\n", "key 'server.operators.alice': one of secret_file or secret_env is required"),
        (
            '[server.operators.alice]\nsecret_env = "SHORT"\n',
            "key 'server.operators.alice': the secret is shorter than 16 characters; make one with: openssl rand -hex 32",
        ),
    ],
)
def test_server_refusals_name_the_key(tmp_path, text, message):
    path = write(tmp_path, APP + text)
    assert refusal(path, {"SHORT": "too-short", "X": "x" * 20}) == f"{path}, {message}"


def test_an_asset_table_loads_with_its_token(tmp_path):
    (tmp_path / "token").write_text("ghp_assettoken\n")
    path = write(tmp_path, APP + '[apps.web.asset]\nname = "image.tar"\ntoken_file = "token"\nmax_bytes = 1000\n')
    loaded = config.load(path, environ={})
    assert loaded.app("web").asset == AssetConfig(name="image.tar", token="ghp_assettoken", max_bytes=1000)
    assert loaded.secrets() == ["ghp_assettoken"]
    assert "ghp_assettoken" not in repr(loaded.app("web"))


def test_an_asset_without_token_is_for_public_repositories(tmp_path):
    path = write(tmp_path, APP + '[apps.web.asset]\nname = "image.tar"\n')
    assert config.load(path, environ={}).app("web").asset == AssetConfig(name="image.tar")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[apps.web.asset]\n", "app 'web', key 'asset.name': must be the file name of a release asset, e.g. image.tar"),
        (
            '[apps.web.asset]\nname = "../image.tar"\n',
            "app 'web', key 'asset.name': must be the file name of a release asset, e.g. image.tar",
        ),
        (
            '[apps.web.asset]\nname = "image.tar"\nmax_bytes = 0\n',
            "app 'web', key 'asset.max_bytes': must be a whole number of bytes, at least 1",
        ),
        (
            '[apps.web.asset]\nname = "image.tar"\ntoken = "ghp_inline"\n',
            "key 'apps.web.asset.token': secrets are not written in the config: use token_file or token_env",
        ),
        (
            '[apps.web.asset]\nname = "image.tar"\nurl = "https://x"\n',
            "app 'web', key 'asset.url': unknown key (allowed: max_bytes, name, token, token_env, token_file)",
        ),
    ],
)
def test_asset_refusals_name_the_key(tmp_path, text, message):
    path = write(tmp_path, APP + text)
    assert refusal(path) == f"{path}, {message}"


@pytest.mark.parametrize(
    ("listen", "names"),
    [
        ("127.0.0.1:8000", ("127.0.0.1:8000", "localhost:8000")),
        ("10.0.0.1:8443", ("10.0.0.1:8443",)),
        ("[::1]:8000", ("[::1]:8000", "localhost:8000")),
        ("[fd42::1]:8000", ("[fd42::1]:8000",)),
    ],
)
def test_a_server_answers_to_the_names_its_listen_address_implies(tmp_path, listen, names):
    path = write(tmp_path, APP + f'[server]\nlisten = "{listen}"\n')
    assert config.load(path, environ={}).server.names == names


@pytest.mark.parametrize(
    ("server", "key", "message"),
    [
        ('listen = "0.0.0.0:8000"\n', "server.names", "takes requests on every address, so the names"),
        ("names = []\n", "server.names", "must be a list of the Host names"),
        ('names = ["deploy.example.com/x"]\n', "server.names", "is not a Host header"),
    ],
)
def test_names_that_cannot_bind_a_request_are_refused(tmp_path, server, key, message):
    path = write(tmp_path, APP + "[server]\n" + server)
    with pytest.raises(ConfigError) as refused:
        config.load(path, environ={})
    assert f"key '{key}'" in str(refused.value) and message in str(refused.value)


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        ('scope = "admin"\n', "server.operators.k.scope", "must be one of operator, fleet, read"),
        ('scope = "fleet"\n', "server.operators.k.apps", "a fleet key names the apps it may deploy"),
        ('apps = ["nope"]\n', "server.operators.k.apps", "no app is named 'nope'"),
        ('apps = "demo"\n', "server.operators.k.apps", "must be a list of app names"),
    ],
)
def test_a_keys_scope_and_apps_are_checked(tmp_path, entry, key, message):
    (tmp_path / "k").write_text("k-secret-0123456789abcdef\n")
    path = write(tmp_path, APP + '[server]\n[server.operators.k]\nsecret_file = "k"\n' + entry)
    with pytest.raises(ConfigError) as refused:
        config.load(path, environ={})
    assert key in str(refused.value) and message in str(refused.value)


def test_a_scoped_key_loads_with_its_apps(tmp_path):
    (tmp_path / "k").write_text("k-secret-0123456789abcdef\n")
    path = write(tmp_path, APP + '[server]\n[server.operators.k]\nsecret_file = "k"\nscope = "fleet"\napps = ["web"]\n')
    assert config.load(path, environ={}).server.operators["k"] == OperatorKey(
        "k", "k-secret-0123456789abcdef", scope="fleet", apps=("web",)
    )
