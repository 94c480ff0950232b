"""The canary's config keys and flags: validated when loaded, with the key and the file in the message."""

import argparse

import pytest

from deployer.cli import canary as canary_cli
from deployer.cli.main import build_parser
from deployer.config import parse
from deployer.errors import ConfigError, UsageError


def app_data(**extra):
    return {
        "deployer": {"state_dir": "/tmp/x"},
        "apps": {
            "demo": {
                "image": "127.0.0.1:5000/demo",
                "ports": [{"external": 1000, "container": 80, "blue": 1001, "green": 1002}],
                **extra,
            }
        },
    }


def test_canary_keys_load_and_default_to_no_canary(tmp_path):
    app = parse(app_data(), path=tmp_path / "d.toml", environ={}).app("demo")
    assert (app.canary, app.canary_sticky, app.canary_bake) == (None, False, None)
    app = parse(app_data(canary=10, canary_sticky=True, canary_bake=600), path=tmp_path / "d.toml", environ={}).app(
        "demo"
    )
    assert (app.canary, app.canary_sticky, app.canary_bake) == (10, True, 600)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("canary", 0, "whole percentage from 1 to 99"),
        ("canary", 100, "whole percentage from 1 to 99"),
        ("canary", "10", "whole percentage from 1 to 99"),
        ("canary_sticky", "yes", "boolean"),
        ("canary_bake", -1, "greater than 0"),
    ],
)
def test_a_bad_canary_key_is_refused_naming_it(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse(app_data(**{key: value}), path=tmp_path / "d.toml", environ={})
    assert key in str(caught.value)


@pytest.mark.parametrize("text, seconds", [("600", 600), ("10m", 600), ("1h", 3600), ("90s", 90)])
def test_bake_times(text, seconds):
    assert canary_cli.duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "101", "ten", "-5"])
def test_a_percent_flag_outside_1_to_99_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="1 to 99"):
        canary_cli.percent(text)


@pytest.mark.parametrize("text, seed", [("0", 0), ("4660", 4660), ("0x1234", 0x1234), ("0xffffffff", 0xFFFFFFFF)])
def test_seed_flags_in_decimal_or_hex(text, seed):
    assert canary_cli.seed(text) == seed


@pytest.mark.parametrize("text", ["abc", "0x", "-1", "0x100000000", "1.5"])
def test_a_seed_flag_that_is_not_32_bits_is_refused_with_what_it_must_be(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"whole number from 0 to 0xffffffff"):
        canary_cli.seed(text)


def test_deploy_seed_abc_says_what_a_seed_is(capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["deploy", "demo", "v2", "--canary", "10", "--sticky", "--seed", "abc"])
    assert caught.value.code == 2
    assert (
        "argument --seed: must be a whole number from 0 to 0xffffffff (decimal or 0x hex), not 'abc'"
        in capsys.readouterr().err
    )


def test_without_a_seed_each_canary_start_draws_one():
    args = argparse.Namespace(canary=10, sticky=True, seed=None, bake=None)
    first, second = canary_cli.canary_start(args), canary_cli.canary_start(args)
    assert first.seed != second.seed
    assert canary_cli.canary_start(argparse.Namespace(canary=10, sticky=True, seed=7, bake=None)).seed == 7


@pytest.mark.parametrize(
    "canary, sticky, message",
    [(None, False, "--seed and --bake go with --canary"), (10, False, "--seed goes with --sticky")],
)
def test_a_seed_without_a_sticky_canary_is_refused(canary, sticky, message):
    with pytest.raises(UsageError, match=message):
        canary_cli.canary_start(argparse.Namespace(canary=canary, sticky=sticky, seed=7, bake=None))
