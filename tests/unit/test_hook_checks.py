"""Hooks checked at load: a configured folder that is missing, a hook without the exec bit, a hook's name with a
suffix: each is a config error naming the file, where a deploy would otherwise skip the hook without a word."""

from pathlib import Path

import pytest

from deployer import config
from deployer.config.hooks import hook_file_problem, hooks_folders
from deployer.errors import ConfigError

APP = """
[apps.web]
image = "registry.example:5000/web"
{app_line}

[[apps.web.ports]]
external = 8000
container = 80
blue = 8001
green = 8002
"""


@pytest.mark.parametrize(
    "name, is_file, executable, problem",
    [
        ("post-healthy", True, True, None),
        ("pre-deploy", True, True, None),
        ("post-healthy", True, False, "is not executable: a deploy would skip it (chmod +x it)"),
        ("post-healthy", False, True, "is not a file: a hook is an executable file"),
        ("post-healthy.sh", True, True, "is never run: a hook is named exactly 'post-healthy', without a suffix"),
        ("on-failure.py", True, False, "is never run: a hook is named exactly 'on-failure', without a suffix"),
        ("README.md", True, False, None),
        ("lib", False, False, None),
        (".post-healthy.swp", True, False, None),
        ("post-healthy~", True, False, None),
    ],
)
def test_what_is_wrong_with_an_entry_of_a_hooks_folder(name, is_file, executable, problem):
    assert hook_file_problem(name, is_file=is_file, executable=executable) == problem


def write(tmp_path, hooks_line="", app_line=""):
    path = tmp_path / "deployer.toml"
    path.write_text(f'[deployer]\nstate_dir = "state"\n{hooks_line}\n' + APP.format(app_line=app_line))
    return path


def hook(folder, name, mode=0o755):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("#!/bin/sh\n")
    (folder / name).chmod(mode)


def refusal(path):
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_a_configured_folder_that_does_not_exist_is_refused(tmp_path):
    path = write(tmp_path, 'hooks_dir = "/nonexistent/hooks"')
    assert refusal(path) == f"{path}, key 'deployer.hooks_dir': names no folder: /nonexistent/hooks"


def test_an_app_folder_that_does_not_exist_is_refused(tmp_path):
    path = write(tmp_path, app_line='hooks_dir = "web-hooks"')
    assert refusal(path) == f"{path}, app 'web', key 'hooks_dir': names no folder: {tmp_path / 'web-hooks'}"


def test_the_default_folder_may_be_absent(tmp_path):
    assert config.load(write(tmp_path), environ={}).settings.hooks_dir == tmp_path / "hooks"


def test_a_hook_without_the_exec_bit_is_refused_naming_the_file(tmp_path):
    hook(tmp_path / "hooks", "post-healthy", 0o644)
    path = write(tmp_path, 'hooks_dir = "hooks"')
    assert refusal(path) == (
        f"{path}, key 'deployer.hooks_dir': {tmp_path / 'hooks' / 'post-healthy'} is not "
        f"executable: a deploy would skip it (chmod +x it)"
    )


def test_a_hook_with_a_suffix_is_refused_in_the_default_folder_too(tmp_path):
    hook(tmp_path / "hooks", "post-healthy.sh")
    assert "post-healthy.sh is never run: a hook is named exactly 'post-healthy'" in refusal(write(tmp_path))


def test_an_app_folder_is_checked_on_its_own(tmp_path):
    hook(tmp_path / "web-hooks", "pre-deploy", 0o600)
    path = write(tmp_path, app_line='hooks_dir = "web-hooks"')
    assert refusal(path).startswith(f"{path}, app 'web', key 'hooks_dir': {tmp_path / 'web-hooks' / 'pre-deploy'}")


def test_executable_hooks_and_other_files_load(tmp_path):
    for name in ("pre-deploy", "post-healthy"):
        hook(tmp_path / "hooks", name)
    hook(tmp_path / "hooks", "README.md", 0o644)
    assert config.load(write(tmp_path, 'hooks_dir = "hooks"'), environ={}).settings.hooks_dir == tmp_path / "hooks"


def test_check_loads_a_config_the_hooks_would_refuse_and_lists_the_folders_to_judge(tmp_path):
    hook(tmp_path / "web-hooks", "pre-deploy", 0o600)
    path = write(tmp_path, 'hooks_dir = "/nonexistent/hooks"', app_line='hooks_dir = "web-hooks"')
    assert "names no folder" in refusal(path)
    loaded = config.load(path, environ={}, check_hooks=False)
    folders = hooks_folders(loaded.settings, loaded.apps, configured=True)
    assert [(f.folder, f.key, f.configured, f.app) for f in folders] == [
        (Path("/nonexistent/hooks"), "deployer.hooks_dir", True, None),
        (tmp_path / "web-hooks", "hooks_dir", True, "web"),
    ]
    assert hooks_folders(loaded.settings, loaded.apps, configured=False)[0].app == "web"  # every app has its own
