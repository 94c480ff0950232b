"""The commands page (docs/commands.md), the man page and the completion scripts, rendered from the parser, so
none of them can fall behind the CLI.

Regenerate them with `python3 -m deployer.cli.reference --write`; a unit test fails while a file differs from
a fresh render. The render reads only the parser: no terminal width, no environment, so the same parser always
gives the same text. The man page comes from argparse-manpage, the completion scripts from shtab.

argparse has no public way to list a parser's arguments and subcommands; the render reads its
`_actions`, as argparse's own help formatter does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from argparse_manpage.manpage import Manpage

from deployer.cli.main import COMPLETION_SHELLS, build_parser, completion_script, package_version

REGENERATE = "python3 -m deployer.cli.reference > docs/commands.md"
REGENERATE_ALL = "python3 -m deployer.cli.reference --write"
DOCS = Path(__file__).resolve().parents[2] / "docs"
# The files rendered from the parser, relative to docs/, and what renders each.
MAN_PAGE = "man/deployer.1"
COMPLETION_FILES = {"bash": "completion/deployer.bash", "zsh": "completion/_deployer"}
# The man page's date: the month of the release it describes, changed with the version (a render of today's
# date would make the checked-in page stale every day).
MAN_DATE = "2026-12"
MAN_WIDTH = 100
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
        example = example[len("example:") :].strip()
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


def render_manpage(parser: argparse.ArgumentParser) -> str:
    """deployer(1): every command with its flags, from the parser, through argparse-manpage."""
    data = {
        "project_name": "deployer",
        "version": package_version(),
        "date": MAN_DATE,
        "manual_section": "1",
        "manual_title": "Deployer Manual",
        "url": "docs/commands.md in the source tree",
    }
    # argparse wraps usage lines at $COLUMNS; the page is rendered at one width, whatever the terminal.
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(MAN_WIDTH)
    try:
        return str(Manpage(parser, _data=data))
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def rendered_files() -> dict[str, str]:
    """Each generated file under docs/ and the text a fresh render gives it."""
    parser = build_parser()
    return {
        "commands.md": render_commands(parser),
        MAN_PAGE: render_manpage(parser),
        **{path: completion_script(shell) for shell, path in COMPLETION_FILES.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Print the commands page; with --write, write every generated file under docs/."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write"]:
        for name, text in rendered_files().items():
            (DOCS / name).parent.mkdir(parents=True, exist_ok=True)
            (DOCS / name).write_text(text)
        return 0
    if argv == ["--man"]:
        sys.stdout.write(render_manpage(build_parser()))
        return 0
    if argv:
        print(
            f"usage: python3 -m deployer.cli.reference [--write | --man]  (completion: deployer completion "
            f"{'|'.join(COMPLETION_SHELLS)})",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(render_commands(build_parser()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
