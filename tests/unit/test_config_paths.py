"""Every path in the config is absolute once loaded, relative to the config file's folder, whatever the cwd.

A hook runs with its own folder as working directory, so a path left relative names another file there.
"""

import os
from pathlib import Path

import pytest

from deployer import config
from deployer.adapters.processes import run_hook
from deployer.plan.hooks import hook_path

CONFIG = """\
[deployer]
state_dir = "state"
hooks_dir = "hooks"

[registries."registry.example:5000"]
username = "deploy"
password_file = "secrets/registry"

[apps.web]
image = "registry.example:5000/web"
repository = "acme/web"
env_files = ["env/web.env"]
maintenance_page = "pages/web.html"
github_secret_file = "secrets/web-github"

[[apps.web.ports]]
external = 8000
container = 80
blue = 8001
green = 8002

[apps.api]
image = "registry.example:5000/api"
hooks_dir = "api-hooks"

[[apps.api.ports]]
external = 9000
container = 80
blue = 9001
green = 9002

[server]
github_secret_file = "secrets/github"
"""


def make_folder(root: Path) -> Path:
    """etc/deployer.toml and the files it names, relative to etc/."""
    etc = root / "etc"
    for name, text in {
        "secrets/registry": "pw",
        "secrets/github": "gh",
        "secrets/web-github": "web-gh",
        "env/web.env": "A=1\n",
        "pages/web.html": "<p>soon</p>",
    }.items():
        (etc / name).parent.mkdir(parents=True, exist_ok=True)
        (etc / name).write_text(text)
    hook = etc / "hooks" / "post-healthy"
    hook.parent.mkdir()
    hook.write_text('#!/bin/sh\necho "post-healthy ran in $(pwd)"\n')
    hook.chmod(0o755)
    (etc / "api-hooks").mkdir()  # a configured hooks folder must exist
    (etc / "deployer.toml").write_text(CONFIG)
    return etc


def test_a_config_named_by_a_relative_path_gives_absolute_paths_beside_it(tmp_path, monkeypatch):
    etc = make_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    loaded = config.load("etc/deployer.toml", environ={})

    assert loaded.path == etc / "deployer.toml"
    assert loaded.settings.state_dir == etc / "state"
    assert loaded.settings.hooks_dir == etc / "hooks"
    assert loaded.app("api").hooks_dir == etc / "api-hooks"
    assert loaded.app("web").maintenance_page == etc / "pages/web.html"
    assert (loaded.app("web").env, loaded.registries["registry.example:5000"].password) == ({"A": "1"}, "pw")
    for found in (
        loaded.path,
        loaded.settings.state_dir,
        loaded.settings.hooks_dir,
        loaded.app("api").hooks_dir,
        loaded.app("web").maintenance_page,
    ):
        assert found.is_absolute()


def test_dot_dot_in_the_config_path_is_folded_away(tmp_path, monkeypatch):
    etc = make_folder(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = config.load("../etc/deployer.toml", environ={})
    assert (loaded.path, loaded.settings.hooks_dir) == (etc / "deployer.toml", etc / "hooks")


def test_the_receiver_resolves_its_paths_the_same_way(tmp_path, monkeypatch):
    etc = make_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    receiver = config.load_receiver("etc/deployer.toml", environ={})
    assert (receiver.path, receiver.settings.state_dir) == (etc / "deployer.toml", etc / "state")
    assert receiver.server.github_secret == "gh"


@pytest.mark.parametrize("run_in", ["etc", "other"])
def test_a_hook_from_a_relative_config_path_runs_from_any_working_folder(tmp_path, monkeypatch, run_in):
    """`deployer -c deployer.toml deploy ...` in the config's folder (it used to exit 126), or elsewhere."""
    etc = make_folder(tmp_path)
    monkeypatch.chdir(etc)
    loaded = config.load("deployer.toml", environ={})
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / run_in)

    hook = hook_path(loaded.hooks_dir_for(loaded.app("web")), "post-healthy")
    assert hook == etc / "hooks" / "post-healthy"
    outcome = run_hook(hook, {"PATH": os.defpath}, timeout=10)
    assert (outcome.exit_code, outcome.output) == (0, f"post-healthy ran in {etc / 'hooks'}\n")
