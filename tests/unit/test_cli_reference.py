"""The commands page is rendered from the parser: exact text for a small parser, and docs/commands.md is fresh."""

from __future__ import annotations

import argparse
from pathlib import Path

from deployer.cli.main import build_parser
from deployer.cli.reference import REGENERATE, command_names, render_commands

REPO = Path(__file__).resolve().parents[2]
COMMANDS_PAGE = REPO / "docs" / "commands.md"


def small_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool", description="Does things.", epilog="Exit codes: 0 done.")
    parser.add_argument("--config", "-c", help="the config file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    flip = sub.add_parser("flip", help="flip a switch", description="Flip the switch\nof APP.",
                          epilog="example:\n  tool flip on demo")
    flip.add_argument("action", choices=["on", "off"])
    flip.add_argument("app", help="the app")
    either = flip.add_mutually_exclusive_group()
    either.add_argument("--fast", action="store_true", help="be quick")
    either.add_argument("--to", metavar="ADDR", help="where | how")
    nested = sub.add_parser("log", help="the log").add_subparsers(dest="what", metavar="ACTION")
    nested.add_parser("verify", help="check it", description="check it")
    return parser


def test_a_small_parser_renders_exactly():
    assert render_commands(small_parser()) == """\
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
                assert any(f"`{option}" in line or f" {option}" in line for line in listed), \
                    f"deployer {name}: {option} is not listed"


def test_docs_commands_md_is_fresh():
    expected = render_commands(build_parser())
    current = COMMANDS_PAGE.read_text() if COMMANDS_PAGE.exists() else ""
    assert current == expected, f"docs/commands.md is stale; regenerate it from the repository root: {REGENERATE}"
