"""`deployer console passwd NAME`: the line that lets a viewer sign in to the web console. Thin: passwords.py hashes.

It reads no config and writes none: the operator pastes the printed line under [console.viewers].
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import TextIO

from deployer.config.fields import KEY_ID_RE
from deployer.errors import UsageError
from deployer.passwords import hash_password

MIN_PASSWORD = 12


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "console",
        cmd_console,
        "the web console's viewers: print a password hash line for [console.viewers]",
        "deployer console passwd alice",
        "The read-only web console (docs/console.md) signs viewers in with a name and a password;\n"
        "the config holds only a scrypt hash of each password.\n"
        "ACTION: passwd NAME (see deployer console passwd --help).",
        reads_config=False,
    )
    actions = p.add_subparsers(dest="console_action", metavar="ACTION", required=True)
    w = command(
        actions,
        "passwd",
        cmd_passwd,
        'read a password and print the line NAME = "scrypt$..." to paste under [console.viewers]',
        "deployer console passwd alice",
        "Read the password from the terminal (twice, not echoed), or one line from stdin when it is\n"
        "not a terminal, and print the viewer's line: scrypt with a random salt, never the password.",
        reads_config=False,
    )
    w.add_argument("name", help="the viewer's name: 1 to 64 letters, digits, '.', '_' or '-'")


def cmd_console(args: argparse.Namespace) -> int:
    raise UsageError("name an action: deployer console passwd NAME")


def cmd_passwd(args: argparse.Namespace) -> int:
    print(viewer_line(args.name, read_password(sys.stdin)))
    return 0


def viewer_line(name: str, password: str) -> str:
    """The config line of viewer `name`; refuses a name the config would refuse and a short password."""
    if not KEY_ID_RE.fullmatch(name):
        raise UsageError("a viewer's name is 1 to 64 letters, digits, '.', '_' or '-'")
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password is shorter than {MIN_PASSWORD} characters")
    return f'{name} = "{hash_password(password)}"'


def read_password(stream: TextIO, ask: Callable[[str], str] = getpass.getpass) -> str:
    """From the terminal, asked twice; else the first line of `stream` (a script, a password manager's pipe)."""
    if not stream.isatty():
        return stream.readline().rstrip("\r\n")
    first = ask("password: ")
    if ask("again: ") != first:
        raise UsageError("the two passwords differ")
    return first
