"""`deployer setup`: the plan from the facts (tables), a real run under --root with the accounts and systemd faked,
a second run that changes nothing, a planted link refused, and the shipped example config kept loadable."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from deployer import config, wiring
from deployer.cli.main import main
from deployer.errors import ConfigError, UnsafePath
from deployer.plan import setup
from deployer.plan.setup import Facts, Options, PathFact
from support.setup_fakes import FakeAccounts, FakeSystemctl, fake_host

REPO = Path(__file__).resolve().parents[2]
SOURCES = setup.Sources(
    example_config="[server]\n",
    units={name: f"[Unit]\nDescription={name}\n" for name in setup.units_of(Options(cluster=True))},
    completions={"bash": "complete -F _deployer deployer\n", "zsh": "#compdef deployer\n"},
    man_page=".TH DEPLOYER 1\n",
)


def set_up(wanted: setup.Targets, **changes: PathFact) -> Facts:
    """The facts of a host that holds `wanted`, but for the paths (by name) in `changes`."""
    paths = {folder.path: PathFact("folder", folder.owner.user, folder.owner.group, folder.owner.mode)
             for folder in wanted.folders}  # fmt: skip
    for file in wanted.files:
        paths[file.path] = PathFact("file", file.owner.user, file.owner.group, file.owner.mode, file.text)
    for name, fact in changes.items():
        [path] = [path for path in paths if path.name == name]
        paths[path] = fact
    return Facts(users=frozenset({"root", "deployer"}), groups=frozenset({"root", "deployer"}), paths=paths)


def kinds(plan) -> list[str]:
    return [type(step).__name__ for step in plan]


def test_a_fresh_host_gets_the_accounts_then_the_folders_then_the_files_then_a_reload():
    wanted = setup.targets(Options(), SOURCES)
    plan = setup.steps(wanted, Facts(users=frozenset({"root"}), groups=frozenset({"root"})))
    assert kinds(plan) == (
        ["CreateGroup", "CreateUser"] + ["MakeFolder"] * 7 + ["WriteFile"] + ["GenerateSecret"] * 3
        + ["WriteFile"] * 5 + ["ReloadUnits"]
    )  # fmt: skip
    assert [str(step) for step in plan[:3]] == [
        "create the system group deployer",
        "create the system user deployer (group deployer, no home, shell /usr/sbin/nologin)",
        "create the folder /etc/deployer (root:deployer 0750)",
    ]
    modes = {str(step.path): str(step.owner) for step in plan if hasattr(step, "owner")}
    assert modes["/etc/deployer/deployer.toml"] == "root:deployer 0640"
    assert modes["/etc/deployer/github-secret"] == "root:deployer 0640"
    assert modes["/etc/deployer/console-session-key"] == "root:deployer 0640"  # signs the console's cookies
    assert modes["/var/lib/deployer/state/queue"] == "root:deployer 2770"
    assert modes["/etc/systemd/system/deployer-serve.service"] == "root:root 0644"
    assert "/etc/systemd/system/deployer-cluster.service" not in modes


@pytest.mark.parametrize(
    ("options", "changes", "expected"),
    [
        (Options(), {}, []),  # set up: nothing to do
        # the config and the secrets are never rewritten, only given their owner and mode
        (
            Options(),
            {"deployer.toml": PathFact("file", "root", "root", 0o644, "mine")},
            ["set /etc/deployer/deployer.toml to root:deployer 0640"],
        ),
        (
            Options(),
            {"github-secret": PathFact("file", "root", "root", 0o644)},
            ["set /etc/deployer/github-secret to root:deployer 0640"],
        ),
        # a shipped file that differs is replaced; a unit needs a reload
        (
            Options(),
            {"deployer-serve.service": PathFact("file", "root", "root", 0o644, "old")},
            ["replace /etc/systemd/system/deployer-serve.service (root:root 0644)", "systemctl daemon-reload"],
        ),
        (
            Options(),
            {"deployer.1": PathFact("file", "root", "root", 0o644, "old")},
            ["replace /usr/local/share/man/man1/deployer.1 (root:root 0644)"],
        ),
        (
            Options(),
            {"queue": PathFact("folder", "root", "root", 0o700)},
            ["set /var/lib/deployer/state/queue to root:deployer 2770"],
        ),
        # under another root nothing is reloaded: no systemd runs there
        (
            Options(root=Path("/mnt")),
            {"deployer-serve.service": PathFact("file", "root", "root", 0o644, "old")},
            ["replace /mnt/etc/systemd/system/deployer-serve.service (root:root 0644)"],
        ),
        # where systemd does not run (a chroot, an image build) there is nothing to reload
        (
            Options(systemd_running=False),
            {"deployer-serve.service": PathFact("file", "root", "root", 0o644, "old")},
            ["replace /etc/systemd/system/deployer-serve.service (root:root 0644)"],
        ),
        # --enable starts serve, and the cluster agent when configured; never the watchdog by itself
        (Options(enable=True), {}, ["systemctl enable --now deployer-serve.service"]),
        (
            Options(enable=True, cluster=True),
            {},
            ["systemctl enable --now deployer-serve.service deployer-cluster.service"],
        ),
    ],
)
def test_only_what_differs_is_changed(options, changes, expected):
    wanted = setup.targets(options, SOURCES)
    assert [str(step) for step in setup.steps(wanted, set_up(wanted, **changes))] == expected


def test_running_units_are_not_enabled_again():
    wanted = setup.targets(Options(enable=True), SOURCES)
    facts = set_up(wanted)
    assert (
        setup.steps(wanted, Facts(facts.users, facts.groups, facts.paths, frozenset({"deployer-serve.service"}))) == []
    )


@pytest.mark.parametrize(
    ("name", "fact", "message"),
    [
        ("deployer.toml", PathFact("link"), "/etc/deployer/deployer.toml is a symbolic link"),
        ("operators", PathFact("link"), "/etc/deployer/operators is a symbolic link"),
        ("deployer-serve.service", PathFact("folder"), "deployer-serve.service is not a plain file"),
        ("state", PathFact("file"), "/var/lib/deployer/state is not a folder"),
    ],
)
def test_a_link_or_the_wrong_kind_of_entry_at_a_target_is_refused(name, fact, message):
    wanted = setup.targets(Options(), SOURCES)
    with pytest.raises(UnsafePath, match=message):
        setup.steps(wanted, set_up(wanted, **{name: fact}))


@pytest.mark.parametrize(
    ("venv", "real", "warned"),
    [
        ("/opt/deployer/.venv/bin/python", "/usr/bin/python3.11", None),
        ("/opt/deployer/.venv/bin/python", "/root/.pyenv/versions/3.11.7/bin/python3.11", "/root/.pyenv"),
        ("/home/ann/deployer/.venv/bin/python", "/usr/bin/python3.11", "/home/ann/deployer/.venv/bin/python"),
    ],
)
def test_a_venv_or_python_under_a_home_folder_is_warned_about(venv, real, warned):
    warning = setup.interpreter_warning(venv, real)
    assert (warning is None) == (warned is None)
    if warned is not None:
        assert f"the receiver would run {warned}" in warning and "/usr/bin/python3" in warning


def test_a_dry_run_says_would_and_a_set_up_host_says_so():
    assert setup.describe([setup.ReloadUnits()], dry_run=True) == ["would systemctl daemon-reload"]
    assert setup.describe([], dry_run=False) == ["nothing to change: this host is set up"]


# --- a real run under --root -----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path, monkeypatch):
    folder = tmp_path / "root"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    accounts, systemctl = FakeAccounts(), FakeSystemctl()
    monkeypatch.setattr(wiring, "build_host_setup", lambda where: fake_host(where, accounts, systemctl))
    return SimpleNamespace(path=folder, accounts=accounts, systemctl=systemctl)


def mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.lstat().st_mode):04o}"


def test_setup_under_a_root_installs_everything_and_a_second_run_changes_nothing(root, capsys):
    assert main(["setup", "--root", str(root.path)]) == 0
    first = capsys.readouterr().out
    assert "create the system user deployer" in first and first.rstrip().splitlines()[-1].startswith("next:")
    accounts = root.accounts
    assert accounts.effects == [("groupadd", "deployer"), ("useradd", "deployer", "deployer", "/usr/sbin/nologin")]
    assert root.systemctl.effects == []  # under another root: no daemon-reload, nothing enabled

    etc = root.path / "etc/deployer"
    assert (etc / "deployer.toml").read_text() == (REPO / "deploy/deployer.toml.example").read_text()
    for secret in (etc / "github-secret", etc / "operators/admin"):
        assert re.fullmatch(r"[0-9a-f]{64}\n", secret.read_text())
        assert mode(secret) == "0640"
        assert accounts.owner(secret.stat()) == ("root", "deployer")
    assert (etc / "github-secret").read_text() != (etc / "operators/admin").read_text()
    assert (
        mode(etc),
        mode(root.path / "var/lib/deployer/state"),
        mode(root.path / "var/lib/deployer/state/audit"),
    ) == (
        "0750",
        "0750",
        "2770",
    )
    unit = root.path / "etc/systemd/system/deployer-serve.service"
    assert unit.read_text() == (REPO / "deploy/systemd/deployer-serve.service").read_text() and mode(unit) == "0644"
    assert (root.path / "usr/local/share/man/man1/deployer.1").read_text() == (REPO / "docs/man/deployer.1").read_text()
    assert (root.path / "usr/local/share/zsh/site-functions/_deployer").exists()
    assert (root.path / "usr/local/share/bash-completion/completions/deployer").exists()

    secret = (etc / "github-secret").read_text()
    assert main(["setup", "--root", str(root.path)]) == 0
    assert capsys.readouterr().out == "nothing to change: this host is set up\n"
    assert (etc / "github-secret").read_text() == secret
    assert len(accounts.effects) == 2


def test_a_dry_run_changes_nothing(root, capsys):
    assert main(["setup", "--root", str(root.path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would create the system group deployer\n")
    assert f"would generate the secret {root.path}/etc/deployer/github-secret (root:deployer 0640)" in out
    assert list(root.path.iterdir()) == [] and root.accounts.effects == []


def test_a_planted_link_at_a_target_is_refused_and_its_target_untouched(root, tmp_path, capsys):
    (root.path / "etc/deployer").mkdir(parents=True)
    (root.path / "etc").chmod(0o755)
    (root.path / "etc/deployer").chmod(0o750)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not yours\n")
    (root.path / "etc/deployer/github-secret").symlink_to(elsewhere)
    assert main(["setup", "--root", str(root.path)]) == 1
    assert "github-secret is a symbolic link; refusing to use it" in capsys.readouterr().err
    assert elsewhere.read_text() == "not yours\n" and root.accounts.effects == []


def test_a_folder_another_user_can_write_is_refused(root, capsys):
    (root.path / "etc").mkdir()
    (root.path / "etc").chmod(0o777)
    assert main(["setup", "--root", str(root.path)]) == 1
    assert f"{root.path}/etc can be written by another user than root" in capsys.readouterr().err


def test_enable_does_not_go_with_another_root(root, capsys):
    assert main(["setup", "--root", str(root.path), "--enable"]) == 2
    assert "--enable starts the units on this host" in capsys.readouterr().err


# --- the shipped example config ------------------------------------------------------------------------


def test_the_example_config_loads_as_shipped_and_with_every_key_uncommented(tmp_path):
    """As shipped (the app commented) it lacks only an app; with every `#key` line uncommented it loads whole."""
    text = (REPO / "deploy/deployer.toml.example").read_text()
    for name in (
        "github-secret",
        "operators/admin",
        "audit-token",
        "metrics-token",
        "registry.password",
        "github-deployments",
        "notify-secret",
        "console-session-key",
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "slack-webhook-url").write_text("https://hooks.slack.com/services/T0/B0/0123456789abcdef\n")
    shipped = tmp_path / "deployer.toml"
    shipped.write_text(text)
    with pytest.raises(ConfigError, match="at least one app must be configured"):
        config.load(shipped, environ={})

    shipped.write_text(re.sub(r"(?m)^#(?=[^\s#])", "", text))
    loaded = config.load(shipped, environ={})
    assert loaded.settings.state_dir == Path("/var/lib/deployer/state")
    assert (loaded.server.user, loaded.server.group, loaded.server.listen) == ("deployer", "deployer", "127.0.0.1:8000")
    assert set(loaded.apps) == {"web"} and set(loaded.server.operators) == {"admin"}
    assert loaded.app("web").health.path == "/healthz"
