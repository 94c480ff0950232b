"""--config/-c and --quiet/-q work before the command and after it, nested actions included."""

import pytest

from deployer.cli.main import build_parser, main

COMMANDS = [
    ["status"],
    ["status", "demo", "--json"],
    ["deploy", "demo", "v2"],
    ["rules", "demo"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "show", "42"],
    ["maintenance", "on", "demo"],
    ["serve"],
    ["reconcile"],
]


def parsed(argv):
    args = build_parser().parse_args(argv)
    return args.config, args.quiet


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_flags_before_the_command(command):
    assert parsed(["--config", "x.toml", "-q", *command]) == ("x.toml", True)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_flags_after_the_command(command):
    assert parsed([*command, "--config", "x.toml", "--quiet"]) == ("x.toml", True)
    assert parsed([*command, "-c", "x.toml", "-q"]) == ("x.toml", True)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_without_flags_the_defaults_hold(command):
    assert parsed(command) == (None, False)


def test_a_flag_before_a_command_survives_a_command_that_does_not_repeat_it():
    assert parsed(["-c", "x.toml", "audit", "-q", "verify"]) == ("x.toml", True)
    assert parsed(["-q", "audit", "verify", "-c", "y.toml"]) == ("y.toml", True)


def test_after_the_command_wins_when_given_twice():
    assert parsed(["-c", "first.toml", "status", "-c", "second.toml"])[0] == "second.toml"


def test_the_config_after_the_command_is_the_one_loaded(tmp_path, capsys):
    missing = tmp_path / "nowhere.toml"
    assert main(["status", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"deployer: {missing}: config file not found\n"


def test_nested_help_lists_the_global_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["audit", "verify", "--help"])
    out = capsys.readouterr().out
    assert "--config CONFIG, -c CONFIG" in out and "--quiet, -q" in out
