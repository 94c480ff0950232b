"""The commands page (docs/commands.md), rendered from the parser, so it cannot fall behind the CLI.

Regenerate it with `python3 -m deployer.cli.reference > docs/commands.md`; a unit test fails
while the file differs from a fresh render. The render reads only the parser: no terminal width,
no environment, so the same parser always gives the same text.

argparse has no public way to list a parser's arguments and subcommands; the render reads its
`_actions`, as argparse's own help formatter does.
"""

from __future__ import annotations

import argparse
import sys
from deployer.cli.main import build_parser

REGENERATE = "python3 -m deployer.cli.reference > docs/commands.md"
# One usage line however long, instead of argparse's wrapping at the terminal's width.
USAGE_WIDTH = 10_000


def render_commands(parser: argparse.ArgumentParser) -> str:
    """Markdown for every command and subcommand: usage, description, arguments and the example."""
    lines = [
        "# Commands",
        "",
        f"<!-- Generated from the CLI parser by `{REGENERATE}`; do not edit by hand. -->",
        "",
        parser.description or "",
        "",
        "```",
        _usage(parser),
        "```",
        "",
        *_arguments(parser),
        *_text_block(parser.epilog),
        "| command | what it does |",
        "| --- | --- |",
    ]
    commands = list(_subcommands(parser))
    for name, _sub, help_text in commands:
        lines.append(f"| [`{name}`](#{_anchor(f'{parser.prog} {name}')}) | {_cell(help_text)} |")
    lines.append("")
    for name, sub, _help in commands:
        lines.extend(_command_section(f"{parser.prog} {name}", sub))
    return "\n".join(lines).rstrip("\n") + "\n"


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    """`deploy`, `audit verify` ...: every command and subcommand the parser accepts."""
    return [name for name, _, _ in _subcommands(parser)]


def _subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser, one-line help) of each subcommand, depth first, in the order they were added."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias
                continue
            seen.add(id(sub))
            full = f"{prefix}{name}"
            yield full, sub, helps.get(name) or ""
            yield from _subcommands(sub, prefix=f"{full} ")


def _command_section(name: str, sub: argparse.ArgumentParser) -> list[str]:
    example = (sub.epilog or "").strip()
    if example.startswith("example:"):
        example = example[len("example:"):].strip()
    return [
        f"## {name}",
        "",
        "```",
        _usage(sub),
        "```",
        "",
        *_text_block(sub.description),
        *_arguments(sub),
        *(["Example:", "", "```", *[line.strip() for line in example.splitlines()], "```", ""] if example else []),
    ]


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        rows.append(f"- `{_invocation(action)}`" + (f": {action.help}" if action.help else ""))
    return [*rows, ""] if rows else []


def _invocation(action: argparse.Action) -> str:
    """`--timeout TIMEOUT`, `-c CONFIG, --config CONFIG`, `{on,off}`: how the argument is written."""
    if not action.option_strings:
        if action.metavar is not None:
            return str(action.metavar)
        if action.choices is not None:
            return "{" + ",".join(map(str, action.choices)) + "}"
        return action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def _text_block(text: str | None) -> list[str]:
    """A description or epilog as written, kept line by line (they are written for a terminal)."""
    if not text:
        return []
    return ["```text", *text.rstrip().splitlines(), "```", ""]


def _anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives the heading `deployer audit verify`."""
    return "-".join(heading.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:

    sys.stdout.write(render_commands(build_parser()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
