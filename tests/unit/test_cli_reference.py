"""The commands page is rendered from the parser: exact text for a small parser, and docs/commands.md is fresh."""

from __future__ import annotations

import argparse
import subprocess
import tomllib
from pathlib import Path

import pytest

from deployer.cli.main import build_parser, main, package_version
from deployer.cli.reference import (
    COMPLETION_FILES,
    MAN_PAGE,
    REGENERATE,
    REGENERATE_ALL,
    command_names,
    render_commands,
    render_manpage,
    rendered_files,
)

REPO = Path(__file__).resolve().parents[2]
COMMANDS_PAGE = REPO / "docs" / "commands.md"


def small_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool", description="Does things.", epilog="Exit codes: 0 done.")
    parser.add_argument("--config", "-c", help="the config file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    flip = sub.add_parser(
        "flip", help="flip a switch", description="Flip the switch\nof APP.", epilog="example:\n  tool flip on demo"
    )
    flip.add_argument("action", choices=["on", "off"])
    flip.add_argument("app", help="the app")
    either = flip.add_mutually_exclusive_group()
    either.add_argument("--fast", action="store_true", help="be quick")
    either.add_argument("--to", metavar="ADDR", help="where | how")
    nested = sub.add_parser("log", help="the log").add_subparsers(dest="what", metavar="ACTION")
    nested.add_parser("verify", help="check it", description="check it")
    return parser


def test_a_small_parser_renders_exactly():
    assert (
        render_commands(small_parser())
        == """\
# Commands

<!-- Generated from the CLI parser by `python3 -m deployer.cli.reference > docs/commands.md`; do not edit by hand. -->

Does things.

```
tool [-h] [--config CONFIG] COMMAND ...
```

- `--config CONFIG, -c CONFIG`: the config file

```text
Exit codes: 0 done.
```

| command | what it does |
| --- | --- |
| [`flip`](#tool-flip) | flip a switch |
| [`log`](#tool-log) | the log |
| [`log verify`](#tool-log-verify) | check it |

## tool flip

```
tool flip [-h] [--fast | --to ADDR] {on,off} app
```

```text
Flip the switch
of APP.
```

- `{on,off}`
- `app`: the app
- `--fast`: be quick
- `--to ADDR`: where | how

Example:

```
tool flip on demo
```

## tool log

```
tool log [-h] ACTION ...
```

## tool log verify

```
tool log verify [-h]
```

```text
check it
```
"""
    )


def test_the_render_ignores_the_terminal_width(monkeypatch):
    wide = render_commands(build_parser())
    monkeypatch.setenv("COLUMNS", "30")
    assert render_commands(build_parser()) == wide


def test_every_flag_of_every_command_is_on_the_page():
    page = render_commands(build_parser())
    sections = dict(section.split("\n", 1) for section in page.split("\n## ")[1:])
    parsers = {"": build_parser()}
    for name in command_names(build_parser()):
        parent = parsers[name.rpartition(" ")[0]]
        subs = next(a for a in parent._actions if isinstance(a, argparse._SubParsersAction))
        parsers[name] = subs.choices[name.rpartition(" ")[2]]
    for name, parser in parsers.items():
        if not name:
            continue
        listed = [line for line in sections[f"deployer {name}"].splitlines() if line.startswith("- `")]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:  # a retired flag
                continue
            for option in action.option_strings:
                assert any(f"`{option}" in line or f" {option}" in line for line in listed), (
                    f"deployer {name}: {option} is not listed"
                )


def test_docs_commands_md_is_fresh():
    expected = render_commands(build_parser())
    current = COMMANDS_PAGE.read_text() if COMMANDS_PAGE.exists() else ""
    assert current == expected, f"docs/commands.md is stale; regenerate it from the repository root: {REGENERATE}"


def test_the_man_page_and_the_completion_scripts_are_fresh():
    for name, expected in rendered_files().items():
        path = REPO / "docs" / name
        current = path.read_text() if path.exists() else ""
        assert current == expected, f"docs/{name} is stale; regenerate it from the repository root: {REGENERATE_ALL}"


def test_the_man_page_ignores_the_terminal_width(monkeypatch):
    wide = render_manpage(build_parser())
    monkeypatch.setenv("COLUMNS", "30")
    assert render_manpage(build_parser()) == wide


def test_the_man_page_and_the_completions_name_every_command():
    page = (REPO / "docs" / MAN_PAGE).read_text()
    scripts = {shell: (REPO / "docs" / path).read_text() for shell, path in COMPLETION_FILES.items()}
    for name in command_names(build_parser()):
        last = name.rpartition(" ")[2]
        assert (
            f"deployer {name}".replace("-", "\\-") in page.replace("\\fR \\fI\\,", " ").replace("\\/\\fR", "")
            or last.replace("-", "\\-") in page
        ), f"{name} is not in the man page"
        for shell, script in scripts.items():
            assert last in script, f"{name} is not in the {shell} completion"
    assert "--canary-host" in scripts["bash"] and "--canary-host" in scripts["zsh"]


def test_the_bash_completion_is_valid_bash():
    checked = subprocess.run(
        ["bash", "-n", str(REPO / "docs" / COMPLETION_FILES["bash"])], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_deployer_completion_prints_the_checked_in_script(shell, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYER_CONFIG", str(tmp_path / "none.toml"))  # it reads no config
    assert main(["completion", shell]) == 0
    assert capsys.readouterr().out == (REPO / "docs" / COMPLETION_FILES[shell]).read_text()


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"deployer {package_version()}\n"
    assert package_version() == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
