"""The keys that report deploys: GitHub tokens and environments, [[notify]] targets; what loads, every refusal,
and the loader of the unprivileged report loop, which reads none of the worker's secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer import config
from deployer.config.model import GithubReport, NotifyTarget, ReportsConfig
from deployer.config.reports import DEFAULT_NOTIFY_EVENTS
from deployer.errors import ConfigError

APP = """\
[apps.web]
image = "registry.example:5000/web"
repository = "octo/web"
{extra}

[[apps.web.ports]]
external = 8000
container = 80
blue = 8001
green = 8002
"""


def load(tmp_path: Path, text: str, environ: dict | None = None) -> config.Config:
    path = tmp_path / "deployer.toml"
    path.write_text(text)
    return config.load(path, environ=environ or {})


def refused(tmp_path: Path, text: str, environ: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    return str(caught.value)


def test_reports_load_with_every_value(tmp_path):
    (tmp_path / "token").write_text("ghs_servertoken\n")
    (tmp_path / "hook-secret").write_text("s3cret-notify\n")
    text = (
        '[server]\ngithub_token_file = "token"\nreport_timeout = "3s"\n\n'
        + APP.format(extra='github_environment = "prod/eu"\nenvironment_url = "https://web.example"')
        + '\n[[notify]]\nurl = "https://hooks.example/x"\nsecret_file = "hook-secret"\n'
        + '\n[[notify]]\nname = "slack"\nurl = "http://127.0.0.1:9/s"\nformat = "slack"\nevents = ["*"]\n'
    )
    loaded = load(tmp_path, text)
    assert loaded.reports == ReportsConfig(
        github={"web": GithubReport("octo/web", "prod/eu", "https://web.example", "ghs_servertoken")},
        notify=(
            NotifyTarget("0", "https://hooks.example/x", "json", frozenset(DEFAULT_NOTIFY_EVENTS), "s3cret-notify"),
            NotifyTarget("slack", "http://127.0.0.1:9/s", "slack", frozenset({"*"}), None),
        ),
        timeout=3.0,
    )
    assert "ghs_servertoken" in loaded.secrets() and "s3cret-notify" in loaded.secrets()
    assert "ghs_servertoken" not in repr(loaded.reports)


def test_an_app_token_from_the_environment_wins_and_only_the_report_loop_gets_it(tmp_path):
    text = '[server]\ngithub_token_env = "SERVER_TOKEN"\n\n' + APP.format(extra='github_token_env = "WEB_TOKEN"')
    environ = {"WEB_TOKEN": "ghs_web", "SERVER_TOKEN": "ghs_server", "PATH": "/bin", "OTHER": "x"}
    loaded = load(tmp_path, text, environ)
    assert loaded.reports.github["web"].token == "ghs_web"
    assert loaded.report_env_names == {"WEB_TOKEN", "SERVER_TOKEN"}
    assert config.receiver_environment(loaded, environ) == {"PATH": "/bin", "DEPLOYER_CONFIG": str(loaded.path)}
    assert config.report_environment(loaded, environ) == {
        "PATH": "/bin",
        "DEPLOYER_CONFIG": str(loaded.path),
        "SERVER_TOKEN": "ghs_server",
        "WEB_TOKEN": "ghs_web",
    }


def test_without_a_token_nothing_is_reported_to_github(tmp_path):
    assert load(tmp_path, APP.format(extra="")).reports == ReportsConfig()


def test_the_report_loop_reads_only_its_part(tmp_path):
    (tmp_path / "token").write_text("ghs_t")
    text = (
        '[deployer]\nstate_dir = "st"\n\n[server]\ngithub_token_file = "token"\n'
        'github_api = "http://127.0.0.1:22901/"\n\n'
        '[registries."registry.example:5000"]\nusername = "u"\npassword_file = "root-only"\n\n' + APP.format(extra="")
    )
    path = tmp_path / "deployer.toml"
    path.write_text(text)
    setup = config.load_reports(path, environ={})  # the registry password file does not even exist
    assert setup.settings.state_dir == tmp_path / "st"
    assert setup.github_api == "http://127.0.0.1:22901"
    assert setup.reports.github == {"web": GithubReport("octo/web", "web", None, "ghs_t")}


@pytest.mark.parametrize(
    "server, extra, notify, message",
    [
        ('github_token = "ghs_x"', "", "", "secrets are not written in the config: use github_token_file"),
        ("", 'github_token = "ghs_x"', "", "secrets are not written in the config: use github_token_file"),
        ('report_timeout = "soon"', "", "", "must be a number of seconds or a time"),
        ('github_token_env = "T"', "", "", "environment variable T is not set"),
        ("", 'github_token_env = "T"\ngithub_environment = ""', "", "must be 1 to 255 letters"),
        ("", 'github_token_env = "T"\nenvironment_url = "ftp://x"', "", "must be an http(s) URL"),
        ("", "", 'url = "https://x.example"\nevents = ["deploy.exploded"]', "unknown event 'deploy.exploded'"),
        ("", "", 'url = "https://x.example"\nevents = []', 'must be a list of event names, or ["*"] for all'),
        ("", "", 'url = "https://x.example"\nformat = "teams"', "must be one of json, slack"),
        ("", "", 'url = "file:///etc/passwd"', "must be an http(s) URL"),
        ("", "", 'format = "json"', "is required: the http(s) URL notifications are posted to"),
        ("", "", 'url = "https://x.example"\nsecret = "inline"', "unknown key"),
        ("", "", 'url = "https://x.example"\nheaders = {}', "unknown key"),
        ("", "", 'url = "https://x.example"\nname = "a b"', "must be 1 to 64 letters"),
        ("", "", 'url = "https://x.example"\nurl_env = "U"', "set only one of url, url_file and url_env"),
        ("", "", 'url_file = "/nonexistent/slack-url"', "cannot read secret file /nonexistent/slack-url"),
    ],
)
def test_every_refusal(tmp_path, server, extra, notify, message):
    text = f"[server]\n{server}\n\n" + APP.format(extra=extra) + (f"\n[[notify]]\n{notify}\n" if notify else "")
    assert message in refused(tmp_path, text, {"T": "ghs_t"} if 'T"\n' in extra else {})


def test_a_url_from_a_file_is_a_secret_like_a_token(tmp_path):
    """A Slack incoming webhook's URL is its credential: from url_file it is masked wherever secrets are."""
    (tmp_path / "slack-url").write_text("https://hooks.slack.com/services/T0/B0/sEcReTpart\n")
    text = APP.format(extra="") + '\n[[notify]]\nurl_file = "slack-url"\nformat = "slack"\n'
    loaded = load(tmp_path, text)
    [target] = loaded.reports.notify
    assert (target.url, target.url_is_secret) == ("https://hooks.slack.com/services/T0/B0/sEcReTpart", True)
    assert target.url in loaded.secrets() and target.url in loaded.reports.secrets()
    inline = load(tmp_path, APP.format(extra="") + '\n[[notify]]\nurl = "https://hooks.example/x"\n')
    assert "https://hooks.example/x" not in inline.secrets()


def test_a_github_key_without_a_repository_is_refused(tmp_path):
    text = APP.format(extra='github_environment = "prod"').replace('repository = "octo/web"\n', "")
    assert "github_environment needs the app's repository" in refused(tmp_path, text)


def test_two_targets_with_one_name_are_refused(tmp_path):
    text = (
        APP.format(extra="")
        + '\n[[notify]]\nname = "a"\nurl = "http://x"\n\n[[notify]]\nname = "a"\nurl = "http://y"\n'
    )
    assert "two [[notify]] targets have the same name" in refused(tmp_path, text)
