"""One duration format for the config's keys and the flags: 600, 90s, 10m, 1h."""

import argparse

import pytest

from deployer.cli.canary import duration
from deployer.cli.main import build_parser
from deployer.cli.ops import seconds
from deployer.config import parse
from deployer.config.fields import parse_duration


@pytest.mark.parametrize(
    "value, expected",
    [
        (600, 600),
        (2.5, 2.5),
        ("600", 600),
        ("2.5", 2.5),
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        (" 1h ", 3600),
        ("0", 0),
        ("1.5m", 90),
    ],
)
def test_the_forms_a_duration_takes(value, expected):
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["", "10 m", "10d", "m", "-5", "1h30m", "ten", True, None, [600]])
def test_anything_else_is_refused_naming_the_forms(value):
    with pytest.raises(ValueError, match="600, 90s, 10m or 1h"):
        parse_duration(value)


def test_the_config_and_the_flags_read_the_same_text(tmp_path):
    data = {
        "deployer": {"state_dir": "/tmp/x", "hook_timeout": "2m"},
        "apps": {
            "demo": {
                "image": "127.0.0.1:5000/demo",
                "canary_bake": "10m",
                "ports": [{"external": 1000, "container": 80, "blue": 1001, "green": 1002}],
            }
        },
    }
    loaded = parse(data, path=tmp_path / "d.toml", environ={})
    assert (loaded.app("demo").canary_bake, loaded.settings.hook_timeout) == (600, 120)
    assert duration("10m") == seconds("10m") == 600
    assert build_parser().parse_args(["rollout", "web", "v2", "--bake", "10m"]).bake == 600


@pytest.mark.parametrize(
    "flag, text, message",
    [
        (duration, "0", "must be greater than 0"),
        (duration, "soon", "600, 90s, 10m or 1h, not 'soon'"),
        (seconds, "-1", "600, 90s, 10m or 1h, not '-1'"),
        (seconds, "1x", "not '1x'"),
    ],
)
def test_a_bad_flag_value_says_what_it_takes(flag, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        flag(text)
