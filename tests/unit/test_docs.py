"""Docs are part of the code: every command has help with an example, and the README shows it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from deployer import config as config_module
from deployer.cli.main import build_parser
from deployer.server.web import create_app

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DOCS = README


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


def routes(tmp_path) -> dict[str, object]:
    """`METHOD /path` of every route the receiver serves, and its view function."""
    config = config_module.parse({"deployer": {"state_dir": str(tmp_path / "state")}, "apps": {"web": {
        "image": "registry.example/web", "ports": [{"external": 8000, "container": 80, "blue": 8001, "green": 8002}],
    }}}, path=tmp_path / "deployer.toml", environ={})
    app = create_app({"DEPLOYER_CONFIG": config})
    return {f"{method} {rule.rule}": app.view_functions[rule.endpoint]
            for rule in app.url_map.iter_rules() if rule.endpoint != "static"
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"})}


def test_every_route_is_documented_in_the_readme(tmp_path):
    found = routes(tmp_path)
    assert "GET /audit" in found and "POST /deploy" in found
    # `GET /jobs/<job_id>` may be written `GET /jobs/<id>`: any name between the brackets.
    patterns = {route: "`" + "<[^>`]+>".join(map(re.escape, re.split(r"<[^>]*>", route))) + "`" for route in found}
    missing = [route for route, pattern in patterns.items() if not re.search(pattern, DOCS)]
    assert not missing, f"routes missing from the README: {missing}"


def test_every_route_has_help_with_an_example(tmp_path):
    for route, view in routes(tmp_path).items():
        assert view.__doc__ and "Example:" in view.__doc__, f"{route} has no docstring with an example"
