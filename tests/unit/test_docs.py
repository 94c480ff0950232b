"""Docs are part of the code: every command has help with an example, and the README shows it."""

from __future__ import annotations

import argparse
from pathlib import Path

from deployer.cli import build_parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_help_with_an_example():
    for name, sub in commands().items():
        assert sub.description, f"deployer {name} has no description"
        assert sub.epilog and "example:" in sub.epilog and f"deployer {name}" in sub.epilog, \
            f"deployer {name} --help has no example"


def test_every_command_is_in_the_readme():
    missing = [name for name in commands() if f"`deployer {name}" not in README]
    assert not missing, f"commands missing from the README: {missing}"


def test_the_readme_opens_with_the_demo_and_the_test_command():
    first_block = README.split("```", 2)[1]
    assert "scripts/demo" in first_block and "scripts/test" in first_block
