"""Loading and validating the TOML config: what loads, and the exact message of every refusal."""

from pathlib import Path

import pytest

from deployer import config
from deployer.config import AppConfig, HealthCheck, PortMapping, RegistryAuth, Settings
from deployer.errors import ConfigError, UnknownApp
from support.configs import app_toml

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """\
[apps.web]
image = "registry.example:5000/web"

[[apps.web.ports]]
external = 8000
container = 80
blue = 8001
green = 8002
"""

ALLOWED_APP_KEYS = (
    "asset, bind, canary, canary_bake, canary_sticky, cluster, command, drain_seconds, env, "
    "env_files, environment_url, github_environment, github_hook_id, github_secret, "
    "github_secret_env, github_secret_file, github_token, github_token_env, github_token_file, health, hooks_dir, host_bound, image, image_wait, ipv6, labels, "
    "maintenance_page, ports, prereleases, repository, restart, status_port, stop_timeout, tag_pattern, "
    "volumes, watchdog"
)


def write(folder: Path, text: str, name: str = "deployer.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refusal(path: Path, environ: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={} if environ is None else environ)
    assert caught.value.exit_code == 2
    return caught.value


# --- configs that load -------------------------------------------------------------------------


def test_bundled_config_loads_with_every_value_as_written():
    path = REPO / "deployer.toml"
    loaded = config.load(path, environ={})

    assert loaded.path == path
    assert loaded.settings == Settings(
        state_dir=REPO / "state",
        hooks_dir=REPO / "hooks",
        hook_timeout=30,
        lock_wait=0,
        chain_prefix="DEPLOYER",
        network="deployer",
        bridge="deployer0",
        docker_host="unix:///var/run/docker.sock",
        iptables_wait=10,
    )
    assert dict(loaded.apps) == {
        "demo": AppConfig(
            name="demo",
            image="127.0.0.1:5000/demo",
            ports=(
                PortMapping(external=1000, container=8080, protocol="tcp", blue=1001, green=1002),
                PortMapping(external=1000, container=9090, protocol="udp", blue=1001, green=1002),
            ),
            health=HealthCheck(
                type="http",
                port=8080,
                path="/healthz",
                expect_status=200,
                interval=0.5,
                timeout=2,
                successes=3,
                deadline=30,
            ),
            repository="acme/demo",
            tag_pattern=r"^v[0-9]+(\.[0-9]+)*$",
            prereleases=False,
            bind="127.0.0.1",
            drain_seconds=5,
            stop_timeout=10,
            restart="unless-stopped",
            env={"DRAIN_TIMEOUT": "5"},
            volumes=(),
            labels={},
            command=None,
            hooks_dir=None,
        )
    }
    assert dict(loaded.registries) == {}
    assert loaded.secret_env_names == frozenset()
    assert loaded.secrets() == []
    assert loaded.app("demo").registry == "127.0.0.1:5000"


def test_minimal_config_gets_the_documented_defaults(tmp_path):
    path = write(tmp_path, MINIMAL)
    loaded = config.load(path, environ={})

    assert loaded.settings == Settings(state_dir=Path("/var/lib/deployer/state"), hooks_dir=tmp_path / "hooks")
    assert (loaded.server.user, loaded.server.group) == ("deployer", None)  # the user's primary group
    assert loaded.settings.docker_host == "unix:///var/run/docker.sock"
    assert dict(loaded.apps) == {
        "web": AppConfig(
            name="web",
            image="registry.example:5000/web",
            ports=(PortMapping(external=8000, container=80, protocol="tcp", blue=8001, green=8002),),
            health=HealthCheck(
                type="http", port=80, path="/", expect_status=200, interval=1.0, timeout=2.0, successes=3, deadline=60.0
            ),
        )
    }
    assert loaded.hooks_dir_for(loaded.app("web")) == tmp_path / "hooks"


def test_docker_host_comes_from_the_environment_unless_the_config_sets_it(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert (
        config.load(path, environ={"DOCKER_HOST": "tcp://10.0.0.1:2375"}).settings.docker_host == "tcp://10.0.0.1:2375"
    )
    path = write(tmp_path, '[deployer]\ndocker_host = "unix:///run/user/1000/docker.sock"\n' + MINIMAL)
    assert (
        config.load(path, environ={"DOCKER_HOST": "tcp://10.0.0.1:2375"}).settings.docker_host
        == "unix:///run/user/1000/docker.sock"
    )


def test_same_port_numbers_on_another_protocol_are_not_a_conflict(tmp_path):
    path = write(
        tmp_path,
        MINIMAL
        + """
[apps.dns]
image = "registry.example:5000/dns"

[[apps.dns.ports]]
external = 9000
container = 53
blue = 9001
green = 9002

[[apps.dns.ports]]
external = 8000
container = 53
protocol = "udp"
blue = 8001
green = 8002
""",
    )
    loaded = config.load(path, environ={})
    assert loaded.app("dns").ports[1] == PortMapping(external=8000, container=53, protocol="udp", blue=8001, green=8002)


def test_unknown_app_and_repository_lookup(tmp_path):
    path = write(tmp_path, MINIMAL.replace("image =", 'repository = "Acme/Web"\nimage ='))
    loaded = config.load(path, environ={})
    with pytest.raises(UnknownApp) as caught:
        loaded.app("nope")
    assert str(caught.value) == "unknown app 'nope' (configured: web)"
    assert caught.value.exit_code == 2
    assert loaded.app_for_repository("acme/web") is loaded.app("web")
    assert loaded.app_for_repository("acme/other") is None


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("registry.example:5000/web", "registry.example:5000"),
        ("127.0.0.1:5000/demo", "127.0.0.1:5000"),
        ("localhost/web", "localhost"),
        ("library/nginx", None),
        ("nginx", None),
    ],
)
def test_registry_is_the_first_component_only_when_it_looks_like_a_host(image, registry):
    app = AppConfig(name="web", image=image, ports=(), health=HealthCheck(type="tcp", port=80))
    assert app.registry == registry


def test_config_path_prefers_the_flag_then_the_environment():
    assert config.config_path("/srv/d.toml", {"DEPLOYER_CONFIG": "/env/d.toml"}) == Path("/srv/d.toml")
    assert config.config_path(None, {"DEPLOYER_CONFIG": "/env/d.toml"}) == Path("/env/d.toml")
    assert config.config_path(None, {}) == Path("/etc/deployer/deployer.toml")


def test_local_actor_is_the_user_behind_sudo():
    assert config.local_actor({"SUDO_USER": "alice"}) == "cli:alice"


# --- refusals: each names the file, the app and the key -----------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    assert str(refusal(path)) == f"{path}: config file not found"


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[apps.web\nimage = 1\n")
    message = str(refusal(path))
    assert message.startswith(f"{path}: not valid TOML: ")
    assert len(message) > len(f"{path}: not valid TOML: ")


def test_no_app(tmp_path):
    path = write(tmp_path, "[deployer]\nlock_wait = 5\n")
    assert str(refusal(path)) == f"{path}, key 'apps': at least one app must be configured under [apps.NAME]"


def test_unknown_key_in_an_app_is_a_typo(tmp_path):
    path = write(tmp_path, MINIMAL.replace("image =", 'imgae = "x"\nimage ='))
    error = refusal(path)
    assert str(error) == f"{path}, app 'web', key 'imgae': unknown key (allowed: {ALLOWED_APP_KEYS})"
    assert error.context == {"path": str(path), "app": "web", "key": "imgae"}


def test_unknown_key_in_the_health_table(tmp_path):
    path = write(tmp_path, MINIMAL + "\n[apps.web.health]\nsucesses = 2\n")
    assert str(refusal(path)) == (
        f"{path}, app 'web', key 'health.sucesses': unknown key "
        "(allowed: deadline, expect_status, interval, path, port, successes, timeout, type)"
    )


def test_unknown_key_in_the_deployer_table(tmp_path):
    path = write(tmp_path, '[deployer]\nstate_dri = "/var/lib/deployer"\n' + MINIMAL)
    assert str(refusal(path)) == (
        f"{path}, key 'deployer.state_dri': unknown key (allowed: backend, bridge, chain_prefix, docker_host, "
        "hook_timeout, hooks_dir, host_lock_wait, image_wait, iptables_wait, ipv6, ipv6_forwarding, ipv6_subnet, lock_wait, maintenance_port, network, state_dir)"
    )


def test_unknown_top_level_table(tmp_path):
    path = write(tmp_path, "[deploy]\nx = 1\n" + MINIMAL)
    assert (
        str(refusal(path))
        == f"{path}, key 'deploy': unknown key (allowed: apps, cluster, console, deployer, fleet, notify, registries, server)"
    )


@pytest.mark.parametrize("name", ["Web", "web_1", "1web", "a" * 20, "-web"])
def test_bad_app_name(tmp_path, name):
    path = write(tmp_path, MINIMAL.replace("apps.web", f'apps."{name}"'))
    error = refusal(path)
    assert str(error) == (
        f"{path}, app {name!r}: app names are 1 to 19 lowercase letters, digits or '-', starting with a letter"
    )
    assert error.context == {"path": str(path), "app": name}


def test_longest_app_name_is_accepted(tmp_path):
    name = "a" * 19
    path = write(tmp_path, MINIMAL.replace("apps.web", f"apps.{name}"))
    assert list(config.load(path, environ={}).apps) == [name]


NEWLINE_CASES = {
    # TOML "\\n" is a newline in the value
    "app name": (MINIMAL.replace("apps.web", 'apps."web\\n"'), None),
    "bridge": ('[deployer]\nbridge = "deployer0\\n"\n' + MINIMAL, "deployer.bridge"),
    "chain_prefix": ('[deployer]\nchain_prefix = "DEPLOYER\\n"\n' + MINIMAL, "deployer.chain_prefix"),
    "image": (MINIMAL.replace('5000/web"', '5000/web\\n"'), "image"),
    "restart": (MINIMAL.replace("image =", 'restart = "always\\n"\nimage ='), "restart"),
    "repository": (MINIMAL.replace("image =", 'repository = "acme/web\\n"\nimage ='), "repository"),
}


@pytest.mark.parametrize("case", list(NEWLINE_CASES))
def test_a_trailing_newline_is_refused(tmp_path, case):
    text, key = NEWLINE_CASES[case]
    assert "\\n" in text
    error = refusal(write(tmp_path, text))
    assert error.context.get("key") == key


@pytest.mark.parametrize(
    "image",
    [
        "registry.example:5000/web:1.0",
        "web:latest",
        "registry.example:5000/web@sha256:" + "a" * 64,
        "Registry.example:5000/Web",
        "",
    ],
)
def test_image_must_be_a_repository_without_tag(tmp_path, image):
    path = write(tmp_path, MINIMAL.replace('"registry.example:5000/web"', f'"{image}"'))
    message = str(refusal(path))
    if image:
        assert message == (
            f"{path}, app 'web', key 'image': must be an image repository without tag or digest, "
            "e.g. registry.example:5000/app"
        )
    else:
        assert message == f"{path}, app 'web', key 'image': is required"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("external", "70000"),
        ("external", "0"),
        ("blue", "-1"),
        ("green", '"8002"'),
        ("container", "80.5"),
    ],
)
def test_bad_port_number(tmp_path, key, value):
    original = {"external": "8000", "container": "80", "blue": "8001", "green": "8002"}[key]
    path = write(tmp_path, MINIMAL.replace(f"{key} = {original}\n", f"{key} = {value}\n"))
    assert str(refusal(path)) == f"{path}, app 'web', key 'ports[0].{key}': must be a port number from 1 to 65535"


def test_bool_is_not_a_port_even_though_true_equals_1(tmp_path):
    path = write(tmp_path, MINIMAL.replace("blue = 8001", "blue = true"))
    assert str(refusal(path)) == f"{path}, app 'web', key 'ports[0].blue': must be a port number from 1 to 65535"


def test_missing_port_is_refused(tmp_path):
    path = write(tmp_path, MINIMAL.replace("green = 8002\n", ""))
    assert str(refusal(path)) == f"{path}, app 'web', key 'ports[0].green': must be a port number from 1 to 65535"


def test_no_ports(tmp_path):
    path = write(tmp_path, '[apps.web]\nimage = "registry.example:5000/web"\n')
    assert str(refusal(path)) == f"{path}, app 'web', key 'ports': at least one [[apps.NAME.ports]] entry is required"


def test_external_equal_to_blue(tmp_path):
    path = write(tmp_path, MINIMAL.replace("blue = 8001", "blue = 8000"))
    assert str(refusal(path)) == (
        f"{path}, app 'web', key 'ports[0]': external, blue and green must be three different host ports"
    )


def test_duplicate_host_port_across_two_apps(tmp_path):
    path = write(
        tmp_path,
        MINIMAL
        + """
[apps.api]
image = "registry.example:5000/api"

[[apps.api.ports]]
external = 8001
container = 80
blue = 9001
green = 9002
""",
    )
    error = refusal(path)
    assert str(error) == (
        f"{path}, app 'api', key 'ports': host port 8001/tcp is already used as the blue port of app 'web'"
    )


def test_duplicate_host_port_between_two_ports_of_one_app(tmp_path):
    path = write(
        tmp_path,
        MINIMAL
        + """
[[apps.web.ports]]
external = 8002
container = 81
blue = 8011
green = 8012
""",
    )
    assert str(refusal(path)) == (
        f"{path}, app 'web', key 'ports': host port 8002/tcp is already used as the green port of app 'web'"
    )


def test_container_port_listed_twice(tmp_path):
    path = write(
        tmp_path,
        MINIMAL
        + """
[[apps.web.ports]]
external = 8010
container = 80
blue = 8011
green = 8012
""",
    )
    assert str(refusal(path)) == f"{path}, app 'web', key 'ports': container port 80/tcp is listed twice"


def test_unknown_protocol(tmp_path):
    path = write(tmp_path, MINIMAL.replace("container = 80", 'container = 80\nprotocol = "sctp"'))
    assert str(refusal(path)) == f"{path}, app 'web', key 'ports[0].protocol': must be 'tcp' or 'udp'"


def test_health_port_must_be_a_tcp_container_port(tmp_path):
    path = write(
        tmp_path,
        MINIMAL
        + """
[[apps.web.ports]]
external = 5300
container = 53
protocol = "udp"
blue = 5301
green = 5302

[apps.web.health]
type = "tcp"
port = 53
""",
    )
    assert str(refusal(path)) == (
        f"{path}, app 'web', key 'health.port': must be one of the app's tcp container ports [80]"
    )


def test_health_needs_a_tcp_port_at_all(tmp_path):
    path = write(tmp_path, MINIMAL.replace("container = 80", 'container = 53\nprotocol = "udp"'))
    assert str(refusal(path)) == (
        f"{path}, app 'web', key 'health.port': a health check needs a tcp port in [[apps.NAME.ports]]"
    )


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ('type = "grpc"', "health.type", "must be 'http' or 'tcp'"),
        ('path = "healthz"', "health.path", "must be an absolute URL path"),
        ('path = "/a b"', "health.path", "must be an absolute URL path"),
        ("expect_status = 99", "health.expect_status", "must be an HTTP status code"),
        ("successes = 0", "health.successes", "must be a whole number of at least 1"),
        ("interval = 0", "health.interval", "must be greater than 0"),
        ('timeout = "2 days"', "health.timeout", "must be a number of seconds or a time such as 600, 90s, 10m or 1h"),
    ],
)
def test_bad_health_values(tmp_path, line, key, message):
    path = write(tmp_path, MINIMAL + f"\n[apps.web.health]\n{line}\n")
    assert str(refusal(path)) == f"{path}, app 'web', key '{key}': {message}"


def test_deadline_shorter_than_the_streak_can_take(tmp_path):
    path = write(tmp_path, MINIMAL + "\n[apps.web.health]\ninterval = 2\nsuccesses = 4\ndeadline = 5.9\n")
    assert str(refusal(path)) == (
        f"{path}, app 'web', key 'health.deadline': "
        "is shorter than interval x (successes - 1): the gate could never pass"
    )


def test_deadline_exactly_the_streak_time_is_accepted(tmp_path):
    path = write(tmp_path, MINIMAL + "\n[apps.web.health]\ninterval = 2\nsuccesses = 4\ndeadline = 6\n")
    assert config.load(path, environ={}).app("web").health.deadline == 6


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ('bind = "localhost"', "bind", "must be an IPv4 address"),
        ('restart = "sometimes"', "restart", "must be no, always, unless-stopped or on-failure[:N]"),
        ('repository = "acme"', "repository", "must be a GitHub repository as owner/name"),
        (
            'tag_pattern = "v[0-9"',
            "tag_pattern",
            "not a valid regular expression: unterminated character set at position 1",
        ),
        ('volumes = ["data"]', "volumes[0]", "must be 'SOURCE:/container/path[:ro|:rw]'"),
        ('labels = { "deployer.app" = "x" }', "labels.deployer.app", "labels starting with 'deployer.' are reserved"),
        ("labels = { team = 1 }", "labels.team", "label values must be strings"),
        ('command = ["serve", 1]', "command", "must be a list of strings"),
        ("drain_seconds = -1", "drain_seconds", "must not be negative"),
        ("prereleases = 1", "prereleases", "must be of type boolean"),
        ("stop_timeout = true", "stop_timeout", "must be a number of seconds or a time such as 600, 90s, 10m or 1h"),
        ('env = { "1X" = "y" }', "env.1X", "not a valid environment variable name"),
        ("env = { DEBUG = true }", "env.DEBUG", "must be a string or a number"),
    ],
)
def test_bad_app_values(tmp_path, line, key, message):
    path = write(tmp_path, MINIMAL.replace("image =", f"{line}\nimage ="))
    assert str(refusal(path)) == f"{path}, app 'web', key '{key}': {message}"


def test_a_repository_triggers_one_app_only(tmp_path):
    path = write(
        tmp_path,
        MINIMAL.replace("image =", 'repository = "acme/web"\nimage =') + app_toml("api", 9000, repository="ACME/web"),
    )
    assert str(refusal(path)) == f"{path}, app 'api', key 'repository': repository ACME/web already triggers app 'web'"


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        (
            'chain_prefix = "deployer"',
            "deployer.chain_prefix",
            "must be 1 to 8 uppercase letters or digits, starting with a letter",
        ),
        (
            'chain_prefix = "DEPLOYERS1"',
            "deployer.chain_prefix",
            "must be 1 to 8 uppercase letters or digits, starting with a letter",
        ),
        (
            'bridge = "a-bridge-name-too-long"',
            "deployer.bridge",
            "must be a Linux interface name of at most 15 characters",
        ),
        ('network = "-net"', "deployer.network", "must be a Docker network name"),
        ("hook_timeout = 0", "deployer.hook_timeout", "must be greater than 0"),
        ("lock_wait = -1", "deployer.lock_wait", "must not be negative"),
        ('state_dir = ""', "deployer.state_dir", "must be a path"),
    ],
)
def test_bad_settings(tmp_path, line, key, message):
    path = write(tmp_path, f"[deployer]\n{line}\n" + MINIMAL)
    assert str(refusal(path)) == f"{path}, key '{key}': {message}"


@pytest.mark.parametrize("prefix", ["DOCKER", "OUTPUT"])
def test_chain_prefix_must_not_name_chains_the_deployer_does_not_own(tmp_path, prefix):
    path = write(tmp_path, f'[deployer]\nchain_prefix = "{prefix}"\n' + MINIMAL)
    assert "deployer.chain_prefix" in str(refusal(path))


# --- secrets -------------------------------------------------------------------------------------

REGISTRY = '\n[registries."registry.example:5000"]\nusername = "ci"\n'
WHERE = "registries.registry.example:5000"


def test_inline_password_is_refused_without_echoing_it(tmp_path):
    path = write(tmp_path, MINIMAL + REGISTRY + 'password = "hunter2"\n')
    error = refusal(path)
    assert error.context == {"path": str(path), "key": f"{WHERE}.password"}
    assert str(error).startswith(f"{path}, key '{WHERE}.password': ")
    assert "hunter2" not in str(error)


def test_inline_password_refusal_explains_where_secrets_go(tmp_path):
    path = write(tmp_path, MINIMAL + REGISTRY + 'password = "hunter2"\n')
    message = str(refusal(path))
    if message != (
        f"{path}, key '{WHERE}.password': secrets are not written in the config: use password_file or password_env"
    ):
        pytest.fail(message)


def test_password_env_unset(tmp_path):
    path = write(tmp_path, MINIMAL + REGISTRY + 'password_env = "REGISTRY_PASSWORD"\n')
    assert str(refusal(path, {"REGISTRY_PASSWORD": ""})) == (
        f"{path}, key '{WHERE}.password_env': environment variable REGISTRY_PASSWORD is not set"
    )


def test_password_env_set(tmp_path):
    path = write(tmp_path, MINIMAL + REGISTRY + 'password_env = "REGISTRY_PASSWORD"\n')
    loaded = config.load(path, environ={"REGISTRY_PASSWORD": "s3cret"})
    assert dict(loaded.registries) == {
        "registry.example:5000": RegistryAuth(registry="registry.example:5000", username="ci", password="s3cret")
    }
    assert loaded.secret_env_names == frozenset({"REGISTRY_PASSWORD"})
    assert loaded.secrets() == ["s3cret"]
    assert "s3cret" not in repr(loaded.registries)


def test_password_file_missing(tmp_path):
    path = write(tmp_path, MINIMAL + REGISTRY + 'password_file = "secrets/registry"\n')
    assert str(refusal(path)) == (
        f"{path}, key '{WHERE}.password_file': cannot read secret file "
        f"{tmp_path / 'secrets' / 'registry'}: No such file or directory"
    )


def test_password_file_is_read_relative_to_the_config_and_stripped(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "registry").write_text("s3cret\n")
    path = write(tmp_path, MINIMAL + REGISTRY + 'password_file = "secrets/registry"\n')
    loaded = config.load(path, environ={})
    assert loaded.registries["registry.example:5000"].password == "s3cret"
    assert loaded.secret_env_names == frozenset()


def test_empty_password_file(tmp_path):
    (tmp_path / "registry.pw").write_text("\n")
    path = write(tmp_path, MINIMAL + REGISTRY + 'password_file = "registry.pw"\n')
    assert str(refusal(path)) == f"{path}, key '{WHERE}.password_file': secret is empty"


def test_password_needs_a_source_and_only_one(tmp_path):
    path = write(tmp_path, MINIMAL + REGISTRY)
    assert str(refusal(path)) == f"{path}, key '{WHERE}': one of password_file or password_env is required"
    path = write(tmp_path, MINIMAL + REGISTRY + 'password_file = "a"\npassword_env = "B"\n')
    assert str(refusal(path)) == f"{path}, key '{WHERE}': set only one of password_file and password_env"


# --- env files and paths ----------------------------------------------------------------------------


def test_parse_env_file_follows_dockers_format():
    text = '# a comment\n\n   \nA=1\n  # indented comment\nB=two words \nC=x=y\nQUOTED="q"\nEMPTY=\n'
    assert config.parse_env_file(text) == {"A": "1", "B": "two words ", "C": "x=y", "QUOTED": '"q"', "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A=1\nNOT A PAIR\n", "line 2: expected NAME=value"),
        ("1A=x\n", "line 1: expected NAME=value"),
        ("=x\n", "line 1: expected NAME=value"),
    ],
)
def test_parse_env_file_bad_line(text, message):
    with pytest.raises(ValueError) as caught:
        config.parse_env_file(text)
    assert str(caught.value) == message


def test_bad_env_file_line_names_the_file_line_app_and_key(tmp_path):
    (tmp_path / "web.env").write_text("# settings\nA=1\n\nexport B\n")
    path = write(tmp_path, MINIMAL.replace("image =", 'env_files = ["web.env"]\nimage ='))
    assert str(refusal(path)) == (
        f"{path}, app 'web', key 'env_files[0]': {tmp_path / 'web.env'}: line 4: expected NAME=value"
    )


def test_missing_env_file(tmp_path):
    path = write(tmp_path, MINIMAL.replace("image =", 'env_files = ["web.env"]\nimage ='))
    assert str(refusal(path)) == (
        f"{path}, app 'web', key 'env_files[0]': cannot read {tmp_path / 'web.env'}: No such file or directory"
    )


def test_env_precedence_later_files_then_inline_env_win(tmp_path):
    (tmp_path / "base.env").write_text("A=base\nB=base\nC=base\n")
    (tmp_path / "local.env").write_text("B=local\nC=local\n")
    path = write(
        tmp_path,
        MINIMAL.replace(
            "image =", 'env_files = ["base.env", "local.env"]\nenv = { C = "inline", PORT = 8080 }\nimage ='
        ),
    )
    assert dict(config.load(path, environ={}).app("web").env) == {
        "A": "base",
        "B": "local",
        "C": "inline",
        "PORT": "8080",
    }


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc" / "deployer"
    (folder / "env").mkdir(parents=True)
    (folder / "env" / "web.env").write_text("FROM_FILE=1\n")
    for hooks in (tmp_path / "opt" / "hooks", folder / "web-hooks"):  # a configured hooks folder must exist
        hooks.mkdir(parents=True)
    path = write(
        folder,
        f'[deployer]\nstate_dir = "state"\nhooks_dir = "{tmp_path}/opt/hooks"\n'
        + MINIMAL.replace("image =", 'hooks_dir = "web-hooks"\nenv_files = ["env/web.env"]\nimage ='),
    )
    monkeypatch.chdir(tmp_path)  # somewhere else: the working folder must not matter
    loaded = config.load(path, environ={})
    assert loaded.settings.state_dir == folder / "state"
    assert loaded.settings.hooks_dir == tmp_path / "opt" / "hooks"
    assert loaded.app("web").hooks_dir == folder / "web-hooks"
    assert loaded.hooks_dir_for(loaded.app("web")) == folder / "web-hooks"
    assert dict(loaded.app("web").env) == {"FROM_FILE": "1"}


def test_config_error_without_app_or_key():
    error = ConfigError("config file not found", path="/x.toml")
    assert str(error) == "/x.toml: config file not found"
    assert error.context == {"path": "/x.toml"}


def test_the_backend_is_iptables_unless_the_config_says_nftables(tmp_path):
    assert config.load(write(tmp_path, MINIMAL), environ={}).settings.backend == "iptables"
    nftables = write(tmp_path, '[deployer]\nbackend = "nftables"\n' + MINIMAL)
    assert config.load(nftables, environ={}).settings.backend == "nftables"


def test_an_unknown_backend_is_refused_naming_the_key(tmp_path):
    path = write(tmp_path, '[deployer]\nbackend = "pf"\n' + MINIMAL)
    assert str(refusal(path)) == f"{path}, key 'deployer.backend': must be \"iptables\" or \"nftables\", not 'pf'"


def test_the_nftables_backend_takes_every_feature_a_host_bound_app_and_a_canary_too(tmp_path):
    nginx = "[apps.nginx]\nhost_bound = true\n[[apps.nginx.ports]]\nexternal = 80\n"
    web = MINIMAL.replace('image = "registry.example:5000/web"\n', 'image = "registry.example:5000/web"\ncanary = 10\n')
    loaded = config.load(write(tmp_path, '[deployer]\nbackend = "nftables"\n' + web + nginx), environ={})
    assert (loaded.apps["nginx"].host_bound, loaded.apps["web"].canary) == (True, 10)


def test_ipv6_is_off_unless_said_and_its_subnet_is_checked(tmp_path):
    loaded = config.load(write(tmp_path, MINIMAL), environ={})
    assert (loaded.settings.ipv6, loaded.settings.ipv6_subnet, loaded.apps["web"].ipv6) == (
        False,
        "fd6e:3b1d:5e2a::/64",
        True,
    )
    on = config.load(write(tmp_path, '[deployer]\nipv6 = true\nipv6_subnet = "FD42:0d0c::/56"\n' + MINIMAL), environ={})
    assert (on.settings.ipv6, on.settings.ipv6_subnet) == (True, "fd42:d0c::/56")
    for subnet, why in [
        ("172.18.0.0/16", "must be an IPv6 network with its prefix length"),
        ("fd42::1/64", "must be an IPv6 network with its prefix length"),  # host bits set
        ("fd42::/96", "must be a unique local or global network of /48 to /64"),
        ("fe80::/64", "must be a unique local or global network of /48 to /64"),
    ]:
        path = write(tmp_path, f'[deployer]\nipv6 = true\nipv6_subnet = "{subnet}"\n' + MINIMAL)
        assert str(refusal(path)).startswith(f"{path}, key 'deployer.ipv6_subnet': {why}")


def test_ipv6_forwarding_is_fixed_unless_the_config_says_check(tmp_path):
    assert config.load(write(tmp_path, MINIMAL), environ={}).settings.ipv6_forwarding == "fix"
    check = write(tmp_path, '[deployer]\nipv6_forwarding = "check"\n' + MINIMAL)
    assert config.load(check, environ={}).settings.ipv6_forwarding == "check"
    path = write(tmp_path, '[deployer]\nipv6_forwarding = "yes"\n' + MINIMAL)
    assert str(refusal(path)) == f"{path}, key 'deployer.ipv6_forwarding': must be \"fix\" or \"check\", not 'yes'"


def test_ipv6_is_refused_where_it_is_not_done_yet_naming_why(tmp_path):
    """A cluster host takes IPv6 only with its shared IPv6 address (tests/unit/test_cluster_config.py)."""
    nftables = write(tmp_path, '[deployer]\nipv6 = true\nbackend = "nftables"\n' + MINIMAL)
    assert config.load(nftables, environ={}).settings.backend == "nftables"  # both backends write IPv6
    cluster = (
        '[cluster]\naddress = "198.18.10.100"\ninterface = "eth0"\nsubnet = "198.18.10.0/24"\nbuckets = 2\nhash_seed = 7\n'
        'host = "h1"\nhosts = [{ name = "h1", address = "198.18.10.1" }, { name = "h2", address = "198.18.10.2" }]\n'
    )
    path = write(tmp_path, "[deployer]\nipv6 = true\n" + MINIMAL + cluster)
    assert str(refusal(path)).startswith(f"{path}, key 'deployer.ipv6': needs [cluster] address6 and subnet6")
